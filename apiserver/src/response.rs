//! HTTP responses: whole bodies, JSON, text, and the one function that turns
//! an [`ApiError`] into a Kubernetes `Status` response.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
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

/// The `Date` every response carries (as kube-apiserver's do), marked
/// never to be indexed: HPACK would otherwise add each second's new value
/// to every long-lived connection's table, and each response would then
/// compare its date with all those before it (h2 keeps one chain per
/// header name). Formatted once a second per thread.
pub fn date() -> hyper::header::HeaderValue {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, Option<hyper::header::HeaderValue>)> =
            const { std::cell::RefCell::new((0, None)) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with(|cached| {
        let mut cached = cached.borrow_mut();
        if let (at, Some(value)) = &*cached {
            if *at == second {
                return value.clone();
            }
        }
        let mut value = hyper::header::HeaderValue::from_str(&httpdate::fmt_http_date(now))
            .expect("an HTTP date is a valid header value");
        value.set_sensitive(true);
        *cached = (second, Some(value.clone()));
        value
    })
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
/// sees a truncated list, never a wrong one) and is logged. A list that
/// fits in one chunk is sent whole, with its length.
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
    let mut list = ListBody {
        items: items.into_iter().peekable(),
        pending: Some(head),
        ended: false,
    };
    let first = list.next_chunk();
    let mut response = match first {
        Some(whole) if list.ended => Response::new(Full::new(Bytes::from(whole)).boxed()),
        first => {
            // Longer: the first chunk goes first, and the rest is written
            // as the client reads.
            list.pending = first;
            Response::new(list.boxed())
        }
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response.extensions_mut().insert(StreamedBytes(bytes));
    response
}

/// The rest of a list being written: chunks of about [`LIST_CHUNK`], the
/// last of them marked as the end of the stream (so HTTP/2 carries the end
/// in the last DATA frame, not in a frame of its own).
struct ListBody {
    items: std::iter::Peekable<std::vec::IntoIter<kplex_storage::KeyValue>>,
    /// The next chunk, begun.
    pending: Option<Vec<u8>>,
    /// Whether the last chunk has been produced (or the list cut short).
    ended: bool,
}

impl ListBody {
    /// The next chunk: items until it holds about [`LIST_CHUNK`]; the
    /// list's end goes in the chunk of its last item, however full.
    fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let mut out = self.pending.take()?;
        loop {
            // (None only for a list of no items: the end follows the last.)
            let Some(kv) = self.items.next() else {
                out.extend_from_slice(b"]}");
                self.ended = true;
                return Some(out);
            };
            if let Err(e) = kplex_registry::raw::write_object(&kv, &mut out) {
                tracing::error!(key = %kv.key, error = %e.message, "a listed object does not encode; list cut short");
                self.ended = true;
                return None;
            }
            if self.items.peek().is_none() {
                out.extend_from_slice(b"]}");
                self.ended = true;
                return Some(out);
            }
            out.push(b',');
            if out.len() >= LIST_CHUNK {
                self.pending = Some(Vec::with_capacity(LIST_CHUNK + 4096));
                return Some(out);
            }
        }
    }
}

