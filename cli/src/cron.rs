//! `norn cron <app> [trigger|pause|resume|schedule <expr>]`.

use clap::Subcommand;
use norn_shared::db::cron::{CronOverview, CronTriggered, CronView};
use serde_json::json;

use crate::client::{Api, wire_name};

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
        None => show(&api.get_as(&base).await?),
        Some(Action::Trigger) => {
            let r: CronTriggered = api.post_as(&format!("{base}/trigger"), &json!({})).await?;
            println!("queued a run of {app} ({})", r.scheduled_at.to_rfc3339());
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
            let r: CronView = api
                .put_as(
                    &format!("{base}/schedule"),
                    &json!({"schedule": expression}),
                )
                .await?;
            println!("{app}: schedule is now {}", r.schedule);
        }
    }
    Ok(())
}

fn show(cron: &CronOverview) {
    println!("app       {}", cron.app);
    println!("process   {}", cron.process);
    match &cron.state {
        None => println!("state     not deployed yet"),
        Some(state) => {
            let or_dash = |t: Option<String>| t.unwrap_or_else(|| "-".into());
            println!("schedule  {}", state.schedule);
            println!("paused    {}", state.paused);
            println!(
                "next run  {}",
                or_dash(state.next_run_at.map(|t| t.to_rfc3339()))
            );
            println!("image     {}", or_dash(state.image_tag.clone()));
        }
    }
    println!();
    println!(
        "{:<28} {:<10} {:<10} {:>6} {:>9}",
        "SCHEDULED", "TRIGGER", "STATUS", "EXIT", "MS"
    );
    let text = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for e in &cron.executions {
        println!(
            "{:<28} {:<10} {:<10} {:>6} {:>9}",
            text(e.scheduled_at.map(|t| t.to_rfc3339())),
            text(e.trigger.map(|t| wire_name(&t))),
            e.status.as_str(),
            text(e.exit_code.map(|c| c.to_string())),
            text(e.duration_ms.map(|c| c.to_string())),
        );
    }
    for i in &cron.incidents {
        println!("! {} {}", i.action, i.message);
    }
}
