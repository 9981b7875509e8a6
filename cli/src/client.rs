//! The API client behind `norn deploy` and `norn status`.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use norn_api::openapi::ErrorBody;
use norn_shared::db::apps::Listed;
use norn_shared::db::deployments::{CancelStatus, Deployment};
use norn_shared::domain::{DeploymentStatus, StepEntry, StepStatus};
use norn_shared::events::{DeployLog, Event, EventBody};
use norn_shared::health::{HealthReport, Overall, ServiceStatus};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        Ok(self.send_status(r).await?.1)
    }

    /// The status with the body on success, the API's error otherwise.
    async fn send_status(&self, r: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
        let resp = r
            .send()
            .await
            .with_context(|| format!("cannot reach the Norn API at {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{} (HTTP {})", error_of(body), status.as_u16());
        }
        Ok((status.as_u16(), body))
    }

    /// GET that returns the status with the body whatever it is (health
    /// answers 503 with a useful body).
    pub async fn get_any(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach the Norn API at {}", self.base))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    /// GET into the answer's type (the one the API serialises).
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        decode(self.get(path).await?, path)
    }

    /// POST of `body` into the answer's type.
    pub async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        decode(self.post(path, body).await?, path)
    }

    /// PUT of `body` into the answer's type.
    pub async fn put_as<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        decode(self.put(path, body).await?, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POSTs raw bytes; the status with the body on success (202 and 200
    /// mean different things to `norn invoke`), the API's error otherwise.
    pub async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.req(reqwest::Method::POST, path).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        self.send_status(req).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.req(reqwest::Method::PUT, path).json(body))
            .await
    }

    /// GETs `path` and copies the response body to stdout as it arrives
    /// (`norn logs`, which may follow a running step).
    pub async fn stream_to_stdout(&self, path: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("cannot reach the Norn API at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            bail!("{} (HTTP {})", error_of(body), status.as_u16());
        }
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = resp.chunk().await? {
            out.write_all(&chunk)?;
            out.flush()?;
        }
        Ok(())
    }

    /// The `/ws` request for `app`'s events; the token goes as a
    /// subprotocol, never in the URL.
    fn ws_request(
        &self,
        app: &str,
    ) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/ws?app={app}", self.base.replacen("http", "ws", 1));
        let mut req = url.into_client_request()?;
        let protocols = match &self.token {
            Some(t) => format!("norn, norn.bearer.{t}"),
            None => "norn".into(),
        };
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse()?);
        Ok(req)
    }
}

/// What an error answer (`{error, field?}`) says; its messages name the
/// field already.
fn error_of(body: Value) -> String {
    serde_json::from_value::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| "request failed".to_owned())
}

/// An answer read as its type; a shape this build does not know means the
/// API is another version.
pub fn decode<T: DeserializeOwned>(answer: Value, path: &str) -> anyhow::Result<T> {
    serde_json::from_value(answer).with_context(|| {
        format!(
            "the API's answer to {path} is not what this norn expects (are both the same version?)"
        )
    })
}

/// What a status or kind is called in the API's answers (`not_configured`,
/// `tearing_down`, …): the same words on screen as on the wire.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

fn print_step(entry: &StepEntry) {
    let step = entry.step;
    match entry.status {
        StepStatus::Running => println!("▶ {step}"),
        status => {
            let ms = entry.duration_ms.unwrap_or(0);
            let (mark, name) = match status {
                StepStatus::Complete => ("✓", "complete"),
                StepStatus::Skipped => ("·", "skipped"),
                _ => ("✗", "failed"),
            };
            println!("{mark} {step} ({name}, {:.1}s)", ms as f64 / 1000.0);
            if status == StepStatus::Failed
                && let Some(out) = entry.output.as_deref().filter(|o| !o.is_empty())
            {
                let lines: Vec<&str> = out.lines().collect();
                for line in &lines[lines.len().saturating_sub(20)..] {
                    println!("    {line}");
                }
            }
        }
    }
}

