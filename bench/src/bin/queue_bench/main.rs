//! queue-bench: Norn's queue configuration beside apalis-postgres 1.0's
//! defaults, in one run on one Postgres. Prints a Markdown table.
//! How to run it and what each row means: bench/README.md.

mod scenarios;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "Measures Norn's queue settings against apalis-postgres defaults")]
pub struct Args {
    /// A server where this user may create databases; each scenario gets its own.
    #[arg(
        long,
        env = "NORN_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:55433/postgres"
    )]
    pub database_url: String,
    /// No-op jobs per drain run.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Finished rows left in the table for the history drain runs.
    #[arg(long, default_value_t = 100_000)]
    pub history: u64,
    /// Jobs pushed at 50/s to an idle Norn worker in the latency run.
    #[arg(long, default_value_t = 200)]
    pub latency_jobs: u64,
    /// Jobs pushed to an idle default-config worker (each waits up to 30 s).
    #[arg(long, default_value_t = 20)]
    pub default_latency_jobs: u64,
    /// Skip the slow runs (default-config latency, orphan recovery).
    #[arg(long)]
    pub quick: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    scenarios::run_all(&args).await
}
