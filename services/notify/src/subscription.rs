//! Subscriptions: who hears about what, and how. Validated at the edge into
//! [`NewSubscription`], stored in PostgreSQL, matched against each event.

pub mod file;

use chrono::{DateTime, Utc};
use dealmesh_auth::{Principal, Role};
use dealmesh_proto::v1 as pb;
use dealmesh_proto::v1::NotificationTrigger;
use dealmesh_runtime::grpc::Violation;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use crate::event::LP_TRIGGERS;

/// Longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;
const MIN_SECRET_LEN: usize = 16;
const MAX_SECRET_LEN: usize = 256;
const MAX_TEXT_LEN: usize = 200;
const MAX_LIST_LEN: usize = 1000;

/// Where a subscription's notifications go. (Debug redacts the secret.)
#[derive(Debug, Clone)]
pub enum ChannelSpec {
    Webhook {
        url: url::Url,
        secret: SecretString,
        format: WebhookFormat,
    },
    Email {
        address: String,
        digest: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    Json,
    Slack,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "json" => Some(WebhookFormat::Json),
            "slack" => Some(WebhookFormat::Slack),
            _ => None,
        }
    }
}

/// What must be true of an event for a subscription to hear it, beyond its
/// trigger.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub min_score: Option<f64>,
    /// Lower-cased.
    pub sectors: Vec<String>,
    pub deal_ids: Vec<String>,
    pub owned_deals_only: bool,
}

/// A validated subscription, ready to store.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub id: Uuid,
    pub name: String,
    pub subscriber: String,
    pub role: Role,
    pub lp_id: Option<String>,
    pub triggers: Vec<NotificationTrigger>,
    pub filter: Filter,
    pub channel: ChannelSpec,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Api,
    Config,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Config => "config",
        }
    }
}

/// The unchecked fields of a subscription, from the API or the file.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub name: String,
    pub triggers: Vec<i32>,
    pub filter: Filter,
    pub webhook: Option<(String, String, i32)>,
    pub email: Option<(String, bool)>,
}

impl Draft {
    pub fn from_proto(subscription: pb::Subscription) -> Self {
        let filter = subscription.filter.unwrap_or_default();
        Draft {
            name: subscription.name,
            triggers: subscription.triggers,
            filter: Filter {
                min_score: filter.min_score,
                sectors: filter.sectors,
                deal_ids: filter.deal_ids,
                owned_deals_only: filter.owned_deals_only,
            },
            webhook: match &subscription.channel {
                Some(pb::subscription::Channel::Webhook(w)) => {
                    Some((w.url.clone(), w.secret.clone(), w.format))
                }
                _ => None,
            },
            email: match subscription.channel {
                Some(pb::subscription::Channel::Email(e)) => Some((e.address, e.digest)),
                _ => None,
            },
        }
    }