/// Output lines of a running step, as `deploy.log` events carry them: the
/// end of each batch, and a note of what was not sent live.
fn print_log(log: &DeployLog, id: &str) {
    if log.not_sent > 0 {
        let not_sent = log.not_sent;
        println!("    │ [… {not_sent} bytes not shown live; `norn logs {id}` has them …]");
    }
    for line in log.text.lines() {
        println!("    │ {line}");
    }
}

/// Queues a deploy and follows it live (with the steps' output unless
/// `quiet`). Returns whether it ended `deployed`.
pub async fn deploy(
    api: &Api,
    app: &str,
    git_ref: Option<&str>,
    quiet: bool,
) -> anyhow::Result<bool> {
    let body = match git_ref {
        Some(r) => json!({ "ref": r }),
        None => json!({}),
    };
    queue_and_follow(api, app, &format!("/api/apps/{app}/deploy"), &body, quiet).await
}

/// A deployment's full step output; `follow` keeps printing until it ends.
pub async fn logs(
    api: &Api,
    deployment: &str,
    step: Option<&str>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/api/deployments/{deployment}/logs?follow={follow}");
    if let Some(step) = step {
        path.push_str(&format!("&step={step}"));
    }
    api.stream_to_stdout(&path).await
}

pub async fn rollback(api: &Api, app: &str, to: Option<&str>) -> anyhow::Result<bool> {
    let body = match to {
        Some(id) => json!({ "deploymentId": id }),
        None => json!({}),
    };
    queue_and_follow(api, app, &format!("/api/apps/{app}/rollback"), &body, false).await
}

