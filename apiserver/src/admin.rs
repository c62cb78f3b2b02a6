//! The admin API (`tenancy.kplex.dev/v1alpha1`, `VirtualCluster`) on the root
//! paths, and the discovery documents that let kubectl find it.

use kplex_registry::raw::Object;
use std::time::Duration;

use hyper::{Method, StatusCode};
use kplex_certs::{Identity, Scope};
use serde_json::{json, Value};

use crate::handler::{Context, Request};
use crate::response::{json_response, Body};
use crate::virtualclusters::{VirtualCluster, GROUP, KIND, VERSION};
use kplex_registry::ApiError;

type Response = hyper::Response<Body>;

/// Longest a VC deletion waits for its host namespaces to be deleted.
const HOST_CLEAR_WAIT: Duration = Duration::from_secs(10);

/// Default and longest lifetime of an issued tenant credential.
const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_CREDENTIAL_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Serves a root path for an admin caller.
pub async fn handle(ctx: &Context, req: Request) -> Result<Response, ApiError> {
    let path = req.path.clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let gv = format!("{GROUP}/{VERSION}");
    match (req.method.clone(), segments.as_slice()) {
        (Method::GET, ["api"]) => Ok(ok(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [],
        }))),
        (Method::GET, ["api", "v1"]) => Ok(ok(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": [],
        }))),
        (Method::GET, ["apis"]) => Ok(ok(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [api_group()],
        }))),
        (Method::GET, ["apis", g]) if *g == GROUP => {
            let mut group = api_group();
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            Ok(ok(group))
        }
        (Method::GET, ["apis", g, v]) if *g == GROUP && *v == VERSION => Ok(ok(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": [
                {
                    "name": "virtualclusters",
                    "singularName": "virtualcluster",
                    "namespaced": false,
                    "kind": KIND,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    "shortNames": ["vc"],
                },
                {
                    "name": "hostclusters",
                    "singularName": "hostcluster",
                    "namespaced": false,
                    "kind": crate::hostclusters::KIND,
                    "verbs": ["create", "delete", "get", "list", "watch"],
                    "shortNames": ["hc"],
                },
                {
                    "name": "virtualclusters/kubeconfig",
                    "singularName": "",
                    "namespaced": false,
                    "kind": "VirtualClusterKubeconfig",
                    "verbs": ["create"],
                },
            ],
        }))),
        // An empty OpenAPI v2 document (zero bytes of protobuf). kubectl
        // downloads it before every create or apply; finding no schema for a
        // kind, it leaves validation to the server. Full schemas come with the
        // OpenAPI work of the API server issue.
        (Method::GET, ["openapi", "v2"]) => Ok(crate::response::bytes_response(
            StatusCode::OK,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            bytes::Bytes::new(),
        )),
        (method, ["apis", g, v, "virtualclusters", rest @ ..]) if *g == GROUP && *v == VERSION => {
            virtualclusters(ctx, method, rest, req, false).await
        }
        (method, ["apis", g, v, "hostclusters", rest @ ..]) if *g == GROUP && *v == VERSION => {
            hostclusters(ctx, method, rest, req, Reveal::Server).await
        }
        _ => Err(ApiError::not_found(
            "the server could not find the requested resource",
        )),
    }
}

fn api_group() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv], "preferredVersion": gv})
}

fn ok(body: Value) -> Response {
    json_response(StatusCode::OK, &body)
}

