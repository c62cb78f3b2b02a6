//! Streaming a watch to a client: newline-delimited JSON events, flushed one
//! by one, ending when the client goes, the server shuts down, or the
//! timeout passes. Shared by the VCs' resources and the admin API.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use kplex_registry::raw::Object;
use kplex_storage::{Event, Revision, StoreError, WatchEvent, WatchStream};
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use crate::response::Body;

/// Least time between two bookmarks on one watch.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);
/// Serialized events buffered per watch ahead of the client.
const LINES_IN_FLIGHT: usize = 8;

/// Longest watch when the client sets no `timeoutSeconds` (kube picks 30–60 min).
const MAX_WATCH: Duration = Duration::from_secs(1800);

/// Everything one watch response needs.
pub struct EventStream<C, R> {
    /// Objects sent first as ADDED (current state), possibly none.
    pub initial: Vec<Object>,
    /// The revision `initial` is consistent at, or the client's start.
    pub from: Revision,
    /// Changes after `from`; `None` if `from` was compacted (410).
    pub events: Option<WatchStream>,
    /// A storage event as the client sees it (type and object), or `None`.
    pub convert: C,
    /// The object as sent (itself, or a one-row Table); `None` skips it
    /// (a stored value that does not decode).
    pub render: R,
    /// Kind and apiVersion for BOOKMARK objects.
    pub kind: String,
    /// See `kind`.
    pub api_version: String,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: a bookmark marks the end of `initial`.
    pub initial_events: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Turns `true` when the server shuts down.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// One watch event line, `{"type":…,"object":…}`, written straight from the
/// object (a stored one as its stored bytes); `None` if a stored object does
/// not decode.
fn line(kind: &str, object: &Object) -> Option<Bytes> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut out, kind).expect("a str always serializes");
    out.extend_from_slice(b",\"object\":");
    if let Err(e) = object.write(&mut out) {
        tracing::error!(error = %e.message, "a watched object does not encode; skipped");
        return None;
    }
    out.extend_from_slice(b"}\n");
    Some(Bytes::from(out))
}

/// A line of a value the server made (always encodes).
fn value_line(kind: &str, object: Value) -> Bytes {
    line(kind, &Object::Decoded(object)).expect("a Value always serializes")
}

fn bookmark(kind: &str, api_version: &str, revision: Revision, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": metadata})
}

fn expired() -> Bytes {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410});
    value_line("ERROR", status)
}

/// Starts the stream; the response body carries it.
/// Queues a line for the client; `false` if the client is gone, or the
/// watch's time ran out or the server stopped while a client that stopped
/// reading held it up (so such a client cannot hold a watch, and its VC's
/// watch slot, past its deadline).
async fn deliver(
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    line: Bytes,
    deadline: tokio::time::Instant,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        sent = tx.send(line) => sent.is_ok(),
        _ = tokio::time::sleep_until(deadline) => false,
        _ = stopping.wait_for(|stop| *stop) => false,
    }
}

pub fn respond<C, R>(mut s: EventStream<C, R>) -> Response<Body>
where
    C: Fn(&Event) -> Option<(&'static str, Object)> + Send + 'static,
    R: Fn(Object) -> Option<Object> + Send + 'static,
{
    // Serialized lines waiting for the client: few, since each is a copy
    // of an object for this watcher alone (a client that stops reading
    // holds at most these; the watch cache drops it once its own queue of
    // shared events fills).
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(LINES_IN_FLIGHT);
    let deadline = tokio::time::Instant::now() + s.timeout.unwrap_or(MAX_WATCH).min(MAX_WATCH);
    tokio::spawn(async move {
        for object in std::mem::take(&mut s.initial) {
            let Some(out) = (s.render)(object).and_then(|o| line("ADDED", &o)) else {
                continue;
            };
            if !deliver(&tx, out, deadline, &mut s.stopping).await {
                return;
            }
        }
        if s.initial_events {
            let mark = bookmark(&s.kind, &s.api_version, s.from, true);
            if !deliver(&tx, value_line("BOOKMARK", mark), deadline, &mut s.stopping).await {
                return;
            }
        }
        let Some(mut events) = s.events.take() else {
            deliver(&tx, expired(), deadline, &mut s.stopping).await;
            return;
        };
        let mut last_bookmark = tokio::time::Instant::now();
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                // Server shutdown: end the stream so the connection can drain.
                _ = s.stopping.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep_until(deadline) => return,
                next = events.next() => next,
            };
            let out = match next {
                Some(Ok(WatchEvent::Change(event))) => {
                    match (s.convert)(&event)
                        .and_then(|(kind, object)| line(kind, &(s.render)(object)?))
                    {
                        Some(out) => out,
                        None => continue,
                    }
                }
                Some(Ok(WatchEvent::Progress(revision))) => {
                    // Bookmarks tell the client how far it is, without
                    // flooding it: at most one per interval.
                    if !s.bookmarks || last_bookmark.elapsed() < BOOKMARK_INTERVAL {
                        continue;
                    }
                    last_bookmark = tokio::time::Instant::now();
                    value_line(
                        "BOOKMARK",
                        bookmark(&s.kind, &s.api_version, revision, false),
                    )
                }
                Some(Err(StoreError::Compacted { .. })) => expired(),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watch ended by storage");
                    return;
                }
                None => return,
            };
            if !deliver(&tx, out, deadline, &mut s.stopping).await {
                return;
            }
        }
    });
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_is_one_json_object_ended_by_a_newline() {
        let object = json!({"kind": "ConfigMap", "metadata": {"name": "a \"quoted\"\nname"}});
        let bytes = value_line("MODIFIED", object.clone());
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let parsed: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parsed, json!({"type": "MODIFIED", "object": object}));
    }
}
