//! `norn tokens create|list|revoke`: named API tokens with a role. The
//! token is printed once, on stdout alone (so it can be piped into a secret
//! store); everything else goes to stderr.

use clap::Subcommand;
use serde_json::json;

use crate::client::Api;

#[derive(Subcommand)]
pub enum Action {
    /// Make a token; it is printed once and cannot be shown again.
    Create {
        name: String,
        /// viewer (reads), deployer (also deploys, rolls back, cancels,
        /// invokes, triggers cron) or admin (everything).
        #[arg(long)]
        role: String,
        /// How long it lives: 90m, 12h, 30d (default: until revoked).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Every token: name, role, who made it, expiry, last use, revocation.
    List,
    /// Revoke a token by name (or id): refused at once from then on.
    Revoke { name: String },
}

pub async fn run(api: &Api, action: Action) -> anyhow::Result<bool> {
    match action {
        Action::Create {
            name,
            role,
            expires_in,
        } => {
            let made = api
                .post(
                    "/api/tokens",
                    &json!({"name": name, "role": role, "expiresIn": expires_in}),
                )
                .await?;
            eprintln!(
                "norn: token {} ({}) made; it is shown this once:",
                made["name"].as_str().unwrap_or(""),
                made["role"].as_str().unwrap_or("")
            );
            println!("{}", made["token"].as_str().unwrap_or(""));
        }
        Action::List => {
            let list = api.get("/api/tokens").await?;
            for t in list.as_array().into_iter().flatten() {
                let text = |f: &str| t[f].as_str().unwrap_or("-").to_owned();
                let state = if t["revokedAt"].is_string() {
                    format!("revoked {}", text("revokedAt"))
                } else {
                    format!("expires {}", text("expiresAt"))
                };
                println!(
                    "{}  {}  by {}  {}  last used {}",
                    text("name"),
                    text("role"),
                    text("createdBy"),
                    state,
                    text("lastUsedAt")
                );
            }
        }
        Action::Revoke { name } => {
            api.delete(&format!("/api/tokens/{name}")).await?;
            eprintln!("norn: token {name} revoked");
        }
    }
    Ok(true)
}
