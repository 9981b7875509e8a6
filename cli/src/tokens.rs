//! `norn tokens create|list|revoke`: named API tokens with a role. The
//! token is printed once, on stdout alone (so it can be piped into a secret
//! store); everything else goes to stderr.

use clap::Subcommand;
use norn_shared::db::tokens::{Made, Token};
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
            let made: Made = serde_json::from_value(
                api.post(
                    "/api/tokens",
                    &json!({"name": name, "role": role, "expiresIn": expires_in}),
                )
                .await?,
            )?;
            eprintln!(
                "norn: token {} ({}) made; it is shown this once:",
                made.record.name,
                made.record.role.as_str()
            );
            println!("{}", made.token);
        }
        Action::List => {
            let list: Vec<Token> = serde_json::from_value(api.get("/api/tokens").await?)?;
            for t in list {
                let state = match t.revoked_at {
                    Some(at) => format!("revoked {}", when(Some(at))),
                    None => format!("expires {}", when(t.expires_at)),
                };
                println!(
                    "{}  {}  by {}  {}  last used {}",
                    t.name,
                    t.role.as_str(),
                    t.created_by,
                    state,
                    when(t.last_used_at)
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

/// A time, or `-`.
fn when<T: std::fmt::Display>(t: Option<T>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.to_string())
}