impl hyper::body::Body for ListBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = self.get_mut().next_chunk();
        std::task::Poll::Ready(chunk.map(|c| Ok(Frame::data(Bytes::from(c)))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
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

    fn configmaps(n: usize, data_bytes: usize) -> Vec<kplex_storage::KeyValue> {
        let keyspace = kplex_storage::TenantKeyspace::for_vc("vc").unwrap();
        (0..n)
            .map(|i| {
                let name = format!("cm-{i}");
                let object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": "default"},
                    "data": {"a": "x".repeat(data_bytes)}});
                kplex_storage::KeyValue {
                    key: keyspace
                        .object_key("", "configmaps", Some("default"), &name)
                        .unwrap(),
                    value: Bytes::from(object.to_string()),
                    create_revision: kplex_storage::Revision::new(i as u64 + 1),
                    mod_revision: kplex_storage::Revision::new(i as u64 + 1),
                }
            })
            .collect()
    }

    /// Every frame of `body`, and whether the body said it had ended with
    /// the last of them (so HTTP/2 ends the stream in that frame).
    fn frames(mut body: Body) -> (Vec<Bytes>, bool) {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut out = Vec::new();
        let mut ended_with_last = false;
        loop {
            match hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), &mut cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    out.push(frame.into_data().unwrap());
                    ended_with_last = hyper::body::Body::is_end_stream(&body);
                }
                std::task::Poll::Ready(None) => return (out, ended_with_last),
                std::task::Poll::Ready(Some(Err(never))) => match never {},
                std::task::Poll::Pending => panic!("a list body never waits"),
            }
        }
    }

    #[test]
    fn a_list_ends_its_stream_with_its_last_chunk() {
        let metadata = serde_json::json!({"resourceVersion": "9"});
        // Small: one chunk, sent whole with its length.
        let small = stored_list("ConfigMapList", "v1", &metadata, configmaps(3, 10));
        let length = hyper::body::Body::size_hint(small.body()).exact();
        let (chunks, ended) = frames(small.into_body());
        assert_eq!(chunks.len(), 1);
        assert!(ended);
        assert_eq!(length, Some(chunks[0].len() as u64));
        let list: serde_json::Value = serde_json::from_slice(&chunks[0]).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 3);
        assert_eq!(list["items"][2]["metadata"]["resourceVersion"], "3");
        // Large: several chunks, the end marked on the last, none empty.
        let large = stored_list("ConfigMapList", "v1", &metadata, configmaps(100, 2000));
        assert_eq!(hyper::body::Body::size_hint(large.body()).exact(), None);
        let (chunks, ended) = frames(large.into_body());
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        assert!(ended);
        assert!(chunks
            .iter()
            .all(|c| !c.is_empty() && c.len() <= LIST_CHUNK + 4096));
        let whole: Vec<u8> = chunks.concat();
        let list: serde_json::Value = serde_json::from_slice(&whole).unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), 100);
        assert_eq!(items[99]["metadata"]["name"], "cm-99");
        assert_eq!(list["metadata"]["resourceVersion"], "9");
        // The last item fills its chunk: the end still goes in that chunk
        // (not in a frame of its own), so the list is one chunk, whole.
        let full = stored_list("ConfigMapList", "v1", &metadata, configmaps(7, 10_000));
        let length = hyper::body::Body::size_hint(full.body()).exact();
        let (chunks, ended) = frames(full.into_body());
        assert_eq!(
            chunks.len(),
            1,
            "{:?}",
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        assert!(chunks[0].len() >= LIST_CHUNK, "the items fill the chunk");
        assert!(ended);
        assert_eq!(length, Some(chunks[0].len() as u64));
        let list: serde_json::Value = serde_json::from_slice(&chunks[0]).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 7);
        // No items: the head and the end, one chunk.
        let empty = stored_list("ConfigMapList", "v1", &metadata, Vec::new());
        let (chunks, ended) = frames(empty.into_body());
        assert!(ended);
        let list: serde_json::Value = serde_json::from_slice(&chunks.concat()).unwrap();
        assert_eq!(list["items"], serde_json::json!([]));
    }

    #[test]
    fn the_date_is_sent_never_indexed_and_current() {
        let sent = date();
        assert!(sent.is_sensitive());
        let at = httpdate::parse_http_date(sent.to_str().unwrap()).unwrap();
        let now = std::time::SystemTime::now();
        let apart = now.duration_since(at).unwrap_or_else(|e| e.duration());
        assert!(apart < std::time::Duration::from_secs(2), "{apart:?}");
        // The second one, from the thread's cache, likewise.
        assert!(date().is_sensitive());
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
