//! The running thesis model, read from its file and swapped atomically when
//! the file changes (polled, on SIGHUP, or on request). A bad file is
//! rejected with its field errors logged and kept as the last reload error;
//! the model in use stays in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use dealmesh_runtime::shutdown::OsSignal;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::model::{Model, ModelError};

/// A model in use, with when it was loaded.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Model,
    pub loaded_at: DateTime<Utc>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub version: String,
    /// False when the file holds the model already running.
    pub changed: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Clone, Default)]
struct ReloadMetrics {
    reloads: Family<OutcomeLabel, Counter>,
    info: Family<VersionLabel, Gauge>,
    failing: Gauge,
}

#[derive(Default)]
struct Status {
    last_error: Option<String>,
    /// Digest of the file content last looked at, good or bad, so the poller
    /// neither re-parses an unchanged file nor logs the same error forever.
    seen: [u8; 32],
}

struct Inner {
    path: PathBuf,
    current: ArcSwap<LoadedModel>,
    status: Mutex<Status>,
    metrics: ReloadMetrics,
    /// The version in use, for tasks that act on a model change.
    version: tokio::sync::watch::Sender<String>,
}

/// The running model. Cheap to clone; every clone sees swaps.
#[derive(Clone)]
pub struct ModelHandle {
    inner: Arc<Inner>,
}

