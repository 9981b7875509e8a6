//! What Norn's benchmarks share: fresh databases, the no-op queue job and
//! percentile summaries. The binaries under `src/bin` are the benchmarks.

pub mod harness;
pub mod stats;
