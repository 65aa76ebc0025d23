//! Scores enriched deals against the fund's thesis model, DealEnriched to
//! DealScored, with a what-if API.
//!
//! - [`model`]: the thesis model file, parsed and validated with errors that
//!   name the field.
//! - [`features`] and [`scoring`]: the pure scoring function.
//! - [`reload`]: the running model, swapped atomically when the file changes.
//! - [`store`], [`handler`]: the consumer's PostgreSQL state and the
//!   DealEnriched → DealScored step.
//! - [`grpc`]: `Score`, `ExplainScore` and model status over gRPC.
//! - [`app`], [`config`], [`rescore`]: wiring, configuration, the re-score
//!   command.

pub mod app;
pub mod config;
pub mod features;
pub mod grpc;
pub mod handler;
pub mod model;
pub mod reload;
pub mod rescore;
pub mod scoring;
pub mod store;