pub async fn virtualclusters(
    ctx: &Context,
    method: Method,
    rest: &[&str],
    req: Request,
    system: bool,
) -> Result<Response, ApiError> {
    match (method, rest) {
        (Method::GET, []) => list(ctx, &req).await,
        (Method::POST, []) => create(ctx, req).await,
        (Method::PUT | Method::PATCH, [name]) if !system => update(ctx, name, req).await,
        // A system component (the syncer) reports conditions.
        (Method::PATCH, [name, "status"]) if system => {
            let kind = kplex_registry::patch::PatchType::from_media_type(&req.media_type())?;
            let vc = ctx
                .registry
                .update_status(name, |current| {
                    kplex_registry::patch::apply(current, kind, &req.body)
                })
                .await?;
            Ok(ok(present(ctx, &vc, false).await?))
        }
        (Method::GET, [name]) => {
            let vc = ctx
                .registry
                .get(name)
                .await?
                .ok_or_else(|| ApiError::not_found_object(KIND, GROUP, name))?;
            let object = present(ctx, &vc, true).await?;
            Ok(if req.wants_table() {
                ok(table(&[object]))
            } else {
                ok(object)
            })
        }
        (Method::DELETE, [name]) => {
            // The VC's host namespaces go before its storage (bounded: an
            // unreachable host is left to the syncer's sweep).
            let vc = ctx
                .registry
                .delete_clearing(name, |vc| async move {
                    let cleared = tokio::time::timeout(
                        HOST_CLEAR_WAIT,
                        crate::proxy::clear_host(ctx, &vc),
                    )
                    .await;
                    match cleared {
                        Ok(Ok(n)) if n > 0 => {
                            tracing::info!(vc = vc.name(), namespaces = n, "host namespaces deleted")
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(vc = vc.name(), error = %e.message, "cannot clear the host now; the syncer will"),
                        Err(_) => tracing::warn!(vc = vc.name(), "the host did not answer in time; the syncer will clear it"),
                    }
                })
                .await?;
            tracing::info!(vc = name, uid = vc.uid(), "virtual cluster deleted");
            Ok(ok(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": GROUP, "kind": "virtualclusters", "uid": vc.uid()},
            })))
        }
        (Method::POST, [name, "kubeconfig"]) => kubeconfig(ctx, name, req).await,
        (method, _) => Err(crate::tenant::method_not_allowed(&method)),
    }
}

async fn create(ctx: &Context, req: Request) -> Result<Response, ApiError> {
    let body = req.json_body()?;
    let name = body["metadata"]["name"]
        .as_str()
        .ok_or_else(|| ApiError::invalid(KIND, "", "metadata.name", "name is required"))?
        .to_owned();
    check_kind(&body, KIND)?;
    let spec = stored_spec(&name, body.get("spec"))?;
    let vc = ctx.registry.create(&name, spec).await?;
    // Every new VC has the four namespaces a cluster starts with.
    let objects = ctx.vc_store(&vc)?;
    let namespaces = ctx
        .catalog
        .find("", "v1", "namespaces")
        .expect("catalogued");
    for ns in kplex_registry::generic::DEFAULT_NAMESPACES {
        objects
            .create(
                namespaces,
                None,
                json!({"metadata": {"name": ns}}),
                Default::default(),
            )
            .await?;
    }
    tracing::info!(vc = %name, uid = vc.uid(), "virtual cluster created");
    Ok(json_response(
        StatusCode::CREATED,
        &present(ctx, &vc, false).await?,
    ))
}

/// A VC's spec as stored: an object whose isolation policy is valid, with
/// the policy's defaults written out (so `get -o yaml` and `describe` show
/// what is enforced).
fn stored_spec(name: &str, spec: Option<&Value>) -> Result<Value, ApiError> {
    let qualified = format!("{KIND}.{GROUP}");
    let mut spec = match spec {
        None | Some(Value::Null) => json!({}),
        Some(spec @ Value::Object(_)) => spec.clone(),
        Some(_) => {
            return Err(ApiError::field(
                &qualified,
                name,
                "spec",
                "Invalid value: must be an object",
            ))
        }
    };
    let policy = kplex_api::isolation::Isolation::from_spec(&spec).map_err(|errors| {
        let errors: Vec<(String, String)> =
            errors.into_iter().map(|e| (e.field, e.message)).collect();
        ApiError::fields(&qualified, name, &errors)
    })?;
    spec["isolation"] = policy.to_value();
    spec["dns"] = dns_spec(&qualified, name, &spec["dns"])?;
    let limits = kplex_api::limits::Limits::from_spec(&spec).map_err(|errors| {
        let errors: Vec<(String, String)> =
            errors.into_iter().map(|e| (e.field, e.message)).collect();
        ApiError::fields(&qualified, name, &errors)
    })?;
    // Only what the admin set: the rest follows the server's defaults.
    match limits == Default::default() {
        true => {
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("limits");
            }
        }
        false => spec["limits"] = limits.to_value(),
    }
    Ok(spec)
}

