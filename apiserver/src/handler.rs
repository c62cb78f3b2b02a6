//! Routing of authenticated requests to handlers.

use std::sync::Arc;

use hyper::{Method, Request, Response, StatusCode};
use kplex_certs::Identity;
use kplex_storage::Store;
use serde_json::json;

use crate::status::{json_response, text_response, ApiError, Body};

/// The Kubernetes minor version kplex presents (its API is that of k8s 1.32).
const KUBE_MINOR: &str = "32";

/// What every handler can reach.
pub struct Context {
    /// The storage backend.
    pub store: Arc<dyn Store>,
}

/// Paths anyone may read, as kube-apiserver lets anonymous callers read
/// health and version (the `system:public-info-viewer` role).
fn is_public(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz" | "/version")
}

/// Serves one request from `caller` (`None`: no client certificate).
pub async fn handle<B>(
    ctx: &Context,
    caller: Option<&Identity>,
    req: Request<B>,
) -> Response<Body> {
    let path = req.uri().path();
    if !is_public(path) && caller.is_none() {
        return ApiError::unauthorized().into_response();
    }
    if req.method() != Method::GET && is_public(path) {
        return ApiError {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("{} is not supported on {path}", req.method()),
        }
        .into_response();
    }
    match path {
        "/livez" | "/healthz" => text_response(StatusCode::OK, "ok"),
        "/readyz" => match ctx.store.current_revision().await {
            Ok(_) => text_response(StatusCode::OK, "ok"),
            Err(e) => {
                tracing::warn!(error = %e, "readyz: storage not answering");
                text_response(StatusCode::INTERNAL_SERVER_ERROR, "storage: not ready")
            }
        },
        "/version" => json_response(StatusCode::OK, &version()),
        _ => {
            ApiError::not_found("the server could not find the requested resource").into_response()
        }
    }
}

fn version() -> serde_json::Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+kplex-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}
