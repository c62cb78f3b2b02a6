//! Authentication outcome → routing → handlers. Root paths are the admin
//! cluster; `/clusters/<vc>/…` is a tenant's cluster. The verified credential
//! decides which one a caller may reach: a mismatch is 403 whether or not the
//! target exists.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{HeaderMap, Method, Response, StatusCode};
use kplex_certs::{Authority, Identity, Scope};
use kplex_storage::Store;
use serde_json::json;
use tracing::Instrument;

use crate::response::{json_response, text_response, Body};
use crate::virtualclusters::Registry;
use kplex_registry::ApiError;

/// The Kubernetes minor version kplex presents (its types are k8s-openapi's 1.35).
const KUBE_MINOR: &str = "35";
/// Where a TokenReview is created: answered from the VC's tokens.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// What every handler can reach.
pub struct Context {
    /// The storage backend, behind the watch cache.
    pub store: Arc<kplex_registry::watchcache::WatchCache>,
    /// The virtual clusters.
    pub registry: Registry,
    /// The host clusters VCs are placed on.
    pub hosts: crate::hostclusters::HostClusters,
    /// Signs and verifies ServiceAccount tokens.
    pub tokens: Arc<crate::tokens::Tokens>,
    /// The CA, for issuing tenant credentials.
    pub authority: Arc<Authority>,
    /// The URL clients reach this server at (`https://host:port`).
    pub url: String,
    /// The built-in resources every VC serves.
    pub catalog: Arc<kplex_registry::Catalog>,
    /// The resources of the system cluster (see `system`).
    pub system_catalog: Arc<kplex_registry::Catalog>,
    /// Set to `true` when the server shuts down, so open watches end cleanly.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Request and storage metrics.
    pub metrics: crate::metrics::Metrics,
    /// Per-VC turns for service writes that allocate.
    pub allocations: Arc<kplex_registry::allocation::AllocationLocks>,
    /// Per-VC limit on open watches.
    pub watches: Arc<kplex_registry::quota::WatchLimits>,
    /// Per-VC request rates (`spec.limits.requestsPerSecond`).
    pub rates: Arc<crate::rates::RequestRates>,
    /// Fair scheduling of requests between VCs (and the LIST runtime).
    pub fairness: Arc<crate::fairness::Fairness>,
    /// Each VC's RBAC policy, kept in memory.
    pub rbac: Arc<kplex_rbac::Authorizer>,
    /// Each VC's catalog (the built-in one and its custom resources), kept
    /// in memory.
    pub crds: Arc<kplex_kinds::custom::Catalogs>,
}

impl Context {
    /// The store of `vc`'s objects (no admission: the caller's own reads
    /// and writes).
    pub fn vc_store(
        &self,
        vc: &crate::virtualclusters::VirtualCluster,
    ) -> Result<kplex_registry::generic::GenericStore, ApiError> {
        self.vc_store_serving(vc, self.catalog.clone())
    }

    /// The store of `vc`'s objects, serving `catalog` (the built-in one
    /// and the VC's custom resources).
    pub fn vc_store_serving(
        &self,
        vc: &crate::virtualclusters::VirtualCluster,
        catalog: Arc<kplex_registry::Catalog>,
    ) -> Result<kplex_registry::generic::GenericStore, ApiError> {
        Ok(kplex_registry::generic::GenericStore::new(
            self.store.clone(),
            vc.keyspace()?,
            catalog,
            self.allocations.clone(),
            self.watches.clone(),
        )
        .with_watch_limit(
            vc.limits
                .watches
                .map_or(self.watches.default_max(), |n| n as usize),
        ))
    }

    /// The URL of one VC.
    pub fn vc_url(&self, name: &str) -> String {
        format!("{}/clusters/{name}", self.url)
    }
}

/// A request whose body has been read (within [`MAX_BODY_BYTES`]).
#[derive(Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The connection's switch to another protocol, when the client asked
    /// for one (`exec`, `attach`, `port-forward`); taken by whoever answers
    /// with 101.
    pub upgrade: Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>,
}

