//! Endpoints: each declared hostname routes to its app through Norn's
//! ingress and belongs to that app alone; with `NORN_CLOUDFLARED_CONFIG`,
//! the forge writes one cloudflared rule per hostname before the catch-all,
//! idempotently, and teardown removes it.

mod common;

use std::time::Duration;

use common::{AppRepo, Harness, eventually, spec, unique_app};
use serde_json::{Value, json};

async fn through_ingress(h: &Harness, host: &str) -> (u16, String) {
    let resp = h
        .http
        .get(format!("http://{}/", h.ingress))
        .header("host", host)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The cloudflared file's ingress rules as (hostname, service).
fn rules(path: &std::path::Path) -> Vec<(Option<String>, String)> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["tunnel"], "t-1", "the rest of the file is kept");
    doc["ingress"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["hostname"].as_str().map(str::to_owned),
                r["service"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn wait_forge(h: &Harness, app: &str, status: &str, since: &Value) -> Value {
    let path = format!("/api/apps/{app}/forge");
    eventually(Duration::from_secs(60), status, || async {
        let (_, f) = h.get(&path).await;
        (f["status"] == status && f["finishedAt"] != *since).then_some(f)
    })
    .await
}

#[tokio::test]
async fn declared_hostnames_route_to_their_app_alone_and_get_tunnel_rules_until_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloudflared.yml");
    std::fs::write(
        &file,
        "tunnel: t-1\ncredentials-file: /etc/cloudflared/t-1.json\ningress:\n  \
         - hostname: other.example.org\n    service: http://10.0.0.9:80\n  \
         - service: http_status:404\n",
    )
    .unwrap();
    let cf = file.clone();
    let h = Harness::start_with(move |c| c.cloudflared_config = Some(cf)).await;
    let app = unique_app("ep");
    let host = format!("shop-{app}.example.test");
    let repo = AppRepo::create(h.tmp.path(), &app);
    let mut s = spec(&app, &repo, None);
    s["endpoints"] = json!([{"url": format!("https://Shop-{app}.Example.test/")}]);
    h.register_and_deploy(s).await;

    // Norn's ingress: the hostname, in any case and with a port, is the app.
    for h_ in [host.clone(), host.to_uppercase(), format!("{host}:443")] {
        let (code, body) = through_ingress(&h, &h_).await;
        assert_eq!((code, body.trim()), (200, "v1"), "Host: {h_}");
    }
    let (code, _) = through_ingress(&h, "nobody.example.test").await;
    assert_eq!(code, 404);

    // One app per hostname: a second claim changes nothing.
    let thief = unique_app("epthief");
    let mut t = spec(&thief, &repo, None);
    t["endpoints"] = json!([{"url": host.clone()}]);
    let (code, body) = h.post("/api/apps", t).await;
    assert_eq!(
        (code, body["field"].as_str()),
        (409, Some("endpoints")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains(&app), "{body}");
    assert_eq!(through_ingress(&h, &host).await.0, 200);
    let (code, body) = h
        .post(
            "/api/apps",
            json!({
                "name": unique_app("epbad"),
                "processes": {"web": {"port": 8080}},
                "endpoints": [{"url": "https://*.example.test"}],
            }),
        )
        .await;
    assert_eq!(
        (code, body["field"].as_str()),
        (400, Some("endpoints[0].url")),
        "{body}"
    );

    // The tunnel rule sits before the catch-all, once, however often forged.
    let expect = |present: bool| {
        let r = rules(&file);
        assert_eq!(r.first().unwrap().0.as_deref(), Some("other.example.org"));
        assert_eq!(r.last().unwrap(), &(None, "http_status:404".to_owned()));
        let ours: Vec<_> = r
            .iter()
            .filter(|(h_, _)| h_.as_deref() == Some(&host))
            .collect();
        assert_eq!(ours.len(), usize::from(present), "{r:?}");
        if present {
            assert!(ours[0].1.starts_with("http://localhost:"), "{r:?}");
            assert_eq!(r.len(), 3, "{r:?}");
        } else {
            assert_eq!(r.len(), 2, "{r:?}");
        }
    };
    expect(true);
    let (_, before) = h.get(&format!("/api/apps/{app}/forge")).await;
    let (code, _) = h
        .post(&format!("/api/apps/{app}/forge"), json!({"force": true}))
        .await;
    assert_eq!(code, 202);
    let forged = wait_forge(&h, &app, "forged", &before["finishedAt"]).await;
    expect(true);
    let run = common::norn(&h.api, &["endpoints", &app]).await;
    let (code, out) = (run.code, run.stdout);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&host) && out.contains("tunnel rule written"),
        "{out}"
    );

    // Teardown removes our rule and nothing else.
    let (code, _) = h
        .post(&format!("/api/apps/{app}/teardown"), json!({}))
        .await;
    assert_eq!(code, 202);
    let torn = wait_forge(&h, &app, "unforged", &forged["finishedAt"]).await;
    let step = torn["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "endpoints")
        .unwrap()
        .clone();
    assert_eq!(step["status"], "complete", "{torn}");
    expect(false);
    let out = common::norn(&h.api, &["endpoints", &app]).await.stdout;
    assert!(out.contains("no tunnel rule"), "{out}");
    common::remove_containers(&app).await;
}
