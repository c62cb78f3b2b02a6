//! The garbage collector: owner references across all kinds, within each
//! VC.
//!
//! - **Background**: an owner is deleted; then each dependent whose owners
//!   are all gone is deleted (one with an owner left loses the reference
//!   to the gone one).
//! - **Foreground**: the apiserver marks the owner (`foregroundDeletion`
//!   finalizer); its dependents are deleted, and once none that blocks
//!   (`blockOwnerDeletion`) is left, the finalizer is removed and the
//!   owner goes.
//! - **Orphan**: the apiserver marks the owner (`orphan` finalizer); each
//!   dependent loses its reference, then the finalizer goes.
//!
//! The graph holds only objects that have owners (and owners being
//! finalized): objects without owner references (every object of an idle
//! VC) cost nothing. Owners are looked up in the VC of the dependent only:
//! a reference to another VC's UID finds nothing there and is treated as
//! any reference to a missing owner. Whether an owner exists is read from
//! the controllers' caches when they hold it, else from the API.
//!
//! Custom resources are owners and dependents too: each VC's CRDs are
//! watched across VCs, and each of its custom resources watched in that VC
//! ([`custom`]). An owner of a kind the VC does not serve is kept, as
//! kube's collector keeps what it cannot resolve; learning the kind looks
//! at its dependents again.

mod custom;

pub use custom::start_custom_watches;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::discovery::{verbs, Discovery, Scope};
use kube::Resource;
use serde_json::{json, Value};

use crate::cache::ObjectKey;
use crate::client::Vc;
use crate::{Ctx, Error, Outcome, Task};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// A kind, as the collector needs to address its objects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KindRef {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural (URL segment).
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

impl KindRef {
    /// The kind of the k8s-openapi type `K`.
    pub fn of<K: Resource<DynamicType = ()>>() -> KindRef
    where
        K::Scope: 'static,
    {
        KindRef {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            namespaced: std::any::TypeId::of::<K::Scope>()
                == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>(),
        }
    }

    /// The URL path of `name` in `vc` (and namespace `ns`).
    fn path(&self, vc: &Vc, ns: Option<&str>, name: &str) -> String {
        let base = if self.group.is_empty() {
            format!("/clusters/{}/api/{}", vc.name, self.version)
        } else {
            format!("/clusters/{}/apis/{}/{}", vc.name, self.group, self.version)
        };
        match ns.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", self.plural),
            None => format!("{base}/{}/{name}", self.plural),
        }
    }
}

/// One object the collector looks at (an owner being finalized, or a
/// dependent whose owners may be gone).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    /// The object's VC.
    pub vc: Vc,
    /// The object's UID.
    pub uid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finalizing {
    Orphan,
    Foreground,
}

#[derive(Debug, Clone)]
struct Node {
    kind: Arc<KindRef>,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerReference>,
    finalizing: Option<Finalizing>,
    deleting: bool,
}

type NodeKey = (Arc<str>, String);

#[derive(Default)]
struct Inner {
    /// Objects with owners, and owners being finalized, by (VC UID, UID).
    nodes: HashMap<NodeKey, Node>,
    /// Dependents' UIDs by (VC UID, owner UID).
    dependents: HashMap<NodeKey, HashSet<String>>,
}

/// The graph of owners and dependents (see the module documentation).
#[derive(Default)]
pub struct Graph {
    inner: Mutex<Inner>,
    /// Kinds by (group, kind), from discovery, to address owners.
    kinds: RwLock<HashMap<(String, String), Arc<KindRef>>>,
    /// Each VC's custom kinds and the watches of their objects.
    custom: Mutex<custom::Custom>,
}

fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

fn finalizing(meta: &ObjectMeta) -> Option<Finalizing> {
    meta.deletion_timestamp.as_ref()?;
    let has = |f: &str| meta.finalizers.iter().flatten().any(|x| x == f);
    if has(FOREGROUND) {
        Some(Finalizing::Foreground)
    } else if has(ORPHAN) {
        Some(Finalizing::Orphan)
    } else {
        None
    }
}

impl Graph {
    /// Notes a kind (its owners can then be looked up).
    pub fn learn(&self, kind: KindRef) {
        self.kinds
            .write()
            .expect("kinds lock")
            .insert((kind.group.clone(), kind.kind.clone()), Arc::new(kind));
    }

