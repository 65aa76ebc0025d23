//! The dispatcher: sends pending deliveries from the delivery log.
//!
//! - Each endpoint (a webhook URL or an email address) has its own
//!   concurrency limit, and waiting for it holds no global slot, so a slow or
//!   dead endpoint only ever delays its own deliveries.
//! - A delivery is claimed in PostgreSQL before it is sent (its next attempt
//!   moved past a lease), so several dispatchers can share the log and a
//!   crashed sender's delivery is picked up again when the lease ends.
//! - Send, then mark: a crash after the receiver answered and before the mark
//!   sends the delivery again, with the same `X-Dealmesh-Delivery-Id`.
//!   Receivers deduplicate on that id; with that, each notification is acted
//!   on exactly once.
//! - Failures are retried with exponential backoff and jitter (`Retry-After`
//!   honoured on 429) until the retry budget is spent; then the delivery is
//!   marked dead with its last error. Answers that retrying cannot fix (4xx)
//!   are dead at once.

pub mod email;
pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::DispatchConfig;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered {
        status: Option<u16>,
    },
    /// Worth retrying; `retry_after` is what the endpoint asked for.
    Retry {
        status: Option<u16>,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Permanent {
        status: Option<u16>,
        error: String,
    },
}

/// A claimed delivery, ready to send.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub channel: String,
    pub recipient: String,
    pub body: String,
    pub attempts: i32,
    pub secret: Option<String>,
}

/// The delay before retry number `attempt` (1 = the first retry):
/// `base * 2^(attempt-1)` capped at `max`, scaled by `jitter` in [0.5, 1.0]
/// so retries of many deliveries spread out.
pub fn retry_delay(config: &DispatchConfig, attempt: u32, jitter: f64) -> Duration {
    let exp = config
        .retry_base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(31)))
        .min(config.retry_max);
    exp.mul_f64(jitter.clamp(0.5, 1.0))
}

