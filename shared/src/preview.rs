//! A preview environment is an app of its own, `<app>-pr-<n>`, registered
//! from its parent's spec document with what must not be shared taken out:
//! its own database and key-value namespace (never production's), no public
//! hostnames (it is routed as `<app>-pr-<n>` under the ingress), no
//! scheduled processes, no previews of its own, and the pull request's
//! branch instead of the parent's. Secrets are the parent's (the worker
//! reads them from the parent, [`secrets_app`]), only those named in
//! `previews.secrets` when that is set.

use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::db::saga::{self, NewSagaEvent};
use crate::db::{DbError, deployments, previews};
use crate::domain::AppName;
use crate::jobs::{ForgeAction, ForgeJob};
use crate::queue::{self, Queue, QueueError};

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Starts tearing down the preview `app`, in the caller's transaction:
/// ends its waiting deploys, asks a running one to stop, and queues its
/// removal (a forge job under its app lease). `false` when it is not an
/// active preview.
pub async fn begin_teardown(
    tx: &mut PgConnection,
    app: &str,
    reason: &str,
    actor: &str,
) -> Result<bool, PreviewError> {
    if !previews::start_teardown(tx, app, reason).await? {
        return Ok(false);
    }
    let why = format!("preview torn down: {reason}");
    for id in deployments::waiting(tx, app).await? {
        deployments::fail_with_trail(tx, &id, app, &why, "deploy.canceled", actor).await?;
    }
    for id in deployments::in_flight(tx, app).await? {
        deployments::request_cancel(tx, &id, actor).await?;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let job = ForgeJob {
        id: id.clone(),
        app: app.to_owned(),
        action: ForgeAction::RemovePreview,
    };
    queue::enqueue(tx, Queue::Forge, &job, Some(&id)).await?;
    saga::append(
        tx,
        NewSagaEvent {
            saga_id: &format!("preview:{app}"),
            app,
            category: "preview",
            action: "preview.teardown_queued",
            step: None,
            message: reason,
            actor,
            metadata: json!({"job": id}),
        },
    )
    .await?;
    tracing::info!(app = %app, job.id = %id, reason, "preview teardown queued");
    Ok(true)
}

/// The preview app of pull request `number` of `parent`.
pub fn app_name(parent: &str, number: u64) -> Result<AppName, String> {
    AppName::parse(&format!("{parent}-pr-{number}")).map_err(|e| {
        format!("the preview of pull request #{number} of {parent} has no valid name: {e}")
    })
}

/// Whose secrets an app's containers get: a preview's are its parent's.
pub fn secrets_app<'a>(app: &'a str, parent: Option<&'a str>) -> &'a str {
    parent.unwrap_or(app)
}

/// The spec document of the preview of pull request `number`, made from
/// the parent's document. Validated by the caller like any spec.
pub fn document(parent_doc: &Value, name: &AppName, number: u64, branch: &str) -> Value {
    let mut doc = parent_doc.clone();
    let Some(obj) = doc.as_object_mut() else {
        return doc;
    };
    obj.insert("name".into(), Value::String(name.as_str().to_owned()));
    // `previews.secrets`: the only secrets a preview declares (and gets).
    if let Some(only) = obj.get("previews").and_then(|p| p.get("secrets")).cloned() {
        obj.insert("secrets".into(), only);
    }
    obj.remove("previews");
    obj.remove("endpoints");
    if let Some(repo) = obj.get_mut("repo").and_then(Value::as_object_mut) {
        repo.insert("branch".into(), Value::String(branch.to_owned()));
        repo.insert("autoDeploy".into(), Value::Bool(false));
    }
    let suffix_db = format!("_pr_{number}");
    let suffix_ns = format!("-pr-{number}");
    for key in ["services", "infrastructure"] {
        let Some(services) = obj.get_mut(key).and_then(Value::as_object_mut) else {
            continue;
        };
        append(services.get_mut("postgres"), "database", &suffix_db);
        append(services.get_mut("kv"), "namespace", &suffix_ns);
    }
    append(obj.get_mut("migrations"), "database", &suffix_db);
    if let Some(processes) = obj.get_mut("processes").and_then(Value::as_object_mut) {
        processes.retain(|_, p| p.get("schedule").is_none_or(Value::is_null));
    }
    doc
}

/// `section.field += suffix` when both are there and it is a string.
fn append(section: Option<&mut Value>, field: &str, suffix: &str) {
    if let Some(Value::String(s)) = section.and_then(|s| s.get_mut(field)) {
        s.push_str(suffix);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::infraspec::InfraSpec;

    /// An app with everything a preview must not share.
    fn shop() -> serde_json::Value {
        json!({
            "name": "shop",
            "repo": {"url": "https://github.com/acme/shop", "branch": "main", "autoDeploy": true},
            "processes": {
                "web": {"port": 8080},
                "nightly": {"schedule": "0 3 * * *", "command": "true"},
            },
            "services": {"postgres": {"database": "shop"}, "kv": {"namespace": "shop"}},
            "migrations": {"command": "./migrate", "database": "shop"},
            "secrets": ["STRIPE_KEY"],
            "endpoints": [{"url": "https://shop.example.com"}],
            "previews": {"enabled": true, "ttl": "48h", "max": 3},
        })
    }

    #[test]
    fn a_preview_gets_the_apps_secrets_or_only_those_previews_secrets_lists() {
        let parent = shop();
        let parent_spec = InfraSpec::from_json(parent.clone()).unwrap();
        let name = app_name("shop", 42).unwrap();
        let spec = InfraSpec::from_json(document(&parent, &name, 42, "f")).unwrap();
        assert_eq!(
            spec.secrets,
            ["STRIPE_KEY"],
            "all of the app's secrets by default"
        );
        let mut parent = parent;
        parent["secrets"] = json!(["STRIPE_KEY", "STRIPE_TEST_KEY"]);
        parent["previews"]["secrets"] = json!(["STRIPE_TEST_KEY"]);
        assert!(parent_spec.previews.is_some());
        let spec = InfraSpec::from_json(document(&parent, &name, 42, "f")).unwrap();
        assert_eq!(spec.secrets, ["STRIPE_TEST_KEY"], "only the listed ones");
        // A listed secret the app does not have is an error.
        parent["previews"]["secrets"] = json!(["NOPE"]);
        let err = InfraSpec::from_json(parent).unwrap_err();
        assert_eq!(err.first().field, "previews.secrets[0]");
    }

    #[test]
    fn a_preview_shares_nothing_stateful_or_public_with_its_app() {
        let parent = shop();
        let parent_spec = InfraSpec::from_json(parent.clone()).unwrap();
        assert_eq!(parent_spec.previews.as_ref().unwrap().max, 3);
        let name = app_name("shop", 42).unwrap();
        let doc = document(&parent, &name, 42, "round-totals");
        let spec = InfraSpec::from_json(doc).unwrap();
        assert_eq!(spec.name.as_str(), "shop-pr-42");
        assert_eq!(spec.services.postgres.unwrap().database, "shop_pr_42");
        assert_eq!(spec.services.kv.unwrap().namespace, "shop-pr-42");
        assert!(spec.endpoints.is_empty());
        assert!(spec.previews.is_none());
        let repo = spec.repo.unwrap();
        assert_eq!(
            (repo.branch.as_str(), repo.auto_deploy),
            ("round-totals", false)
        );
        assert_eq!(spec.processes.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(spec.secrets, ["STRIPE_KEY"]);
    }

    #[test]
    fn a_name_too_long_for_an_app_is_an_error() {
        assert!(app_name(&"a".repeat(60), 7).is_err());
        assert_eq!(app_name("shop", 7).unwrap().as_str(), "shop-pr-7");
    }
}