    /// Checks every field for `subscriber`, naming each violation by its
    /// path under `prefix` (e.g. `subscription.`). A webhook without a
    /// secret gets a generated one.
    pub fn validate(
        self,
        prefix: &str,
        subscriber: &Principal,
        email_enabled: bool,
        origin: Origin,
    ) -> Result<NewSubscription, Vec<Violation>> {
        let mut violations = Vec::new();
        let mut v = |field: &str, description: String| {
            violations.push(Violation::new(format!("{prefix}{field}"), description))
        };
        if self.name.chars().count() > MAX_TEXT_LEN {
            v("name", format!("at most {MAX_TEXT_LEN} characters"));
        }
        let mut triggers = Vec::new();
        if self.triggers.is_empty() {
            v("triggers", "at least one trigger is required".into());
        }
        for (i, value) in self.triggers.iter().enumerate() {
            match NotificationTrigger::try_from(*value) {
                Ok(NotificationTrigger::Unspecified) | Err(_) => v(
                    &format!("triggers[{i}]"),
                    format!("unknown trigger {value}"),
                ),
                Ok(t) if subscriber.is_lp() && !LP_TRIGGERS.contains(&t) => v(
                    &format!("triggers[{i}]"),
                    format!(
                        "an LP may subscribe only to {}",
                        LP_TRIGGERS.map(|t| t.as_str_name()).join(", ")
                    ),
                ),
                Ok(t) if !triggers.contains(&t) => triggers.push(t),
                Ok(_) => {}
            }
        }
        let mut filter = self.filter;
        if let Some(min) = filter.min_score {
            if !(0.0..=100.0).contains(&min) {
                v("filter.min_score", "must be between 0 and 100".into());
            } else if !triggers.contains(&NotificationTrigger::DealScored) {
                v(
                    "filter.min_score",
                    "applies only to NOTIFICATION_TRIGGER_DEAL_SCORED, which is not among the triggers".into(),
                );
            }
        }
        check_list(&mut v, "filter.sectors", &filter.sectors);
        check_list(&mut v, "filter.deal_ids", &filter.deal_ids);
        filter.sectors = filter
            .sectors
            .iter()
            .map(|s| s.trim().to_lowercase())
            .collect();
        if filter.owned_deals_only && subscriber.is_lp() {
            v("filter.owned_deals_only", "LPs own no deals".into());
        }
        let channel = match (self.webhook, self.email) {
            (Some((url, secret, format)), None) => {
                let url = match parse_endpoint_url(&url) {
                    Ok(url) => Some(url),
                    Err(problem) => {
                        v("webhook.url", problem);
                        None
                    }
                };
                let secret = if secret.is_empty() {
                    Some(generate_secret())
                } else if secret.len() < MIN_SECRET_LEN || secret.len() > MAX_SECRET_LEN {
                    v(
                        "webhook.secret",
                        format!(
                            "must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters, or empty to have one generated"
                        ),
                    );
                    None
                } else {
                    Some(secret)
                };
                let format = match pb::WebhookFormat::try_from(format) {
                    Ok(pb::WebhookFormat::Unspecified | pb::WebhookFormat::Json) => {
                        Some(WebhookFormat::Json)
                    }
                    Ok(pb::WebhookFormat::Slack) => Some(WebhookFormat::Slack),
                    Err(_) => {
                        v("webhook.format", format!("unknown format {format}"));
                        None
                    }
                };
                match (url, secret, format) {
                    (Some(url), Some(secret), Some(format)) => Some(ChannelSpec::Webhook {
                        url,
                        secret: SecretString::from(secret),
                        format,
                    }),
                    _ => None,
                }
            }
            (None, Some((address, digest))) => {
                if !email_enabled {
                    v(
                        "email",
                        "email is not configured on this server (no SMTP host)".into(),
                    );
                    None
                } else {
                    match address.trim().parse::<lettre::Address>() {
                        Ok(parsed) => Some(ChannelSpec::Email {
                            address: parsed.to_string(),
                            digest,
                        }),
                        Err(e) => {
                            v(
                                "email.address",
                                format!("{address:?} is not an email address: {e}"),
                            );
                            None
                        }
                    }
                }
            }
            (Some(_), Some(_)) => {
                v("channel", "choose one channel: webhook or email".into());
                None
            }
            (None, None) => {
                v("channel", "a channel (webhook or email) is required".into());
                None
            }
        };
        match channel {
            Some(channel) if violations.is_empty() => Ok(NewSubscription {
                id: Uuid::now_v7(),
                name: self.name,
                subscriber: subscriber.subject.clone(),
                role: subscriber.role,
                lp_id: subscriber.lp_id.clone(),
                triggers,
                filter,
                channel,
                origin,
            }),
            _ => Err(violations),
        }
    }
}

fn check_list(v: &mut impl FnMut(&str, String), field: &str, items: &[String]) {
    if items.len() > MAX_LIST_LEN {
        v(field, format!("at most {MAX_LIST_LEN} entries"));
    }
    for (i, item) in items.iter().enumerate() {
        if item.trim().is_empty() || item.chars().count() > MAX_TEXT_LEN {
            v(
                &format!("{field}[{i}]"),
                format!("must be 1 to {MAX_TEXT_LEN} characters"),
            );
        }
    }
}

/// An endpoint URL people can send to: http(s), a host, no credentials
/// (they would be sent in the clear in logs and the subscription list).
pub fn parse_endpoint_url(raw: &str) -> Result<url::Url, String> {
    if raw.trim().is_empty() {
        return Err("is required".into());
    }
    if raw.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} characters"));
    }
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme {:?} is not allowed: use http or https",
            url.scheme()
        ));
    }
    match url.host_str() {
        None | Some("") => return Err("a host is required".into()),
        Some(_) => {}
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials; the body is signed instead".into());
    }
    Ok(url)
}

fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", hex::encode(bytes))
}

/// A stored subscription, as the matcher and the dispatcher need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub id: Uuid,
    pub name: String,
    pub subscriber: String,
    pub subscriber_role: String,
    pub lp_id: Option<String>,
    pub triggers: Vec<i32>,
    pub min_score: Option<f64>,
    pub sectors: Vec<String>,
    pub deal_ids: Vec<String>,
    pub owned_deals_only: bool,
    pub channel: String,
    pub target: String,
    pub webhook_format: String,
    pub digest: bool,
    pub origin: String,
    pub created_at: DateTime<Utc>,
}

const STORED_COLUMNS: &str = "id, name, subscriber, subscriber_role, lp_id, triggers, min_score, \
    sectors, deal_ids, owned_deals_only, channel, target, webhook_format, digest, origin, created_at";

