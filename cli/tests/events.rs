//! Topics, against a real Kafka-protocol broker (Tansu, in memory; see
//! `norn_shared::brokers::LocalBroker`): the forge makes an app's topics
//! under its prefix through the admin protocol, idempotently; its containers
//! get the brokers and the topic names, and reach them from inside; teardown
//! keeps the topics unless told to drop data. Without brokers the step is
//! skipped with the reason and the app still deploys.

mod common;

use common::{AppRepo, Harness, exec_in, running_instance, unique_app};
use serde_json::{Value, json};

/// Sends a Metadata (v0) request to each broker of `KAFKA_BOOTSTRAP_SERVERS`
/// with busybox `nc`, printing the readable strings of the answer (broker
/// hosts and topic names), after one line with what the container was given.
const PROBE: &str = r#"echo "GIVEN=$KAFKA_BOOTSTRAP_SERVERS|$KAFKA_TOPIC_PREFIX|$KAFKA_TOPICS"
for b in $(echo "$KAFKA_BOOTSTRAP_SERVERS" | busybox tr ',' ' '); do
  printf '\000\000\000\016\000\003\000\000\000\000\000\001\000\000\000\000\000\000' \
    | busybox nc -w 3 "${b%:*}" "${b##*:}" | busybox strings -n 3 | busybox sed 's/^/META /'
done
true"#;

fn events_spec(app: &str, repo: &AppRepo) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"events": {"topics": ["orders", "audit"]}},
        "build": {"test": PROBE},
    })
}

async fn broker_topics() -> Vec<String> {
    let brokers = vec![norn_shared::testing::events_brokers().await];
    let client = norn_shared::brokers::connect(&brokers).await.unwrap();
    norn_shared::brokers::topics(&client).await.unwrap()
}

fn step<'a>(steps: &'a Value, name: &str) -> &'a Value {
    steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no {name} step in {steps}"))
}

/// What the probe printed: the `GIVEN=` line, and whether the broker's
/// answer named `topic`.
fn probed(output: &str, topic: &str) -> (String, bool) {
    let given = output
        .lines()
        .find_map(|l| l.strip_prefix("GIVEN="))
        .unwrap_or_else(|| panic!("no GIVEN line in:\n{output}"))
        .to_owned();
    let seen = output
        .lines()
        .any(|l| l.strip_prefix("META ").is_some_and(|s| s.contains(topic)));
    (given, seen)
}

