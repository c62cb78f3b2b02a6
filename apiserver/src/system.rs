//! What kplex's own components reach with their system credential
//! (`kplex:system:<component>`), and nobody else:
//!
//! - `/clusters/*/<api path>` — one resource listed or watched across every
//!   VC in one request. Each item carries the annotations
//!   `tenancy.kplex.dev/cluster` (the VC's name) and `…/cluster-uid`, set by
//!   the server on the way out (never stored: writes drop them). Watches
//!   are served by the watch cache's cross-VC index; a list reads every
//!   VC's range at one revision, so a watch from the list's
//!   `resourceVersion` misses nothing and repeats nothing. Writes go to
//!   `/clusters/<vc>/…` as usual.
//! - `/system/…` — the system cluster, whose objects (the components'
//!   leader-election Leases) live in the system keyspace, not in any VC.
//!
//! State here is per request: nothing is kept per VC.

use kplex_registry::raw::Object;
use std::sync::Arc;

use base64::Engine;
use hyper::{Method, Response, StatusCode};
use kplex_api::names::{CLUSTER_ANNOTATION, CLUSTER_UID_ANNOTATION, SYSTEM_NAMESPACE};
use kplex_certs::{Identity, Scope};
use kplex_registry::error::from_store;
use kplex_registry::generic::{decode_watched, GenericStore, ListOptions, ListPage};
use kplex_registry::{ApiError, Catalog, ResourceInfo};
use kplex_storage::{
    AcrossClusters, Key, RangeRequest, Revision, Store, StoreError, TenantKeyParts, TenantKeyspace,
};
use serde_json::{json, Value};

use crate::handler::{Context, Request};
use crate::response::{json_response, Body};
use crate::tenant::{collection_request, CollectionRequest, WatchFlags};

/// The component a credential belongs to, if it is a system credential.
fn component(caller: &Identity) -> Option<&str> {
    match &caller.scope {
        Scope::System { component } => Some(component),
        _ => None,
    }
}

fn refused(caller: &Identity, what: &str) -> ApiError {
    ApiError::forbidden(format!(
        "User \"{}\" cannot access {what}: it is for kplex's system components",
        caller.user
    ))
}

/// `/clusters/*/<path>`: discovery, and lists and watches of one resource
/// across every VC.
pub async fn across(
    ctx: &Context,
    caller: &Identity,
    path: &str,
    req: &Request,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let Some(component) = component(caller) else {
        return Err(refused(caller, "every virtual cluster at once"));
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, plural) = match segments.as_slice() {
        ["api", "v1", plural] => ("", "v1", *plural),
        ["apis", group, version, plural] => (*group, *version, *plural),
        _ if req.method == Method::GET => {
            // Discovery is every VC's built-in catalog.
            return crate::tenant::discovery(&ctx.catalog, path, req)
                .unwrap_or_else(|| Err(not_served()));
        }
        _ => return Err(not_served()),
    };
    if req.method != Method::GET {
        return Err(ApiError {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: format!(
                "{} is not served across virtual clusters: write to /clusters/<vc>/…",
                req.method
            ),
            details: None,
        });
    }
    let info = ctx
        .catalog
        .find(group, version, plural)
        .filter(|info| info.stored)
        .ok_or_else(not_served)?
        .clone();
    let params = req.params();
    let CollectionRequest { opts, watch } = collection_request(&info, req, &params)?;
    match watch {
        Some(flags) => watch_across(ctx, component, info, opts, flags, stopping).await,
        None => {
            let page = list_across(ctx, &info, &opts).await?;
            let mut metadata = json!({"resourceVersion": page.revision.to_string()});
            if let Some(c) = page.continue_token {
                metadata["continue"] = json!(c);
            }
            if req.wants_metadata() {
                return Ok(json_response(
                    StatusCode::OK,
                    &crate::tenant::partial_list(metadata, page.items),
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", info.kind),
                    "apiVersion": info.api_version(),
                    "metadata": metadata,
                    "items": page.items,
                }),
            ))
        }
    }
}