impl Stored {
    pub fn is_lp(&self) -> bool {
        self.subscriber_role == Role::Lp.as_str()
    }

    pub fn to_proto(&self) -> pb::Subscription {
        let channel = if self.channel == "email" {
            pb::subscription::Channel::Email(pb::EmailChannel {
                address: self.target.clone(),
                digest: self.digest,
            })
        } else {
            pb::subscription::Channel::Webhook(pb::WebhookChannel {
                url: self.target.clone(),
                secret: String::new(),
                format: match self.webhook_format.as_str() {
                    "slack" => pb::WebhookFormat::Slack,
                    _ => pb::WebhookFormat::Json,
                } as i32,
            })
        };
        pb::Subscription {
            subscription_id: self.id.to_string(),
            name: self.name.clone(),
            subscriber: self.subscriber.clone(),
            subscriber_role: Role::parse(&self.subscriber_role)
                .map_or(pb::Role::Unspecified, Role::to_proto) as i32,
            lp_id: self.lp_id.clone().unwrap_or_default(),
            triggers: self.triggers.clone(),
            filter: Some(pb::NotificationFilter {
                min_score: self.min_score,
                sectors: self.sectors.clone(),
                deal_ids: self.deal_ids.clone(),
                owned_deals_only: self.owned_deals_only,
            }),
            channel: Some(channel),
            created_at: Some(dealmesh_eventlog::envelope::timestamp(self.created_at)),
            origin: if self.origin == "config" {
                pb::SubscriptionOrigin::Config
            } else {
                pb::SubscriptionOrigin::Api
            } as i32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("subscription {0} not found")]
    NotFound(Uuid),
    #[error("subscription {0} comes from configuration; change the subscriptions file instead")]
    FromConfig(Uuid),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Stores a subscription, or replaces the one with the same id.
#[tracing::instrument(skip_all, fields(subscription_id = %s.id), err)]
pub async fn upsert<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    s: &NewSubscription,
) -> Result<(), StoreError> {
    let (channel, target, secret, format, digest) = match &s.channel {
        ChannelSpec::Webhook {
            url,
            secret,
            format,
        } => (
            "webhook",
            url.to_string(),
            Some(secret.expose_secret().to_owned()),
            format.as_str(),
            false,
        ),
        ChannelSpec::Email { address, digest } => ("email", address.clone(), None, "json", *digest),
    };
    sqlx::query(
        "INSERT INTO subscriptions (id, name, subscriber, subscriber_role, lp_id, triggers, min_score, \
           sectors, deal_ids, owned_deals_only, channel, target, secret, webhook_format, digest, origin) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
         ON CONFLICT (id) DO UPDATE SET name = $2, subscriber = $3, subscriber_role = $4, lp_id = $5, \
           triggers = $6, min_score = $7, sectors = $8, deal_ids = $9, owned_deals_only = $10, \
           channel = $11, target = $12, secret = $13, webhook_format = $14, digest = $15, \
           origin = $16, deleted_at = NULL",
    )
    .bind(s.id)
    .bind(&s.name)
    .bind(&s.subscriber)
    .bind(s.role.as_str())
    .bind(&s.lp_id)
    .bind(s.triggers.iter().map(|t| *t as i32).collect::<Vec<_>>())
    .bind(s.filter.min_score)
    .bind(&s.filter.sectors)
    .bind(&s.filter.deal_ids)
    .bind(s.filter.owned_deals_only)
    .bind(channel)
    .bind(target)
    .bind(secret)
    .bind(format)
    .bind(digest)
    .bind(s.origin.as_str())
    .execute(executor)
    .await?;
    Ok(())
}

/// Live subscriptions, of one subscriber or (None) of everyone.
#[tracing::instrument(skip_all, err)]
pub async fn list(pool: &PgPool, subscriber: Option<&str>) -> Result<Vec<Stored>, StoreError> {
    let rows = sqlx::query_as::<_, Stored>(sqlx::AssertSqlSafe(format!(
        "SELECT {STORED_COLUMNS} FROM subscriptions \
         WHERE deleted_at IS NULL AND ($1::text IS NULL OR subscriber = $1) ORDER BY created_at, id"
    )))
    .bind(subscriber)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Live subscriptions listening for `trigger`, oldest first.
pub async fn listening<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    trigger: NotificationTrigger,
) -> Result<Vec<Stored>, sqlx::Error> {
    sqlx::query_as::<_, Stored>(sqlx::AssertSqlSafe(format!(
        "SELECT {STORED_COLUMNS} FROM subscriptions WHERE deleted_at IS NULL AND $1 = ANY(triggers) \
         ORDER BY created_at, id"
    )))
    .bind(trigger as i32)
    .fetch_all(executor)
    .await
}

/// Deletes an API subscription (of `subscriber`, unless None: an admin) and
/// cancels its pending deliveries; returns how many were cancelled.
#[tracing::instrument(skip_all, fields(subscription_id = %id))]
pub async fn delete(pool: &PgPool, id: Uuid, subscriber: Option<&str>) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let origin: Option<String> = sqlx::query_scalar(
        "SELECT origin FROM subscriptions WHERE id = $1 AND deleted_at IS NULL \
         AND ($2::text IS NULL OR subscriber = $2) FOR UPDATE",
    )
    .bind(id)
    .bind(subscriber)
    .fetch_optional(&mut *tx)
    .await?;
    match origin.as_deref() {
        None => return Err(StoreError::NotFound(id)),
        Some("config") => return Err(StoreError::FromConfig(id)),
        Some(_) => {}
    }
    sqlx::query("UPDATE subscriptions SET deleted_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let cancelled = sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', last_error = 'subscription deleted' \
         WHERE subscription_id = $1 AND status IN ('pending', 'digest')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner() -> Principal {
        Principal {
            subject: "alice".into(),
            role: Role::Partner,
            lp_id: None,
            name: None,
        }
    }

