//! `norn secrets <app> [list | set K=V … | unset K …]` and
//! `norn secrets rotate-key`. A value can come from stdin (`set K`, no `=`)
//! so it never sits in the shell's history or the process list.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use norn_shared::db::secrets::{Rotated, SecretName, SecretsSet};
use serde_json::json;

use crate::client::Api;

#[derive(Subcommand)]
pub enum Action {
    /// Names and update times (values are never shown).
    List,
    /// Set secrets: NAME=value, or NAME alone to read its value from stdin.
    Set {
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// Remove secrets.
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// `app` is `rotate-key` with no action: re-seal every stored value with
/// the server's current key.
pub async fn run(api: &Api, app: &str, action: Option<Action>) -> anyhow::Result<bool> {
    match action {
        None if app == "rotate-key" => {
            let done: Rotated = api.post_as("/api/secrets/rotate", &json!({})).await?;
            println!(
                "re-sealed {} value(s) with key {}",
                done.resealed, done.key_id
            );
        }
        None | Some(Action::List) => {
            let list: Vec<SecretName> = api.get_as(&format!("/api/apps/{app}/secrets")).await?;
            for s in list {
                println!(
                    "{}  (set {}, key {})",
                    s.name,
                    s.updated_at.to_rfc3339(),
                    s.key_id
                );
            }
        }
        Some(Action::Set { pairs }) => {
            let values = parse_pairs(&pairs)?;
            let done: SecretsSet = api
                .put_as(&format!("/api/apps/{app}/secrets"), &json!(values))
                .await?;
            println!(
                "set {} on {app} (takes effect at the next deploy)",
                done.set.join(", ")
            );
        }
        Some(Action::Unset { names }) => {
            for name in names {
                api.delete(&format!("/api/apps/{app}/secrets/{name}"))
                    .await?;
                println!("unset {name} on {app}");
            }
        }
    }
    Ok(true)
}

fn parse_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    let mut from_stdin = None;
    for pair in pairs {
        match pair.split_once('=') {
            Some((name, value)) => {
                values.insert(name.to_owned(), value.to_owned());
            }
            None if from_stdin.is_none() => from_stdin = Some(pair.clone()),
            None => bail!("only one NAME can take its value from stdin"),
        }
    }
    if let Some(name) = from_stdin {
        let mut value = String::new();
        std::io::stdin()
            .read_to_string(&mut value)
            .context("reading the value from stdin")?;
        values.insert(name, value.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(values)
}
