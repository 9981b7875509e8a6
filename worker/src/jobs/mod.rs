//! One file per job type.

pub mod deploy;
