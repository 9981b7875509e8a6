//! One file per job type.

pub mod cron;
pub mod deploy;
pub mod health;
