//! Tells people what happened: a live gRPC feed, signed webhooks and email,
//! each delivered once.
//!
//! The deal log is consumed into notify's own PostgreSQL tables (what it
//! needs to decide audiences, the feed, and a delivery log that is also the
//! outbox); a dispatcher sends what the log says is pending.

pub mod app;
pub mod config;
pub mod digest;
pub mod dispatch;
pub mod event;
pub mod feed;
pub mod grpc;
pub mod projector;
pub mod signature;
pub mod subscription;
