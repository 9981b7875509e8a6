//! Preview environments driven by pull request webhooks, against the real
//! API, worker and scheduler, a real git repository, Docker and Postgres:
//! open → deployed and routed with its own database and only the secrets
//! `previews.secrets` names; synchronize → redeployed; `max` → the oldest
//! goes; close → containers, route, database and app gone; idle past `ttl`
//! → torn down by the scheduler.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, all_containers, eventually, exec_in, running_instance, unique_app};
use norn_shared::config::Secret;
use norn_shared::webhook::sign_github;
use serde_json::{Value, json};

const SECRET: &str = "preview-webhook-secret-for-tests";

/// A GitHub `pull_request` delivery for pull request `number`.
async fn pull_request(
    h: &Harness,
    repo: &AppRepo,
    delivery: &str,
    action: &str,
    number: u64,
    head: &str,
) -> (u16, Value) {
    let path = format!(
        "{}/../shared/fixtures/webhooks/github-pull-request-opened.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let body = std::fs::read_to_string(path)
        .unwrap()
        .replace(
            "\"action\": \"opened\"",
            &format!("\"action\": \"{action}\""),
        )
        .replace("\"number\": 42", &format!("\"number\": {number}"))
        .replace("{{AFTER}}", head)
        .replace("{{BEFORE}}", &"1".repeat(40))
        .replace("\"ref\": \"round-totals\"", "\"ref\": \"feature\"")
        .replace("{{CLONE_URL}}", &repo.url())
        .replace("{{SSH_URL}}", "git@github.com:acme/elsewhere.git")
        .replace("{{HTML_URL}}", "https://github.com/acme/elsewhere");
    let resp = h
        .http
        .post(format!("{}/api/webhooks/github", h.api))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign_github(SECRET, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// The deployment a delivery queued; waits for it to end `deployed`.
async fn deployed(h: &Harness, answer: &Value) {
    let id = answer["deliveries"][0]["deploymentId"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployment: {answer}"));
    let done = h.wait_terminal(id).await;
    assert_eq!(done["status"], "deployed", "{done}");
}

async fn database_exists(name: &str) -> bool {
    let pool = norn_shared::db::connect(&norn_shared::testing::provisioner_url(), 1)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap()
}

async fn containers_of(app: &str) -> usize {
    all_containers()
        .await
        .iter()
        .filter(|c| c.labels.as_ref().and_then(|l| l.get("norn.app")) == Some(&app.to_owned()))
        .count()
}

/// Waits until `preview` is gone: no containers, no route, no app, no
/// database; its teardown recorded.
async fn gone(h: &Harness, preview: &str, database: &str) {
    eventually(
        Duration::from_secs(120),
        &format!("{preview} removed"),
        || async {
            let (code, _) = h.get(&format!("/api/apps/{preview}")).await;
            (code == 404).then_some(())
        },
    )
    .await;
    assert_eq!(
        containers_of(preview).await,
        0,
        "{preview}: containers left"
    );
    assert!(h.fetch(preview).await.is_err(), "{preview} still routed");
    assert!(!database_exists(database).await, "{database} left behind");
    let (saga,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM saga_events WHERE saga_id = $1 AND action = 'preview.removed'",
    )
    .bind(format!("preview:{preview}"))
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(saga, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_request_gets_a_preview_of_its_own_until_it_closes_is_displaced_or_goes_idle() {
    let h = Harness::start_with(|c| c.webhook_secret = Some(Secret::new(SECRET))).await;
    h.spawn_scheduler();
    let app = unique_app("pv");
    // Whatever a failing run leaves of the previews goes with the test binary.
    for n in [42, 43, 44] {
        norn_shared::testing::track(norn_shared::testing::Leftover::App(format!("{app}-pr-{n}")));
    }
    let db = app.replace('-', "_");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let git = git2::Repository::open(&repo.dir).unwrap();
    let main = git.head().unwrap().shorthand().unwrap().to_owned();
    // The pull request's branch: two commits on top of the app's.
    let base = git.head().unwrap().peel_to_commit().unwrap();
    git.branch("feature", &base, false).unwrap();
    git.set_head("refs/heads/feature").unwrap();
    let first = repo.commit("pr-v1");
    let second = repo.commit("pr-v2");
    git.set_head(&format!("refs/heads/{main}")).unwrap();
    git.checkout_head(Some(git2::build::CheckoutBuilder::new().force()))
        .unwrap();

    let mut spec = common::spec(&app, &repo, None);
    spec["repo"] = json!({"url": repo.url(), "branch": main, "autoDeploy": true});
    spec["services"] = json!({"postgres": {"database": db}});
    spec["secrets"] = json!(["GREETING", "PROD_ONLY"]);
    spec["previews"] = json!({"enabled": true, "ttl": "1h", "max": 1, "secrets": ["GREETING"]});
    assert_eq!(h.post("/api/apps", spec).await.0, 201);
    let (code, body) = h
        .put(
            &format!("/api/apps/{app}/secrets"),
            json!({"GREETING": "hello-preview", "PROD_ONLY": "live-key"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");

    // Opened: deployed as <app>-pr-42, routed, with a database of its own
    // and the app's secrets; the app itself is not deployed.
    let pr42 = format!("{app}-pr-42");
    let (code, answer) = pull_request(&h, &repo, "p-1", "opened", 42, &first).await;
    assert_eq!(code, 202, "{answer}");
    deployed(&h, &answer).await;
    assert_eq!(h.fetch(&pr42).await.unwrap(), "pr-v1");
    let instance = running_instance(&pr42).await;
    let (_, env) = exec_in(&instance, "echo \"$GREETING|$PROD_ONLY|$DATABASE_URL\"").await;
    assert!(
        env.starts_with("hello-preview||"),
        "only previews.secrets: {env}"
    );
    assert!(env.contains(&format!("/{db}_pr_42")), "{env}");
    assert!(database_exists(&format!("{db}_pr_42")).await);
    assert!(
        !database_exists(&db).await,
        "the production database was made"
    );
    let (_, list) = h.get(&format!("/api/apps/{app}/previews")).await;
    assert_eq!(list[0]["app"], pr42.as_str(), "{list}");
    assert_eq!(list[0]["headSha"], first.as_str());
    assert_eq!(list[0]["status"], "active");
    let run = common::norn(&h.api, &["previews", &app]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains(&format!("{pr42}  #42  feature @ {}", &first[..12])),
        "{run}"
    );
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM deployments WHERE app = $1")
        .bind(&app)
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "the app itself was deployed");

    // Synchronize: redeployed at the new head.
    let (code, answer) = pull_request(&h, &repo, "p-2", "synchronize", 42, &second).await;
    assert_eq!(code, 202, "{answer}");
    deployed(&h, &answer).await;
    assert_eq!(h.fetch(&pr42).await.unwrap(), "pr-v2");

    // A second pull request with max 1: the first preview goes.
    let pr43 = format!("{app}-pr-43");
    let (code, answer) = pull_request(&h, &repo, "p-3", "opened", 43, &first).await;
    assert_eq!(code, 202, "{answer}");
    deployed(&h, &answer).await;
    gone(&h, &pr42, &format!("{db}_pr_42")).await;
    assert_eq!(h.fetch(&pr43).await.unwrap(), "pr-v1");

    // Closed: torn down.
    let (code, answer) = pull_request(&h, &repo, "p-4", "closed", 43, &second).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer["deliveries"][0]["status"], "tearing_down",
        "{answer}"
    );
    gone(&h, &pr43, &format!("{db}_pr_43")).await;

    // Idle past its ttl: the scheduler tears it down.
    let pr44 = format!("{app}-pr-44");
    let (code, answer) = pull_request(&h, &repo, "p-5", "reopened", 44, &second).await;
    assert_eq!(code, 202, "{answer}");
    deployed(&h, &answer).await;
    sqlx::query("UPDATE previews SET updated_at = now() - interval '2 hours' WHERE app = $1")
        .bind(&pr44)
        .execute(&h.pool)
        .await
        .unwrap();
    gone(&h, &pr44, &format!("{db}_pr_44")).await;
    let (_, list) = h.get(&format!("/api/apps/{app}/previews")).await;
    assert_eq!(list, json!([]));
}
