//! Who is calling, and what they may do.
//!
//! A caller presents a bearer token: `NORN_API_TOKEN` (the bootstrap admin
//! token, compared in constant time) or a named token made through
//! `/api/tokens` (looked up by its SHA-256; revoked and expired ones fail).
//! The answer is a [`Principal`]: a name (every saga event records it as its
//! actor) and a [`Role`]. Missing or unknown token → 401; a role below what
//! the route needs ([`required_role`]) → 403. With `NORN_API_TOKEN` unset
//! the API is open (local use; the API refuses to start on a non-loopback
//! address that way unless `NORN_ALLOW_NO_AUTH=true`) and every caller is
//! the admin `api`.
//!
//! `/api/health` answers anyone, with details only for a valid token; the
//! webhook receivers answer anyone, acting only on signed deliveries. `/ws`
//! takes the token as a WebSocket subprotocol (`norn.bearer.<token>`, beside
//! `norn`), never in its URL, where proxies and logs would keep it.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use norn_shared::crypto::{constant_time_eq, token_hash};
use norn_shared::db::tokens::{self, Role};

use crate::error::ApiError;
use crate::state::AppState;

/// The WebSocket subprotocol that carries a token: `norn.bearer.<token>`.
pub const WS_TOKEN_PROTOCOL: &str = "norn.bearer.";
/// The subprotocol the server answers `/ws` with.
pub const WS_PROTOCOL: &str = "norn";

/// The caller, once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name (`api-token` for `NORN_API_TOKEN`, `api` with auth off).
    pub name: String,
    pub role: Role,
}

/// The token a request carries: `Authorization: Bearer`, or on `/ws` the
/// `norn.bearer.` subprotocol.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| {
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())?
            .split(',')
            .find_map(|p| p.trim().strip_prefix(WS_TOKEN_PROTOCOL))
    })
}

/// Who the request's token belongs to; `Ok(None)`: no valid token.
pub async fn principal(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    let Some(bootstrap) = &state.config.api_token else {
        return Ok(Some(Principal {
            name: "api".into(),
            role: Role::Admin,
        }));
    };
    let Some(token) = presented(headers) else {
        return Ok(None);
    };
    if constant_time_eq(token.as_bytes(), bootstrap.expose().as_bytes()) {
        return Ok(Some(Principal {
            name: "api-token".into(),
            role: Role::Admin,
        }));
    }
    // Only Norn's own tokens are looked up: anything else is refused
    // without a query.
    if !token.starts_with(norn_shared::crypto::TOKEN_PREFIX) || token.len() > 128 {
        return Ok(None);
    }
    let mut conn = state.pool.acquire().await?;
    Ok(tokens::authenticate(&mut conn, &token_hash(token))
        .await?
        .map(|t| Principal {
            name: t.name,
            role: t.role,
        }))
}

/// Routes anyone may call: the minimal health answer, the API's OpenAPI
/// document (it says what exists, never what is in it), and the webhook
/// receivers (a forge has no token; each delivery's signature is checked).
pub const OPEN_ROUTES: &[&str] = &[
    "/api/health",
    "/api/openapi.json",
    "/api/webhooks/github",
    "/api/webhooks/gitea",
    "/api/webhooks/gitlab",
];

/// The least role a route needs. Reading is for viewers; the actions a
/// deploy pipeline needs are for deployers; everything else that changes
/// something, and any route not listed here, is for admins.
pub fn required_role(method: &Method, route: &str) -> Role {
    const DEPLOYER: &[(&str, &str)] = &[
        ("POST", "/api/apps/{id}/deploy"),
        ("POST", "/api/apps/{id}/rollback"),
        ("POST", "/api/deployments/{id}/cancel"),
        ("POST", "/api/apps/{id}/cron/trigger"),
        ("POST", "/api/functions/executions/{id}/cancel"),
        // What a deploy's migrate step does anyway; reverts stay admin.
        ("POST", "/api/apps/{id}/changes/run"),
        ("POST", "/api/apps/{id}/changes/dry-run"),
        ("POST", "/api/apps/{id}/changes/check"),
    ];
    const ADMIN_READS: &[&str] = &[
        "/api/tokens",
        "/api/webhooks/deliveries",
        "/api/webhooks/deliveries/{id}",
    ];
    // Invoking runs the app's code, whatever the method.
    if route.starts_with("/api/apps/{id}/invoke") {
        return Role::Deployer;
    }
    if (method == Method::GET || method == Method::HEAD) && !ADMIN_READS.contains(&route) {
        return Role::Viewer;
    }
    if DEPLOYER
        .iter()
        .any(|(m, r)| *m == method.as_str() && *r == route)
    {
        return Role::Deployer;
    }
    Role::Admin
}

/// Authenticates every request but the [`OPEN_ROUTES`], and checks the role the
/// matched route needs. Runs after routing (a route layer), so unknown
/// paths still answer 404 to anyone.
pub async fn require_role(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if OPEN_ROUTES.contains(&route.as_str()) {
        return Ok(next.run(req).await);
    }
    let principal = principal(&state, req.headers())
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let needed = required_role(req.method(), &route);
    if principal.role < needed {
        return Err(ApiError::Forbidden(format!(
            "token {} has role {}; {} {route} needs {}",
            principal.name,
            principal.role.as_str(),
            req.method(),
            needed.as_str()
        )));
    }
    req.extensions_mut().insert(principal);
    Ok(next.run(req).await)
}

/// Refuses to serve the API on a non-loopback address without a token:
/// anyone who could reach it could deploy code onto this machine.
/// `NORN_ALLOW_NO_AUTH=true` accepts that, with a warning at every start.
pub fn check_exposure(
    config: &norn_shared::Config,
    addr: std::net::SocketAddr,
) -> std::io::Result<()> {
    if config.api_token.is_some() || addr.ip().is_loopback() {
        return Ok(());
    }
    if config.allow_no_auth {
        tracing::warn!(
            %addr,
            "the API serves {addr} with authentication off (NORN_ALLOW_NO_AUTH=true): anyone who reaches it can deploy code on this machine"
        );
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "refusing to serve the API on {addr} without NORN_API_TOKEN: anyone who can reach it could deploy code on this machine. \
         Set NORN_API_TOKEN, bind to 127.0.0.1 (NORN_BIND_ADDR), or set NORN_ALLOW_NO_AUTH=true to accept the risk"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_for_viewers_pipeline_actions_for_deployers_and_the_rest_for_admins() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_role(&get, "/api/apps"), Role::Viewer);
        assert_eq!(required_role(&get, "/api/tokens"), Role::Admin);
        assert_eq!(
            required_role(&post, "/api/apps/{id}/deploy"),
            Role::Deployer
        );
        assert_eq!(required_role(&get, "/api/apps/{id}/invoke"), Role::Deployer);
        assert_eq!(
            required_role(&Method::DELETE, "/api/apps/{id}/invoke/{*path}"),
            Role::Deployer
        );
        assert_eq!(required_role(&post, "/api/apps"), Role::Admin);
        assert_eq!(
            required_role(&Method::PUT, "/api/apps/{id}/secrets"),
            Role::Admin
        );
        // A route nobody listed is for admins.
        assert_eq!(required_role(&post, "/api/something/new"), Role::Admin);
    }
}