impl Request {
    /// Takes the connection's upgrade (once).
    pub fn take_upgrade(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.upgrade.lock().expect("upgrade lock").take()
    }

    /// The query parameters, decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .into_owned()
            .collect()
    }

    /// The query parameters, for lookups by name.
    pub fn params(&self) -> Params {
        Params(self.query_pairs())
    }

    /// Whether the client asked for objects' metadata only
    /// (`as=PartialObjectMetadata` or `…List`, as metadata informers do).
    pub fn wants_metadata(&self) -> bool {
        self.headers
            .get_all(hyper::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("as=PartialObjectMetadata"))
            && !self.wants_table()
    }

    /// Whether the client asked for a `meta.k8s.io` Table.
    pub fn wants_table(&self) -> bool {
        self.headers
            .get_all(hyper::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("as=Table"))
    }

    /// The media type of the body (`application/json` when unstated).
    pub fn media_type(&self) -> String {
        let content_type = self
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json");
        content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// The body as a JSON object (protobuf bodies decoded to it): 415 for
    /// other media types, 400 if it is not an object.
    pub fn json_body(&self) -> Result<serde_json::Value, ApiError> {
        let media = self.media_type();
        if media == kplex_kinds::protobuf::MEDIA_TYPE {
            return kplex_kinds::protobuf::decode(&self.body);
        }
        if !matches!(
            media.as_str(),
            "application/json" | "application/yaml" | "" | "*/*"
        ) {
            return Err(ApiError {
                code: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                reason: "UnsupportedMediaType",
                message: format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {media})"),
                details: None,
            });
        }
        let value: serde_json::Value = if media == "application/yaml" {
            kplex_registry::yaml::to_json(&self.body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
            })?
        } else {
            serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            })?
        };
        if !value.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        Ok(value)
    }
}

/// Decoded query parameters.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a `resourceVersion` (400 if it is not one of ours).
pub fn parse_resource_version(value: &str) -> Result<kplex_storage::Revision, ApiError> {
    value
        .parse()
        .map(kplex_storage::Revision::new)
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {value:?}")))
}

/// Paths anyone may read, as kube-apiserver lets anonymous callers read
/// health and version (the `system:public-info-viewer` role).
fn is_public(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz" | "/version")
}

