//! `norn cron <app> [trigger|pause|resume|schedule <expr>]`.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::Api;

#[derive(Subcommand)]
pub enum Action {
    /// Run the scheduled process now (the schedule is untouched).
    Trigger,
    /// Stop firing ticks until resumed (survives restarts and redeploys).
    Pause,
    Resume,
    /// Override the infraspec's schedule; `--clear` goes back to it.
    Schedule {
        /// 5 fields, or 6 with seconds first, e.g. "*/5 * * * *".
        expression: Option<String>,
        #[arg(long, conflicts_with = "expression")]
        clear: bool,
    },
}

pub async fn run(api: &Api, app: &str, action: Option<Action>) -> anyhow::Result<()> {
    let base = format!("/api/apps/{app}/cron");
    match action {
        None => show(&api.get(&base).await?),
        Some(Action::Trigger) => {
            let r = api.post(&format!("{base}/trigger"), &json!({})).await?;
            println!(
                "queued a run of {app} ({})",
                r["scheduledAt"].as_str().unwrap_or("")
            );
        }
        Some(Action::Pause) => {
            api.post(&format!("{base}/pause"), &json!({})).await?;
            println!("{app}: paused");
        }
        Some(Action::Resume) => {
            api.post(&format!("{base}/resume"), &json!({})).await?;
            println!("{app}: resumed");
        }
        Some(Action::Schedule { expression, clear }) => {
            if expression.is_none() && !clear {
                anyhow::bail!("give a cron expression, or --clear to use the infraspec's schedule");
            }
            let r = api
                .put(
                    &format!("{base}/schedule"),
                    &json!({"schedule": expression}),
                )
                .await?;
            println!(
                "{app}: schedule is now {}",
                r["schedule"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn show(body: &Value) {
    let state = &body["state"];
    println!("app       {}", body["app"].as_str().unwrap_or(""));
    println!("process   {}", body["process"].as_str().unwrap_or(""));
    if state.is_null() {
        println!("state     not deployed yet");
    } else {
        println!("schedule  {}", state["schedule"].as_str().unwrap_or(""));
        println!("paused    {}", state["paused"].as_bool().unwrap_or(false));
        println!("next run  {}", state["nextRunAt"].as_str().unwrap_or("-"));
        println!("image     {}", state["imageTag"].as_str().unwrap_or("-"));
    }
    println!();
    println!(
        "{:<28} {:<10} {:<10} {:>6} {:>9}",
        "SCHEDULED", "TRIGGER", "STATUS", "EXIT", "MS"
    );
    for e in body["executions"].as_array().into_iter().flatten() {
        println!(
            "{:<28} {:<10} {:<10} {:>6} {:>9}",
            e["scheduledAt"].as_str().unwrap_or(""),
            e["trigger"].as_str().unwrap_or(""),
            e["status"].as_str().unwrap_or(""),
            e["exitCode"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or("-".into()),
            e["durationMs"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or("-".into()),
        );
    }
    for i in body["incidents"].as_array().into_iter().flatten() {
        println!(
            "! {} {}",
            i["action"].as_str().unwrap_or(""),
            i["message"].as_str().unwrap_or("")
        );
    }
}
