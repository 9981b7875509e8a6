//! The ingress: app traffic arrives here and is forwarded to the release the
//! routes table names. Deploys switch a route in one transaction (plus a
//! NOTIFY), so every api replica moves to the new release at once while
//! in-flight requests finish on the old one: zero-downtime switches on plain
//! Docker. The app is the one that declared the `Host` header's hostname in
//! its `endpoints` (`shop.example.com`), else the hostname's first label
//! (`myapp.localhost:8880`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use norn_shared::db::routes::{self, Route};
use tokio::sync::RwLock;

#[derive(Clone, Default)]
pub struct RouteTable {
    by_app: Arc<RwLock<HashMap<String, Vec<Route>>>>,
    /// Declared hostname → app.
    by_host: Arc<RwLock<HashMap<String, String>>>,
    next: Arc<AtomicUsize>,
}

impl RouteTable {
    pub async fn reload(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let all = routes::all(&mut conn).await?;
        let mut map: HashMap<String, Vec<Route>> = HashMap::new();
        for r in all {
            map.entry(r.app.clone()).or_default().push(r);
        }
        for list in map.values_mut() {
            list.sort_by(|a, b| a.process.cmp(&b.process));
        }
        let hosts: HashMap<String, String> =
            routes::hostnames(&mut conn).await?.into_iter().collect();
        *self.by_app.write().await = map;
        *self.by_host.write().await = hosts;
        Ok(())
    }

    /// The app a request for `host` (a `Host` header) goes to.
    pub async fn app_for(&self, host: &str) -> String {
        let name = host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Some(app) = self.by_host.read().await.get(&name) {
            return app.clone();
        }
        name.split('.').next().unwrap_or_default().to_owned()
    }

    /// The upstream for `app`: its `web` process if it has one, else the first
    /// routed process; replicas are taken in turn.
    async fn upstream(&self, app: &str) -> Option<String> {
        let map = self.by_app.read().await;
        let list = map.get(app)?;
        let route = list
            .iter()
            .find(|r| r.process == "web")
            .or_else(|| list.first())?;
        let addrs: Vec<&str> = route.upstream.split(',').collect();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Some(addrs[i].to_owned())
    }
}

#[derive(Clone)]
pub struct Ingress {
    table: RouteTable,
    client: Client<HttpConnector, Body>,
}

impl Ingress {
    pub fn new(table: RouteTable) -> Self {
        Self {
            table,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

pub async fn proxy(State(ingress): State<Ingress>, mut req: Request) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let app = ingress.table.app_for(host).await;
    let Some(upstream) = ingress.table.upstream(&app).await else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("norn: no deployed app {app:?} (Host: {host})\n"),
        );
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let uri: Uri = match format!("http://{upstream}{path}").parse() {
        Ok(u) => u,
        Err(e) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("norn: bad upstream: {e}\n"),
            );
        }
    };
    *req.uri_mut() = uri;
    match ingress.client.request(req).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => {
            tracing::warn!(app = %app, upstream = %upstream, error = %e, "ingress upstream failed");
            plain(
                StatusCode::BAD_GATEWAY,
                format!("norn: {app} did not answer\n"),
            )
        }
    }
}

pub fn router(table: RouteTable) -> axum::Router {
    axum::Router::new()
        .fallback(proxy)
        .with_state(Ingress::new(table))
}
