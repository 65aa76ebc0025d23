//! The enrich service: consumes `DealSourced` from the deal log, gathers
//! GitHub and Crunchbase signals with their provenance, has the deal
//! analysed (by an LLM behind any OpenAI-compatible endpoint, or by the
//! built-in deterministic analyzer), and appends `DealEnriched` or
//! `EnrichmentFailed` with an id derived from the input, so reprocessing
//! never doubles an enrichment.

pub mod analysis;
pub mod app;
pub mod config;
pub mod enricher;
pub mod handler;
pub mod provider;
pub mod redrive;
pub mod signals;
