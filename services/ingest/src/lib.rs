//! The ingest service: deals submitted over gRPC, posted as signed webhooks,
//! imported from CSV or found by the GitHub and Crunchbase pollers become
//! `DealSourced` events on the deal log, exactly once per idempotency key,
//! under a canonical company key.

pub mod app;
pub mod company;
pub mod config;
pub mod csv_import;
pub mod grpc;
pub mod http;
pub mod ingestor;
pub mod pollers;
pub mod retention;
pub mod validate;