/// Serves one request from `caller` (`None`: no client certificate): it
/// is authenticated, waits for a seat of its priority level in its flow
/// (`fairness`: its VC, system component or the admin), and is served —
/// a LIST on the LIST runtime.
pub async fn handle<B>(
    ctx: &Arc<Context>,
    caller: Option<&Arc<Identity>>,
    req: hyper::Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = std::time::Instant::now();
    // (A clone of the URI shares its bytes: the labels below borrow it.)
    let uri = req.uri().clone();
    let vc = uri
        .path()
        .strip_prefix("/clusters/")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    let (verb, resource) =
        crate::metrics::classify(req.method(), uri.path(), uri.query().unwrap_or(""));
    let resource = crate::metrics::bounded_resource(resource, |plural| {
        plural == crate::virtualclusters::PLURAL
            || ctx.catalog.all().iter().any(|r| r.plural == plural)
    });
    let (mut response, level, waited) = fairly(ctx, caller, verb, req).await;
    response
        .headers_mut()
        .entry(hyper::header::DATE)
        .or_insert_with(crate::response::date);
    // A watch is counted when its stream starts, not when it ends.
    let code = response.status().as_u16();
    ctx.metrics
        .observe_request(verb, &resource, code, started.elapsed());
    tracing::debug!(
        vc = vc.unwrap_or(""),
        user = caller.map_or("", |c| c.user.as_str()),
        %verb,
        %resource,
        code,
        priority_level = level.map_or("exempt", crate::fairness::Level::name),
        waited_micros = waited.as_micros() as u64,
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

/// Authenticates, takes a seat, serves; the response, the priority level
/// and the wait for the seat.
async fn fairly<B>(
    ctx: &Arc<Context>,
    caller: Option<&Arc<Identity>>,
    verb: &str,
    req: hyper::Request<B>,
) -> (
    Response<Body>,
    Option<crate::fairness::Level>,
    std::time::Duration,
)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let zero = std::time::Duration::ZERO;
    // Health and version are exempt, as in kube-apiserver.
    if is_public(req.uri().path()) {
        return (serve(ctx.clone(), None, req).await, None, zero);
    }
    // No client certificate: a ServiceAccount token may say who it is.
    let caller = match (caller, crate::tokens::bearer(req.headers())) {
        (Some(caller), _) => Some(caller.clone()),
        (None, Some(token)) => Box::pin(crate::tokens::authenticate(ctx, token))
            .await
            .map(Arc::new),
        (None, None) => None,
    };
    let Some(caller) = caller else {
        return (
            crate::response::error_response(&ApiError::unauthorized()),
            None,
            zero,
        );
    };
    // A LIST of a VC that stores little in all is no heavier than a GET.
    let small = || match &caller.scope {
        Scope::VirtualCluster { uid } => ctx
            .store
            .usage()
            .peek(uid)
            .is_some_and(|used| used.bytes <= crate::fairness::LIGHT_VC_BYTES),
        _ => false,
    };
    let heavy = crate::fairness::is_heavy(verb, req.uri().query().unwrap_or("")) && !small();
    let (level, flow) = crate::fairness::classify(&caller, heavy);
    // The body is read before the seat is taken: a client sending it
    // slowly holds no seat.
    let (parts, body) = req.into_parts();
    let mut body = Box::pin(body);
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) => {
                let broken =
                    ApiError::bad_request(format!("reading the request body: {}", e.into()));
                return (crate::response::error_response(&broken), Some(level), zero);
            }
        };
        if read.len() + data.len() <= MAX_BODY_BYTES {
            read.extend_from_slice(&data);
            continue;
        }
        let refused = crate::response::error_response(&too_large());
        drop(read);
        // Over HTTP/2 an answer before the request's end is lost on many
        // clients (curl drops it with the stream): read the rest (bounded)
        // and answer after it; past the bound, keep the rest until the
        // answer is out (see `holding`).
        let drained = tokio::time::timeout(DRAIN_WAIT, async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(frame)) = body.frame().await {
                let len = frame.data_ref().map_or(0, |d| d.len());
                if len > left {
                    return false;
                }
                left -= len;
            }
            true
        })
        .await
        .unwrap_or(false);
        let response = if drained {
            refused
        } else {
            crate::response::holding(refused, Box::new(body))
        };
        return (response, Some(level), zero);
    }
    let req = hyper::Request::from_parts(parts, http_body_util::Full::new(Bytes::from(read)));
    let mut seat = match ctx.fairness.seat(level, flow).await {
        Ok(seat) => seat,
        Err(e) => return (crate::response::error_response(&e), Some(level), zero),
    };
    let response = if level.is_heavy() {
        let listed = ctx.fairness.run_list(serve(ctx.clone(), Some(caller), req));
        Box::pin(listed).await
    } else {
        serve(ctx.clone(), Some(caller), req).await
    };
    let streamed = response
        .extensions()
        .get::<crate::response::StreamedBytes>()
        .map(|b| b.0 as u64);
    if let Some(bytes) = streamed.or(hyper::body::Body::size_hint(response.body()).exact()) {
        seat.charge(bytes);
    }
    let waited = seat.waited;
    // A list of one chunk is whole already: nothing is left to produce.
    let whole = hyper::body::Body::size_hint(response.body())
        .exact()
        .is_some();
    if level.is_heavy() && streamed.is_some() && !whole {
        // Written on the LIST runtime, under this seat.
        let (parts, body) = response.into_parts();
        let body = ctx.fairness.produce(body, seat);
        return (Response::from_parts(parts, body), Some(level), waited);
    }
    (response, Some(level), waited)
}

