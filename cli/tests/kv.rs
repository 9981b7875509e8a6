//! Key-value isolation, proved from inside the app's own containers against
//! a real redis-server: an app's user reaches its own namespace and gets
//! NOPERM on another app's keys and on the commands that reach past its
//! namespace or into the server; teardown keeps or drops the keys.

mod common;

use common::{AppRepo, Harness, exec_in, unique_app};
use serde_json::{Value, json};

/// One `KEY=answer` line per attempt; always exits 0 (a missing line fails
/// the test, never passes it).
fn probe(other_ns: &str) -> String {
    format!(
        r#"r() {{ redis-cli --no-auth-warning -u "$REDIS_URL" "$@" 2>&1 | busybox tr '\n' ' '; }}
echo "OWN_SET=$(r SET "$KV_NAMESPACE:k" v)"
echo "OWN_GET=$(r GET "$KV_NAMESPACE:k")"
echo "OTHER_GET=$(r GET {other_ns}:secret)"
echo "OTHER_SET=$(r SET {other_ns}:x y)"
echo "FLUSHALL=$(r FLUSHALL)"
echo "CONFIG=$(r CONFIG GET maxmemory)"
echo "KEYS=$(r KEYS '*')"
echo "SCAN=$(r SCAN 0)"
echo "ACL=$(r ACL LIST)"
true"#
    )
}

fn assert_confined(where_: &str, output: &str) {
    let line = |key: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{where_}: no {key} line in:\n{output}"))
            .trim()
            .to_owned()
    };
    assert_eq!(line("OWN_SET"), "OK", "{where_}:\n{output}");
    assert_eq!(line("OWN_GET"), "v", "{where_}:\n{output}");
    for key in [
        "OTHER_GET",
        "OTHER_SET",
        "FLUSHALL",
        "CONFIG",
        "KEYS",
        "SCAN",
        "ACL",
    ] {
        assert!(
            line(key).starts_with("NOPERM"),
            "{where_}: {key} was not refused:\n{output}"
        );
    }
}

fn kv_spec(app: &str, repo: &AppRepo) -> Value {
    json!({
        "name": app,
        "repo": {"url": repo.url()},
        "processes": {"web": {"port": 8080, "health": {"path": "/health", "timeout": "2s"}}},
        "services": {"kv": {"namespace": app}},
    })
}

async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

async fn user_exists(conn: &mut redis::aio::MultiplexedConnection, user: &str) -> bool {
    let v: Option<redis::Value> = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(conn)
        .await
        .unwrap();
    v.is_some()
}

#[tokio::test]
async fn an_app_reaches_its_own_namespace_and_nothing_of_other_apps_or_the_server() {
    let h = Harness::start().await;
    let kv_url = norn_shared::testing::kv_url().await;
    let mut kv = admin(&kv_url).await;
    let (a, b) = (unique_app("kva"), unique_app("kvb"));

    let b_repo = AppRepo::create(h.tmp.path(), &b);
    h.register_and_deploy(kv_spec(&b, &b_repo)).await;
    let () = redis::cmd("SET")
        .arg(format!("{b}:secret"))
        .arg("b-only")
        .query_async(&mut kv)
        .await
        .unwrap();

    // A second app may not claim B's namespace.
    let mut thief = kv_spec(&unique_app("kvthief"), &b_repo);
    thief["services"]["kv"]["namespace"] = json!(b);
    let (code, body) = h.post("/api/apps", thief).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (409, Some("services.kv.namespace")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains(&b), "{body}");

    let a_repo = AppRepo::create_with_redis_cli(h.tmp.path(), &a);
    let mut spec = kv_spec(&a, &a_repo);
    spec["build"] = json!({"test": probe(&b)});
    let (code, body) = h.post("/api/apps", spec).await;
    assert_eq!(code, 201, "{body}");
    let id = h.deploy(&a, "HEAD").await;
    let d = h.wait_terminal(&id).await;
    assert_eq!(d["status"], "deployed", "{d}");
    let test = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "test")
        .unwrap()["output"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_confined("test container", &test);

    let name = common::running_instance(&a).await;
    let (code, output) = exec_in(&name, &probe(&b)).await;
    assert_eq!(code, 0, "{output}");
    assert_confined("running instance", &output);
    // Nothing of A's reached B's keys.
    assert_eq!(
        get(&mut kv, &format!("{b}:secret")).await.as_deref(),
        Some("b-only")
    );
    assert_eq!(get(&mut kv, &format!("{b}:x")).await, None);

    // The password is in A's container and nowhere in Norn's database.
    let (_, url) = exec_in(&name, "echo $REDIS_URL").await;
    let password = url
        .trim()
        .rsplit('@')
        .nth(1)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(password.len(), 32, "{url}");
    assert!(!common::pg_dump(&h.db_url).await.contains(&password));

    // Teardown keeps the keys but ends the user; with dropData the keys go.
    let forge = format!("/api/apps/{a}/forge");
    let (_, before) = h.get(&forge).await;
    assert_eq!(
        h.post(&format!("/api/apps/{a}/teardown"), json!({}))
            .await
            .0,
        202
    );
    common::eventually(std::time::Duration::from_secs(60), "teardown", || async {
        let (_, f) = h.get(&forge).await;
        (f["status"] == "unforged" && f["finishedAt"] != before["finishedAt"]).then_some(())
    })
    .await;
    assert!(!user_exists(&mut kv, &format!("norn-kv-{a}")).await);
    assert_eq!(get(&mut kv, &format!("{a}:k")).await.as_deref(), Some("v"));
    let (code, _) = h.post(&forge, json!({})).await;
    assert_eq!(code, 202);
    common::eventually(
        std::time::Duration::from_secs(60),
        "forge again",
        || async {
            let (_, f) = h.get(&forge).await;
            (f["status"] == "forged").then_some(f)
        },
    )
    .await;
    assert!(user_exists(&mut kv, &format!("norn-kv-{a}")).await);
    let (_, torn) = h.get(&forge).await;
    let drop = format!("/api/apps/{a}/teardown?dropData=true&confirm=true");
    assert_eq!(h.post(&drop, json!({})).await.0, 202);
    common::eventually(
        std::time::Duration::from_secs(60),
        "teardown with data",
        || async {
            let (_, f) = h.get(&forge).await;
            (f["status"] == "unforged" && f["finishedAt"] != torn["finishedAt"]).then_some(())
        },
    )
    .await;
    assert_eq!(get(&mut kv, &format!("{a}:k")).await, None);
    assert_eq!(
        get(&mut kv, &format!("{b}:secret")).await.as_deref(),
        Some("b-only")
    );
    common::remove_containers(&a).await;
    common::remove_containers(&b).await;
}
