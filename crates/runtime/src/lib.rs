//! What every dealmesh service needs and none should write twice: typed
//! configuration from the environment, telemetry (logs, traces, metrics),
//! the admin HTTP server with `/healthz`, `/readyz` and `/metrics`, gRPC
//! health, reflection and error details, and graceful shutdown.

pub mod admin;
pub mod config;
pub mod database;
pub mod grpc;
pub mod launch;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

/// Exit status for a configuration error (`EX_CONFIG` from sysexits.h is 78,
/// but `EX_USAGE`, 64, is what operators expect from "you started me wrong").
pub const EXIT_CONFIG: i32 = 64;