/// POSTs `body` to `path` (which queues a deployment) and follows that
/// deployment until it ends; `true` when it ends deployed.
async fn queue_and_follow(
    api: &Api,
    app: &str,
    path: &str,
    body: &Value,
    quiet: bool,
) -> anyhow::Result<bool> {
    // Subscribe before queueing so no step event is missed.
    let ws = match api.ws_request(app) {
        Ok(req) => tokio_tungstenite::connect_async(req)
            .await
            .ok()
            .map(|(s, _)| s),
        Err(_) => None,
    };
    #[derive(serde::Deserialize)]
    struct Queued {
        id: String,
    }
    let queued: Queued = api.post_as(path, body).await?;
    let id = queued.id;
    println!("deployment {id} queued");
    let mut ws = ws;
    let mut poll = tokio::time::interval(Duration::from_secs(3));
    loop {
        let event = async {
            match ws.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = event => match msg {
                Some(Ok(Message::Text(text))) => {
                    // Other kinds (and a newer server's) are not ours to show.
                    let Ok(ev) = serde_json::from_str::<Event>(&text) else { continue };
                    match ev.body {
                        EventBody::DeployStep(s) if s.deployment_id == id => print_step(&s.entry),
                        EventBody::DeployLog(l) if l.deployment_id == id && !quiet => print_log(&l, &id),
                        EventBody::DeployCompleted(c) if c.deployment_id == id => {
                            println!("deployed {}", c.image_tag);
                            return Ok(true);
                        }
                        EventBody::DeployFailed(f) if f.deployment_id == id => {
                            println!("failed: {}", f.error);
                            return Ok(false);
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                // The stream ended; keep following by polling.
                _ => ws = None,
            },
            _ = poll.tick() => {
                let d: Deployment = api.get_as(&format!("/api/deployments/{id}")).await?;
                match d.status {
                    DeploymentStatus::Deployed => {
                        println!("deployed {}", d.image_tag.unwrap_or_default());
                        return Ok(true);
                    }
                    DeploymentStatus::Failed => {
                        println!("failed: {}", d.error.as_deref().unwrap_or("unknown error"));
                        return Ok(false);
                    }
                    _ => {}
                }
            }
        }
    }
}

pub async fn cancel(api: &Api, deployment: &str) -> anyhow::Result<()> {
    let r: norn_shared::db::deployments::CancelAnswer = api
        .post_as(&format!("/api/deployments/{deployment}/cancel"), &json!({}))
        .await?;
    match r.status {
        CancelStatus::Canceling => {
            println!("{deployment}: cancel requested; its worker is stopping it")
        }
        CancelStatus::Failed => println!("{deployment}: canceled"),
    }
    Ok(())
}

pub async fn nodes(api: &Api) -> anyhow::Result<()> {
    let list: Vec<norn_shared::db::nodes::Node> = api.get_as("/api/cluster/nodes").await?;
    println!(
        "{:<36}  {:<9}  {:<16}  {:<8}  {:>4}  last heartbeat",
        "id", "role", "name", "status", "jobs"
    );
    for n in list {
        println!(
            "{:<36}  {:<9}  {:<16}  {:<8}  {:>4}  {}",
            n.id,
            n.role,
            n.name,
            n.status,
            n.running_jobs,
            n.last_heartbeat_at
                .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339()),
        );
    }
    Ok(())
}

pub async fn drain(api: &Api, id: &str) -> anyhow::Result<()> {
    api.post(&format!("/api/cluster/nodes/{id}/drain"), &json!({}))
        .await?;
    println!("{id}: draining; it claims no new jobs and finishes the ones it holds");
    Ok(())
}

pub async fn status(api: &Api) -> anyhow::Result<()> {
    let apps: Vec<Listed> = api.get_as("/api/apps").await?;
    let deployments: Vec<Deployment> = api.get_as("/api/deployments?limit=20").await?;
    println!("{:<24} {:<10}", "APP", "SOURCE");
    for listed in apps {
        match listed {
            Listed::Valid(app) => println!("{:<24} {:<10}", app.id, app.source),
            Listed::Invalid(bad) => println!(
                "{:<24} {:<10}  INVALID SPEC: {}",
                bad.id, bad.source, bad.error
            ),
        }
    }
    println!();
    println!(
        "{:<38} {:<20} {:<13} {:<26} ERROR",
        "DEPLOYMENT", "APP", "STATUS", "IMAGE"
    );
    for d in deployments {
        println!(
            "{:<38} {:<20} {:<13} {:<26} {}",
            d.id,
            d.app,
            d.status.as_str(),
            d.image_tag.as_deref().unwrap_or("-"),
            d.error.as_deref().unwrap_or(""),
        );
    }
    Ok(())
}

/// `norn health`: each shared service up or down, like the seeds' `make
/// doctor`. `true` when none is down.
pub async fn health(api: &Api) -> anyhow::Result<bool> {
    let (code, body) = api.get_any("/api/health").await?;
    let report: HealthReport = decode(body, "/api/health")?;
    println!("norn: {} (HTTP {code})", wire_name(&report.status));
    let Some(services) = report.services else {
        println!("  (send the API token to see each service)");
        return Ok(report.status == Overall::Ok);
    };
    let mut all_up = code == 200;
    for (name, s) in services.named() {
        all_up &= s.status != ServiceStatus::Down;
        let detail = s
            .error
            .as_deref()
            .or(s.details.as_deref())
            .map(|d| format!("  {d}"))
            .unwrap_or_default();
        println!("  {name:<14} {}{detail}", wire_name(&s.status));
    }
    // `not_configured` is not a failure: nothing needs it yet.
    Ok(all_up)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ws_request_carries_the_token_as_a_subprotocol_and_not_in_its_url() {
        let api = super::Api::new("http://127.0.0.1:8800", Some("norn_abc".into()));
        let req = api.ws_request("hello").unwrap();
        assert_eq!(req.uri().to_string(), "ws://127.0.0.1:8800/ws?app=hello");
        assert_eq!(
            req.headers()["sec-websocket-protocol"],
            "norn, norn.bearer.norn_abc"
        );
    }
}
