//! `norn changes`: Norn's change runner.
//! - `norn changes <app> [list|check|run|revert <name>|rewind <n>|dry-run]`
//!   goes through the API: a worker runs it on the app's deployed commit, as
//!   the app's own role, and this waits for the run and prints it;
//! - `norn changes --dir <folder> …` runs on a developer's machine against
//!   the database in `DATABASE_URL` (the same runner, tables and lock a
//!   deploy uses).
//!
//! Exit 1 when a change fails, drift is found or the lock is held.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use norn_api::routes::changes::ChangesOverview;
use norn_shared::changes::{self, ChangeRun, ChangeStatus, Options, Outcome, Wait};
use norn_shared::db::change_runs::{ChangeRunRecord, ChangeRunStatus};
use serde_json::json;
use sqlx::Connection;

use crate::client::{Api, wire_name};

#[derive(clap::Args)]
pub struct Args {
    /// The app (through the API). Give either an app or --dir.
    #[arg(conflicts_with = "dir", required_unless_present = "dir")]
    app: Option<String>,
    /// Local mode: the folder of changes (`migrations.dir`), run against
    /// DATABASE_URL.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Local mode: wait up to this many seconds for another runner's lock
    /// (0: fail at once). Through the API: how long to wait for the run
    /// (default 600).
    #[arg(long)]
    wait: Option<u64>,
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Subcommand)]
pub enum Action {
    /// Each change: pending, applied, reverted, failed or drifted (default).
    /// Through the API, as of the newest deploy or run; `check` reads again.
    List,
    /// Read every change's status again from the app's database (API only).
    Check,
    /// Apply every pending change, in order.
    Run {
        /// Run drifted changes again instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Run a change's revert/ files.
    Revert {
        name: String,
        /// Required through the API: a revert may drop data.
        #[arg(long)]
        yes: bool,
    },
    /// Revert the newest N applied changes.
    Rewind {
        n: usize,
        /// Required through the API: a revert may drop data.
        #[arg(long)]
        yes: bool,
    },
    /// What `run` would do, with the SQL; writes nothing.
    DryRun,
}

pub async fn run(api: &Api, args: Args) -> anyhow::Result<bool> {
    match (&args.app, &args.dir) {
        (Some(app), _) => {
            let app = app.clone();
            remote(api, &app, args).await
        }
        (None, Some(_)) => local(args).await,
        (None, None) => bail!("give an app, or --dir <folder> for local mode"),
    }
}

/// Queues the action as a run, waits for it and prints it.
async fn remote(api: &Api, app: &str, args: Args) -> anyhow::Result<bool> {
    let base = format!("/api/apps/{app}/changes");
    let path = match args.action.unwrap_or(Action::List) {
        Action::List => {
            let overview: ChangesOverview = api.get_as(&base).await?;
            match (&overview.checked_at, &overview.commit_sha) {
                (Some(at), sha) => println!(
                    "{} in {} (commit {}, read {})",
                    overview.dir,
                    overview.database,
                    sha.as_deref().map(short).unwrap_or("?"),
                    at.to_rfc3339()
                ),
                (None, _) => println!(
                    "{} in {}: not read yet (deploy the app, or run `norn changes {app} check`)",
                    overview.dir, overview.database
                ),
            }
            print_status(&overview.changes);
            return Ok(true);
        }
        Action::Check => format!("{base}/check"),
        Action::Run { force } => format!("{base}/run?force={force}"),
        Action::DryRun => format!("{base}/dry-run"),
        Action::Revert { name, yes } => {
            if !yes {
                bail!(
                    "reverting {name} runs its revert/ files, which may drop data; repeat with --yes"
                );
            }
            format!("{base}/{name}/revert?confirm=true")
        }
        Action::Rewind { n, yes } => {
            if !yes {
                bail!(
                    "rewinding {n} change(s) runs their revert/ files, which may drop data; repeat with --yes"
                );
            }
            format!("{base}/rewind?count={n}&confirm=true")
        }
    };
    let queued: ChangeRunRecord = api.post_as(&path, &json!({})).await?;
    eprintln!(
        "change run {} queued ({})",
        queued.id,
        wire_name(&queued.action)
    );
    let limit = Duration::from_secs(args.wait.unwrap_or(600));
    let run = wait_for(api, app, &queued.id, limit).await?;
    let runs = run.runs.map(|r| r.0).unwrap_or_default();
    if run.action == norn_shared::db::change_runs::ChangeAction::DryRun {
        print_dry_run(&runs);
    } else if run.action == norn_shared::db::change_runs::ChangeAction::Status {
        print_status(&run.changes.map(|c| c.0).unwrap_or_default());
    } else {
        print(&runs);
    }
    if let Some(error) = &run.error {
        eprintln!("norn: {error}");
    }
    Ok(run.status == ChangeRunStatus::Succeeded)
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// Polls the run until it ends or `limit` passes.
async fn wait_for(
    api: &Api,
    app: &str,
    id: &str,
    limit: Duration,
) -> anyhow::Result<ChangeRunRecord> {
    let started = Instant::now();
    let path = format!("/api/apps/{app}/changes/runs/{id}");
    loop {
        let run: ChangeRunRecord = api.get_as(&path).await?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        if started.elapsed() > limit {
            bail!(
                "change run {id} is still {} after {} s; see it with GET {path}",
                wire_name(&run.status),
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_status(statuses: &[ChangeStatus]) {
    for s in statuses {
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
}

fn print_dry_run(runs: &[ChangeRun]) {
    for r in runs {
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
}

async fn local(args: Args) -> anyhow::Result<bool> {
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL must name the database to change (norn changes runs locally)")?;
    let dir = args
        .dir
        .clone()
        .context("--dir names the folder of changes")?;
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
        wait: args.wait.filter(|w| *w > 0).map(|w| Wait {
            timeout: Duration::from_secs(w),
            poll: Duration::from_millis(500),
        }),
    };
    let runs = match args.action.unwrap_or(Action::List) {
        Action::List => {
            print_status(&changes::status(&mut conn, &loaded).await?);
            return Ok(true);
        }
        Action::Check => {
            bail!("check reads the status through the API; locally, list reads it live")
        }
        Action::Run { force } => changes::apply(&mut conn, &loaded, &opts, force).await?,
        Action::Revert { name, .. } => {
            vec![changes::revert(&mut conn, &loaded, &name, &opts).await?]
        }
        Action::Rewind { n, .. } => changes::rewind(&mut conn, &loaded, n, &opts).await?,
        Action::DryRun => {
            print_dry_run(&changes::dry_run(&mut conn, &loaded).await?);
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
