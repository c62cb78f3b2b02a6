//! The Kubernetes API of one VC: discovery, and every catalogued resource
//! through the generic store.

use kplex_registry::raw::Object;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use kplex_storage::{Event, Store};
use serde_json::{json, Value};

use crate::discovery::{aggregated, aggregated_version, group_list, resource_list};
use crate::handler::Request;
use crate::response::{bytes_response, json_response, Body};
use kplex_certs::Identity;
use kplex_registry::error::{from_store, ApiError};
use kplex_registry::generic::{
    DeleteOptions, FieldValidation, GenericStore, ListOptions, Namespace, WriteOptions,
};
use kplex_registry::selectors::{FieldSelector, LabelSelector};
use kplex_registry::table::render as render_table;
use kplex_registry::{Catalog, ResourceInfo};

mod subresources;

use subresources::{bind, bind_named, component_statuses, evict, scale, set_addresses};

/// What a watch request asked for.
#[derive(Debug, Clone, Copy)]
pub struct WatchFlags<'a> {
    /// Events as one-row Tables (`Accept: …;as=Table`).
    pub table: bool,
    /// Events carrying the objects' metadata only
    /// (`Accept: …;as=PartialObjectMetadata`).
    pub metadata: bool,
    /// Where to start (`None`/`0`: current state first).
    pub resource_version: Option<&'a str>,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true` (watch-list): current state, then a bookmark.
    pub initial_events: bool,
}

/// A collection GET: a list, or a watch when `watch` is set.
pub struct CollectionRequest<'a> {
    /// Selectors, page and revision of the list (or the watch's initial state).
    pub opts: ListOptions,
    /// Set for a watch.
    pub watch: Option<WatchFlags<'a>>,
}

/// Reads a collection GET's query: selectors (400 when malformed or for a
/// field the kind cannot be selected by), `limit`, `continue`,
/// `resourceVersion`/`resourceVersionMatch`, and the watch parameters.
pub fn collection_request<'a>(
    info: &ResourceInfo,
    req: &Request,
    params: &'a crate::handler::Params,
) -> Result<CollectionRequest<'a>, ApiError> {
    let q = |k: &str| params.get(k);
    let mut opts = ListOptions {
        labels: LabelSelector::parse(q("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(
            q("fieldSelector").unwrap_or(""),
            &info.kind,
            info.strategy.field_labels(),
        )?,
        limit: match q("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse()
                .map_err(|_| ApiError::bad_request("limit must be a number"))?,
        },
        continue_token: q("continue").filter(|c| !c.is_empty()).map(str::to_owned),
        exact_revision: None,
        not_older_than: None,
        any_revision: false,
    };
    if matches!(q("watch"), Some("1" | "true")) {
        let flags = WatchFlags {
            table: req.wants_table(),
            metadata: req.wants_metadata(),
            resource_version: q("resourceVersion"),
            timeout: q("timeoutSeconds")
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs),
            bookmarks: matches!(q("allowWatchBookmarks"), Some("true" | "1")),
            initial_events: matches!(q("sendInitialEvents"), Some("true" | "1")),
        };
        return Ok(CollectionRequest {
            opts,
            watch: Some(flags),
        });
    }
    let rv = q("resourceVersion").filter(|v| !v.is_empty());
    let parse_rv = crate::handler::parse_resource_version;
    match (q("resourceVersionMatch").filter(|v| !v.is_empty()), rv) {
        (Some("Exact"), Some(v)) if v != "0" => opts.exact_revision = Some(parse_rv(v)?),
        (Some("Exact"), _) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch=Exact needs a resourceVersion other than 0",
            ))
        }
        (Some("NotOlderThan") | None, Some(v)) if v != "0" => {
            opts.not_older_than = Some(parse_rv(v)?)
        }
        (Some("NotOlderThan") | None, Some(_)) => opts.any_revision = true,
        (Some("NotOlderThan") | None, None) => {}
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "unsupported resourceVersionMatch {other:?}"
            )))
        }
    }
    Ok(CollectionRequest { opts, watch: None })
}

