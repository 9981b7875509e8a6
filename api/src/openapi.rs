//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and served at `/api/openapi.json`. Each operation's
//! `security` names the least role it needs (`bearer` with scope `viewer`,
//! `deployer` or `admin`; none for open routes): `cli/tests/tokens.rs`
//! checks the real API against exactly that, operation by operation.

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use norn_shared::db::functions::{InvokeAccepted, InvokeResult};

use crate::routes::*;

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// The input field the error is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The error answers any operation may give (each with an [`ErrorBody`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Errors {
    /// Bad input: the message, and the field when it is about one.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or an unknown, expired or revoked one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's role is below the operation's, or the browser origin is refused.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The resource is not in a state to accept the request.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body exceeds the operation's limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Too much waiting already; see `Retry-After`.
    #[response(status = 429)]
    TooMany(ErrorBody),
    /// Past NORN_REQUEST_TIMEOUT, or a dependency is down.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `…/invoke/{path}`: the same handler as `…/invoke` ([`functions::invoke`]);
/// `/{path}` reaches the function as `NORN_REQUEST_PATH`.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/api/apps/{id}/invoke/{path}",
    tag = "functions",
    summary = "Invoke the app function at a path",
    params(
        ("id" = String, Path, description = "app name"),
        ("path" = String, Path, description = "the rest of the path, given to the function"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the function stdin"),
    responses(
        (status = 200, body = InvokeResult, description = "the run ended (sync)"),
        (status = 202, body = InvokeAccepted, description = "async, or the sync wait ran out"),
        Errors,
    ),
    security(("bearer" = ["deployer"])),
)]
#[allow(dead_code)]
fn invoke_at_path() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Norn",
        description = "A self-hosted deploy control plane. Errors are `{error, field?}`."
    ),
    modifiers(&Bearer),
    components(schemas(ErrorBody, norn_shared::db::functions::Status, norn_shared::events::Event)),
    paths(
        health::health,
        apps::list,
        apps::register,
        apps::get,
        deployments::deploy,
        rollback::rollback,
        forge::get,
        forge::forge,
        forge::teardown,
        secrets::list,
        secrets::put,
        secrets::delete,
        secrets::rotate,
        snapshots::list,
        snapshots::restore,
        changes::list,
        changes::get,
        changes::run,
        changes::dry_run,
        changes::check,
        changes::revert,
        changes::rewind,
        cron::get,
        cron::trigger,
        cron::pause,
        cron::resume,
        cron::set_schedule,
        checks::list,
        previews::list,
        functions::list,
        functions::get,
        functions::cancel,
        functions::invoke,
        invoke_at_path,
        cluster::list,
        cluster::drain,
        deployments::list,
        deployments::get,
        deployments::events,
        deployments::cancel,
        logs::logs,
        tokens::list,
        tokens::create,
        tokens::revoke,
        webhooks::github,
        webhooks::gitea,
        webhooks::gitlab,
        webhook_deliveries::list,
        webhook_deliveries::get,
        webhook_deliveries::replay,
        webhook_deliveries::put_secret,
        webhook_deliveries::delete_secret,
        ws::upgrade,
        document,
    )
)]
pub struct ApiDoc;

/// `GET /api/openapi.json`: this document (open, like `/api/health`).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "health",
    summary = "This OpenAPI document",
    responses((status = 200, body = serde_json::Value)),
    security(()),
)]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, path, least role or `None` for open) of every operation.
    fn operations() -> Vec<(String, String, Option<String>)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let security = op["security"]
                    .as_array()
                    .expect("every operation has security");
                let role = security
                    .iter()
                    .find_map(|s| s["bearer"].as_array()?.first()?.as_str().map(str::to_owned));
                ops.push((method.to_uppercase(), path.clone(), role));
            }
        }
        ops
    }

    #[test]
    fn every_route_of_the_router_is_an_operation_of_the_document() {
        let source = include_str!("routes/mod.rs");
        let routes: Vec<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .map(|p| p.replace("{*path}", "{path}"))
            .collect();
        assert!(routes.len() > 30, "found only {routes:?}");
        let documented: Vec<String> = operations().into_iter().map(|(_, p, _)| p).collect();
        let missing: Vec<&String> = routes.iter().filter(|r| !documented.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document: {missing:?}"
        );
    }

    #[test]
    fn the_role_each_operation_documents_is_the_one_auth_enforces() {
        use axum::http::Method;
        for (method, path, role) in operations() {
            let route = if path.ends_with("/invoke/{path}") {
                path.replace("{path}", "{*path}")
            } else {
                path.clone()
            };
            let enforced = if crate::auth::OPEN_ROUTES.contains(&route.as_str()) {
                None
            } else {
                let m = Method::from_bytes(method.as_bytes()).unwrap();
                Some(crate::auth::required_role(&m, &route).as_str().to_owned())
            };
            assert_eq!(role, enforced, "{method} {path}");
        }
    }

    /// A schema that says something: a reference, a type or a combination
    /// (`{}` is what an untyped `serde_json::Value` answer documents).
    fn is_typed(schema: &serde_json::Value) -> bool {
        ["$ref", "type", "oneOf", "anyOf", "allOf", "items"]
            .iter()
            .any(|k| schema.get(k).is_some())
    }

    #[test]
    fn every_json_answer_of_the_document_has_a_type() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut untyped = Vec::new();
        let mut answers = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            // The document itself is OpenAPI's own format.
            if path == "/api/openapi.json" {
                continue;
            }
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let Some(schema) = response.pointer("/content/application~1json/schema") else {
                        continue;
                    };
                    answers += 1;
                    if !is_typed(schema) {
                        untyped.push(format!("{method} {path} {status}"));
                    }
                }
            }
        }
        assert!(answers > 100, "found only {answers} JSON answers");
        assert!(untyped.is_empty(), "answers without a type: {untyped:#?}");
    }

    #[test]
    fn the_event_schema_names_every_kind() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let text = doc["components"]["schemas"].to_string();
        for kind in [
            "deploy.queued",
            "deploy.step",
            "deploy.log",
            "cron.missed",
            "func.failed",
            "forge.completed",
            "preview.removed",
            "stream.lagged",
        ] {
            assert!(text.contains(kind), "{kind} is not in the Event schema");
        }
    }
}
