//! `norn snapshots <app> [restore <ts> --yes [--pre-restore]]`.

use std::time::Duration;

use anyhow::bail;
use norn_shared::db::restores::{RestoreQueued, RestoreStatus, SnapshotList};
use serde_json::json;

use crate::client::{Api, wire_name};

pub async fn list(api: &Api, app: &str) -> anyhow::Result<()> {
    let body: SnapshotList = api.get_as(&format!("/api/apps/{app}/snapshots")).await?;
    println!(
        "database {} (keeping the newest {})",
        body.database, body.keep
    );
    for s in &body.snapshots {
        println!(
            "  {}  commit {:<12}  {:>10} bytes  {}",
            s.timestamp, s.commit, s.size_bytes, s.file
        );
    }
    for r in &body.restores {
        println!(
            "  restore {} of {}: {}{}",
            r.id,
            r.snapshot,
            wire_name(&r.status),
            r.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Queues the restore and waits for it; `true` when it completed.
pub async fn restore(
    api: &Api,
    app: &str,
    ts: &str,
    yes: bool,
    pre_restore: bool,
) -> anyhow::Result<bool> {
    if !yes {
        bail!("restoring replaces everything in {app}'s database; repeat with --yes");
    }
    let path =
        format!("/api/apps/{app}/snapshots/{ts}/restore?confirm=true&preRestore={pre_restore}");
    let queued: RestoreQueued = api.post_as(&path, &json!({})).await?;
    let id = queued.id;
    println!("restore {id} of {} queued", queued.snapshot);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let body: SnapshotList = api.get_as(&format!("/api/apps/{app}/snapshots")).await?;
        let Some(r) = body.restores.into_iter().find(|r| r.id == id) else {
            continue;
        };
        match r.status {
            RestoreStatus::Completed => {
                let output = if r.output.is_empty() {
                    "restored"
                } else {
                    &r.output
                };
                println!("{output}");
                return Ok(true);
            }
            RestoreStatus::Failed => {
                println!("failed: {}", r.error.as_deref().unwrap_or("unknown error"));
                return Ok(false);
            }
            RestoreStatus::Queued | RestoreStatus::Running => {}
        }
    }
}