fn not_served() -> ApiError {
    ApiError::not_found("the server could not find the requested resource")
}

/// Marks `object` as the VC's (the name is empty when the VC is no longer
/// known: its record was deleted long ago).
fn annotate(object: &mut Value, vc_name: &str, vc_uid: &str) {
    let meta = &mut object["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][CLUSTER_ANNOTATION] = json!(vc_name);
    meta["annotations"][CLUSTER_UID_ANNOTATION] = json!(vc_uid);
}

/// Where a cross-VC list goes on: the revision it reads at and the last
/// key it returned (its VC's UID comes from the key).
fn encode_continue(revision: Revision, last: &Key) -> String {
    let token = json!({"rv": revision.get(), "key": last.as_str()});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// A continue token's revision, VC and position. The key is rebuilt
/// through the VC's keyspace and must be of the listed resource, so a
/// forged token cannot point anywhere else.
fn decode_continue(
    across: &AcrossClusters,
    info: &ResourceInfo,
    token: &str,
) -> Result<(Revision, String, Key), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = value["rv"].as_u64().ok_or_else(bad)?;
    let given = value["key"].as_str().ok_or_else(bad)?;
    let keyspace_of = |parts: &TenantKeyParts<'_>| TenantKeyspace::for_vc(parts.vc_uid);
    let parsed = parse_key(given).ok_or_else(bad)?;
    let parts = TenantKeyspace::parse(&parsed).ok_or_else(bad)?;
    let key = keyspace_of(&parts)
        .and_then(|ks| ks.object_key(&info.group, &info.plural, parts.namespace, parts.name))
        .map_err(|_| bad())?;
    if key.as_str() != given || !across.contains(&key) {
        return Err(bad());
    }
    Ok((Revision::new(rv), parts.vc_uid.to_owned(), key))
}

/// A key string as the keyspaces would build it, if it is one of a VC's
/// object keys.
fn parse_key(text: &str) -> Option<Key> {
    let rest = text.strip_prefix(TenantKeyspace::all_clusters().as_str())?;
    let segments: Vec<&str> = rest.split('/').collect();
    let (uid, group, resource, ns, name) = match segments.as_slice() {
        [uid, group, resource, name] => (*uid, *group, *resource, None, *name),
        [uid, group, resource, ns, name] => (*uid, *group, *resource, Some(*ns), *name),
        _ => return None,
    };
    let group = if group == "core" { "" } else { group };
    TenantKeyspace::for_vc(uid)
        .and_then(|ks| ks.object_key(group, resource, ns, name))
        .ok()
}

/// One resource in every VC, at one revision: each VC's range read at it,
/// in VC UID order, filtered by the selectors, paged by `limit`.
async fn list_across(
    ctx: &Context,
    info: &ResourceInfo,
    opts: &ListOptions,
) -> Result<ListPage, ApiError> {
    let across = AcrossClusters::resource(&info.group, &info.plural).map_err(from_store)?;
    let (revision, mut resume) = match &opts.continue_token {
        Some(token) => {
            let (rv, uid, key) = decode_continue(&across, info, token)?;
            (rv, Some((uid, key)))
        }
        None => {
            if let Some(min) = opts.not_older_than {
                kplex_registry::generic::wait_for_revision(&ctx.store, min).await?;
            }
            let revision = match opts.exact_revision {
                Some(exact) => exact,
                None => ctx.store.current_revision().await.map_err(from_store)?,
            };
            (revision, None)
        }
    };
    // Every object at `revision` belongs to a VC the index knew before the
    // object was written (tenant writes are authorized through it).
    let mut vcs: Vec<(String, String)> = ctx
        .registry
        .all()
        .await?
        .iter()
        .map(|vc| (vc.uid().to_owned(), vc.name().to_owned()))
        .collect();
    vcs.sort();
    if let Some((uid, _)) = &resume {
        vcs.retain(|(u, _)| u >= uid);
    }
    let mut items = Vec::new();
    for (uid, name) in vcs {
        let keyspace = TenantKeyspace::for_vc(&uid).map_err(from_store)?;
        let prefix = across.in_vc(&keyspace);
        let mut after = match resume.take() {
            Some((resumed, key)) if resumed == uid => Some(key),
            _ => None,
        };
        loop {
            let want = (opts.limit != 0).then(|| opts.limit - items.len());
            let page = ctx
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: want,
                    revision: Some(revision),
                })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { requested } => ApiError {
                        code: StatusCode::GONE,
                        reason: "Expired",
                        message: format!("too old resource version: {requested}"),
                        details: None,
                    },
                    e => from_store(e),
                })?;
            after = page.kvs.last().map(|kv| kv.key.clone());
            for kv in &page.kvs {
                let mut object = decode_watched(kv)?;
                if opts.labels.matches(&object["metadata"]["labels"])
                    && opts.fields.matches(&object)
                {
                    annotate(&mut object, &name, &uid);
                    items.push(object);
                }
            }
            if opts.limit != 0 && items.len() >= opts.limit {
                // More may follow in this VC or the next ones.
                let continue_token = after.as_ref().map(|last| encode_continue(revision, last));
                return Ok(ListPage {
                    items,
                    revision,
                    continue_token,
                });
            }
            if !page.more {
                break;
            }
        }
    }
    Ok(ListPage {
        items,
        revision,
        continue_token: None,
    })
}