/// Registers `spec` and deploys it; the finished deployment, `deployed`.
async fn deployed(h: &Harness, spec: Value) -> Value {
    let app = spec["name"].as_str().unwrap().to_owned();
    let (code, body) = h.post("/api/apps", spec).await;
    assert_eq!(code, 201, "{body}");
    let id = h.deploy(&app, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");
    d
}

async fn forge_state(h: &Harness, app: &str) -> Value {
    h.get(&format!("/api/apps/{app}/forge")).await.1
}

async fn wait_forge(h: &Harness, app: &str, status: &str, since: &Value) -> Value {
    common::eventually(
        std::time::Duration::from_secs(60),
        &format!("forge {status}"),
        || async {
            let f = forge_state(h, app).await;
            (f["status"] == status && f["finishedAt"] != *since).then_some(f)
        },
    )
    .await
}

#[tokio::test]
async fn an_app_gets_its_topics_under_its_prefix_and_reaches_them_from_its_containers() {
    let h = Harness::start().await;
    let app = unique_app("topics");
    let (orders, audit) = (format!("{app}.orders"), format!("{app}.audit"));
    let repo = AppRepo::create(h.tmp.path(), &app);
    let d = deployed(&h, events_spec(&app, &repo)).await;

    // The broker has both topics, under the app's prefix.
    let on_broker = broker_topics().await;
    for t in [&orders, &audit] {
        assert!(
            on_broker.contains(t),
            "{t} not on the broker: {on_broker:?}"
        );
    }
    let forged = forge_state(&h, &app).await;
    let events = step(&forged["steps"], "events");
    assert_eq!(events["status"], "complete", "{forged}");
    assert!(
        events["output"]
            .as_str()
            .unwrap()
            .contains(&format!("created topic {orders}")),
        "{events}"
    );

    let run = common::norn(&h.api, &["topics", &app]).await;
    let (code, listed) = (run.code, run.stdout);
    assert_eq!(code, 0, "{listed}");
    for t in [&orders, &audit] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(t.as_str()) && l.ends_with("on the brokers")),
            "{listed}"
        );
    }

    // The deploy's test container and the running instance were given the
    // brokers and the names, and the broker answered them with the topic.
    let test = step(&d["steps"], "test")["output"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = running_instance(&app).await;
    let (code, live) = exec_in(&name, PROBE).await;
    assert_eq!(code, 0, "{live}");
    for (where_, output) in [("test container", &test), ("running instance", &live)] {
        let (given, seen) = probed(output, &orders);
        let parts: Vec<&str> = given.split('|').collect();
        assert!(!parts[0].is_empty(), "{where_}: no brokers given: {given}");
        assert!(
            !parts[0].contains("127.0.0.1"),
            "{where_} was given a loopback broker it cannot reach: {given}"
        );
        assert_eq!(parts[1], format!("{app}."), "{where_}: {given}");
        assert_eq!(parts[2], format!("{orders},{audit}"), "{where_}: {given}");
        assert!(
            seen,
            "{where_}: the broker did not name {orders}:\n{output}"
        );
    }

    // A forced forge finds the topics there and keeps them.
    let (code, body) = h
        .post(&format!("/api/apps/{app}/forge"), json!({"force": true}))
        .await;
    assert_eq!(code, 202, "{body}");
    let reforged = wait_forge(&h, &app, "forged", &forged["finishedAt"]).await;
    let events = step(&reforged["steps"], "events")["output"]
        .as_str()
        .unwrap();
    assert!(
        events.contains(&format!("topic {orders} exists already")),
        "{events}"
    );

    // Teardown keeps the topics; with dropData they are deleted.
    let (code, body) = h
        .post(&format!("/api/apps/{app}/teardown"), json!({}))
        .await;
    assert_eq!(code, 202, "{body}");
    let torn = wait_forge(&h, &app, "unforged", &reforged["finishedAt"]).await;
    assert!(broker_topics().await.contains(&orders), "{torn}");
    assert_eq!(
        h.post(&format!("/api/apps/{app}/forge"), json!({})).await.0,
        202
    );
    let again = wait_forge(&h, &app, "forged", &torn["finishedAt"]).await;
    let (code, body) = h
        .post(
            &format!("/api/apps/{app}/teardown?dropData=true&confirm=true"),
            json!({}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let dropped = wait_forge(&h, &app, "unforged", &again["finishedAt"]).await;
    let left: Vec<String> = broker_topics()
        .await
        .into_iter()
        .filter(|t| t.starts_with(&format!("{app}.")))
        .collect();
    assert!(left.is_empty(), "left on the broker: {left:?}\n{dropped}");
}

#[tokio::test]
async fn without_brokers_the_events_step_is_skipped_with_why_and_the_app_still_deploys() {
    let h = Harness::start_with(|c| c.events_brokers = None).await;
    let app = unique_app("notopics");
    let repo = AppRepo::create(h.tmp.path(), &app);
    deployed(&h, events_spec(&app, &repo)).await;

    let forged = forge_state(&h, &app).await;
    let events = step(&forged["steps"], "events");
    assert_eq!(events["status"], "skipped", "{forged}");
    assert!(
        events["output"]
            .as_str()
            .unwrap()
            .contains("no brokers are configured (NORN_EVENTS_BROKERS)"),
        "{events}"
    );
    let run = common::norn(&h.api, &["topics", &app]).await;
    let (code, listed) = (run.code, run.stdout);
    assert_eq!(code, 0, "{listed}");
    assert!(listed.contains("not forged"), "{listed}");
    let (_, env) = exec_in(&running_instance(&app).await, "env").await;
    assert!(!env.contains("KAFKA_"), "{env}");
    assert!(
        !broker_topics().await.contains(&format!("{app}.orders")),
        "a topic was made without brokers"
    );
}
