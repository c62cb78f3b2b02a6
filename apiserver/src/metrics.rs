//! Prometheus metrics, kept by hand: request counts by verb, resource and
//! code; request latency by verb and resource; storage latency by operation;
//! the number of VCs (read at scrape time). Served at `/metrics` to admin
//! credentials only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kplex_storage::{
    Deleted, DeletedRange, Key, KeyPrefix, KeyValue, RangeRequest, RangeResponse, Revision, Store,
    StoreResult, WatchStream,
};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    /// Verb → resource → what its requests did (nested, so a request
    /// already seen is counted without allocating its labels).
    requests: BTreeMap<String, BTreeMap<String, Served>>,
    storage: BTreeMap<&'static str, Histogram>,
}

/// The requests of one verb and resource.
#[derive(Default)]
struct Served {
    codes: BTreeMap<u16, u64>,
    latency: Histogram,
}

/// The server's metrics.
#[derive(Default, Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Metrics {
    /// Records one served request.
    pub fn observe_request(&self, verb: &str, resource: &str, code: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        if !inner.requests.contains_key(verb) {
            inner.requests.insert(verb.to_owned(), BTreeMap::new());
        }
        let by_resource = inner.requests.get_mut(verb).expect("inserted");
        if !by_resource.contains_key(resource) {
            by_resource.insert(resource.to_owned(), Served::default());
        }
        let served = by_resource.get_mut(resource).expect("inserted");
        *served.codes.entry(code).or_default() += 1;
        served.latency.observe(elapsed);
    }

    fn observe_storage(&self, op: &'static str, elapsed: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        inner.storage.entry(op).or_default().observe(elapsed);
    }

    /// The Prometheus text exposition, with the current VC count.
    pub fn render(&self, virtual_clusters: u64) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str("# HELP kplex_apiserver_requests_total Requests served, by verb, resource and HTTP code.\n");
        out.push_str("# TYPE kplex_apiserver_requests_total counter\n");
        let served = || {
            inner.requests.iter().flat_map(|(verb, by_resource)| {
                by_resource
                    .iter()
                    .map(move |(resource, served)| (escape(verb), escape(resource), served))
            })
        };
        for (verb, resource, served) in served() {
            for (code, n) in &served.codes {
                let _ = writeln!(
                    out,
                    "kplex_apiserver_requests_total{{verb=\"{verb}\",resource=\"{resource}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP kplex_apiserver_request_duration_seconds Request latency, by verb and resource.\n");
        out.push_str("# TYPE kplex_apiserver_request_duration_seconds histogram\n");
        for (verb, resource, served) in served() {
            served.latency.render(
                &mut out,
                "kplex_apiserver_request_duration_seconds",
                &format!("verb=\"{verb}\",resource=\"{resource}\""),
            );
        }
        out.push_str("# HELP kplex_storage_duration_seconds Storage call latency, by operation.\n");
        out.push_str("# TYPE kplex_storage_duration_seconds histogram\n");
        for (op, h) in &inner.storage {
            h.render(
                &mut out,
                "kplex_storage_duration_seconds",
                &format!("operation=\"{op}\""),
            );
        }
        out.push_str("# HELP kplex_virtual_clusters Virtual clusters that exist.\n");
        out.push_str("# TYPE kplex_virtual_clusters gauge\n");
        let _ = writeln!(out, "kplex_virtual_clusters {virtual_clusters}");
        out
    }
}

/// The label for a verb or resource outside the known set: request paths
/// and methods are the caller's, and must neither multiply series nor reach
/// the exposition as text.
pub const OTHER: &str = "other";

/// `resource` as a label: a known resource (optionally with a known
/// subresource) keeps its name, anything else is [`OTHER`].
pub fn bounded_resource<'a>(resource: Cow<'a, str>, known: impl Fn(&str) -> bool) -> Cow<'a, str> {
    let (plural, sub) = match resource.split_once('/') {
        Some((plural, sub)) => (plural, Some(sub)),
        None => (&*resource, None),
    };
    let sub_ok = sub.is_none_or(|s| matches!(s, "status" | "scale" | "kubeconfig"));
    if resource.is_empty() || (known(plural) && sub_ok) {
        resource
    } else {
        Cow::Borrowed(OTHER)
    }
}