/// How much more of a body over the cap is read (and dropped) so that its
/// 413 comes after the request's end, and for how long at most.
const DRAIN_BYTES: usize = 16 * MAX_BODY_BYTES;
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A request body, whole, within [`MAX_BODY_BYTES`] (413 past it).
async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Ok(Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(body_error)?
        .to_bytes())
}

/// 413: a body over [`MAX_BODY_BYTES`].
fn too_large() -> ApiError {
    ApiError {
        code: StatusCode::PAYLOAD_TOO_LARGE,
        reason: "RequestEntityTooLarge",
        message: format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        details: None,
    }
}

/// Why a request body could not be read: over the cap (413), or broken.
fn body_error(e: Box<dyn std::error::Error + Send + Sync>) -> ApiError {
    if e.is::<http_body_util::LengthLimitError>() {
        too_large()
    } else {
        ApiError::bad_request(format!("reading the request body: {e}"))
    }
}

/// Routes and serves a request (warnings collected into its headers).
async fn serve<B>(
    ctx: Arc<Context>,
    caller: Option<Arc<Identity>>,
    req: hyper::Request<B>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    kplex_registry::warnings::collect(async {
        // Boxed: the layers above (the warnings' scope, the seat, hyper's
        // task) each hold this future, and would each hold a copy of it.
        match Box::pin(route(&ctx, caller.as_deref(), req)).await {
            Ok(response) => response,
            Err(e) => crate::response::error_response(&e),
        }
    })
    .await
}

async fn route<B>(
    ctx: &Context,
    caller: Option<&Identity>,
    mut req: hyper::Request<B>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if is_public(&path) {
        return Box::pin(public(ctx, req.method(), &path)).await;
    }
    // (Authenticated before its seat was taken: see `fairly`.)
    let caller = caller.ok_or_else(ApiError::unauthorized)?;
    let wants_upgrade = req
        .headers()
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("upgrade"));
    let upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let request = Request {
        method: parts.method,
        path: path.clone(),
        query,
        headers: parts.headers,
        body,
        upgrade: Arc::new(std::sync::Mutex::new(upgrade)),
    };
    if let Some(rest) = path.strip_prefix("/clusters/") {
        // The VC's name, and the rest of the path from its `/` on.
        let (name, tenant_path) = rest
            .find('/')
            .map_or((rest, "/"), |slash| rest.split_at(slash));
        return tenant(ctx, caller, name, tenant_path, &request).await;
    }
    if let Some(rest) = path.strip_prefix(kplex_api::names::SYSTEM_CLUSTER_PATH) {
        if rest.is_empty() || rest.starts_with('/') {
            return Box::pin(crate::system::system_cluster(ctx, caller, rest, &request)).await;
        }
    }
    // A VC's credential on a path without `/clusters/<vc>` (an in-cluster
    // client knows only the bare URL) is served by its VC.
    if let Scope::VirtualCluster { uid } = &caller.scope {
        let name = ctx.registry.name_of(uid).ok_or_else(|| {
            ApiError::forbidden(format!(
                "User \"{}\" cannot access the admin API: the credential belongs to a virtual cluster",
                caller.user
            ))
        })?;
        return tenant(ctx, caller, &name, &path, &request).await;
    }
    if caller.scope != Scope::Admin {
        let whose = match caller.scope {
            Scope::System { .. } => "a system component",
            _ => "a virtual cluster",
        };
        return Err(ApiError::forbidden(format!(
            "User \"{}\" cannot access the admin API: the credential belongs to {whose}",
            caller.user
        )));
    }
    if request.path == "/metrics" {
        let vcs = ctx.registry.count().await?;
        return Ok(crate::response::bytes_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(
                ctx.metrics.render(vcs)
                    + &ctx.store.stats().prometheus()
                    + &ctx.fairness.prometheus(),
            ),
        ));
    }
    Box::pin(crate::admin::handle(ctx, request)).await
}