    fn kind(&self, api_version: &str, kind: &str) -> Option<Arc<KindRef>> {
        self.kinds
            .read()
            .expect("kinds lock")
            .get(&(group_of(api_version).to_owned(), kind.to_owned()))
            .cloned()
    }

    /// Objects held, for tests and metrics.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("graph lock").nodes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An object of `kind` was created or changed.
    pub fn observe(&self, ctx: &Ctx, vc: &Vc, kind: &KindRef, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.clone() else {
            return;
        };
        let owners: Vec<OwnerReference> = meta.owner_references.clone().unwrap_or_default();
        let finalizing = finalizing(meta);
        let key: NodeKey = (vc.uid.clone(), uid.clone());
        let mut queue = Vec::new();
        {
            let mut inner = self.inner.lock().expect("graph lock");
            let old = inner.nodes.remove(&key);
            if let Some(old) = &old {
                for owner in &old.owners {
                    inner.unlink(&vc.uid, &owner.uid, &uid);
                }
            }
            if owners.is_empty() && finalizing.is_none() {
                return;
            }
            for owner in &owners {
                inner
                    .dependents
                    .entry((vc.uid.clone(), owner.uid.clone()))
                    .or_default()
                    .insert(uid.clone());
            }
            let kind = self
                .kind(&format!("{}/{}", kind.group, kind.version), &kind.kind)
                .unwrap_or_else(|| Arc::new(kind.clone()));
            let deleting = meta.deletion_timestamp.is_some();
            let changed_owners = old.as_ref().is_none_or(|o| {
                o.owners
                    .iter()
                    .map(|r| &r.uid)
                    .ne(owners.iter().map(|r| &r.uid))
            });
            inner.nodes.insert(
                key,
                Node {
                    kind,
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone().unwrap_or_default(),
                    owners: owners.clone(),
                    finalizing,
                    deleting,
                },
            );
            if finalizing.is_some() {
                queue.push(uid.clone());
            }
            // A dependent going away may free a foreground owner.
            if deleting {
                for owner in &owners {
                    if inner.is_foreground(&vc.uid, &owner.uid) {
                        queue.push(owner.uid.clone());
                    }
                }
            }
            if changed_owners
                && !deleting
                && !owners
                    .iter()
                    .all(|o| owner_cached(ctx, vc, meta.namespace.as_deref(), o))
            {
                queue.push(uid);
            }
        }
        for uid in queue {
            ctx.queue.add(Task::Collect(Item {
                vc: vc.clone(),
                uid,
            }));
        }
    }

    /// The kind an owner reference names in `vc`: built-in, or one of the
    /// VC's custom kinds.
    fn kind_in(&self, vc: &Vc, api_version: &str, kind: &str) -> Option<Arc<KindRef>> {
        self.kind(api_version, kind).or_else(|| {
            self.custom
                .lock()
                .expect("custom lock")
                .kind(vc, group_of(api_version), kind)
        })
    }

    /// Looks again at `vc`'s dependents of owners of `group`'s `kind` (the
    /// kind was learned, or its CRD went with every object of it).
    fn recheck_owned_by(&self, ctx: &Ctx, vc: &Vc, group: &str, kind: &str) {
        let owned: Vec<String> = {
            let inner = self.inner.lock().expect("graph lock");
            inner
                .nodes
                .iter()
                .filter(|((node_vc, _), node)| {
                    *node_vc == vc.uid
                        && node
                            .owners
                            .iter()
                            .any(|o| o.kind == kind && group_of(&o.api_version) == group)
                })
                .map(|((_, uid), _)| uid.clone())
                .collect()
        };
        for uid in owned {
            ctx.queue.add(Task::Collect(Item {
                vc: vc.clone(),
                uid,
            }));
        }
    }

    /// Every object of `group`'s `kind` in `vc` is gone (its CRD was
    /// deleted): the graph holds none of them.
    fn forget_kind(&self, vc: &Vc, group: &str, kind: &str) {
        let mut inner = self.inner.lock().expect("graph lock");
        let gone: Vec<(String, Vec<String>)> = inner
            .nodes
            .iter()
            .filter(|((node_vc, _), node)| {
                *node_vc == vc.uid && node.kind.group == group && node.kind.kind == kind
            })
            .map(|((_, uid), node)| {
                let owners = node.owners.iter().map(|o| o.uid.clone()).collect();
                (uid.clone(), owners)
            })
            .collect();
        for (uid, owners) in gone {
            inner.nodes.remove(&(vc.uid.clone(), uid.clone()));
            for owner in owners {
                inner.unlink(&vc.uid, &owner, &uid);
            }
        }
    }