/// Serves `path` (below `/clusters/<vc>`) for this VC.
pub async fn handle(
    catalog: &Catalog,
    store: &GenericStore,
    caller: &Identity,
    policy: Option<&kplex_rbac::Policy>,
    path: &str,
    req: &Request,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(served) = discovery(catalog, path, req) {
        return served;
    }
    match segments.as_slice() {
        ["api", "v1", rest @ ..] => {
            resource(
                catalog, store, caller, policy, "", "v1", rest, req, stopping,
            )
            .await
        }
        ["apis", group, version, rest @ ..] => {
            resource(
                catalog, store, caller, policy, group, version, rest, req, stopping,
            )
            .await
        }
        _ => Err(ApiError::not_found(
            "the server could not find the requested resource",
        )),
    }
}

/// Discovery and OpenAPI documents (GET only) of a cluster serving
/// `catalog`; `None` when `path` is not one of them.
pub fn discovery(
    catalog: &Catalog,
    path: &str,
    req: &Request,
) -> Option<Result<Response<Body>, ApiError>> {
    if req.method != Method::GET {
        return None;
    }
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let not_found = || ApiError::not_found("the server could not find the requested resource");
    // Every discovery and OpenAPI document carries an ETag (304 when the
    // client has it already).
    let ok = |document: Value| {
        crate::response::cacheable(
            &req.headers,
            "application/json",
            Bytes::from(kplex_registry::error::to_json(&document)),
        )
    };
    let served = match segments.as_slice() {
        [root @ ("api" | "apis")] => {
            if let Some(version) = aggregated_version(req) {
                return Some(Ok(aggregated(
                    catalog,
                    *root == "api",
                    version,
                    &req.headers,
                )));
            }
            Ok(ok(if *root == "api" {
                json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [],
                })
            } else {
                group_list(catalog)
            }))
        }
        ["apis", group] => {
            let g = group_list(catalog);
            let found = g["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|x| x["name"] == *group).cloned());
            found.ok_or_else(not_found).map(|mut found| {
                found["kind"] = json!("APIGroup");
                found["apiVersion"] = json!("v1");
                ok(found)
            })
        }
        ["openapi", "v2"] => Ok(bytes_response(
            StatusCode::OK,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            Bytes::new(),
        )),
        ["openapi", "v3"] => {
            // The cluster's URL prefix: the request path minus the part below it.
            let base = req.path.strip_suffix(path).unwrap_or("");
            Ok(ok(crate::openapi::root(catalog, base)))
        }
        ["openapi", "v3", "api", version] => openapi_document(catalog, "", version, req),
        ["openapi", "v3", "apis", group, version] => openapi_document(catalog, group, version, req),
        ["api", "v1"] => Ok(ok(resource_list(catalog, "", "v1"))),
        ["apis", group, version] => {
            if !catalog.group_versions().contains(&(*group, *version)) {
                return Some(Err(not_found()));
            }
            Ok(ok(resource_list(catalog, group, version)))
        }
        _ => return None,
    };
    Some(served)
}

fn openapi_document(
    catalog: &Catalog,
    group: &str,
    version: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let doc = crate::openapi::document(catalog, group, version)
        .ok_or_else(|| ApiError::not_found("the server could not find the requested resource"))?;
    Ok(crate::response::cacheable(
        &req.headers,
        "application/json",
        Bytes::from(doc.to_string()),
    ))
}

fn ok(body: Value) -> Response<Body> {
    json_response(StatusCode::OK, &body)
}

/// Where a resource path points.
struct Target<'a> {
    info: &'a ResourceInfo,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    /// `status` or `scale`.
    sub: Option<&'a str>,
}

