//! `norn webhooks secret|deliveries|replay`: git forge webhooks (admin);
//! `norn previews <app>`: the preview environments they made.
//! A secret Norn makes is printed once, on stdout alone; everything else
//! goes to stderr.

use std::io::Read;

use clap::Subcommand;
use norn_api::routes::webhook_deliveries::{Replayed, SecretSet};
use norn_shared::db::previews::Preview;
use norn_shared::db::webhooks::DeliveryRow;
use serde_json::json;

use crate::client::{Api, wire_name};

#[derive(Subcommand)]
pub enum Action {
    /// Give an app a webhook secret of its own (instead of
    /// NORN_WEBHOOK_SECRET): Norn makes one and prints it once, or takes
    /// yours on stdin with --stdin.
    Secret {
        app: String,
        /// Read the secret from stdin (16..256 printable characters).
        #[arg(long, conflicts_with = "remove")]
        stdin: bool,
        /// Remove the app's own secret (it falls back to NORN_WEBHOOK_SECRET).
        #[arg(long)]
        remove: bool,
    },
    /// Recent deliveries, newest first: status, app, event, reason.
    Deliveries {
        #[arg(long)]
        app: Option<String>,
        /// received, ignored, rejected, deploying or replayed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Act on a verified delivery again, as the app's spec says now.
    Replay { id: String },
}

pub async fn run(api: &Api, action: Action) -> anyhow::Result<bool> {
    match action {
        Action::Secret {
            app, remove: true, ..
        } => {
            api.delete(&format!("/api/apps/{app}/webhook-secret"))
                .await?;
            eprintln!("norn: app {app} now uses NORN_WEBHOOK_SECRET");
        }
        Action::Secret { app, stdin, .. } => {
            let body = if stdin {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                json!({"secret": text.trim_end_matches(['\r', '\n'])})
            } else {
                json!({})
            };
            let set: SecretSet = api
                .put_as(&format!("/api/apps/{app}/webhook-secret"), &body)
                .await?;
            match set.secret {
                Some(made) => {
                    eprintln!(
                        "norn: webhook secret of {app} made; it is shown this once (paste it into the forge's webhook form):"
                    );
                    println!("{made}");
                }
                None => eprintln!("norn: webhook secret of {app} set"),
            }
        }
        Action::Deliveries { app, status, limit } => {
            let mut query = vec![format!("limit={limit}")];
            query.extend(app.map(|a| format!("app={a}")));
            query.extend(status.map(|s| format!("status={s}")));
            let list: Vec<DeliveryRow> = api
                .get_as(&format!("/api/webhooks/deliveries?{}", query.join("&")))
                .await?;
            for d in list {
                println!(
                    "{}  {}  {:<9}  {}  {} {}  {}{}",
                    d.id,
                    d.received_at.to_rfc3339(),
                    wire_name(&d.status),
                    d.app.as_deref().unwrap_or("-"),
                    d.provider.as_str(),
                    d.event,
                    d.reason.as_deref().unwrap_or("-"),
                    d.deployment_id
                        .map(|id| format!("  deployment {id}"))
                        .unwrap_or_default()
                );
            }
        }
        Action::Replay { id } => {
            let done: Replayed = api
                .post_as(&format!("/api/webhooks/deliveries/{id}/replay"), &json!({}))
                .await?;
            eprintln!(
                "norn: delivery {id} replayed: deployment {} of {} queued",
                done.deployment_id, done.app
            );
            println!("{}", done.deployment_id);
        }
    }
    Ok(true)
}

/// `norn previews <app>`: each preview, its pull request, head and state.
pub async fn previews(api: &Api, app: &str) -> anyhow::Result<bool> {
    let list: Vec<Preview> = api.get_as(&format!("/api/apps/{app}/previews")).await?;
    if list.is_empty() {
        eprintln!("norn: app {app} has no previews");
    }
    for p in list {
        let head = &p.head_sha;
        println!(
            "{}  #{}  {} @ {}  {}  last push {}{}",
            p.app,
            p.number,
            p.head_branch,
            head.get(..12).unwrap_or(head),
            wire_name(&p.status),
            p.updated_at.to_rfc3339(),
            p.reason
                .as_deref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        );
    }
    Ok(true)
}
