//! Kubernetes `Status` responses: the one place errors become HTTP.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::json;

/// The response body type of every handler: whole, or streamed (watch).
pub type Body = BoxBody<Bytes, Infallible>;

/// A whole-body response with a content type.
pub fn bytes_response(code: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

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

    /// 404 for a named object, with `details` as kube-apiserver sends them.
    pub fn not_found_object(kind: &str, group: &str, name: &str) -> ApiError {
        let plural = format!("{}s", kind.to_lowercase());
        let resource = if group.is_empty() {
            plural
        } else {
            format!("{plural}.{group}")
        };
        ApiError {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{resource} \"{name}\" not found"),
        }
    }

    /// 409: the object already exists (`resource` as `plural[.group]`).
    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            reason: "AlreadyExists",
            message: format!("{resource} \"{name}\" already exists"),
        }
    }

    /// 409: the object changed since the caller read it.
    pub fn conflict(resource: &str, name: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        }
    }

    /// 422 with kube-apiserver's whole message (`<Kind> "<name>" is
    /// invalid: <field>: <detail>`), for checks that word it themselves.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: message.into(),
        }
    }

    /// 422: the object is invalid.
    pub fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> ApiError {
        ApiError {
            code: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "Invalid",
            message: format!(
                "{kind} \"{name}\" is invalid: {field}: Invalid value: \"{name}\": {detail}"
            ),
        }
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: message.into(),
        }
    }

    /// 500: something on our side failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
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
/// A value's JSON text. (`Value`'s `Display` writes the same bytes through the
/// formatting machinery, measurably slower on every response.)
pub fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a Value always serializes")
}

pub fn json_response(code: StatusCode, body: &serde_json::Value) -> Response<Body> {
    bytes_response(code, "application/json", Bytes::from(to_json(body)))
}

/// A plain-text response (health endpoints answer `ok`).
pub fn text_response(code: StatusCode, text: &'static str) -> Response<Body> {
    bytes_response(
        code,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

/// The one mapping from storage errors to Kubernetes `Status`.
pub fn from_store(e: kplex_storage::StoreError) -> ApiError {
    use kplex_storage::StoreError as E;
    let (code, reason) = match &e {
        E::InvalidKey { .. } => (StatusCode::BAD_REQUEST, "BadRequest"),
        E::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
        E::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
        E::Conflict { .. } => (StatusCode::CONFLICT, "Conflict"),
        E::ValueTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
        E::Compacted { .. } => (StatusCode::GONE, "Expired"),
        E::FutureRevision { .. } => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        E::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "Timeout"),
        E::Unavailable(_) | E::Closed => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
        E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
    };
    ApiError {
        code,
        reason,
        message: e.to_string(),
    }
}