    /// Every object of `vc`, which was deleted, is gone: nothing of it is
    /// left to collect.
    pub fn forget_vc(&self, vc: &Vc) {
        self.custom.lock().expect("custom lock").forget_vc(vc);
        let mut inner = self.inner.lock().expect("graph lock");
        inner.nodes.retain(|(owner_vc, _), _| *owner_vc != vc.uid);
        inner
            .dependents
            .retain(|(owner_vc, _), _| *owner_vc != vc.uid);
    }

    /// An object was deleted.
    pub fn forget(&self, ctx: &Ctx, vc: &Vc, meta: &ObjectMeta) {
        let Some(uid) = meta.uid.clone() else {
            return;
        };
        let mut queue = Vec::new();
        {
            let mut inner = self.inner.lock().expect("graph lock");
            if let Some(node) = inner.nodes.remove(&(vc.uid.clone(), uid.clone())) {
                for owner in &node.owners {
                    inner.unlink(&vc.uid, &owner.uid, &uid);
                    if inner.is_foreground(&vc.uid, &owner.uid) {
                        queue.push(owner.uid.clone());
                    }
                }
            }
            // Its dependents may have lost their last owner.
            if let Some(dependents) = inner.dependents.get(&(vc.uid.clone(), uid.clone())) {
                queue.extend(dependents.iter().cloned());
            }
        }
        for uid in queue {
            ctx.queue.add(Task::Collect(Item {
                vc: vc.clone(),
                uid,
            }));
        }
    }

    fn node(&self, vc: &Vc, uid: &str) -> Option<Node> {
        let inner = self.inner.lock().expect("graph lock");
        inner.nodes.get(&(vc.uid.clone(), uid.to_owned())).cloned()
    }

    /// The dependents of `owner` in `vc` (UID and node).
    fn dependents_of(&self, vc: &Vc, owner: &str) -> Vec<(String, Node)> {
        let inner = self.inner.lock().expect("graph lock");
        let Some(uids) = inner.dependents.get(&(vc.uid.clone(), owner.to_owned())) else {
            return Vec::new();
        };
        uids.iter()
            .filter_map(|u| {
                Some((
                    u.clone(),
                    inner.nodes.get(&(vc.uid.clone(), u.clone()))?.clone(),
                ))
            })
            .collect()
    }
}

impl Inner {
    fn unlink(&mut self, vc: &Arc<str>, owner: &str, dependent: &str) {
        let key = (vc.clone(), owner.to_owned());
        if let Some(set) = self.dependents.get_mut(&key) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(&key);
            }
        }
    }

    fn is_foreground(&self, vc: &Arc<str>, uid: &str) -> bool {
        self.nodes
            .get(&(vc.clone(), uid.to_owned()))
            .is_some_and(|n| n.finalizing == Some(Finalizing::Foreground))
    }
}

/// Whether a cache of the controllers holds `owner` (same name and UID).
fn owner_cached(ctx: &Ctx, vc: &Vc, ns: Option<&str>, owner: &OwnerReference) -> bool {
    let key = ObjectKey::new(vc, ns, &owner.name);
    let cluster_key = ObjectKey::new(vc, None, &owner.name);
    let uid_of = |meta: Option<&ObjectMeta>| meta.and_then(|m| m.uid.clone());
    let found = match (group_of(&owner.api_version), owner.kind.as_str()) {
        ("apps", "ReplicaSet") => uid_of(ctx.replicasets.get(&key).as_deref().map(Resource::meta)),
        ("apps", "Deployment") => uid_of(ctx.deployments.get(&key).as_deref().map(Resource::meta)),
        ("apps", "StatefulSet") => {
            uid_of(ctx.statefulsets.get(&key).as_deref().map(Resource::meta))
        }
        ("apps", "DaemonSet") => uid_of(ctx.daemonsets.get(&key).as_deref().map(Resource::meta)),
        ("batch", "Job") => uid_of(ctx.jobs.get(&key).as_deref().map(Resource::meta)),
        ("batch", "CronJob") => uid_of(ctx.cronjobs.get(&key).as_deref().map(Resource::meta)),
        ("", "Pod") => uid_of(ctx.pods.get(&key).as_deref().map(Resource::meta)),
        ("", "Service") => uid_of(ctx.services.get(&key).as_deref().map(Resource::meta)),
        ("", "ReplicationController") => uid_of(ctx.rcs.get(&key).as_deref().map(Resource::meta)),
        ("", "Node") => uid_of(ctx.nodes.get(&cluster_key).as_deref().map(Resource::meta)),
        _ => None,
    };
    found.as_deref() == Some(owner.uid.as_str())
}