/// A VC's `spec.dns`: its cluster domain (`cluster.local` unless set), a
/// DNS subdomain in lower case, without the final dot.
fn dns_spec(qualified: &str, name: &str, dns: &Value) -> Result<Value, ApiError> {
    let invalid =
        |field: &str, message: String| Err(ApiError::field(qualified, name, field, &message));
    let fields = match dns {
        Value::Null => return Ok(json!({"domain": kplex_api::mapping::DEFAULT_DNS_DOMAIN})),
        Value::Object(fields) => fields,
        _ => return invalid("spec.dns", "Invalid value: must be an object".to_owned()),
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "domain") {
        return invalid(
            &format!("spec.dns.{unknown}"),
            "Unsupported value: unknown field".to_owned(),
        );
    }
    let domain = match &fields.get("domain") {
        None | Some(Value::Null) => kplex_api::mapping::DEFAULT_DNS_DOMAIN.to_owned(),
        Some(Value::String(d)) => d.strip_suffix('.').unwrap_or(d).to_owned(),
        Some(_) => {
            return invalid(
                "spec.dns.domain",
                "Invalid value: must be a string".to_owned(),
            )
        }
    };
    if !kplex_api::isolation::dns_subdomain(&domain) {
        return invalid(
            "spec.dns.domain",
            format!("Invalid value: \"{domain}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        );
    }
    Ok(json!({"domain": domain}))
}

/// `PUT` or `PATCH` (JSON, merge, strategic merge — a merge here, the
/// record has no list keys — or server-side apply) of a VC: its spec
/// (policy included) and metadata change at run time; name and UID do not.
async fn update(ctx: &Context, name: &str, req: Request) -> Result<Response, ApiError> {
    use kplex_registry::patch::{self, PatchType};
    enum Change {
        Replace(Value),
        Patch(PatchType),
        Apply { manager: String, force: bool },
    }
    let params = req.params();
    let change = if req.method == Method::PUT {
        let body = req.json_body()?;
        check_kind(&body, KIND)?;
        if let Some(named) = body["metadata"]["name"].as_str().filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({named}) does not match the name on the URL ({name})"
            )));
        }
        Change::Replace(body)
    } else if req.media_type() == patch::APPLY_MEDIA_TYPE {
        let Some(manager) = params.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requests require a fieldManager",
            ));
        };
        Change::Apply {
            manager: manager.to_owned(),
            force: params.get("force") == Some("true"),
        }
    } else {
        Change::Patch(match PatchType::from_media_type(&req.media_type())? {
            PatchType::Strategic => PatchType::Merge,
            kind => kind,
        })
    };
    let vc = ctx
        .registry
        .update(name, |current| {
            let mut next = match &change {
                Change::Replace(body) => body.clone(),
                Change::Patch(kind) => patch::apply(current, *kind, &req.body)?,
                Change::Apply { manager, force } => {
                    let config = kplex_registry::yaml::parse_object(&req.body)?;
                    check_kind(&config, KIND)?;
                    kplex_registry::managed::apply(current, &config, manager, *force, None)?.0
                }
            };
            next["spec"] = stored_spec(name, next.get("spec"))?;
            Ok(next)
        })
        .await?;
    tracing::info!(vc = name, "virtual cluster updated");
    Ok(ok(present(ctx, &vc, true).await?))
}