/// A watch of one resource in every VC: the current objects first (unless
/// a resourceVersion is given), then every change, each annotated with its
/// VC.
async fn watch_across(
    ctx: &Context,
    component: &str,
    info: Arc<ResourceInfo>,
    opts: ListOptions,
    flags: WatchFlags<'_>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    // System components share one slot count per component.
    let permit = ctx.watches.acquire(&format!("system:{component}"))?;
    let across = AcrossClusters::resource(&info.group, &info.plural).map_err(from_store)?;
    let start = match flags.resource_version {
        Some(rv) if !flags.initial_events && !matches!(rv, "" | "0") => {
            Some(crate::handler::parse_resource_version(rv)?)
        }
        _ => None,
    };
    let (initial, from) = match start {
        Some(from) => {
            kplex_registry::generic::wait_for_revision(&ctx.store, from).await?;
            (Vec::new(), from)
        }
        None => {
            let all = ListOptions {
                labels: opts.labels.clone(),
                fields: opts.fields.clone(),
                ..Default::default()
            };
            let page = list_across(ctx, &info, &all).await?;
            (
                page.items.into_iter().map(Object::Decoded).collect(),
                page.revision,
            )
        }
    };
    let events = match ctx.store.watch_across(&across, from).await {
        Ok(w) => Some(w),
        Err(StoreError::Compacted { .. }) => None,
        Err(e) => return Err(from_store(e)),
    };
    let registry = ctx.registry.clone();
    let metadata_only = flags.metadata;
    Ok(crate::watchstream::respond(
        crate::watchstream::EventStream {
            initial,
            from,
            events,
            convert: move |event: &kplex_storage::Event| {
                let _held = &permit;
                let (kind, mut object) =
                    kplex_registry::generic::watch_event(event, &opts.labels, &opts.fields)?;
                let uid = TenantKeyspace::parse(event.key())?.vc_uid;
                let name = registry.name_of(uid).unwrap_or_default();
                annotate(&mut object, &name, uid);
                Some((kind, Object::Decoded(object)))
            },
            render: move |object: Object| match object {
                Object::Decoded(object) if metadata_only => {
                    Some(Object::Decoded(crate::tenant::partial(object)))
                }
                object => Some(object),
            },
            kind: info.kind.clone(),
            api_version: info.api_version(),
            bookmarks: flags.bookmarks,
            initial_events: flags.initial_events,
            timeout: flags.timeout,
            stopping,
        },
    ))
}