/// Whether `owner` exists in `vc` (a live read when no cache holds it).
async fn owner_exists(
    ctx: &Ctx,
    vc: &Vc,
    ns: Option<&str>,
    owner: &OwnerReference,
) -> Result<bool, Error> {
    if owner_cached(ctx, vc, ns, owner) {
        return Ok(true);
    }
    let Some(kind) = ctx.graph.kind_in(vc, &owner.api_version, &owner.kind) else {
        // A kind the VC does not serve (yet): kept, as kube's collector
        // keeps a dependent whose owner it cannot resolve.
        return Ok(true);
    };
    match get(ctx, &kind.path(vc, ns, &owner.name)).await? {
        Some(object) => Ok(object["metadata"]["uid"].as_str() == Some(owner.uid.as_str())),
        None => Ok(false),
    }
}

async fn send(ctx: &Ctx, request: http::Request<Vec<u8>>) -> Result<Option<Value>, Error> {
    match ctx.clients.root.request::<Value>(request).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if crate::client::is_status(&e, 404) => Ok(None),
        Err(e) => Err(Error::Api(e)),
    }
}

async fn get(ctx: &Ctx, path: &str) -> Result<Option<Value>, Error> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Request(e.to_string()))?;
    send(ctx, request).await
}

async fn merge(ctx: &Ctx, path: &str, patch: &Value) -> Result<Option<Value>, Error> {
    let request = http::Request::patch(format!("{path}?fieldManager={}", crate::client::MANAGER))
        .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
        .body(serde_json::to_vec(patch).map_err(Error::json)?)
        .map_err(|e| Error::Request(e.to_string()))?;
    send(ctx, request).await
}

async fn delete(ctx: &Ctx, path: &str, policy: &str, uid: &str) -> Result<(), Error> {
    let body = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": policy, "preconditions": {"uid": uid}});
    let request = http::Request::delete(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).map_err(Error::json)?)
        .map_err(|e| Error::Request(e.to_string()))?;
    match ctx.clients.root.request_text(request).await {
        Ok(_) => Ok(()),
        Err(e) if crate::client::is_status(&e, 404) || crate::client::is_status(&e, 409) => Ok(()),
        Err(e) => Err(Error::Api(e)),
    }
}

/// Removes `finalizer` from the object at `path` (guarded by its version).
async fn remove_finalizer(ctx: &Ctx, path: &str, finalizer: &str) -> Result<(), Error> {
    let Some(object) = get(ctx, path).await? else {
        return Ok(());
    };
    let finalizers: Vec<&Value> = object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f.as_str() != Some(finalizer))
        .collect();
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": object["metadata"]["resourceVersion"]}});
    merge(ctx, path, &patch).await.map(|_| ())
}

/// Looks at one object: finalizes an owner being deleted in foreground or
/// with orphaning, or deletes a dependent whose owners are all gone.
pub async fn reconcile(ctx: &Arc<Ctx>, item: &Item) -> Outcome {
    let Some(node) = ctx.graph.node(&item.vc, &item.uid) else {
        return Ok(None);
    };
    let vc = &item.vc;
    let ns = node.namespace.as_deref();
    let path = node.kind.path(vc, ns, &node.name);
    match node.finalizing {
        Some(Finalizing::Orphan) => {
            for (dep_uid, dep) in ctx.graph.dependents_of(vc, &item.uid) {
                let owners: Vec<&OwnerReference> =
                    dep.owners.iter().filter(|o| o.uid != item.uid).collect();
                let dep_path = dep.kind.path(vc, dep.namespace.as_deref(), &dep.name);
                merge(
                    ctx,
                    &dep_path,
                    &json!({"metadata": {"ownerReferences": owners, "uid": dep_uid}}),
                )
                .await?;
            }
            remove_finalizer(ctx, &path, ORPHAN).await?;
        }
        Some(Finalizing::Foreground) => {
            let mut blocking = 0;
            for (dep_uid, dep) in ctx.graph.dependents_of(vc, &item.uid) {
                let blocks = dep
                    .owners
                    .iter()
                    .any(|o| o.uid == item.uid && o.block_owner_deletion == Some(true));
                if blocks {
                    blocking += 1;
                }
                if !dep.deleting {
                    let dep_path = dep.kind.path(vc, dep.namespace.as_deref(), &dep.name);
                    let policy = if blocks { "Foreground" } else { "Background" };
                    delete(ctx, &dep_path, policy, &dep_uid).await?;
                }
            }
            if blocking == 0 {
                remove_finalizer(ctx, &path, FOREGROUND).await?;
            }
        }
        None => {
            if node.deleting {
                return Ok(None);
            }
            let mut gone = Vec::new();
            for owner in &node.owners {
                if !owner_exists(ctx, vc, ns, owner).await? {
                    gone.push(owner.uid.clone());
                }
            }
            if gone.is_empty() {
                return Ok(None);
            }
            if gone.len() == node.owners.len() {
                delete(ctx, &path, "Background", &item.uid).await?;
            } else {
                let left: Vec<&OwnerReference> = node
                    .owners
                    .iter()
                    .filter(|o| !gone.contains(&o.uid))
                    .collect();
                merge(
                    ctx,
                    &path,
                    &json!({"metadata": {"ownerReferences": left, "uid": item.uid}}),
                )
                .await?;
            }
        }
    }
    Ok(None)
}

