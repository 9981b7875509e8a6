//! One file per pipeline step. Each is written to be safe to re-run: names are
//! keyed by deployment id, image tags by commit.

pub mod build;
pub mod cleanup;
pub mod clone;
pub mod deploy;
pub mod forge;
pub mod healthy;
pub mod migrate;
pub mod probe;
pub mod snapshot;
pub mod test;