/// A label value as the exposition format needs it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The verb and resource of a request, as the Kubernetes audit and metrics
/// name them (`list pods`, `create virtualclusters`, `get` of a non-resource path …).
pub fn classify<'a>(
    method: &hyper::Method,
    path: &'a str,
    query: &str,
) -> (&'static str, Cow<'a, str>) {
    // (Empty segments are dropped, as the tenant handler drops them: the
    // verb here decides a request's priority level.) The first twelve
    // segments say what a request is: the longest path is ten up to a
    // subresource (`/clusters/<vc>/apis/<g>/<v>/namespaces/<ns>/<r>/<n>/<sub>`).
    let mut segments = [""; 12];
    let mut n = 0;
    for (slot, segment) in segments
        .iter_mut()
        .zip(path.split('/').filter(|s| !s.is_empty()))
    {
        *slot = segment;
        n += 1;
    }
    let mut segments = &segments[..n];
    if segments.first() == Some(&"clusters") && segments.len() >= 2 {
        segments = &segments[2..];
    }
    let rest: &[&str] = match segments {
        ["api", _v, rest @ ..] => rest,
        ["apis", _g, _v, rest @ ..] => rest,
        _ => &[],
    };
    let rest: &[&str] = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = rest.first().copied().unwrap_or("");
    let named = rest.len() >= 2;
    // The first `watch` value counts, as the handler reads it.
    let watch = || {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "watch")
            .is_some_and(|(_, v)| v == "1" || v == "true")
    };
    let verb = match (method.as_str(), named, resource.is_empty()) {
        ("GET", _, true) => "get",
        ("HEAD", _, true) => "head",
        ("POST", _, true) => "post",
        ("PUT", _, true) => "put",
        ("PATCH", _, true) => "patch",
        ("DELETE", _, true) => "delete",
        ("OPTIONS", _, true) => "options",
        (_, _, true) => OTHER,
        ("GET", false, _) if watch() => "watch",
        ("GET", false, _) => "list",
        ("GET", true, _) => "get",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", false, _) => "deletecollection",
        ("DELETE", true, _) => "delete",
        _ => OTHER,
    };
    let resource = match rest.get(2) {
        Some(sub) if named => Cow::Owned(format!("{resource}/{sub}")),
        _ => Cow::Borrowed(resource),
    };
    (verb, resource)
}

