//! Norn's shared domain: everything the api, worker, scheduler and cli agree on.

pub mod bootstrap;
pub mod brokers;
pub mod changes;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod events;
pub mod gitpolicy;
pub mod health;
pub mod infraspec;
pub mod jobs;
pub mod kv;
pub mod preview;
pub mod queue;
pub mod registry;
pub mod shutdown;
pub mod snapshots;
pub mod testing;
pub mod text;
pub mod webhook;

pub use config::Config;