async fn list(ctx: &Context, req: &Request) -> Result<Response, ApiError> {
    if req
        .query_pairs()
        .iter()
        .any(|(k, v)| k == "watch" && (v == "1" || v == "true"))
    {
        return watch(ctx, req).await;
    }
    let (vcs, revision) = ctx.registry.list().await?;
    if req.wants_table() {
        let objects: Vec<Value> = vcs
            .iter()
            .map(|vc| with_status(&ctx.url, vc.object()))
            .collect();
        let mut table = table(&objects);
        table["metadata"] = json!({"resourceVersion": revision.to_string()});
        return Ok(ok(table));
    }
    let mut items = Vec::with_capacity(vcs.len());
    for vc in &vcs {
        items.push(present(ctx, vc, false).await?);
    }
    let mut list = json!({
        "kind": "VirtualClusterList",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {"resourceVersion": revision.to_string()},
    });
    list["items"] = Value::Array(items);
    Ok(ok(list))
}

/// The VC as served: the record plus its status (with `count`, as one VC
/// is read: its object count and its quota's use).
async fn present(ctx: &Context, vc: &VirtualCluster, count: bool) -> Result<Value, ApiError> {
    let mut object = with_status(&ctx.url, vc.object());
    if count {
        object["status"]["objectCount"] = json!(ctx.registry.object_count(vc).await?);
        object["status"]["limits"] = limits_status(ctx, vc).await?;
        if let Some(quota) = quota_status(ctx, vc).await? {
            object["status"]["quota"] = quota;
        }
    }
    Ok(object)
}

/// The VC's limits in force (its own, else the server's defaults) and
/// what it uses of them now.
async fn limits_status(ctx: &Context, vc: &VirtualCluster) -> Result<Value, ApiError> {
    let storage = ctx.store.usage().limits_of(vc.uid());
    let watches = vc
        .limits
        .watches
        .map_or(ctx.watches.default_max(), |n| n as usize);
    let (rate, burst) = ctx.rates.limits_of(vc);
    let mut status = json!({
        "hard": {
            "storedBytes": storage.bytes,
            "objects": storage.objects,
            "requestsPerSecond": rate,
            "requestBurst": burst,
            "watches": watches,
        },
        "used": {
            "watches": ctx.watches.open(vc.keyspace()?.prefix().as_str()),
        },
    });
    // While storage's feed is down, use is not known.
    if let Some(used) = ctx
        .store
        .used(vc.uid())
        .await
        .map_err(crate::virtualclusters::store_error)?
    {
        status["used"]["storedBytes"] = json!(used.bytes);
        status["used"]["objects"] = json!(used.objects);
    }
    Ok(status)
}

/// The kind a quota's resource name is counted from (`None` for names no
/// kplex kind produces).
fn counted_from(name: &str) -> Option<(String, String)> {
    let core = |plural: &str| Some((String::new(), plural.to_owned()));
    match name {
        "pods" | "cpu" | "memory" => core("pods"),
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "requests.storage" | "persistentvolumeclaims" => core("persistentvolumeclaims"),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => core(name),
        _ if name.starts_with("requests.") || name.starts_with("limits.") => core("pods"),
        _ => {
            let counted = name.strip_prefix("count/")?;
            match counted.split_once('.') {
                Some((plural, group)) => Some((group.to_owned(), plural.to_owned())),
                None => core(counted),
            }
        }
    }
}