/// A tenant's cluster. The credential must name this VC's UID.
async fn tenant(
    ctx: &Context,
    caller: &Identity,
    name: &str,
    path: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let refused = || {
        ApiError::forbidden(format!(
            "User \"{}\" cannot access virtual cluster \"{name}\"",
            caller.user
        ))
    };
    // kubectl's --raw spells `*` percent-encoded; both mean every VC.
    if name == kplex_api::names::ALL_CLUSTERS || name.eq_ignore_ascii_case("%2A") {
        let across = crate::system::across(ctx, caller, path, req, ctx.stopping.subscribe());
        return Box::pin(across).await;
    }
    let writes = req.method != Method::GET;
    let (vc, _write) = match &caller.scope {
        Scope::VirtualCluster { uid } => {
            // Before the lookup, so the VC's deletion waits for this write.
            let write = writes.then(|| ctx.registry.begin_write(uid));
            let vc = ctx.registry.get(name).await?.ok_or_else(refused)?;
            if vc.uid() != uid {
                return Err(refused());
            }
            // Its tenants' request rate (the system components' requests
            // on its behalf are the platform's, not counted).
            ctx.rates.admit(&vc)?;
            (vc, write)
        }
        // A system component may reach every VC. Its write is marked after
        // the lookup, then the VC looked up again: a deletion that removed
        // the record meanwhile is refused here, one that removes it later
        // waits for this write.
        Scope::System { .. } => {
            let vc = ctx.registry.get(name).await?.ok_or_else(refused)?;
            let write = writes.then(|| ctx.registry.begin_write(vc.uid()));
            if writes {
                let again = ctx.registry.get(name).await?;
                if again.is_none_or(|again| again.uid() != vc.uid()) {
                    return Err(refused());
                }
            }
            (vc, write)
        }
        Scope::Admin => return Err(refused()),
    };
    // One spelling per path: what the authorizer reads is what is served
    // (an empty, `.` or `..` segment could be read one way by one and
    // another by the other).
    if path != "/"
        && path
            .strip_prefix('/')
            .is_none_or(|p| p.split('/').any(|s| s.is_empty() || s == "." || s == ".."))
    {
        return Err(ApiError::not_found(
            "the server could not find the requested resource",
        ));
    }
    // The VC's RBAC, from memory; its tenants ask it about every request.
    let rbac = ctx
        .rbac
        .get(vc.uid())
        .await
        .map_err(kplex_registry::error::from_store)?;
    let tenant_caller = matches!(caller.scope, Scope::VirtualCluster { .. });
    let impersonated = if tenant_caller {
        crate::authz::impersonate(&rbac, caller, &req.headers)?
    } else {
        None
    };
    let caller = impersonated.as_ref().unwrap_or(caller);
    if tenant_caller {
        crate::authz::authorize(&rbac, caller, &req.method, path, &req.query)?;
    }
    if is_public(path) {
        return Box::pin(public(ctx, &req.method, path)).await;
    }
    let catalog: Arc<kplex_registry::Catalog> = Arc::clone(
        &*ctx
            .crds
            .get(vc.uid())
            .await
            .map_err(kplex_registry::error::from_store)?,
    );
    let store = ctx.vc_store_serving(&vc, catalog.clone())?;
    // Every write into the VC, whoever makes it (a tenant, the shared
    // controllers), meets the VC's isolation policy; a tenant's RBAC
    // writes grant no more than it holds. (A GET writes nothing.)
    let store = if writes {
        let admission: Arc<dyn kplex_registry::generic::Admission> =
            crate::policy::VcPolicy::new(vc.name(), vc.policy.clone());
        let admission: Arc<dyn kplex_registry::generic::Admission> =
            Arc::new(kplex_kinds::custom::NameConflicts { then: admission });
        let admission = if tenant_caller {
            Arc::new(crate::authz::Escalation {
                authorizer: ctx.rbac.clone(),
                vc: vc.uid().to_owned(),
                caller: caller.clone(),
                then: admission,
            })
        } else {
            admission
        };
        store.with_admission(admission)
    } else {
        store
    };
    let store = match caller.scope {
        Scope::System { .. } => store.with_system_watches(),
        _ => store,
    };
    // The rarer paths' futures are boxed: each request's future (copied
    // when hyper spawns it) is only as large as the common path's.
    if crate::authz::is_default_path(path) {
        let overlay =
            crate::authz::defaults_overlay(&ctx.catalog, &store, &rbac, path, req, &ctx.stopping);
        if let Some(served) = Box::pin(overlay).await {
            return served;
        }
    }
    if let Some((ns, account)) = token_request_path(path) {
        return Box::pin(crate::tokens::token_request(
            &ctx.tokens,
            vc.uid(),
            &store,
            &ctx.catalog,
            ns,
            account,
            req,
        ))
        .await;
    }
    if path == TOKEN_REVIEWS {
        if req.method != Method::POST {
            return Err(crate::tenant::method_not_allowed(&req.method));
        }
        let info = ctx
            .catalog
            .find("authentication.k8s.io", "v1", "tokenreviews")
            .expect("catalogued");
        let object = crate::tenant::review_object(info, req)?;
        let review =
            crate::tokens::review(&ctx.tokens, vc.uid(), &store, &ctx.catalog, &object["spec"]);
        let status = Box::pin(review).await?;
        let answer = crate::reviews::answered(object, None, status);
        return Ok(json_response(StatusCode::CREATED, &answer));
    }
    if let Some((ns, pod, sub)) = streamed_pod_path(path) {
        if !crate::proxy::allowed(sub, &req.method) {
            return Err(crate::tenant::method_not_allowed(&req.method));
        }
        let pods = ctx.catalog.find("", "v1", "pods").expect("catalogued");
        // The Pod must exist in this VC: nothing else of the host is reached.
        let object = Box::pin(store.get(pods, Some(ns), pod)).await?;
        let uid = object["metadata"]["uid"].as_str().map(str::to_owned);
        return Box::pin(crate::proxy::to_host(ctx, &vc, ns, pod, uid, sub, req)).await;
    }
    let span = tracing::debug_span!("tenant", vc = name, method = %req.method, path);
    // A write to the VC's CRDs: the CRDs it may remove are read first, so
    // that their objects go once they are gone; its answer waits until
    // the VC's catalog has it.
    let crd_write = crd_request(path).filter(|_| req.method != Method::GET);
    let crds = || {
        ctx.catalog
            .find(
                kplex_kinds::custom::GROUP,
                "v1",
                kplex_kinds::custom::PLURAL,
            )
            .expect("catalogued")
    };
    let before: Vec<serde_json::Value> = match crd_write {
        Some(Some(name)) => Box::pin(store.get(crds(), None, name))
            .await
            .ok()
            .into_iter()
            .collect(),
        Some(None) if req.method == Method::DELETE => {
            Box::pin(store.list(crds(), None, &Default::default()))
                .await
                .map(|page| page.items)
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let served = crate::tenant::handle(
        &catalog,
        &store,
        caller,
        Some(&rbac),
        path,
        req,
        ctx.stopping.subscribe(),
    )
    .instrument(span)
    .await;
    let Some(named) = crd_write else {
        return served;
    };
    let dry_run = req.params().get("dryRun").is_some_and(|v| !v.is_empty());
    if dry_run || !matches!(&served, Ok(r) if r.status().is_success()) {
        return served;
    }
    // A create names its CRD in the body.
    let created = (req.method == Method::POST)
        .then(|| req.json_body().ok())
        .flatten()
        .and_then(|body| body["metadata"]["name"].as_str().map(str::to_owned));
    let named = named.or(created.as_deref());
    Box::pin(settle_crds(ctx, &vc, &store, crds(), named, &before)).await;
    served
}

/// `/apis/apiextensions.k8s.io/v1/customresourcedefinitions[/<name>[/status]]`:
/// `Some(name)`, or `None` for the collection.
fn crd_request(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")?;
    match rest.strip_prefix('/') {
        None if rest.is_empty() => Some(None),
        Some(rest) => Some(Some(rest.split('/').next().unwrap_or(rest))),
        None => None,
    }
}

/// After a write to a VC's CRDs: the objects of each CRD it removed are
/// deleted, and the VC's catalog has caught up with the CRD written
/// (bounded: the write is done either way).
async fn settle_crds(
    ctx: &Context,
    vc: &crate::virtualclusters::VirtualCluster,
    store: &kplex_registry::generic::GenericStore,
    crds: &kplex_registry::ResourceInfo,
    named: Option<&str>,
    before: &[serde_json::Value],
) {
    for crd in before {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        if matches!(store.get(crds, None, name).await, Err(e) if e.code == StatusCode::NOT_FOUND) {
            delete_custom_objects(ctx, vc, crd).await;
        }
    }
    let Some(name) = named else {
        return;
    };
    let now = store.get(crds, None, name).await.ok();
    let written = now
        .as_ref()
        .and_then(|crd| crd["metadata"]["resourceVersion"].as_str())
        .and_then(|rv| rv.parse::<u64>().ok());
    let plural = name
        .split_once('.')
        .map(|(plural, group)| (group.to_owned(), plural.to_owned()));
    let caught_up = ctx
        .crds
        .until(
            vc.uid(),
            std::time::Duration::from_secs(5),
            |catalog, seen| match (written, &plural) {
                (Some(revision), _) => seen.get() >= revision,
                (None, Some((group, plural))) => catalog.find_resource(group, plural).is_none(),
                (None, None) => true,
            },
        )
        .await;
    if !matches!(caught_up, Ok(true)) {
        tracing::warn!(
            vc = vc.name(),
            crd = name,
            "the VC's catalog did not catch up with a CRD's write in 5 s"
        );
    }
}

/// Deletes every object of a deleted CRD's resource in its VC, a batch
/// at a time.
async fn delete_custom_objects(
    ctx: &Context,
    vc: &crate::virtualclusters::VirtualCluster,
    crd: &serde_json::Value,
) {
    let group = crd["spec"]["group"].as_str().unwrap_or_default();
    let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
    let Ok(prefix) = vc.keyspace().and_then(|k| {
        k.resource_prefix(group, plural)
            .map_err(kplex_registry::error::from_store)
    }) else {
        return;
    };
    loop {
        match ctx.store.delete_batch(&prefix, 1000).await {
            Ok(deleted) if deleted.more => continue,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, vc = vc.name(), group, plural, "deleting a CRD's objects failed");
                return;
            }
        }
    }
}

