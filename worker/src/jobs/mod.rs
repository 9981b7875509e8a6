//! One file per job type (and the lease wait they share).

pub mod changes;
pub mod cron;
pub mod deploy;
pub mod forge;
pub mod function;
pub mod health;
pub mod lease_wait;
pub mod restore;
