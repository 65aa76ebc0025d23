//! The pollers' Prometheus metrics, served by the admin server's `/metrics`.

use dealmesh_runtime::metrics::prometheus_client::metrics::counter::Counter;
use dealmesh_runtime::metrics::prometheus_client::metrics::family::Family;
use dealmesh_runtime::metrics::prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Counters by provider. Unregistered (the default) they count for no one,
/// which is what the `poll` command and tests need.
#[derive(Clone, Default)]
pub struct PollerMetrics {
    requests: Family<Labels, Counter>,
    deals: Family<Labels, Counter>,
    runs: Family<Labels, Counter>,
}

impl PollerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "ingest_poller_requests",
            "Provider requests by provider and HTTP status (or timeout, error)",
            metrics.requests.clone(),
        );
        registry.register(
            "ingest_poller_deals",
            "Search results by provider and outcome (emitted, duplicate, skipped)",
            metrics.deals.clone(),
        );
        registry.register(
            "ingest_poller_runs",
            "Search runs by provider and result (ok, not_modified, failed, disabled, busy)",
            metrics.runs.clone(),
        );
        metrics
    }

    pub(crate) fn request(&self, provider: &'static str, status: &str) {
        self.requests
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("status", status.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn deals(&self, provider: &'static str, outcome: &'static str, count: usize) {
        if count > 0 {
            self.deals
                .get_or_create(&vec![
                    ("provider", provider.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .inc_by(count as u64);
        }
    }

    pub(crate) fn run(&self, provider: &'static str, report: &super::SearchReport) {
        let result = match (&report.outcome, &report.disabled) {
            _ if report.busy => "busy",
            (_, Some(_)) => "disabled",
            (Ok(run), None) if run.not_modified => "not_modified",
            (Ok(_), None) => "ok",
            (Err(super::Error::Cancelled), None) => return,
            (Err(_), None) => "failed",
        };
        self.runs
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
    }
}
