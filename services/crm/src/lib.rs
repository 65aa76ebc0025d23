//! The CRM: projects the deal log into PostgreSQL, serves queries and decides commands through the log.

pub mod app;
pub mod checkpoint;
pub mod checksum;
pub mod cli;
pub mod closer;
pub mod commands;
pub mod config;
pub mod copy;
pub mod db;
pub mod grpc;
pub mod projection;
pub mod projector;
pub mod read;
pub mod rebuild;
pub mod replay;
pub mod verify;
