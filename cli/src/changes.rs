//! `norn changes --dir <folder> [list|run|revert <name>|rewind <n>|dry-run]`:
//! Norn's change runner on a developer's machine, against the database in
//! `DATABASE_URL` (the same runner, tables and lock a deploy uses). Exit 1
//! when a change fails, drift is found or the lock is held.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use norn_shared::changes::{self, ChangeRun, Options, Outcome, Wait};
use sqlx::Connection;

use crate::client::wire_name;

#[derive(clap::Args)]
pub struct Args {
    /// The folder of changes (`migrations.dir`).
    #[arg(long)]
    dir: PathBuf,
    /// Wait up to this many seconds for another runner's lock (0: fail at once).
    #[arg(long, default_value_t = 0)]
    wait: u64,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
pub enum Action {
    /// Each change: pending, applied, reverted, failed or drifted (default).
    List,
    /// Apply every pending change, in order.
    Run {
        /// Run drifted changes again instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Run a change's revert/ files.
    Revert { name: String },
    /// Revert the newest N applied changes.
    Rewind { n: usize },
    /// What `run` would do, with the SQL; writes nothing.
    DryRun,
}

pub async fn run(args: Args) -> anyhow::Result<bool> {
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL must name the database to change (norn changes runs locally)")?;
    let dir = args.dir.clone();
    let loaded = tokio::task::spawn_blocking(move || changes::disk::load(&dir)).await??;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .context("connecting to DATABASE_URL")?;
    let database: Option<String> = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_optional(&mut conn)
        .await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let opts = Options {
        holder: format!(
            "norn changes ({user}@{} pid {})",
            host.trim(),
            std::process::id()
        ),
        app: String::new(),
        scope: database.unwrap_or_default(),
        lock_ttl: changes::LOCK_TTL,
        wait: (args.wait > 0).then(|| Wait {
            timeout: Duration::from_secs(args.wait),
            poll: Duration::from_millis(500),
        }),
    };
    let runs = match args.action.unwrap_or(Action::List) {
        Action::List => {
            for s in changes::status(&mut conn, &loaded).await? {
                let mut line = format!("{:<9} {}", wire_name(&s.state), s.name);
                if let (Some(at), Some(by)) = (s.applied_at, &s.applied_by) {
                    line.push_str(&format!("  ({} by {by})", at.to_rfc3339()));
                }
                if !s.on_disk {
                    line.push_str("  [not on disk]");
                }
                if !s.drifted_files.is_empty() {
                    line.push_str(&format!("  edited: {}", s.drifted_files.join(", ")));
                }
                println!("{line}");
            }
            return Ok(true);
        }
        Action::Run { force } => changes::apply(&mut conn, &loaded, &opts, force).await?,
        Action::Revert { name } => vec![changes::revert(&mut conn, &loaded, &name, &opts).await?],
        Action::Rewind { n } => changes::rewind(&mut conn, &loaded, n, &opts).await?,
        Action::DryRun => {
            let runs = changes::dry_run(&mut conn, &loaded).await?;
            for r in &runs {
                println!(
                    "-- {} ({})",
                    r.name,
                    if r.transactional {
                        "one transaction"
                    } else {
                        "no transaction"
                    }
                );
                for f in &r.files {
                    println!("-- {}\n{}", f.path, f.sql.as_deref().unwrap_or_default());
                }
            }
            if runs.is_empty() {
                println!("nothing to run");
            }
            return Ok(true);
        }
    };
    print(&runs);
    Ok(!runs.iter().any(|r| r.outcome == Outcome::Failed))
}

fn print(runs: &[ChangeRun]) {
    if runs.is_empty() {
        println!("nothing to do");
    }
    for line in runs.iter().flat_map(ChangeRun::lines) {
        println!("{line}");
    }
}
