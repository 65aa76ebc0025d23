//! What every service binary does around its command: read the
//! configuration, install telemetry, log the effective configuration with
//! secrets redacted, run the command on a multi-threaded runtime, and turn
//! the outcome into an exit status. `serve` runs a service until SIGTERM or
//! SIGINT and then gives it the grace period to drain.

use std::fmt::Debug;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, Source};
use crate::telemetry::{self, TelemetryConfig};

/// Exit status when the process cannot set itself up (sysexits
/// `EX_SOFTWARE`): telemetry or the async runtime failed to start.
pub const EXIT_SOFTWARE: u8 = 70;

/// How long the runtime may take to stop its threads once the command is
/// done (the drain itself is bounded by the service's grace period).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// Runs `command` for `service` with the configuration `parse` reads from
/// the environment (and `DEALMESH_CONFIG_FILE`).
///
/// A configuration error exits with [`crate::EXIT_CONFIG`] and a message
/// naming the key; an error from `command` is logged and exits 1.
pub fn run<C, F, Fut>(
    service: &str,
    parse: impl FnOnce(&dyn Source) -> Result<C, ConfigError>,
    command: F,
) -> ExitCode
where
    C: Debug,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    run_reporting(service, false, parse, command)
}

/// [`run`] for a command that, when `reporting`, prints its report on
/// stdout, where the logs also go: unless `DEALMESH_LOG` or `RUST_LOG` asks
/// for more, only errors are logged then (and problems are on stderr too).
pub fn run_reporting<C, F, Fut>(
    service: &str,
    reporting: bool,
    parse: impl FnOnce(&dyn Source) -> Result<C, ConfigError>,
    command: F,
) -> ExitCode
where
    C: Debug,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<ExitCode>>,
{
    let mut source = match config::from_environment() {
        Ok(source) => source,
        Err(error) => return config_error(service, &error),
    };
    if reporting && !source.0.contains_key("DEALMESH_LOG") && !source.0.contains_key("RUST_LOG") {
        source.0.insert("DEALMESH_LOG".into(), "error".into());
    }
    let source = &source;
    let config_error = |error: ConfigError| config_error(service, &error);
    let telemetry_config = match TelemetryConfig::from_source(source, service) {
        Ok(c) => c,
        Err(error) => return config_error(error),
    };
    // Before the runtime: the OTLP exporter runs its own blocking client.
    let _telemetry = match telemetry::init(&telemetry_config) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("{service}: telemetry: {error:#}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    let config = match parse(source) {
        Ok(c) => c,
        Err(error) => return config_error(error),
    };
    tracing::info!(config = ?config, "effective configuration");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("{service}: cannot start runtime: {error}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    let outcome = runtime.block_on(command(config));
    // Dropping the runtime would wait for every worker thread, and one may
    // be stuck in a blocking client call (a Kafka commit to a broker that is
    // gone) after the grace period gave up on it: never hang on exit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match outcome {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "failed");
            eprintln!("{service}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(service: &str, error: &ConfigError) -> ExitCode {
    eprintln!("{service}: configuration: {error}");
    ExitCode::from(crate::EXIT_CONFIG as u8)
}

/// Runs a service until SIGTERM or SIGINT, then lets it drain for at most
/// `grace` before returning.
///
/// `run` gets the token that is cancelled on the signal; it must stop taking
/// work when it fires, finish what it holds, and return. The handlers are in
/// place before `run` starts, so `run` should also build the service: a
/// signal while it connects and binds then drains it too, instead of ending
/// it with the default action.
pub async fn serve<Fut>(
    grace: Duration,
    run: impl FnOnce(CancellationToken) -> Fut,
) -> anyhow::Result<ExitCode>
where
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let token = CancellationToken::new();
    crate::shutdown::cancel_on_signal(token.clone());
    let mut running = tokio::spawn(run(token.clone()));
    tokio::select! {
        // The service may also stop on its own (a fatal error).
        joined = &mut running => {
            joined??;
            return Ok(ExitCode::SUCCESS);
        }
        () = token.cancelled() => {}
    }
    match tokio::time::timeout(grace, running).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over, exiting"),
    }
    Ok(ExitCode::SUCCESS)
}
