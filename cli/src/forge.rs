//! `norn forge <app> [--force]`, `norn teardown <app> [--drop-data --yes]`:
//! queue the operation, then follow the app's forge state until it ends,
//! printing each step. Exit 0 when it reached what was asked.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use crate::client::Api;

/// How long to follow an operation before giving up (it goes on running).
const FOLLOW: Duration = Duration::from_secs(600);

pub async fn forge(api: &Api, app: &str, force: bool) -> anyhow::Result<bool> {
    let path = format!("/api/apps/{app}/forge");
    let before = api.get(&path).await?;
    let queued = api.post(&path, &json!({"force": force})).await?;
    println!(
        "forge of {app} queued ({})",
        queued["id"].as_str().unwrap_or("")
    );
    follow(api, app, &before, "forged").await
}

pub async fn teardown(api: &Api, app: &str, drop_data: bool, yes: bool) -> anyhow::Result<bool> {
    if drop_data && !yes {
        bail!("--drop-data deletes {app}'s databases; repeat with --yes");
    }
    let before = api.get(&format!("/api/apps/{app}/forge")).await?;
    let query = if drop_data {
        "?dropData=true&confirm=true"
    } else {
        ""
    };
    let queued = api
        .post(&format!("/api/apps/{app}/teardown{query}"), &json!({}))
        .await?;
    println!(
        "teardown of {app} queued ({})",
        queued["id"].as_str().unwrap_or("")
    );
    follow(api, app, &before, "unforged").await
}

/// `norn endpoints <app>`: one line per declared hostname.
pub async fn endpoints(api: &Api, app: &str) -> anyhow::Result<()> {
    let detail = api.get(&format!("/api/apps/{app}")).await?;
    let forge = api.get(&format!("/api/apps/{app}/forge")).await?;
    let declared = detail["app"]["spec"]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if declared.is_empty() {
        println!("{app} declares no endpoints");
        return Ok(());
    }
    let tunneled = forge["resources"]["endpoints"]["hostnames"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in declared {
        let host = e["hostname"].as_str().unwrap_or("");
        let tunnel = if tunneled.iter().any(|t| t == host) {
            "tunnel rule written"
        } else {
            "no tunnel rule"
        };
        println!("{host:<40} ingress → {app}   {tunnel}");
    }
    Ok(())
}

/// `norn topics <app>`: one line per declared topic, with its name on the
/// brokers and whether the forge made it.
pub async fn topics(api: &Api, app: &str) -> anyhow::Result<()> {
    let detail = api.get(&format!("/api/apps/{app}")).await?;
    let forge = api.get(&format!("/api/apps/{app}/forge")).await?;
    let declared = detail["app"]["spec"]["services"]["events"]["topics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if declared.is_empty() {
        println!("{app} declares no topics");
        return Ok(());
    }
    let made = forge["resources"]["events"]["topics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for topic in declared {
        let name = format!("{app}.{}", topic.as_str().unwrap_or(""));
        let state = if made.iter().any(|t| *t == name.as_str()) {
            "on the brokers"
        } else {
            "not forged (see norn forge and norn health)"
        };
        println!("{name:<50} {state}");
    }
    Ok(())
}

/// Polls the forge state until an operation that started after `before`
/// has ended; prints each step once. `true` when it ended in `want`.
async fn follow(api: &Api, app: &str, before: &Value, want: &str) -> anyhow::Result<bool> {
    let path = format!("/api/apps/{app}/forge");
    let deadline = tokio::time::Instant::now() + FOLLOW;
    let mut printed = 0;
    let mut started = false;
    loop {
        let now = api.get(&path).await?;
        let status = now["status"].as_str().unwrap_or("");
        started |= now["startedAt"] != before["startedAt"];
        let steps = now["steps"].as_array().cloned().unwrap_or_default();
        if started {
            for s in steps.iter().skip(printed) {
                println!(
                    "{} {} {}: {}",
                    mark(s["status"].as_str().unwrap_or("")),
                    s["operation"].as_str().unwrap_or(""),
                    s["step"].as_str().unwrap_or("?"),
                    s["output"].as_str().unwrap_or("")
                );
            }
            printed = printed.max(steps.len());
        }
        let ended = started && !matches!(status, "forging" | "tearing_down");
        if ended && now["finishedAt"] != before["finishedAt"] {
            if status == want {
                println!("{app} is {status}");
                return Ok(true);
            }
            // A forge --force runs a teardown first: follow on to the forge.
            if !(want == "forged" && status == "unforged") {
                let error = now["error"].as_str().unwrap_or("");
                eprintln!("{app} is {status}: {error}");
                return Ok(false);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{app} is still {status} after {}s; it goes on in the background",
                FOLLOW.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn mark(status: &str) -> &'static str {
    match status {
        "complete" => "✓",
        "skipped" => "·",
        "running" => "▶",
        _ => "✗",
    }
}