/// The VC's quota, `hard` and what its objects `used` of it now (counted
/// as its admission counts).
async fn quota_status(ctx: &Context, vc: &VirtualCluster) -> Result<Option<Value>, ApiError> {
    use kplex_api::quantity::{self, Milli};
    let hard = vc.policy.quota_amounts();
    if hard.is_empty() {
        return Ok(None);
    }
    let store = ctx.vc_store(vc)?;
    let mut used: std::collections::BTreeMap<&String, Milli> =
        hard.keys().map(|k| (k, Milli::default())).collect();
    let kinds: std::collections::BTreeSet<(String, String)> =
        hard.keys().filter_map(|k| counted_from(k)).collect();
    for (group, plural) in kinds {
        let Some(info) = ctx.catalog.find_resource(&group, &plural) else {
            continue;
        };
        let all = store.list(info, None, &Default::default()).await?;
        for item in &all.items {
            let usage = kplex_api::isolation::usage(&vc.policy, &group, &plural, item);
            for (name, total) in used.iter_mut() {
                total.0 += usage.get(*name).map_or(0, |q| q.0);
            }
        }
    }
    let used: std::collections::BTreeMap<&String, String> = used
        .into_iter()
        .map(|(k, q)| (k, quantity::format(q)))
        .collect();
    Ok(Some(json!({"hard": vc.policy.quota_hard(), "used": used})))
}

/// A VC record with the status every VC has while it exists (and the
/// conditions the system components reported).
fn with_status(url: &str, mut object: Value) -> Value {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let conditions = object["status"]["conditions"].clone();
    object["status"] = json!({
        "phase": "Ready",
        "endpoint": format!("{url}/clusters/{name}"),
        "creationTime": object["metadata"]["creationTimestamp"],
    });
    if conditions.is_array() {
        object["status"]["conditions"] = conditions;
    }
    object
}

/// VCs as a Table: NAME PHASE ENDPOINT AGE.
fn table(objects: &[Value]) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let created = o["metadata"]["creationTimestamp"].as_str().unwrap_or("");
            let policy = &o["spec"]["isolation"];
            let host = o["spec"]["hostCluster"].as_str().unwrap_or("<default>");
            let runtime = policy["runtimeClassName"].as_str().filter(|r| !r.is_empty()).unwrap_or("<none>");
            json!({
                "cells": [o["metadata"]["name"], o["status"]["phase"], o["status"]["endpoint"], kplex_registry::table::age(created),
                    host, policy["podSecurity"].as_str().unwrap_or("restricted"), policy["userNamespaces"].as_bool().unwrap_or(true), runtime],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name of the virtual cluster", "priority": 0},
            {"name": "Phase", "type": "string", "format": "", "description": "Lifecycle phase", "priority": 0},
            {"name": "Endpoint", "type": "string", "format": "", "description": "URL tenants point kubectl at", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0},
            {"name": "Host", "type": "string", "format": "", "description": "Host cluster the VC's Pods run on", "priority": 1},
            {"name": "Pod Security", "type": "string", "format": "", "description": "Pod Security Standards level of the VC's Pods", "priority": 1},
            {"name": "User Namespaces", "type": "boolean", "format": "", "description": "Whether every Pod runs in a user namespace", "priority": 1},
            {"name": "Runtime Class", "type": "string", "format": "", "description": "RuntimeClass forced on every Pod", "priority": 1},
        ],
        "rows": rows,
    })
}

/// `GET virtualclusters?watch=1`: the VCs (unless a resourceVersion is
/// given), then their creations and deletions.
async fn watch(ctx: &Context, req: &Request) -> Result<Response, ApiError> {
    let url = ctx.url.clone();
    let present = move |object: Value| with_status(&url, object);
    watch_records(
        ctx,
        req,
        KIND,
        crate::virtualclusters::Registry::prefix()?,
        async {
            let (vcs, revision) = ctx.registry.list().await?;
            Ok((vcs.into_iter().map(|vc| vc.object()).collect(), revision))
        },
        present,
        table,
    )
    .await
}