fn target<'a>(
    catalog: &'a Catalog,
    group: &str,
    version: &str,
    rest: &[&'a str],
) -> Result<Target<'a>, ApiError> {
    let not_found = || ApiError::not_found("the server could not find the requested resource");
    let find = |plural: &str| catalog.find(group, version, plural).ok_or_else(not_found);
    let namespaced = |plural: &str| {
        let info = find(plural)?;
        if info.namespaced {
            Ok(info)
        } else {
            Err(not_found())
        }
    };
    let cluster = |plural: &str| {
        let info = find(plural)?;
        if info.namespaced {
            Err(not_found())
        } else {
            Ok(info)
        }
    };
    let t = match rest {
        [plural] => Target {
            info: find(plural)?,
            namespace: None,
            name: None,
            sub: None,
        },
        // /api/v1/namespaces/<name>/status is the namespace's own subresource.
        ["namespaces", name, sub @ ("status" | "scale")] if group.is_empty() => Target {
            info: cluster("namespaces")?,
            namespace: None,
            name: Some(name),
            sub: Some(sub),
        },
        ["namespaces", ns, plural] => Target {
            info: namespaced(plural)?,
            namespace: Some(ns),
            name: None,
            sub: None,
        },
        ["namespaces", ns, plural, name] => Target {
            info: namespaced(plural)?,
            namespace: Some(ns),
            name: Some(name),
            sub: None,
        },
        ["namespaces", ns, plural, name, sub] => Target {
            info: namespaced(plural)?,
            namespace: Some(ns),
            name: Some(name),
            sub: Some(sub),
        },
        [plural, name] => Target {
            info: cluster(plural)?,
            namespace: None,
            name: Some(name),
            sub: None,
        },
        [plural, name, sub] => Target {
            info: cluster(plural)?,
            namespace: None,
            name: Some(name),
            sub: Some(sub),
        },
        _ => return Err(not_found()),
    };
    let served = match t.sub {
        None => true,
        Some("status") => t.info.has_status(),
        Some("scale") => t.info.has_scale(),
        Some("binding" | "eviction") => t.info.kind == "Pod" && t.info.group.is_empty(),
        // kplex's own: the syncer gives a Service the host's addresses.
        Some("clusterip") => t.info.kind == "Service" && t.info.group.is_empty(),
        Some(_) => false,
    };
    if !served {
        return Err(not_found());
    }
    Ok(t)
}

/// A list's `metadata`: its revision, and where the next page starts.
pub(crate) fn list_metadata(
    revision: kplex_storage::Revision,
    continue_token: Option<String>,
) -> Value {
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    metadata
}

/// A `<Kind>List`. (The items are moved in: `json!` would copy each one.)
fn list_of(info: &ResourceInfo, metadata: Value, items: Vec<Value>) -> Value {
    let mut list = serde_json::Map::new();
    list.insert("kind".into(), json!(format!("{}List", info.kind)));
    list.insert("apiVersion".into(), json!(info.api_version()));
    list.insert("metadata".into(), metadata);
    list.insert("items".into(), Value::Array(items));
    Value::Object(list)
}

/// 405 for a method the resource does not serve.
pub(crate) fn method_not_allowed(method: &Method) -> ApiError {
    ApiError {
        code: StatusCode::METHOD_NOT_ALLOWED,
        reason: "MethodNotAllowed",
        message: format!(
            "the server does not allow this method on the requested resource ({method})"
        ),
        details: None,
    }
}