/// The system cluster's resources: namespaces and Leases.
pub fn system_catalog(catalog: &Catalog) -> Catalog {
    let rows = [("", "namespaces"), ("coordination.k8s.io", "leases")]
        .iter()
        .filter_map(|(group, plural)| catalog.find_resource(group, plural))
        .map(|row| (**row).clone())
        .collect();
    Catalog::new(rows)
}

fn system_store(ctx: &Context) -> GenericStore {
    GenericStore::new(
        ctx.store.clone(),
        TenantKeyspace::system_cluster(),
        ctx.system_catalog.clone(),
        ctx.allocations.clone(),
        ctx.watches.clone(),
    )
}

/// Makes sure the system cluster has its namespace.
pub async fn bootstrap(ctx: &Context) -> Result<(), ApiError> {
    let store = system_store(ctx);
    let namespaces = ctx
        .system_catalog
        .find("", "v1", "namespaces")
        .expect("the system catalog has namespaces")
        .clone();
    match store
        .create(
            &namespaces,
            None,
            json!({"metadata": {"name": SYSTEM_NAMESPACE}}),
            Default::default(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.reason == "AlreadyExists" => Ok(()),
        Err(e) => Err(e),
    }
}

/// `/system/<api path>`: the system cluster, for system credentials only.
pub async fn system_cluster(
    ctx: &Context,
    caller: &Identity,
    path: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    if component(caller).is_none() {
        return Err(refused(caller, "the system cluster"));
    }
    // The admin records a system component reads: the VCs (their
    // placement) and the host clusters (with their kubeconfigs).
    let admin_prefix = format!(
        "/apis/{}/{}/",
        crate::virtualclusters::GROUP,
        crate::virtualclusters::VERSION
    );
    if let Some(rest) = path.strip_prefix(&admin_prefix) {
        let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        return match segments.as_slice() {
            ["hostclusters", rest @ ..] => {
                crate::admin::hostclusters(
                    ctx,
                    req.method.clone(),
                    rest,
                    req.clone(),
                    crate::admin::Reveal::Kubeconfig,
                )
                .await
            }
            ["virtualclusters"] if req.method == hyper::Method::GET => {
                crate::admin::virtualclusters(ctx, req.method.clone(), &[], req.clone(), true).await
            }
            ["virtualclusters", name, "status"] if req.method == hyper::Method::PATCH => {
                crate::admin::virtualclusters(
                    ctx,
                    req.method.clone(),
                    &[name, "status"],
                    req.clone(),
                    true,
                )
                .await
            }
            _ => Err(not_served()),
        };
    }
    crate::tenant::handle(
        &ctx.system_catalog,
        &system_store(ctx),
        caller,
        None,
        path,
        req,
        ctx.stopping.subscribe(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_point_only_at_the_listed_resource() {
        let info = kplex_kinds::catalog::shared()
            .find("apps", "v1", "deployments")
            .unwrap()
            .clone();
        let across = AcrossClusters::resource("apps", "deployments").unwrap();
        let key = TenantKeyspace::for_vc("u-1")
            .unwrap()
            .object_key("apps", "deployments", Some("ns"), "web")
            .unwrap();
        let token = encode_continue(Revision::new(7), &key);
        let (rv, uid, back) = decode_continue(&across, &info, &token).unwrap();
        assert_eq!((rv, uid.as_str(), &back), (Revision::new(7), "u-1", &key));
        let forge = |text: &str| {
            let token = json!({"rv": 7, "key": text}).to_string();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        };
        for bad in [
            "/kplex/clusters/u-1/core/secrets/ns/web",
            "/kplex/system/virtualclusters/team-a",
            "/kplex/clusters/u-1/apps/deployments/ns/../x",
            "/kplex/clusters/u-1/apps/deployments/ns/web/extra",
            "/kplex/system/cluster/apps/deployments/ns/web",
        ] {
            assert!(
                decode_continue(&across, &info, &forge(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(decode_continue(&across, &info, "not base64!").is_err());
    }
}
