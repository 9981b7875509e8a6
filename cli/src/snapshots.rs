//! `norn snapshots <app> [restore <ts> --yes [--pre-restore]]`.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::client::Api;

pub async fn list(api: &Api, app: &str) -> anyhow::Result<()> {
    let body = api.get(&format!("/api/apps/{app}/snapshots")).await?;
    println!(
        "database {} (keeping the newest {})",
        body["database"].as_str().unwrap_or(""),
        body["keep"]
    );
    for s in body["snapshots"].as_array().into_iter().flatten() {
        println!(
            "  {}  commit {:<12}  {:>10} bytes  {}",
            s["timestamp"].as_str().unwrap_or(""),
            s["commit"].as_str().unwrap_or(""),
            s["sizeBytes"],
            s["file"].as_str().unwrap_or("")
        );
    }
    for r in body["restores"].as_array().into_iter().flatten() {
        println!(
            "  restore {} of {}: {}{}",
            r["id"].as_str().unwrap_or(""),
            r["snapshot"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["error"]
                .as_str()
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
    let queued = api.post(&path, &json!({})).await?;
    let id = queued["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "restore {id} of {} queued",
        queued["snapshot"].as_str().unwrap_or(ts)
    );
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let body = api.get(&format!("/api/apps/{app}/snapshots")).await?;
        let found: Option<Value> = body["restores"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["id"] == id.as_str()).cloned());
        match found.as_ref().and_then(|r| r["status"].as_str()) {
            Some("completed") => {
                let r = found.unwrap_or_default();
                println!("{}", r["output"].as_str().unwrap_or("restored"));
                return Ok(true);
            }
            Some("failed") => {
                let r = found.unwrap_or_default();
                println!("failed: {}", r["error"].as_str().unwrap_or("unknown error"));
                return Ok(false);
            }
            _ => {}
        }
    }
}
