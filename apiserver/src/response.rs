//! HTTP responses: whole bodies, JSON, text, and the one function that turns
//! an [`ApiError`] into a Kubernetes `Status` response.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use kplex_registry::error::to_json;
use kplex_registry::ApiError;

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

/// A JSON response with the given status.
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

/// The `Status` object of `error` as a response, with `Retry-After` when
/// the error says when to retry.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json_response(error.code, &error.to_status());
    if let Some(seconds) = error.retry_after() {
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, seconds.into());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_sent_when_the_error_says() {
        let response = error_response(&ApiError::too_large_resource_version(9, Some(4)));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[hyper::header::RETRY_AFTER], "1");
        let other = error_response(&ApiError::conflict("configmaps", "x"));
        assert!(other.headers().get(hyper::header::RETRY_AFTER).is_none());
    }
}