    fn lp() -> Principal {
        Principal {
            subject: "lp-7".into(),
            role: Role::Lp,
            lp_id: Some("lp-7".into()),
            name: None,
        }
    }

    fn webhook(url: &str) -> Draft {
        Draft {
            triggers: vec![NotificationTrigger::DealScored as i32],
            webhook: Some((url.into(), String::new(), 0)),
            ..Default::default()
        }
    }

    fn fields(result: Result<NewSubscription, Vec<Violation>>) -> Vec<String> {
        match result {
            Ok(_) => vec![],
            Err(v) => v.into_iter().map(|v| v.field).collect(),
        }
    }

    #[test]
    fn endpoint_urls_must_be_http_with_a_host_and_no_credentials() {
        for bad in [
            "",
            "not a url",
            "ftp://example.com/hook",
            "file:///etc/passwd",
            "https://user:pw@example.com/hook",
            "http://",
            "mailto:a@b.c",
        ] {
            assert_eq!(
                fields(webhook(bad).validate("s.", &partner(), false, Origin::Api)),
                ["s.webhook.url"],
                "{bad:?}"
            );
        }
        let ok =
            webhook("https://hooks.example.com/x?y=1").validate("", &partner(), false, Origin::Api);
        match ok {
            Ok(s) => match s.channel {
                ChannelSpec::Webhook { secret, .. } => assert!(secret.expose_secret().len() >= 32),
                ChannelSpec::Email { .. } => panic!("webhook expected"),
            },
            Err(v) => panic!("{v:?}"),
        }
    }

    #[test]
    fn filters_are_checked() {
        let mut d = webhook("https://h.example/x");
        d.filter.min_score = Some(150.0);
        d.filter.sectors = vec![" ".into()];
        d.triggers.push(99);
        assert_eq!(
            fields(d.validate("", &partner(), false, Origin::Api)),
            ["triggers[1]", "filter.min_score", "filter.sectors[0]"]
        );
        let mut d = webhook("https://h.example/x");
        d.triggers = vec![NotificationTrigger::StageChanged as i32];
        d.filter.min_score = Some(50.0);
        assert_eq!(
            fields(d.validate("", &partner(), false, Origin::Api)),
            ["filter.min_score"]
        );
        let mut d = webhook("https://h.example/x");
        d.triggers = vec![];
        assert_eq!(
            fields(d.validate("", &partner(), false, Origin::Api)),
            ["triggers"]
        );
    }

    #[test]
    fn lps_hear_only_about_shares_and_votes() {
        let d = webhook("https://h.example/x");
        assert_eq!(
            fields(d.validate("", &lp(), false, Origin::Api)),
            ["triggers[0]"]
        );
        let mut d = webhook("https://h.example/x");
        d.triggers = vec![
            NotificationTrigger::VoteOpened as i32,
            NotificationTrigger::VoteClosed as i32,
        ];
        assert!(d.validate("", &lp(), false, Origin::Api).is_ok());
    }

    #[test]
    fn email_needs_smtp_and_a_valid_address() {
        let d = Draft {
            triggers: vec![NotificationTrigger::NoteAdded as i32],
            email: Some(("nobody".into(), false)),
            ..Default::default()
        };
        assert_eq!(
            fields(d.clone().validate("", &partner(), false, Origin::Api)),
            ["email"]
        );
        assert_eq!(
            fields(d.validate("", &partner(), true, Origin::Api)),
            ["email.address"]
        );
    }
}