/// A watch of admin records under `prefix` (`load` lists them): each as
/// `present` makes it, rendered as a `table` row if the client asks.
pub async fn watch_records<P>(
    ctx: &Context,
    req: &Request,
    kind: &str,
    prefix: kplex_storage::KeyPrefix,
    load: impl std::future::Future<Output = Result<(Vec<Value>, u64), ApiError>>,
    present: P,
    table: fn(&[Value]) -> Value,
) -> Result<Response, ApiError>
where
    P: Fn(Value) -> Value + Send + 'static,
{
    let params = req.params();
    let q = |k: &str| params.get(k);
    let (initial, from) = match q("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
        Some(rv) => {
            let from = crate::handler::parse_resource_version(rv)?;
            kplex_registry::generic::wait_for_revision(&ctx.store, from).await?;
            (Vec::new(), from)
        }
        None => {
            let (objects, revision) = load.await?;
            let objects = objects
                .into_iter()
                .map(|o| Object::Decoded(present(o)))
                .collect();
            (objects, kplex_storage::Revision::new(revision))
        }
    };
    use kplex_storage::Store;
    let events = match ctx.store.watch(&prefix, from).await {
        Ok(w) => Some(w),
        Err(kplex_storage::StoreError::Compacted { .. }) => None,
        Err(e) => return Err(crate::virtualclusters::store_error(e)),
    };
    let as_table = req.wants_table();
    Ok(crate::watchstream::respond(
        crate::watchstream::EventStream {
            initial,
            from,
            events,
            convert: move |event: &kplex_storage::Event| {
                let (kind, kv, revision) = match event {
                    kplex_storage::Event::Put { kv, prev } => (
                        if prev.is_some() { "MODIFIED" } else { "ADDED" },
                        kv,
                        kv.mod_revision,
                    ),
                    kplex_storage::Event::Delete { prev, revision } => ("DELETED", prev, *revision),
                };
                let mut object: Value = serde_json::from_slice(&kv.value).ok()?;
                object["metadata"]["resourceVersion"] = json!(revision.to_string());
                Some((kind, Object::Decoded(present(object))))
            },
            render: move |object: Object| match object {
                Object::Decoded(object) if as_table => Some(Object::Decoded(table(&[object]))),
                object => Some(object),
            },
            kind: kind.to_owned(),
            api_version: format!("{GROUP}/{VERSION}"),
            bookmarks: params_flag(req, "allowWatchBookmarks"),
            initial_events: false,
            timeout: q("timeoutSeconds")
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs),
            stopping: ctx.stopping.subscribe(),
        },
    ))
}

fn params_flag(req: &Request, name: &str) -> bool {
    req.query_pairs()
        .iter()
        .any(|(k, v)| k == name && (v == "1" || v == "true"))
}

/// How much of a host's kubeconfig a caller sees.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    /// The admin: the server it names, never the credentials.
    Server,
    /// A system component (the syncer): all of it.
    Kubeconfig,
}

