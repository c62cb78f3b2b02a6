//! HTTP responses: whole bodies, JSON, text, and the one function that turns
//! an [`ApiError`] into a Kubernetes `Status` response.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
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

/// Bytes a streamed response will carry, where its body cannot say
/// (fair scheduling charges a list by them).
#[derive(Clone, Copy, Debug)]
pub struct StreamedBytes(pub usize);

/// How much of a list is written at once: the body goes out in chunks of
/// about this size as the client reads, never whole in memory.
const LIST_CHUNK: usize = 64 * 1024;

/// A list (`kind`, `apiVersion`, `metadata`, `items`) of stored objects,
/// written chunk by chunk from their stored bytes as the client reads it.
/// A stored value that does not decode ends the body early (the client
/// sees a truncated list, never a wrong one) and is logged.
pub fn stored_list(
    kind: &str,
    api_version: &str,
    metadata: &serde_json::Value,
    items: Vec<kplex_storage::KeyValue>,
) -> Response<Body> {
    let bytes: usize = items.iter().map(|kv| kv.value.len() + 40).sum();
    let mut head = Vec::with_capacity(LIST_CHUNK.min(bytes + 256));
    head.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut head, kind).expect("a str always serializes");
    head.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut head, api_version).expect("a str always serializes");
    head.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut head, metadata).expect("a Value always serializes");
    head.extend_from_slice(b",\"items\":[");
    let mut items = items.into_iter().peekable();
    let mut pending = Some(head);
    let chunks = futures::stream::iter(std::iter::from_fn(move || {
        let mut out = pending.take()?;
        while out.len() < LIST_CHUNK {
            let Some(kv) = items.next() else {
                out.extend_from_slice(b"]}");
                return Some(Ok(Frame::data(Bytes::from(out))));
            };
            if let Err(e) = kplex_registry::raw::write_object(&kv, &mut out) {
                tracing::error!(key = %kv.key, error = %e.message, "a listed object does not encode; list cut short");
                return None;
            }
            if items.peek().is_some() {
                out.push(b',');
            }
        }
        pending = Some(Vec::with_capacity(LIST_CHUNK + 4096));
        Some(Ok(Frame::data(Bytes::from(out))))
    }));
    let mut response = Response::new(StreamBody::new(chunks).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(StreamedBytes(bytes));
    response
}

/// A whole response a client may cache: with an `ETag` naming its bytes,
/// or an empty 304 Not Modified when the request's `If-None-Match` names
/// that tag already (as kube-apiserver answers discovery and OpenAPI:
/// client-go revalidates its cached documents this way).
pub fn cacheable(
    request: &hyper::HeaderMap,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    let mut etag = String::with_capacity(34);
    etag.push('"');
    for byte in &digest.as_ref()[..16] {
        etag.push_str(&format!("{byte:02x}"));
    }
    etag.push('"');
    let known = request
        .get_all(hyper::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*");
    let mut response = if known {
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        bytes_response(StatusCode::OK, content_type, body)
    };
    response.headers_mut().insert(
        hyper::header::ETAG,
        etag.parse().expect("hex digits are a valid header"),
    );
    response
}

/// `response`, keeping `held` (what is left of a refused request's body)
/// until the response has been sent. Over HTTP/2, dropping a request's
/// body before answering cancels its stream (`RST_STREAM CANCEL`): a
/// client would see the reset and never the answer (a 413 for a body over
/// the cap). Dropped after the answer, the stream ends with `NO_ERROR`,
/// which every client takes as "the answer came before you were done".
pub fn holding(response: Response<Body>, held: Box<dyn Send>) -> Response<Body> {
    struct Holding {
        body: Body,
        _held: std::sync::Mutex<Box<dyn Send>>,
    }
    impl hyper::body::Body for Holding {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.body.is_end_stream()
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            self.body.size_hint()
        }
    }
    let (parts, body) = response.into_parts();
    let body = Holding {
        body,
        _held: std::sync::Mutex::new(held),
    };
    Response::from_parts(parts, body.boxed())
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
    fn a_cacheable_document_is_not_sent_again_to_a_client_that_has_it() {
        let body = Bytes::from_static(b"{\"kind\":\"APIGroupList\"}");
        let first = cacheable(&Default::default(), "application/json", body.clone());
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[hyper::header::ETAG].clone();
        assert!(etag.to_str().unwrap().starts_with('"'));
        let mut asks = hyper::HeaderMap::new();
        asks.insert(
            hyper::header::IF_NONE_MATCH,
            format!("\"other\", {}", etag.to_str().unwrap())
                .parse()
                .unwrap(),
        );
        let again = cacheable(&asks, "application/json", body.clone());
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[hyper::header::ETAG], etag);
        assert_eq!(hyper::body::Body::size_hint(again.body()).exact(), Some(0));
        // Another document: another tag, sent whole.
        let changed = cacheable(&asks, "application/json", Bytes::from_static(b"{}"));
        assert_eq!(changed.status(), StatusCode::OK);
        assert_ne!(changed.headers()[hyper::header::ETAG], etag);
    }

    #[test]
    fn retry_after_is_sent_when_the_error_says() {
        let response = error_response(&ApiError::too_large_resource_version(9, Some(4)));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[hyper::header::RETRY_AFTER], "1");
        let other = error_response(&ApiError::conflict("configmaps", "x"));
        assert!(other.headers().get(hyper::header::RETRY_AFTER).is_none());
    }
}
