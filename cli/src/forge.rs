//! `norn forge <app> [--force]`, `norn teardown <app> [--drop-data --yes]`:
//! queue the operation, then follow the app's forge state until it ends,
//! printing each step. Exit 0 when it reached what was asked.

use std::time::Duration;

use anyhow::bail;
use norn_shared::db::apps::AppDetail;
use norn_shared::db::forge::{ForgeQueued, ForgeState};
use norn_shared::domain::{ForgeStatus, StepStatus};
use serde_json::json;

use crate::client::Api;

/// How long to follow an operation before giving up (it goes on running).
const FOLLOW: Duration = Duration::from_secs(600);

pub async fn forge(api: &Api, app: &str, force: bool) -> anyhow::Result<bool> {
    let path = format!("/api/apps/{app}/forge");
    let before: ForgeState = api.get_as(&path).await?;
    let queued: ForgeQueued = api.post_as(&path, &json!({"force": force})).await?;
    println!("forge of {app} queued ({})", queued.id);
    follow(api, app, &before, ForgeStatus::Forged).await
}

pub async fn teardown(api: &Api, app: &str, drop_data: bool, yes: bool) -> anyhow::Result<bool> {
    if drop_data && !yes {
        bail!("--drop-data deletes {app}'s databases; repeat with --yes");
    }
    let before: ForgeState = api.get_as(&format!("/api/apps/{app}/forge")).await?;
    let query = if drop_data {
        "?dropData=true&confirm=true"
    } else {
        ""
    };
    let queued: ForgeQueued = api
        .post_as(&format!("/api/apps/{app}/teardown{query}"), &json!({}))
        .await?;
    println!("teardown of {app} queued ({})", queued.id);
    follow(api, app, &before, ForgeStatus::Unforged).await
}

/// `norn endpoints <app>`: one line per declared hostname.
pub async fn endpoints(api: &Api, app: &str) -> anyhow::Result<()> {
    let detail: AppDetail = api.get_as(&format!("/api/apps/{app}")).await?;
    let forge: ForgeState = api.get_as(&format!("/api/apps/{app}/forge")).await?;
    let declared = detail.app.spec.endpoints;
    if declared.is_empty() {
        println!("{app} declares no endpoints");
        return Ok(());
    }
    let tunneled = forge
        .resources
        .endpoints
        .map(|e| e.hostnames)
        .unwrap_or_default();
    for e in declared {
        let host = e.hostname;
        let tunnel = if tunneled.contains(&host) {
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
    let detail: AppDetail = api.get_as(&format!("/api/apps/{app}")).await?;
    let forge: ForgeState = api.get_as(&format!("/api/apps/{app}/forge")).await?;
    let declared = detail
        .app
        .spec
        .services
        .events
        .map(|e| e.topics)
        .unwrap_or_default();
    if declared.is_empty() {
        println!("{app} declares no topics");
        return Ok(());
    }
    let made = forge.resources.events.map(|e| e.topics).unwrap_or_default();
    for topic in declared {
        let name = format!("{app}.{topic}");
        let state = if made.contains(&name) {
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
async fn follow(
    api: &Api,
    app: &str,
    before: &ForgeState,
    want: ForgeStatus,
) -> anyhow::Result<bool> {
    let path = format!("/api/apps/{app}/forge");
    let deadline = tokio::time::Instant::now() + FOLLOW;
    let mut printed = 0;
    let mut started = false;
    loop {
        let now: ForgeState = api.get_as(&path).await?;
        let status = now.status;
        started |= now.started_at != before.started_at;
        if started {
            for s in now.steps.iter().skip(printed) {
                println!(
                    "{} {} {}: {}",
                    mark(s.status),
                    s.operation.as_str(),
                    s.step.as_str(),
                    s.output
                );
            }
            printed = printed.max(now.steps.len());
        }
        let ended = started && !status.is_busy();
        if ended && now.finished_at != before.finished_at {
            if status == want {
                println!("{app} is {status}");
                return Ok(true);
            }
            // A forge --force runs a teardown first: follow on to the forge.
            if !(want == ForgeStatus::Forged && status == ForgeStatus::Unforged) {
                let error = now.error.as_deref().unwrap_or("");
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

fn mark(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Complete => "✓",
        StepStatus::Skipped => "·",
        StepStatus::Running => "▶",
        StepStatus::Failed => "✗",
    }
}