/// `hostclusters`: the admin registers, lists and removes hosts; a system
/// component lists and watches them whole and reports their status.
pub async fn hostclusters(
    ctx: &Context,
    method: Method,
    rest: &[&str],
    req: Request,
    reveal: Reveal,
) -> Result<Response, ApiError> {
    use crate::hostclusters::{self as hosts, KIND as HOST};
    let show = move |object: Value| match reveal {
        Reveal::Server => hosts::redacted(object),
        Reveal::Kubeconfig => object,
    };
    let system = reveal == Reveal::Kubeconfig;
    match (method, rest) {
        (Method::GET, []) if params_flag(&req, "watch") => {
            watch_records(
                ctx,
                &req,
                HOST,
                hosts::HostClusters::prefix()?,
                ctx.hosts.list(),
                show,
                hosts::table,
            )
            .await
        }
        (Method::GET, []) => {
            let (objects, revision) = ctx.hosts.list().await?;
            let objects: Vec<Value> = objects.into_iter().map(show).collect();
            if req.wants_table() {
                let mut table = hosts::table(&objects);
                table["metadata"] = json!({"resourceVersion": revision.to_string()});
                return Ok(ok(table));
            }
            Ok(ok(json!({
                "kind": "HostClusterList",
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": objects,
            })))
        }
        (Method::GET, [name]) => {
            let object = ctx
                .hosts
                .get(name)
                .await?
                .map(show)
                .ok_or_else(|| ApiError::not_found_object(HOST, GROUP, name))?;
            Ok(if req.wants_table() {
                ok(hosts::table(&[object]))
            } else {
                ok(object)
            })
        }
        (Method::POST, []) if !system => {
            let body = req.json_body()?;
            check_kind(&body, HOST)?;
            let name = body["metadata"]["name"]
                .as_str()
                .ok_or_else(|| ApiError::invalid(HOST, "", "metadata.name", "name is required"))?;
            let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
            let object = ctx.hosts.create(name, spec).await?;
            tracing::info!(host = name, "host cluster registered");
            Ok(json_response(StatusCode::CREATED, &show(object)))
        }
        (Method::DELETE, [name]) if !system => {
            let vcs = ctx.registry.all().await?;
            let object = ctx.hosts.delete(name, &vcs).await?;
            tracing::info!(host = name, "host cluster removed");
            Ok(ok(show(object)))
        }
        (Method::PUT, [name, "status"]) if system => {
            let body = req.json_body()?;
            let status = body.get("status").cloned().unwrap_or(Value::Null);
            Ok(ok(show(ctx.hosts.set_status(name, status).await?)))
        }
        (Method::PATCH, [name, "status"]) if system => {
            let kind = kplex_registry::patch::PatchType::from_media_type(&req.media_type())?;
            let current = ctx
                .hosts
                .get(name)
                .await?
                .ok_or_else(|| ApiError::not_found_object(HOST, GROUP, name))?;
            let patched = kplex_registry::patch::apply(&current, kind, &req.body)?;
            let status = patched.get("status").cloned().unwrap_or(Value::Null);
            Ok(ok(show(ctx.hosts.set_status(name, status).await?)))
        }
        (method, _) => Err(crate::tenant::method_not_allowed(&method)),
    }
}

fn check_kind(body: &Value, expected: &str) -> Result<(), ApiError> {
    match body.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != expected => Err(ApiError::bad_request(format!(
            "the body is a {kind}, not a {expected}"
        ))),
        _ => Ok(()),
    }
}

async fn kubeconfig(ctx: &Context, name: &str, req: Request) -> Result<Response, ApiError> {
    let body = req.json_body()?;
    let vc = ctx
        .registry
        .get(name)
        .await?
        .ok_or_else(|| ApiError::not_found_object(KIND, GROUP, name))?;
    let user = body["user"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::bad_request("user is required"))?
        .to_owned();
    let groups: Vec<String> = match body.get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| g.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("groups must be strings"))?,
        Some(_) => return Err(ApiError::bad_request("groups must be a list of strings")),
    };
    let ttl = match body.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_CREDENTIAL_TTL,
        Some(v) => match v.as_u64() {
            Some(s) if s >= 600 && Duration::from_secs(s) <= MAX_CREDENTIAL_TTL => {
                Duration::from_secs(s)
            }
            _ => {
                return Err(ApiError::bad_request(
                    "expirationSeconds must be between 600 and 315360000",
                ))
            }
        },
    };
    let identity = Identity {
        user: user.clone(),
        groups,
        scope: Scope::VirtualCluster {
            uid: vc.uid().to_owned(),
        },
    };
    let cred = ctx
        .authority
        .issue_client(&identity, ttl)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let config = crate::bootstrap::kubeconfig(
        name,
        &ctx.vc_url(name),
        ctx.authority.ca_pem(),
        &user,
        &cred,
    );
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "VirtualClusterKubeconfig",
            "metadata": {"name": name},
            "user": user,
            "expirationSeconds": ttl.as_secs(),
            "kubeconfig": config,
        }),
    ))
}

/// Whether `caller` holds an admin credential.
pub fn is_admin(caller: &Identity) -> bool {
    caller.scope == Scope::Admin
}