/// When to try again after `outcome` of attempt `attempt`, or None when the
/// budget is spent.
pub fn next_delay(
    config: &DispatchConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    if attempt >= config.max_attempts {
        return None;
    }
    Some(match retry_after {
        Some(after) => after.min(config.max_retry_after),
        None => retry_delay(config, attempt, jitter),
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    channel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone)]
struct DispatchMetrics {
    attempts: Family<OutcomeLabels, Counter>,
    send_seconds: Family<ChannelLabels, Histogram, fn() -> Histogram>,
}

impl Default for DispatchMetrics {
    fn default() -> Self {
        Self {
            attempts: Family::default(),
            send_seconds: Family::new_with_constructor(
                dealmesh_runtime::metrics::latency_histogram,
            ),
        }
    }
}

/// A channel and a recipient on it: the unit of isolation.
type Endpoint = (String, String);

#[derive(Clone)]
pub struct Dispatcher {
    pool: PgPool,
    config: DispatchConfig,
    webhook: webhook::WebhookSender,
    email: Option<email::EmailSender>,
    wake: Arc<Notify>,
    endpoints: Arc<Mutex<HashMap<Endpoint, Arc<Semaphore>>>>,
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
    metrics: DispatchMetrics,
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        config: DispatchConfig,
        email: Option<email::EmailSender>,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            webhook: webhook::WebhookSender::new(config.webhook_timeout)?,
            pool,
            config,
            email,
            wake,
            endpoints: Arc::default(),
            in_flight: Arc::default(),
            metrics: DispatchMetrics::default(),
        })
    }

    pub fn with_metrics(self, registry: &mut Registry) -> Self {
        registry.register(
            "dealmesh_notify_delivery_attempts",
            "Delivery attempts, by channel and outcome (delivered, retry, dead)",
            self.metrics.attempts.clone(),
        );
        registry.register(
            "dealmesh_notify_send_seconds",
            "Time one send took, by channel",
            self.metrics.send_seconds.clone(),
        );
        self
    }

    /// Sends due deliveries until `shutdown`, then waits for the sends in
    /// flight (the caller bounds that wait with the grace period).
    pub async fn run(self, shutdown: CancellationToken) {
        let global = Arc::new(Semaphore::new(self.config.concurrency));
        let tasks = TaskTracker::new();
        tracing::info!(
            concurrency = self.config.concurrency,
            endpoint_concurrency = self.config.endpoint_concurrency,
            "dispatcher started"
        );
        loop {
            match self.scan().await {
                Ok(due) => {
                    for (id, channel, recipient) in due {
                        if !lock(&self.in_flight).insert(id) {
                            continue;
                        }
                        let endpoint = lock(&self.endpoints)
                            .entry((channel, recipient))
                            .or_insert_with(|| {
                                Arc::new(Semaphore::new(self.config.endpoint_concurrency))
                            })
                            .clone();
                        let this = self.clone();
                        let global = global.clone();
                        let shutdown = shutdown.clone();
                        tasks.spawn(async move {
                            this.deliver(id, endpoint, global, shutdown).await;
                            lock(&this.in_flight).remove(&id);
                            this.wake.notify_one();
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "scanning for due deliveries failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("dispatcher stopped");
    }

    /// Due deliveries, at most `endpoint_concurrency` per endpoint so one
    /// endpoint's backlog never crowds out the others.
    async fn scan(&self) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, channel, recipient FROM ( \
               SELECT id, channel, recipient, next_attempt_at, \
                 row_number() OVER (PARTITION BY channel, recipient ORDER BY next_attempt_at, id) AS rank \
               FROM deliveries WHERE status = 'pending' AND next_attempt_at <= now()) due \
             WHERE rank <= $1 ORDER BY next_attempt_at, id LIMIT $2",
        )
        .bind(self.config.endpoint_concurrency as i64)
        .bind((self.config.concurrency * 4) as i64)
        .fetch_all(&self.pool)
        .await
    }

    async fn deliver(
        &self,
        id: Uuid,
        endpoint: Arc<Semaphore>,
        global: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        // Endpoint first: a delivery queued behind its own slow endpoint
        // holds none of the slots the other endpoints share.
        let Ok(_endpoint_permit) = endpoint.acquire_owned().await else {
            return;
        };
        let Ok(_permit) = global.acquire_owned().await else {
            return;
        };
        if shutdown.is_cancelled() {
            return;
        }
        let claimed = match self.claim(id).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, delivery_id = %id, "claiming a delivery failed");
                return;
            }
        };
        let started = Instant::now();
        let outcome = match claimed.channel.as_str() {
            "webhook" => self.webhook.send(&claimed).await,
            "email" => match &self.email {
                Some(sender) => sender.send(&claimed).await,
                None => Outcome::Retry {
                    status: None,
                    error: "email is not configured (no SMTP host)".into(),
                    retry_after: None,
                },
            },
            other => Outcome::Permanent {
                status: None,
                error: format!("unknown channel {other}"),
            },
        };
        let took = started.elapsed();
        self.metrics
            .send_seconds
            .get_or_create(&ChannelLabels {
                channel: claimed.channel.clone(),
            })
            .observe(took.as_secs_f64());
        let attempt = u32::try_from(claimed.attempts).unwrap_or(1);
        let label = match &outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry { .. } if attempt < self.config.max_attempts => "retry",
            _ => "dead",
        };
        self.metrics
            .attempts
            .get_or_create(&OutcomeLabels {
                channel: claimed.channel.clone(),
                outcome: label,
            })
            .inc();
        if let Err(error) = self.record(&claimed, &outcome, took).await {
            // The lease runs out and the delivery is sent again, with the
            // same id: receivers deduplicate.
            tracing::warn!(%error, delivery_id = %id, "recording a delivery outcome failed");
        }
    }

    /// Takes the delivery if it is still pending and due, moving its next
    /// attempt past the lease.
    async fn claim(&self, id: Uuid) -> Result<Option<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE deliveries SET attempts = attempts + 1, \
               next_attempt_at = now() + $2 * interval '1 millisecond' \
             WHERE id = $1 AND status = 'pending' AND next_attempt_at <= now() \
             RETURNING id, channel, recipient, body, attempts, \
               (SELECT secret FROM subscriptions s WHERE s.id = subscription_id) AS secret",
        )
        .bind(id)
        .bind(self.config.lease().as_millis() as f64)
        .fetch_optional(&self.pool)
        .await
    }

    #[tracing::instrument(skip_all, fields(delivery_id = %claimed.id, attempt = claimed.attempts), err)]
    async fn record(
        &self,
        claimed: &Claimed,
        outcome: &Outcome,
        took: Duration,
    ) -> Result<(), sqlx::Error> {
        let attempt = u32::try_from(claimed.attempts).unwrap_or(1);
        let (status, error) = match outcome {
            Outcome::Delivered { status } => (*status, None),
            Outcome::Retry { status, error, .. } | Outcome::Permanent { status, error } => {
                (*status, Some(error.clone()))
            }
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, status, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(claimed.id)
        .bind(claimed.attempts)
        .bind(status.map(i32::from))
        .bind(&error)
        .bind(took.as_millis() as i64)
        .execute(&mut *tx)
        .await?;
        match outcome {
            Outcome::Delivered { .. } => {
                sqlx::query(
                    "UPDATE deliveries SET status = 'delivered', delivered_at = now(), last_status = $2, \
                     last_error = NULL WHERE id = $1",
                )
                .bind(claimed.id)
                .bind(status.map(i32::from))
                .execute(&mut *tx)
                .await?;
                tracing::debug!("delivered");
            }
            Outcome::Retry {
                error, retry_after, ..
            } => {
                let jitter = 0.5 + rand::random::<f64>() / 2.0;
                match next_delay(&self.config, attempt, *retry_after, jitter) {
                    Some(delay) => {
                        sqlx::query(
                            "UPDATE deliveries SET next_attempt_at = now() + $2 * interval '1 millisecond', \
                             last_status = $3, last_error = $4 WHERE id = $1",
                        )
                        .bind(claimed.id)
                        .bind(delay.as_millis() as f64)
                        .bind(status.map(i32::from))
                        .bind(error)
                        .execute(&mut *tx)
                        .await?;
                        tracing::info!(
                            delay_ms = delay.as_millis() as u64,
                            error,
                            "delivery failed, will retry"
                        );
                    }
                    None => {
                        let error = format!("gave up after {attempt} attempts: {error}");
                        self.mark_dead(&mut tx, claimed.id, status, &error).await?;
                    }
                }
            }
            Outcome::Permanent { error, .. } => {
                self.mark_dead(&mut tx, claimed.id, status, error).await?;
            }
        }
        tx.commit().await
    }

    async fn mark_dead(
        &self,
        tx: &mut sqlx::PgConnection,
        id: Uuid,
        status: Option<u16>,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE deliveries SET status = 'dead', last_status = $2, last_error = $3 WHERE id = $1")
            .bind(id)
            .bind(status.map(i32::from))
            .bind(error)
            .execute(&mut *tx)
            .await?;
        tracing::warn!(delivery_id = %id, error, "delivery dead");
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DispatchConfig {
        DispatchConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(120),
            ..DispatchConfig::default()
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let c = config();
        assert_eq!(retry_delay(&c, 1, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(&c, 2, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(&c, 4, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(&c, 4, 0.5), Duration::from_secs(4));
        assert_eq!(retry_delay(&c, 30, 1.0), Duration::from_secs(60));
        assert_eq!(retry_delay(&c, 200, 0.0), Duration::from_secs(30));
    }

    #[test]
    fn retry_after_wins_but_is_capped_and_the_budget_ends_it() {
        let c = config();
        assert_eq!(
            next_delay(&c, 1, Some(Duration::from_secs(30)), 1.0),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            next_delay(&c, 1, Some(Duration::from_secs(9999)), 1.0),
            Some(Duration::from_secs(120))
        );
        assert_eq!(next_delay(&c, 4, None, 1.0), Some(Duration::from_secs(8)));
        assert_eq!(next_delay(&c, 5, None, 1.0), None);
    }
}
