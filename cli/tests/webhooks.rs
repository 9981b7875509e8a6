//! Git forge webhooks against the real API and worker: payloads in the
//! shapes GitHub, Gitea and GitLab send (fixtures in
//! `shared/fixtures/webhooks/`), signed, mis-signed and unsigned; a real git
//! repository and Docker for the deploys they cause.

mod common;

use common::{AppRepo, Harness, norn, unique_app};
use norn_shared::config::Secret;
use norn_shared::webhook::sign_github;
use serde_json::{Value, json};

const GLOBAL: &str = "global-webhook-secret-for-tests";

struct Urls<'a> {
    clone: &'a str,
    ssh: &'a str,
    html: &'a str,
}

fn fixture(name: &str, branch: &str, before: &str, after: &str, urls: &Urls<'_>) -> Vec<u8> {
    let path = format!(
        "{}/../shared/fixtures/webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .replace("{{BRANCH}}", branch)
        .replace("{{BEFORE}}", before)
        .replace("{{AFTER}}", after)
        .replace("{{CLONE_URL}}", urls.clone)
        .replace("{{SSH_URL}}", urls.ssh)
        .replace("{{HTML_URL}}", urls.html)
        .into_bytes()
}

/// How a delivery is signed.
enum Sig<'a> {
    None,
    With(&'a str),
    /// The header as given (a mangled signature).
    Raw(&'a str),
}

async fn deliver(
    h: &Harness,
    forge: &str,
    event: &str,
    delivery: &str,
    sig: Sig<'_>,
    body: &[u8],
) -> (u16, Value) {
    let mut req = h
        .http
        .post(format!("{}/api/webhooks/{forge}", h.api))
        .header("content-type", "application/json")
        .body(body.to_vec());
    let (event_h, delivery_h, sig_h) = match forge {
        "github" => ("x-github-event", "x-github-delivery", "x-hub-signature-256"),
        "gitea" => ("x-gitea-event", "x-gitea-delivery", "x-gitea-signature"),
        _ => ("x-gitlab-event", "x-gitlab-event-uuid", "x-gitlab-token"),
    };
    req = req.header(event_h, event).header(delivery_h, delivery);
    let header = match sig {
        Sig::None => None,
        Sig::Raw(raw) => Some(raw.to_owned()),
        Sig::With(secret) => Some(match forge {
            "github" => sign_github(secret, body),
            "gitea" => sign_github(secret, body)
                .trim_start_matches("sha256=")
                .to_owned(),
            _ => secret.to_owned(),
        }),
    };
    if let Some(v) = header {
        req = req.header(sig_h, v);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

async fn deliveries(h: &Harness, app: &str) -> Vec<Value> {
    let (code, list) = h
        .get(&format!("/api/webhooks/deliveries?app={app}&limit=500"))
        .await;
    assert_eq!(code, 200, "{list}");
    list.as_array().unwrap().clone()
}

async fn deployments_of(h: &Harness, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deployments WHERE app = $1")
        .bind(app)
        .fetch_one(&h.pool)
        .await
        .unwrap()
}

fn branch_of(repo: &AppRepo) -> String {
    let git = git2::Repository::open(&repo.dir).unwrap();
    let head = git.head().unwrap();
    head.shorthand().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_deploys_exactly_the_pushed_commit_once_and_a_replay_deploys_it_again() {
    let h = Harness::start_with(|c| c.webhook_secret = Some(Secret::new(GLOBAL))).await;
    let app = unique_app("hook");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let git = git2::Repository::open(&repo.dir).unwrap();
    let v1 = git
        .head()
        .unwrap()
        .peel_to_commit()
        .unwrap()
        .id()
        .to_string();
    let v2 = repo.commit("v2");
    let branch = branch_of(&repo);
    let mut spec = common::spec(&app, &repo, None);
    spec["repo"] = json!({"url": repo.url(), "branch": branch, "autoDeploy": true});
    assert_eq!(h.post("/api/apps", spec).await.0, 201);
    // The payload names the repository by other URLs too, as forges do.
    let clone = repo.url();
    let urls = Urls {
        clone: &clone,
        ssh: "git@github.com:acme/elsewhere.git",
        html: "https://github.com/acme/elsewhere",
    };

    // A push whose head is v1, though the branch has moved on to v2: v1
    // is what gets deployed.
    let push = fixture("github-push", &branch, &"0".repeat(40), &v1, &urls);
    let (code, body) = deliver(&h, "github", "push", "d-1", Sig::With(GLOBAL), &push).await;
    assert_eq!(code, 202, "{body}");
    let handled = &body["deliveries"][0];
    assert_eq!(handled["status"], "deploying", "{body}");
    assert_eq!(handled["app"], app.as_str());
    let first = handled["deploymentId"].as_str().unwrap().to_owned();
    let done = h.wait_terminal(&first).await;
    assert_eq!(done["status"], "deployed", "{done}");
    assert_eq!(done["commitSha"], v1.as_str(), "{done}");
    assert_eq!(done["triggeredBy"], "webhook:github");
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");

    // The forge redelivers it: recorded, nothing deployed.
    let (code, body) = deliver(&h, "github", "push", "d-1", Sig::With(GLOBAL), &push).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["deliveries"][0]["status"], "ignored", "{body}");
    assert_eq!(body["deliveries"][0]["deploymentId"], first.as_str());
    assert!(
        body["deliveries"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("redelivery"),
        "{body}"
    );
    assert_eq!(deployments_of(&h, &app).await, 1);

    // A force push moving the branch to v2 deploys v2.
    let forced = fixture("github-push-forced", &branch, &v1, &v2, &urls);
    let (code, body) = deliver(&h, "github", "push", "d-2", Sig::With(GLOBAL), &forced).await;
    assert_eq!(code, 202, "{body}");
    let second = body["deliveries"][0]["deploymentId"].as_str().unwrap();
    let done = h.wait_terminal(second).await;
    assert_eq!(done["commitSha"], v2.as_str(), "{done}");
    assert_eq!(h.fetch(&app).await.unwrap(), "v2");

    // An admin replays the first delivery: v1 again, recorded as a replay.
    let rows = deliveries(&h, &app).await;
    let original = rows
        .iter()
        .find(|d| d["deliveryId"] == "d-1" && d["status"] == "deploying")
        .unwrap_or_else(|| panic!("{rows:?}"));
    let run = norn(
        &h.api,
        &["webhooks", "replay", original["id"].as_str().unwrap()],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    let third = run.stdout.trim().to_owned();
    let done = h.wait_terminal(&third).await;
    assert_eq!(done["commitSha"], v1.as_str(), "{done}");
    assert_eq!(h.fetch(&app).await.unwrap(), "v1");
    assert_eq!(deployments_of(&h, &app).await, 3);
    let rows = deliveries(&h, &app).await;
    let statuses: Vec<&str> = rows.iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["replayed", "deploying", "ignored", "deploying"],
        "{rows:?}"
    );
    assert_eq!(rows[0]["replayOf"], original["id"]);
    assert_eq!(rows[0]["deploymentId"], third.as_str());

    // The CLI lists them.
    let run = norn(&h.api, &["webhooks", "deliveries", "--app", &app]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);
    assert!(run.stdout.contains("redelivery"), "{}", run.stdout);
}

/// A delivery to send: forge, event, delivery id, signature, body, and the
/// answer's status code.
type Case<'a> = (&'a str, &'a str, &'a str, Sig<'a>, Vec<u8>, u16);

/// Rows of `app` by status, oldest first.
async fn statuses(h: &Harness, app: &str) -> Vec<(String, String)> {
    let mut rows = deliveries(h, app).await;
    rows.reverse();
    rows.iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_mis_signed_and_non_deploying_deliveries_are_recorded_and_deploy_nothing() {
    let h = Harness::start_with(|c| c.webhook_secret = Some(Secret::new(GLOBAL))).await;
    let app = unique_app("hooks");
    // The spec says https; the payloads also give ssh and web addresses,
    // in another case.
    let spec = json!({
        "name": app,
        "repo": {"url": format!("https://github.com/acme/{app}"), "branch": "main", "autoDeploy": true},
        "processes": {"web": {"port": 8080}},
    });
    assert_eq!(h.post("/api/apps", spec).await.0, 201);
    let clone = format!("https://github.com/ACME/{app}.git");
    let ssh = format!("git@github.com:acme/{app}.git");
    let html = format!("https://github.com/Acme/{app}");
    let urls = Urls {
        clone: &clone,
        ssh: &ssh,
        html: &html,
    };
    let sha = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    let before = "9049f1265b7d61be4a8904a9a27120d2064dab3b";

    // The app gets a secret of its own, made by Norn and shown once: from
    // then on the global one no longer signs for it.
    let run = norn(&h.api, &["webhooks", "secret", &app]).await;
    assert_eq!(run.code, 0, "{run}");
    let own = run.stdout.trim().to_owned();
    assert_eq!(own.len(), 64, "{own}");
    assert!(!common::pg_dump(&h.db_url).await.contains(&own));

    let push_main = fixture("github-push", "main", before, sha, &urls);
    let cases: Vec<Case<'_>> = vec![
        ("github", "push", "u-1", Sig::None, push_main.clone(), 403),
        (
            "github",
            "push",
            "u-2",
            Sig::With(GLOBAL),
            push_main.clone(),
            403,
        ),
        (
            "github",
            "push",
            "u-3",
            Sig::Raw("sha256=00ff"),
            push_main.clone(),
            403,
        ),
        (
            "github",
            "push",
            "u-4",
            Sig::Raw("sha1=00ff"),
            push_main.clone(),
            403,
        ),
        (
            "github",
            "push",
            "i-1",
            Sig::With(&own),
            fixture("github-push-new-branch", "feature", before, sha, &urls),
            200,
        ),
        (
            "github",
            "push",
            "i-2",
            Sig::With(&own),
            fixture("github-push-deleted", "main", before, sha, &urls),
            200,
        ),
        (
            "github",
            "push",
            "i-3",
            Sig::With(&own),
            fixture("github-push-tag", "main", before, sha, &urls),
            200,
        ),
        (
            "github",
            "pull_request",
            "i-4",
            Sig::With(&own),
            fixture("github-pull-request-opened", "main", before, sha, &urls),
            200,
        ),
        (
            "github",
            "ping",
            "i-5",
            Sig::With(&own),
            fixture("github-ping", "main", before, sha, &urls),
            200,
        ),
        (
            "gitea",
            "push",
            "u-5",
            Sig::With("not-the-secret-at-all"),
            fixture("gitea-push", "main", before, sha, &urls),
            403,
        ),
        (
            "gitea",
            "delete",
            "i-6",
            Sig::With(&own),
            fixture("gitea-delete", "main", before, sha, &urls),
            200,
        ),
        (
            "gitlab",
            "Push Hook",
            "u-6",
            Sig::With(GLOBAL),
            fixture("gitlab-push", "main", before, sha, &urls),
            403,
        ),
        (
            "gitlab",
            "Tag Push Hook",
            "i-7",
            Sig::With(&own),
            fixture("gitlab-tag-push", "main", before, sha, &urls),
            200,
        ),
        (
            "gitlab",
            "Push Hook",
            "i-8",
            Sig::With(&own),
            fixture("gitlab-push", "develop", before, sha, &urls),
            200,
        ),
    ];
    for (forge, event, id, sig, body, want) in cases {
        let (code, answer) = deliver(&h, forge, event, id, sig, &body).await;
        assert_eq!(code, want, "{forge} {event} {id}: {answer}");
        assert!(answer["error"].is_string() || code < 400, "{answer}");
        if code == 403 {
            // A refused caller learns nothing about apps or secrets.
            assert!(!answer.to_string().contains(&app), "{answer}");
        }
    }
    let rows = statuses(&h, &app).await;
    let want = [
        ("rejected", "not signed"),
        ("rejected", "does not match"),
        ("rejected", "does not match"),
        ("rejected", "not a signature"),
        ("ignored", "push to branch feature"),
        ("ignored", "branch main was deleted"),
        ("ignored", "tag push (v1.4.0)"),
        ("ignored", "pull request #42"),
        ("ignored", "ping"),
        ("rejected", "does not match"),
        ("ignored", "branch main was deleted"),
        ("rejected", "does not match"),
        ("ignored", "tag push (v1.4.0)"),
        ("ignored", "push to branch develop"),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for ((status, reason), (want_status, want_reason)) in rows.iter().zip(want) {
        assert_eq!(status, want_status, "{rows:?}");
        assert!(
            reason.contains(want_reason),
            "{reason:?} lacks {want_reason:?}"
        );
    }
    // A rejected delivery keeps nothing of its unverified payload.
    let (kept,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'rejected' AND change IS NOT NULL",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(kept, 0);
    assert_eq!(deployments_of(&h, &app).await, 0, "something deployed");

    // Replays: a rejected delivery cannot be; an ignored one would deploy nothing.
    let list = deliveries(&h, &app).await;
    let find = |id: &str| {
        list.iter().find(|d| d["deliveryId"] == id).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (id, says) in [("u-1", "rejected"), ("i-1", "would deploy nothing")] {
        let (code, body) = h
            .post(
                &format!("/api/webhooks/deliveries/{}/replay", find(id)),
                json!({}),
            )
            .await;
        assert_eq!(code, 409, "{body}");
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }

    // A repository no app deploys: acknowledged when signed with the
    // global secret, refused otherwise. Unreadable payloads likewise.
    let other = Urls {
        clone: "https://github.com/acme/nobody.git",
        ssh: "git@github.com:acme/nobody.git",
        html: "https://github.com/acme/nobody",
    };
    let stray = fixture("github-push", "main", before, sha, &other);
    let (code, body) = deliver(&h, "github", "push", "s-1", Sig::With(GLOBAL), &stray).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["deliveries"][0]["status"], "ignored");
    assert!(body["deliveries"][0]["app"].is_null());
    let (code, _) = deliver(&h, "github", "push", "s-2", Sig::With(&own), &stray).await;
    assert_eq!(code, 403);
    let (code, body) = deliver(&h, "github", "push", "s-3", Sig::With(GLOBAL), b"{not json").await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = deliver(&h, "github", "push", "s-4", Sig::None, b"{not json").await;
    assert_eq!(code, 403);
    let (code, body) = h.get("/api/webhooks/deliveries?status=rejected").await;
    assert_eq!(code, 200);
    assert_eq!(body.as_array().unwrap().len(), 8, "{body}");
    let (code, body) = h.get("/api/webhooks/deliveries?status=bogus").await;
    assert_eq!((code, body["field"].as_str()), (400, Some("status")));

    // The secret can be set from the forge's side, and removed.
    let (code, body) = h
        .put(
            &format!("/api/apps/{app}/webhook-secret"),
            json!({"secret": "short"}),
        )
        .await;
    assert_eq!((code, body["field"].as_str()), (400, Some("secret")));
    let (code, body) = h
        .put(
            &format!("/api/apps/{app}/webhook-secret"),
            json!({"secret": "chosen-in-the-forge-form"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["secret"].is_null(),
        "a given secret is not echoed: {body}"
    );
    let run = norn(&h.api, &["webhooks", "secret", &app, "--remove"]).await;
    assert_eq!(run.code, 0, "{run}");
    let (code, _) = h
        .http
        .delete(format!("{}/api/apps/{app}/webhook-secret", h.api))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 404);
}