/// The review object `req` creates, decoded and validated as `info`'s kind.
pub(crate) fn review_object(info: &ResourceInfo, req: &Request) -> Result<Value, ApiError> {
    let mut object = req.json_body()?;
    kplex_registry::meta::check_type(info, &mut object)?;
    let params = req.params();
    kplex_registry::generic::validate(
        info,
        &mut object,
        FieldValidation::parse(params.get("fieldValidation"))?,
    )?;
    Ok(object)
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    catalog: &Catalog,
    store: &GenericStore,
    caller: &Identity,
    policy: Option<&kplex_rbac::Policy>,
    group: &str,
    version: &str,
    rest: &[&str],
    req: &Request,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let t = target(catalog, group, version, rest)?;
    let params = req.params();
    let q = |k: &str| params.get(k);
    let dry_run = match q("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported dryRun value {other:?}"
            )))
        }
    };
    if !t.info.stored {
        return match (t.info.group.as_str(), t.info.kind.as_str()) {
            ("", "ComponentStatus") => Box::pin(component_statuses(store, &t, req)).await,
            ("", "Binding") => Box::pin(bind_named(catalog, store, &t, req, dry_run)).await,
            // A review: created on the collection, answered, not stored.
            _ if req.method != Method::POST || t.name.is_some() => {
                Err(method_not_allowed(&req.method))
            }
            _ if t.info.namespaced && t.namespace.is_none() => Err(ApiError::not_found(
                "the server could not find the requested resource",
            )),
            _ => {
                let object = review_object(t.info, req)?;
                let answer = crate::reviews::answer(t.info, caller, policy, t.namespace, object)?;
                Ok(json_response(StatusCode::CREATED, &answer))
            }
        };
    }
    let apply =
        req.method == Method::PATCH && req.media_type() == kplex_registry::patch::APPLY_MEDIA_TYPE;
    // An apply names its manager; other writes default to the client's
    // User-Agent.
    let user_agent = req
        .headers
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .filter(|_| !apply);
    let write = WriteOptions {
        dry_run,
        validation: FieldValidation::parse(q("fieldValidation"))?,
        status: t.sub == Some("status"),
        manager: if matches!(req.method, Method::POST | Method::PUT | Method::PATCH) {
            kplex_registry::managed::Manager::of_request(q("fieldManager"), user_agent)?
        } else {
            kplex_registry::managed::Manager::Server
        },
    };
    let force = match (q("force"), apply) {
        (None, _) => false,
        (Some("true"), true) => true,
        (Some("" | "false"), true) => false,
        (Some(_), false) if req.method == Method::PATCH => {
            return Err(ApiError::field(
                "PatchOptions.meta.k8s.io",
                "",
                "force",
                "Forbidden: may not be specified for non-apply patch",
            ))
        }
        (Some(_), false) => false,
        (Some(other), true) => {
            return Err(ApiError::bad_request(format!(
                "force must be true or false, not {other:?}"
            )))
        }
    };
    if let (Some("clusterip"), Some(name)) = (t.sub, t.name) {
        if !matches!(caller.scope, kplex_certs::Scope::System { .. }) {
            return Err(ApiError::forbidden(format!(
                "User \"{}\" cannot set the addresses of services: only kplex's syncer may",
                caller.user
            )));
        }
        if req.method != Method::PUT {
            return Err(method_not_allowed(&req.method));
        }
        return Box::pin(set_addresses(store, &t, name, req)).await;
    }
    if let (Some(sub @ ("binding" | "eviction")), Some(name)) = (t.sub, t.name) {
        if req.method != Method::POST {
            return Err(method_not_allowed(&req.method));
        }
        return match sub {
            "binding" => Box::pin(bind(store, &t, name, req, dry_run)).await,
            _ => Box::pin(evict(catalog, store, &t, name, req, dry_run)).await,
        };
    }
    if t.sub.is_some() && !matches!(req.method, Method::GET | Method::PUT | Method::PATCH) {
        return Err(method_not_allowed(&req.method));
    }
    if t.sub == Some("scale") {
        if let Some(name) = t.name {
            return Box::pin(scale(store, &t, name, req, write)).await;
        }
    }
    let labels = || LabelSelector::parse(q("labelSelector").unwrap_or(""));
    let fields = || {
        FieldSelector::parse(
            q("fieldSelector").unwrap_or(""),
            &t.info.kind,
            t.info.strategy.field_labels(),
        )
    };
    // A DELETE may carry `DeleteOptions` (dryRun, preconditions), some of
    // them as query parameters.
    let delete_options = || {
        kplex_registry::generic::check_delete_parameters(
            q("propagationPolicy"),
            q("gracePeriodSeconds"),
        )?;
        let body = if req.body.is_empty() {
            None
        } else {
            Some(req.json_body()?)
        };
        let mut options = DeleteOptions::from_body(body.as_ref(), dry_run)?;
        if let Some(policy) =
            q("propagationPolicy").and_then(kplex_registry::generic::Propagation::parse)
        {
            options.propagation = Some(policy);
        }
        Ok::<_, ApiError>(options)
    };
    match (&req.method, t.name) {
        (&Method::DELETE, None) => {
            if !t.info.verbs().contains(&"deletecollection") {
                return Err(method_not_allowed(&req.method));
            }
            // deletecollection: every object the selectors match.
            let delete = delete_options()?;
            let opts = ListOptions {
                labels: labels()?,
                fields: fields()?,
                ..Default::default()
            };
            let page = Box::pin(store.list(t.info, t.namespace, &opts)).await?;
            let mut deleted = Vec::with_capacity(page.items.len());
            for item in &page.items {
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let ns = item["metadata"]["namespace"].as_str();
                match Box::pin(store.delete(t.info, ns, name, &delete)).await {
                    Ok(object) => deleted.push(object),
                    // Gone meanwhile: nothing left to delete.
                    Err(e) if e.code == StatusCode::NOT_FOUND => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(ok(list_of(t.info, json!({}), deleted)))
        }
        (&Method::GET, None) => {
            let CollectionRequest { opts, watch: flags } =
                collection_request(t.info, req, &params)?;
            if let Some(flags) = flags {
                return Box::pin(watch(
                    store,
                    t.info,
                    t.namespace,
                    opts,
                    stopping,
                    flags,
                    Vec::new(),
                ))
                .await;
            }
            let plain = !req.wants_table() && !req.wants_metadata() && !t.info.converts();
            if plain {
                // The common case: the stored bytes, streamed.
                let page = Box::pin(store.list_stored(t.info, t.namespace, &opts)).await?;
                let metadata = list_metadata(page.revision, page.continue_token);
                return Ok(crate::response::stored_list(
                    &format!("{}List", t.info.kind),
                    &t.info.api_version(),
                    &metadata,
                    page.items,
                ));
            }
            let page = Box::pin(store.list(t.info, t.namespace, &opts)).await?;
            let metadata = list_metadata(page.revision, page.continue_token);
            Ok(list_response(t.info, req, metadata, page.items))
        }
        (&Method::GET, Some(name))
            if !req.wants_table() && !req.wants_metadata() && !t.info.converts() =>
        {
            let stored = store.get_stored(t.info, t.namespace, name).await?;
            Ok(crate::response::bytes_response(
                StatusCode::OK,
                "application/json",
                kplex_registry::raw::object_bytes(&stored)?,
            ))
        }
        (&Method::GET, Some(name)) => {
            let object = Box::pin(store.get(t.info, t.namespace, name)).await?;
            Ok(if req.wants_table() {
                ok(render_table(t.info, &[object]))
            } else if req.wants_metadata() {
                ok(partial(object))
            } else {
                ok(object)
            })
        }
        (&Method::POST, None) => {
            if t.info.namespaced && t.namespace.is_none() {
                return Err(ApiError::not_found(
                    "the server could not find the requested resource",
                ));
            }
            let body = object_body(req, &write)?;
            if let Some(ns) = t.namespace {
                let admitted = crate::admission::admit_create(
                    store,
                    catalog,
                    t.info,
                    ns,
                    &body,
                    write.dry_run,
                );
                Box::pin(admitted).await?;
            }
            let object = Box::pin(store.create(t.info, t.namespace, body, write)).await?;
            Ok(json_response(StatusCode::CREATED, &object))
        }
        (&Method::PUT, Some(name)) => {
            let body = object_body(req, &write)?;
            let object = Box::pin(store.update(t.info, t.namespace, name, body, write)).await?;
            Ok(ok(object))
        }
        (&Method::PATCH, Some(name)) if apply => {
            let applied = store.apply(t.info, t.namespace, name, &req.body, force, write);
            let (object, created) = Box::pin(applied).await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &object))
        }
        (&Method::PATCH, Some(name)) => {
            let media = req.media_type();
            let kind = kplex_registry::patch::PatchType::from_media_type(&media)?;
            let patched = store.patch(t.info, t.namespace, name, kind, &req.body, write);
            let object = Box::pin(patched).await?;
            Ok(ok(object))
        }
        (&Method::DELETE, Some(name)) => {
            let options = delete_options()?;
            let object = Box::pin(store.delete(t.info, t.namespace, name, &options)).await?;
            if object["metadata"]["deletionTimestamp"].is_string() {
                // Deferred (finalizers, a terminating namespace): 202 with
                // the object as it now stands, as kube-apiserver answers.
                return Ok(json_response(StatusCode::ACCEPTED, &object));
            }
            Ok(ok(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": t.info.group,
                    "kind": t.info.plural,
                    "uid": object["metadata"]["uid"],
                },
            })))
        }
        (method, _) => Err(ApiError {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!(
                "the server does not allow this method on the requested resource ({method})"
            ),
            details: None,
        }),
    }
}