/// The kinds the controllers watch typed; the collector watches the
/// metadata of every other served kind (but Events, as kube's ignores them).
const TYPED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "nodes"),
    ("", "persistentvolumeclaims"),
    ("", "replicationcontrollers"),
    ("", "resourcequotas"),
    ("", "namespaces"),
    ("", "events"),
    ("apps", "replicasets"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "controllerrevisions"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
    ("discovery.k8s.io", "endpointslices"),
    ("events.k8s.io", "events"),
    // Watched whole, for the custom kinds they define (`custom`).
    ("apiextensions.k8s.io", "customresourcedefinitions"),
];

/// Learns the served kinds, then watches the metadata of those the
/// controllers do not cache.
pub fn start_metadata_watches(ctx: &Arc<Ctx>, tasks: &mut tokio::task::JoinSet<()>) {
    let ctx = ctx.clone();
    tasks.spawn(async move {
        let mut backoff = std::time::Duration::from_millis(200);
        let discovery = loop {
            match Discovery::new(ctx.clients.across.clone()).run().await {
                Ok(d) => break d,
                Err(e) => {
                    tracing::debug!(error = %e, "discovery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        };
        let mut watches = tokio::task::JoinSet::new();
        for group in discovery.groups() {
            for (resource, caps) in group.recommended_resources() {
                ctx.graph.learn(KindRef {
                    group: resource.group.clone(),
                    version: resource.version.clone(),
                    kind: resource.kind.clone(),
                    plural: resource.plural.clone(),
                    namespaced: caps.scope == Scope::Namespaced,
                });
                let typed = TYPED.contains(&(resource.group.as_str(), resource.plural.as_str()));
                if typed
                    || !caps.supports_operation(verbs::WATCH)
                    || !caps.supports_operation(verbs::DELETE)
                {
                    continue;
                }
                watches.spawn(watch_metadata(
                    ctx.clone(),
                    resource,
                    caps.scope == Scope::Namespaced,
                ));
            }
        }
        while watches.join_next().await.is_some() {}
    });
}

async fn watch_metadata(ctx: Arc<Ctx>, resource: ApiResource, namespaced: bool) {
    let kind = KindRef {
        group: resource.group.clone(),
        version: resource.version.clone(),
        kind: resource.kind.clone(),
        plural: resource.plural.clone(),
        namespaced,
    };
    let api: Api<PartialObjectMeta<DynamicObject>> =
        Api::all_with(ctx.clients.across.clone(), &resource);
    let config = crate::cache::watch_config();
    crate::watches::each_event(api, config, |seen, vc, object| {
        let meta = &object.metadata;
        match seen {
            crate::watches::Seen::Deleted => ctx.graph.forget(&ctx, &vc, meta),
            _ => ctx.graph.observe(&ctx, &vc, &kind, meta),
        }
        if seen != crate::watches::Seen::Listed {
            if let Some(ns) = meta.namespace.as_deref() {
                for quota in ctx.quotas.in_namespace(&vc, Some(ns)) {
                    if let Some(name) = &quota.metadata.name {
                        ctx.queue
                            .add(Task::Quota(ObjectKey::new(&vc, Some(ns), name)));
                    }
                }
            }
        }
    })
    .await;
}