impl ModelHandle {
    /// Loads the model file; the service does not start without a valid one.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = read(path)?;
        let model = parse(&bytes)?;
        tracing::info!(path = %path.display(), version = %model.version, "model loaded");
        let (version, _) = tokio::sync::watch::channel(model.version.clone());
        let handle = Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                current: ArcSwap::from_pointee(LoadedModel {
                    model,
                    loaded_at: Utc::now(),
                }),
                status: Mutex::new(Status {
                    last_error: None,
                    seen: Sha256::digest(&bytes).into(),
                }),
                metrics: ReloadMetrics::default(),
                version,
            }),
        };
        handle.set_info(None);
        Ok(handle)
    }

    /// Registers `dealmesh_scoring_model_*` metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.inner.metrics;
        registry.register(
            "dealmesh_scoring_model_reloads",
            "Model file reloads, by outcome (loaded, rejected)",
            m.reloads.clone(),
        );
        registry.register(
            "dealmesh_scoring_model_info",
            "1 for the model version in use",
            m.info.clone(),
        );
        registry.register(
            "dealmesh_scoring_model_reload_failing",
            "1 while the model file on disk is rejected and an older model is in use",
            m.failing.clone(),
        );
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The model in use. Hold the `Arc` for one scoring so a swap midway
    /// cannot mix two models.
    pub fn current(&self) -> Arc<LoadedModel> {
        self.inner.current.load_full()
    }

    /// Tells of every change of the model in use (the receiver starts with
    /// the current version marked seen).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<String> {
        self.inner.version.subscribe()
    }

    /// Why the last reload was rejected, if it was.
    pub fn last_error(&self) -> Option<String> {
        self.status().last_error.clone()
    }

    /// Re-reads the file now. On a bad file the running model stays, and
    /// the error (naming the field) is logged and kept.
    pub fn reload(&self) -> Result<Reloaded, ModelError> {
        let bytes = read(&self.inner.path).inspect_err(|e| self.rejected(e))?;
        self.status().seen = Sha256::digest(&bytes).into();
        self.apply(&bytes)
    }

    /// Reloads only if the file's content changed since last looked at.
    fn reload_if_changed(&self) {
        let bytes = match read(&self.inner.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                // A file mid-replace or gone: keep the model, say so once.
                if self.last_error().as_deref() != Some(&error.to_string()) {
                    self.rejected(&error);
                }
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        {
            let mut status = self.status();
            if status.seen == digest && status.last_error.is_none() {
                return;
            }
            if status.seen == digest {
                // Same bad content as before: already reported.
                return;
            }
            status.seen = digest;
        }
        let _ = self.apply(&bytes);
    }

    fn apply(&self, bytes: &[u8]) -> Result<Reloaded, ModelError> {
        let model = parse(bytes).inspect_err(|e| self.rejected(e))?;
        let previous = self.current();
        let changed = previous.model.version != model.version;
        let version = model.version.clone();
        if changed {
            self.inner.current.store(Arc::new(LoadedModel {
                model,
                loaded_at: Utc::now(),
            }));
            self.set_info(Some(&previous.model.version));
            self.inner.version.send_replace(version.clone());
            tracing::info!(from = %previous.model.version, to = %version, "model reloaded");
        }
        self.status().last_error = None;
        self.inner.metrics.failing.set(0);
        self.inner
            .metrics
            .reloads
            .get_or_create(&OutcomeLabel { outcome: "loaded" })
            .inc();
        Ok(Reloaded { version, changed })
    }

    fn rejected(&self, error: &ModelError) {
        let message = error.to_string();
        tracing::error!(
            path = %self.inner.path.display(),
            error = %message,
            version = %self.current().model.version,
            "model file rejected, keeping the running model"
        );
        self.status().last_error = Some(message);
        self.inner.metrics.failing.set(1);
        self.inner
            .metrics
            .reloads
            .get_or_create(&OutcomeLabel {
                outcome: "rejected",
            })
            .inc();
    }

    fn set_info(&self, previous: Option<&str>) {
        if let Some(previous) = previous {
            self.inner
                .metrics
                .info
                .get_or_create(&VersionLabel {
                    version: previous.to_owned(),
                })
                .set(0);
        }
        self.inner
            .metrics
            .info
            .get_or_create(&VersionLabel {
                version: self.current().model.version.clone(),
            })
            .set(1);
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls the file every `poll` (never if zero) and reloads on SIGHUP,
    /// until `shutdown`.
    ///
    /// The SIGHUP handler is installed by this call, not when the returned
    /// future first runs: a SIGHUP sent once the service is serving reloads
    /// it rather than ending it with the default action.
    pub fn watch(
        self,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut hangup = OsSignal::hangup();
        async move {
            let mut tick = (!poll.is_zero()).then(|| {
                let mut tick = tokio::time::interval(poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = async {
                        match &mut tick {
                            Some(tick) => { tick.tick().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => self.reload_if_changed(),
                    () = hangup.recv() => {
                        tracing::info!("sighup received, reloading the model");
                        let _ = self.reload();
                    }
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn parse(bytes: &[u8]) -> Result<Model, ModelError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ModelError::Invalid(vec![crate::model::FieldError {
            field: String::new(),
            message: format!("the file is not UTF-8: {e}"),
        }])
    })?;
    Model::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version = \"v1\"\n[weights]\nsector = 1\n";

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_bad_file_is_rejected_and_the_running_model_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thesis.toml");
        write(&path, GOOD);
        let handle = ModelHandle::load(&path).unwrap();
        let first = handle.current().model.version.clone();
        assert!(first.starts_with("v1+"));

        write(
            &path,
            "version = \"v2\"\n[weights]\nsector = 1\nstage = -1\n",
        );
        let error = handle.reload().unwrap_err();
        assert_eq!(error.field_errors()[0].field, "weights.stage");
        assert_eq!(handle.current().model.version, first);
        assert!(handle.last_error().unwrap().contains("weights.stage"));

        write(
            &path,
            "version = \"v2\"\n[weights]\nsector = 1\nstage = 1\n",
        );
        let reloaded = handle.reload().unwrap();
        assert!(reloaded.changed);
        assert!(reloaded.version.starts_with("v2+"));
        assert_eq!(handle.current().model.version, reloaded.version);
        assert_eq!(handle.last_error(), None);

        assert!(!handle.reload().unwrap().changed);
    }

    #[test]
    fn a_missing_file_keeps_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thesis.toml");
        write(&path, GOOD);
        let handle = ModelHandle::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(handle.reload(), Err(ModelError::Read { .. })));
        assert!(handle.current().model.version.starts_with("v1+"));
    }

    #[test]
    fn the_service_does_not_start_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thesis.toml");
        write(&path, "version = \"\"\n[weights]\nsector = 1\n");
        let error = ModelHandle::load(&path).err().unwrap();
        assert_eq!(error.to_string(), "version: must not be empty");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_picks_up_changes_and_skips_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thesis.toml");
        write(&path, GOOD);
        let handle = ModelHandle::load(&path).unwrap();
        let first = handle.current().model.version.clone();
        let shutdown = CancellationToken::new();
        let watcher = tokio::spawn(
            handle
                .clone()
                .watch(Duration::from_secs(5), shutdown.clone()),
        );

        write(&path, "version = \"v2\"\n[weights]\nsector = \"a lot\"\n");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(handle.current().model.version, first);
        assert!(handle.last_error().unwrap().starts_with("weights.sector: "));

        write(&path, "version = \"v3\"\n[weights]\nsector = 2\n");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(handle.current().model.version.starts_with("v3+"));
        assert_eq!(handle.last_error(), None);

        shutdown.cancel();
        watcher.await.unwrap();
    }
}