/// A list of `items` as the request asks for it: a Table, metadata only,
/// or whole objects. A Table carries the list's metadata too: kubectl
/// watches from its resourceVersion (`get -w`) and pages by its continue
/// token.
pub(crate) fn list_response(
    info: &ResourceInfo,
    req: &Request,
    metadata: Value,
    items: Vec<Value>,
) -> Response<Body> {
    if req.wants_table() {
        let mut table = render_table(info, &items);
        table["metadata"] = metadata;
        return ok(table);
    }
    if req.wants_metadata() {
        return ok(partial_list(metadata, items));
    }
    ok(list_of(info, metadata, items))
}

/// A create's or update's object, with its JSON checked for duplicate
/// fields as `fieldValidation` asks.
fn object_body(req: &Request, write: &WriteOptions) -> Result<Value, ApiError> {
    let object = req.json_body()?;
    if matches!(req.media_type().as_str(), "application/json" | "" | "*/*") {
        kplex_registry::duplicates::check(&req.body, write.validation)?;
    }
    Ok(object)
}

/// A watch: newline-delimited JSON events, flushed per event. Without a
/// `resourceVersion` (or `0`) the current objects come first as ADDED,
/// `unstored` (objects the server adds to the list, in place of stored
/// ones of their names) among them.
pub(crate) async fn watch(
    store: &GenericStore,
    info: &ResourceInfo,
    ns: Namespace<'_>,
    opts: ListOptions,
    stopping: tokio::sync::watch::Receiver<bool>,
    flags: WatchFlags<'_>,
    unstored: Vec<Value>,
) -> Result<Response<Body>, ApiError> {
    // Held by the stream: the slot is free again when the watch ends.
    let permit = store.watch_permit()?;
    let mut initial = Vec::new();
    let start = match flags.resource_version {
        Some(rv) if !flags.initial_events && !matches!(rv, "" | "0") => {
            Some(crate::handler::parse_resource_version(rv)?)
        }
        _ => None,
    };
    let from = match start {
        Some(revision) => revision,
        // No start, or watch-list: the current objects first.
        None => {
            let page = store
                .list_stored(
                    info,
                    ns,
                    &ListOptions {
                        labels: opts.labels.clone(),
                        fields: opts.fields.clone(),
                        // `resourceVersion=0`: the current state from the cache.
                        any_revision: flags.resource_version == Some("0"),
                        ..Default::default()
                    },
                )
                .await?;
            // An unstored object stands in place of a stored one of its
            // name (a VC's default roles over stored objects so named).
            let replaced = |kv: &kplex_storage::KeyValue| {
                let name = kv.key.as_str().rsplit('/').next().unwrap_or_default();
                unstored.iter().any(|o| o["metadata"]["name"] == name)
            };
            initial = page
                .items
                .into_iter()
                .filter(|kv| !replaced(kv))
                .map(Object::Stored)
                .collect();
            initial.extend(unstored.into_iter().map(Object::Decoded));
            page.revision
        }
    };
    if start.is_some() {
        kplex_registry::generic::wait_for_revision(store.store(), from).await?;
    }
    let prefix = store.watch_prefix(info, ns)?;
    let events = match store.store().watch(&prefix, from).await {
        Ok(w) => Some(w),
        Err(kplex_storage::StoreError::Compacted { .. }) => None,
        Err(e) => return Err(from_store(e)),
    };
    // kubectl's default output asks for Tables, also when watching: each
    // event then carries a one-row Table.
    let table_info = flags.table.then(|| info.clone());
    let metadata_only = flags.metadata;
    // Objects possibly stored in another version are converted to this one.
    let served = info.converts().then(|| info.clone());
    Ok(crate::watchstream::respond(
        crate::watchstream::EventStream {
            initial,
            from,
            events,
            convert: move |event: &Event| {
                let _held = &permit;
                kplex_registry::generic::watch_event_stored(event, &opts.labels, &opts.fields)
            },
            render: move |object: Object| {
                let object = match &served {
                    Some(info) => {
                        let mut value = object.into_value().ok()?;
                        info.as_served(&mut value);
                        Object::Decoded(value)
                    }
                    None => object,
                };
                match &table_info {
                    Some(info) => Some(Object::Decoded(render_table(
                        info,
                        &[object.into_value().ok()?],
                    ))),
                    None if metadata_only => {
                        Some(Object::Decoded(partial(object.into_value().ok()?)))
                    }
                    None => Some(object),
                }
            },
            kind: info.kind.to_owned(),
            api_version: info.api_version(),
            bookmarks: flags.bookmarks,
            initial_events: flags.initial_events,
            timeout: flags.timeout,
            stopping,
        },
    ))
}

/// An object's metadata alone, as a `PartialObjectMetadata`.
pub fn partial(mut object: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"].take(),
    })
}

/// A `PartialObjectMetadataList` of `items` (moved in, each made partial).
pub fn partial_list(metadata: Value, items: Vec<Value>) -> Value {
    let items: Vec<Value> = items.into_iter().map(partial).collect();
    let mut list = serde_json::Map::new();
    list.insert("kind".into(), json!("PartialObjectMetadataList"));
    list.insert("apiVersion".into(), json!("meta.k8s.io/v1"));
    list.insert("metadata".into(), metadata);
    list.insert("items".into(), Value::Array(items));
    Value::Object(list)
}