/// A [`Store`] that times every call into [`Metrics`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Metrics) -> MeteredStore {
        MeteredStore { inner, metrics }
    }

    async fn timed<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = f.await;
        self.metrics.observe_storage(op, started.elapsed());
        out
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<KeyValue>> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        self.timed("range", self.inner.range(request)).await
    }
    async fn count(&self, prefix: &KeyPrefix) -> StoreResult<u64> {
        self.timed("count", self.inner.count(prefix)).await
    }
    async fn create(&self, key: &Key, value: Bytes) -> StoreResult<KeyValue> {
        self.timed("create", self.inner.create(key, value)).await
    }
    async fn update(&self, key: &Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue> {
        self.timed("update", self.inner.update(key, value, expected))
            .await
    }
    async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted> {
        self.timed("delete", self.inner.delete(key, expected)).await
    }
    async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange> {
        self.timed("delete_range", self.inner.delete_range(prefix))
            .await
    }
    async fn delete_batch(&self, prefix: &KeyPrefix, limit: usize) -> StoreResult<DeletedRange> {
        self.timed("delete_batch", self.inner.delete_batch(prefix, limit))
            .await
    }
    async fn current_revision(&self) -> StoreResult<Revision> {
        self.timed("current_revision", self.inner.current_revision())
            .await
    }
    fn local_revision(&self) -> Option<kplex_storage::LocalRevision> {
        self.inner.local_revision()
    }
    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.timed("compact", self.inner.compact(revision)).await
    }
    async fn forget_history(&self, prefix: &KeyPrefix) -> StoreResult<()> {
        self.timed("forget_history", self.inner.forget_history(prefix))
            .await
    }
    async fn watch(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream> {
        self.timed("watch", self.inner.watch(prefix, after)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn requests_are_named_by_kubernetes_verbs() {
        let cases = [
            (
                Method::GET,
                "/clusters/a/api/v1/namespaces/ns/pods",
                "",
                ("list", "pods"),
            ),
            (
                Method::GET,
                "/clusters/a/api/v1/namespaces/ns/pods",
                "watch=1",
                ("watch", "pods"),
            ),
            (
                Method::GET,
                "/clusters/a/api/v1/namespaces/ns/pods/p",
                "",
                ("get", "pods"),
            ),
            (
                Method::PATCH,
                "/clusters/a/apis/apps/v1/namespaces/ns/deployments/d/scale",
                "",
                ("patch", "deployments/scale"),
            ),
            (
                Method::GET,
                "/clusters/a/api/v1/namespaces",
                "",
                ("list", "namespaces"),
            ),
            (
                Method::DELETE,
                "/clusters/a/api/v1/namespaces/demo",
                "",
                ("delete", "namespaces"),
            ),
            (
                Method::POST,
                "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters",
                "",
                ("create", "virtualclusters"),
            ),
            (Method::GET, "/readyz", "", ("get", "")),
            (
                Method::GET,
                "/clusters/a/api/v1/namespaces/ns/pods/p/proxy/a/b/c/d/e/f/g",
                "",
                ("get", "pods/proxy"),
            ),
            (
                Method::DELETE,
                "/clusters/a/apis/g.example/v1/namespaces/ns/things",
                "",
                ("deletecollection", "things"),
            ),
        ];
        for (method, path, query, (verb, resource)) in cases {
            assert_eq!(
                classify(&method, path, query),
                (verb, resource.into()),
                "{path}"
            );
        }
    }

    #[test]
    fn callers_cannot_add_series_or_text_to_the_exposition() {
        let known = |r: &str| r == "pods";
        let label =
            |path: &str| bounded_resource(classify(&Method::GET, path, "").1, known).into_owned();
        assert_eq!(label("/clusters/a/api/v1/namespaces/n/pods"), "pods");
        assert_eq!(
            label("/clusters/a/api/v1/namespaces/n/pods/p/status"),
            "pods/status"
        );
        assert_eq!(label("/clusters/a/api/v1/namespaces/n/pods/p/exec"), OTHER);
        assert_eq!(label("/clusters/a/api/v1/card12345"), OTHER);
        assert_eq!(label("/clusters/a/api/v1/inj\"},x{y=\"a"), OTHER);
        let odd = Method::from_bytes(b"FOO").unwrap();
        assert_eq!(classify(&odd, "/clusters/a/api/v1/pods", "").0, OTHER);
        assert_eq!(classify(&odd, "/readyz", "").0, OTHER);
        // Whatever reaches a label is escaped.
        let m = Metrics::default();
        m.observe_request("get", "a\"b", 200, Duration::from_millis(1));
        assert!(
            m.render(0).contains("resource=\"a\\\"b\""),
            "{}",
            m.render(0)
        );
    }

    #[test]
    fn exposition_has_counters_histograms_and_the_vc_gauge() {
        let m = Metrics::default();
        m.observe_request("list", "pods", 200, Duration::from_millis(3));
        m.observe_storage("get", Duration::from_micros(100));
        let text = m.render(7);
        assert!(text.contains(
            "kplex_apiserver_requests_total{verb=\"list\",resource=\"pods\",code=\"200\"} 1"
        ));
        assert!(text.contains("kplex_apiserver_request_duration_seconds_bucket{verb=\"list\",resource=\"pods\",le=\"0.005\"} 1"));
        assert!(text.contains("kplex_apiserver_request_duration_seconds_bucket{verb=\"list\",resource=\"pods\",le=\"0.0025\"} 0"));
        assert!(text.contains("kplex_storage_duration_seconds_count{operation=\"get\"} 1"));
        assert!(text.contains("kplex_virtual_clusters 7"));
    }
}