/// `/api/v1/namespaces/<ns>/pods/<name>/<sub>` for a subresource the
/// host's kubelet serves: (ns, name, sub).
fn streamed_pod_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut segments = rest.splitn(5, '/');
    match [(); 5].map(|_| segments.next()) {
        [Some(ns), Some("pods"), Some(name), Some(sub), None]
            if crate::proxy::STREAMED.contains(&sub) =>
        {
            Some((ns, name, sub))
        }
        _ => None,
    }
}

/// `/api/v1/namespaces/<ns>/serviceaccounts/<name>/token`: (ns, name).
fn token_request_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut segments = rest.splitn(5, '/');
    match [(); 5].map(|_| segments.next()) {
        [Some(ns), Some("serviceaccounts"), Some(name), Some("token"), None] => Some((ns, name)),
        _ => None,
    }
}

async fn public(ctx: &Context, method: &Method, path: &str) -> Result<Response<Body>, ApiError> {
    if method != Method::GET {
        return Err(ApiError {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported on {path}"),
            details: None,
        });
    }
    Ok(match path {
        "/readyz" => match ctx.store.current_revision().await {
            Ok(_) => text_response(StatusCode::OK, "ok"),
            Err(e) => {
                tracing::warn!(error = %e, "readyz: storage not answering");
                text_response(StatusCode::INTERNAL_SERVER_ERROR, "storage: not ready")
            }
        },
        "/version" => json_response(StatusCode::OK, &version()),
        _ => text_response(StatusCode::OK, "ok"),
    })
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
