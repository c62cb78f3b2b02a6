//! Kubernetes `Status` responses: the one place errors become HTTP.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde_json::json;

/// The response body type of every handler.
pub type Body = Full<Bytes>;

/// A failure as Kubernetes reports it: an HTTP code, a `reason`, a message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// Kubernetes `reason` (`NotFound`, `Unauthorized`, …).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// 401: no credential the server accepts.
    pub fn unauthorized() -> ApiError {
        ApiError {
            code: StatusCode::UNAUTHORIZED,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
        }
    }

    /// 403 with a message naming what was refused.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::FORBIDDEN,
            reason: "Forbidden",
            message: message.into(),
        }
    }

    /// 404 for a path this server does not serve.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: message.into(),
        }
    }

    /// 503: a dependency (storage) is not answering.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::SERVICE_UNAVAILABLE,
            reason: "ServiceUnavailable",
            message: message.into(),
        }
    }

    /// The `Status` object as a response.
    pub fn into_response(self) -> Response<Body> {
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        json_response(self.code, &body)
    }
}

/// A JSON response with the given status.
pub fn json_response(code: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text response (health endpoints answer `ok`).
pub fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
