//! The sourcing pollers against local servers that speak the GitHub and
//! Crunchbase APIs (real-shaped bodies from `tests/fixtures/`, real headers
//! and status codes), publishing to the real broker through the real
//! ingestor and keeping their state in a real PostgreSQL.

#[path = "pollers/crunchbase.rs"]
mod crunchbase;
#[path = "pollers/github.rs"]
mod github;
#[path = "pollers/service.rs"]
mod service;
#[path = "pollers/support.rs"]
mod support;
