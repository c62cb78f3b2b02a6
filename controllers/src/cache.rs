//! The controllers' view of one kind across every VC: objects by (VC,
//! namespace, name), with indexes by namespace and by controlling owner,
//! fed by one cross-VC watch (kube-runtime's `watcher`, which lists,
//! watches, and relists after a gap).
//!
//! kube-runtime's own reflector store keys objects by namespace and name,
//! which two VCs share, so the key here carries the VC. Writes the
//! controllers make are written through ([`Cache::upsert`],
//! [`Cache::remove`]) so that the next reconcile sees them before the watch
//! delivers them: no pod is created twice for one missing replica.
//!
//! Nothing is kept per VC but the objects themselves (an idle VC has none
//! of the kinds cached here).

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::client::Vc;
use kplex_api::names::{CLUSTER_ANNOTATION, CLUSTER_UID_ANNOTATION};

/// One object of one VC.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Its VC.
    pub vc: Vc,
    /// Its namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl ObjectKey {
    /// The key of `name` in `vc`'s namespace `ns`.
    pub fn new(vc: &Vc, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            vc: vc.clone(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// The namespace, `""` for cluster-scoped objects.
    pub fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.vc.name, self.name),
            None => write!(f, "{}/{}", self.vc.name, self.name),
        }
    }
}

/// The VC an object from a cross-VC watch belongs to, taken off its
/// annotations (which the server adds and never stores: they are removed
/// here so nothing written back carries them).
pub fn take_vc<K: Resource>(object: &mut K) -> Option<Vc> {
    let annotations = object.meta_mut().annotations.as_mut()?;
    let uid = annotations.remove(CLUSTER_UID_ANNOTATION)?;
    let name = annotations.remove(CLUSTER_ANNOTATION).unwrap_or_default();
    if annotations.is_empty() {
        object.meta_mut().annotations = None;
    }
    (!uid.is_empty()).then(|| Vc {
        uid: uid.into(),
        name: name.into(),
    })
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of<K: Resource>(
    object: &K,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    object
        .meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A change the cache applied: what was there and what is now.
pub struct Change<K> {
    /// The object's key.
    pub key: ObjectKey,
    /// Before (`None`: new).
    pub old: Option<Arc<K>>,
    /// After (`None`: deleted).
    pub new: Option<Arc<K>>,
}

struct Entry<K> {
    object: Arc<K>,
    /// The listing it was last seen in (see `relisted`).
    epoch: u64,
    /// When a controller wrote it through, until the watch delivers it.
    written: Option<std::time::Instant>,
}

/// How long a written-through object outlives a listing that does not show
/// it (the listing may have been read before the write).
const WRITTEN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

struct Inner<K> {
    objects: HashMap<ObjectKey, Entry<K>>,
    by_namespace: HashMap<(Vc, Option<String>), HashSet<String>>,
    by_controller: HashMap<(Vc, String), HashSet<ObjectKey>>,
    epoch: u64,
    /// The newest resourceVersion of the listing under way.
    listed_up_to: u64,
    synced: bool,
    /// VCs deleted lately (by UID, with when): their objects are dropped
    /// at once and what a watch still brings of them is not taken in.
    departed: HashMap<Arc<str>, std::time::Instant>,
}

/// How long a deleted VC is remembered: longer than any watch lags.
const DEPARTED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Objects of kind `K` from every VC.
pub struct Cache<K> {
    inner: RwLock<Inner<K>>,
    synced: tokio::sync::watch::Sender<bool>,
    origin: Origin,
}

/// Where a cache's objects come from, which says whose they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A cross-VC watch of kplex: the VC is in the server's annotations.
    Kplex,
    /// A host cluster: the VC and the tenant namespace are in the labels
    /// the syncer put on its copies (`kplex_api::mapping`); objects
    /// without them are not kplex's and are not held.
    Host,
}

/// The key of a host object: its VC and tenant namespace from its labels,
/// its own name.
fn host_key<K: Resource>(object: &K) -> Option<ObjectKey> {
    use kplex_api::mapping::{NAMESPACE_LABEL, VC_LABEL, VC_UID_LABEL};
    let labels = object.meta().labels.as_ref()?;
    let uid = labels.get(VC_UID_LABEL).filter(|u| !u.is_empty())?;
    let vc = Vc {
        uid: uid.as_str().into(),
        name: labels
            .get(VC_LABEL)
            .map(String::as_str)
            .unwrap_or_default()
            .into(),
    };
    let namespace = match object.meta().namespace {
        Some(_) => Some(labels.get(NAMESPACE_LABEL)?.clone()),
        None => None,
    };
    Some(ObjectKey {
        vc,
        namespace,
        name: object.meta().name.clone()?,
    })
}

fn revision_of<K: Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache::new(Origin::Kplex)
    }
}

impl<K> Cache<K> {
    /// An empty cache of objects from `origin`.
    pub fn new(origin: Origin) -> Self {
        Cache {
            origin,
            inner: RwLock::new(Inner {
                objects: HashMap::new(),
                by_namespace: HashMap::new(),
                by_controller: HashMap::new(),
                epoch: 0,
                listed_up_to: 0,
                synced: false,
                departed: HashMap::new(),
            }),
            synced: tokio::sync::watch::channel(false).0,
        }
    }
}

impl<K> Cache<K>
where
    K: Resource + Clone,
{
    /// Drops every object of `vc`, which was deleted: the server sends its
    /// objects' deletion to no watch across VCs (their VC's record going
    /// says it all), and what a lagging watch still brings of them is not
    /// taken in. Returns how many were dropped.
    pub fn forget_vc(&self, vc: &Vc) -> usize {
        let mut inner = self.inner.write().expect("cache lock");
        let now = std::time::Instant::now();
        inner
            .departed
            .retain(|_, at| now.duration_since(*at) < DEPARTED_FOR);
        inner.departed.insert(vc.uid.clone(), now);
        let keys: Vec<ObjectKey> = inner
            .objects
            .keys()
            .filter(|k| k.vc == *vc)
            .cloned()
            .collect();
        for key in &keys {
            inner.take(key);
        }
        keys.len()
    }

    /// The object at `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        inner.objects.get(key).map(|e| e.object.clone())
    }

    /// Every object of `vc` in namespace `ns` (`None`: the cluster-scoped ones).
    pub fn in_namespace(&self, vc: &Vc, ns: Option<&str>) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        let Some(names) = inner.by_namespace.get(&(vc.clone(), ns.map(str::to_owned))) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| inner.objects.get(&ObjectKey::new(vc, ns, name)))
            .map(|e| e.object.clone())
            .collect()
    }

    /// Every object of `vc`, in any namespace.
    pub fn in_vc(&self, vc: &Vc) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        inner
            .by_namespace
            .iter()
            .filter(|((v, _), _)| v == vc)
            .flat_map(|((v, ns), names)| {
                names
                    .iter()
                    .filter_map(|name| inner.objects.get(&ObjectKey::new(v, ns.as_deref(), name)))
            })
            .map(|e| e.object.clone())
            .collect()
    }

    /// Every object of `vc` whose controlling owner has `uid`.
    pub fn controlled_by(&self, vc: &Vc, uid: &str) -> Vec<Arc<K>> {
        let inner = self.inner.read().expect("cache lock");
        let Some(keys) = inner.by_controller.get(&(vc.clone(), uid.to_owned())) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| inner.objects.get(k))
            .map(|e| e.object.clone())
            .collect()
    }

    /// Whether any object held, of any VC, meets `test`.
    pub fn any(&self, mut test: impl FnMut(&ObjectKey, &K) -> bool) -> bool {
        let inner = self.inner.read().expect("cache lock");
        inner.objects.iter().any(|(k, e)| test(k, &e.object))
    }

    /// How many objects are held.
    pub fn len(&self) -> usize {
        self.inner.read().expect("cache lock").objects.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first listing is complete.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Returns once the first listing is complete.
    pub async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Puts `object` (of `vc`) in; returns the change.
    pub fn upsert(&self, vc: &Vc, object: K) -> Change<K> {
        let key = ObjectKey::new(vc, object.namespace().as_deref(), &object.name_any());
        let mut inner = self.inner.write().expect("cache lock");
        let epoch = inner.epoch;
        inner.put(key, object, epoch, Some(std::time::Instant::now()))
    }

    /// Puts a host object (labelled by the syncer) in; returns the change,
    /// or `None` if its labels do not say whose it is.
    pub fn upsert_host(&self, object: K) -> Option<Change<K>> {
        let key = host_key(&object)?;
        let mut inner = self.inner.write().expect("cache lock");
        let epoch = inner.epoch;
        Some(inner.put(key, object, epoch, Some(std::time::Instant::now())))
    }

    /// The key of `object` as delivered by this cache's watch (the VC
    /// annotations are taken off objects from kplex).
    fn identify(&self, object: &mut K) -> Option<ObjectKey> {
        match self.origin {
            Origin::Kplex => {
                let vc = take_vc(object)?;
                Some(ObjectKey::new(
                    &vc,
                    object.namespace().as_deref(),
                    &object.name_any(),
                ))
            }
            Origin::Host => host_key(object),
        }
    }

    /// Writes `updated`'s status to its `status` subresource through
    /// `api` and the result into the cache; `false` if the object is gone.
    pub async fn write_status(
        &self,
        api: &crate::client::VcApi<K>,
        vc: &Vc,
        name: &str,
        updated: &K,
    ) -> Result<bool, crate::Error>
    where
        K: serde::Serialize + DeserializeOwned + Debug,
    {
        match api.replace_status(name, updated).await {
            Ok(written) => {
                self.upsert(vc, written);
                Ok(true)
            }
            Err(e) if e.is_status(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes out the object a controller deleted: the one at `key` if it
    /// still has `uid` (a newer object of the same name, already delivered
    /// by the watch, stays).
    pub fn remove_deleted(&self, key: &ObjectKey, uid: Option<&str>) {
        let mut inner = self.inner.write().expect("cache lock");
        let same = inner
            .objects
            .get(key)
            .is_some_and(|e| uid.is_none() || e.object.meta().uid.as_deref() == uid);
        if same {
            inner.take(key);
        }
    }

    fn apply_event(&self, event: watcher::Event<K>) -> Vec<Change<K>> {
        let mut inner = self.inner.write().expect("cache lock");
        match event {
            watcher::Event::Init => {
                inner.epoch += 1;
                inner.listed_up_to = 0;
                Vec::new()
            }
            watcher::Event::InitApply(mut object) | watcher::Event::Apply(mut object) => {
                let Some(key) = self.identify(&mut object) else {
                    return Vec::new();
                };
                if inner.departed.contains_key(&key.vc.uid) {
                    return Vec::new();
                }
                let rv = revision_of(&object);
                inner.listed_up_to = inner.listed_up_to.max(rv);
                let epoch = inner.epoch;
                vec![inner.put(key, object, epoch, None)]
            }
            watcher::Event::Delete(mut object) => {
                let Some(key) = self.identify(&mut object) else {
                    return Vec::new();
                };
                let old = inner.take(&key);
                vec![Change {
                    key,
                    old,
                    new: None,
                }]
            }
            watcher::Event::InitDone => {
                let changes = inner.relisted();
                if !inner.synced {
                    inner.synced = true;
                    self.synced.send_replace(true);
                }
                changes
            }
        }
    }
}

impl<K: Resource + Clone> Inner<K> {
    fn put(
        &mut self,
        key: ObjectKey,
        mut object: K,
        epoch: u64,
        written: Option<std::time::Instant>,
    ) -> Change<K> {
        // Field ownership is the server's business: no reconcile reads it,
        // a write without it keeps the stored entries, and it is often the
        // larger part of an object.
        object.meta_mut().managed_fields = None;
        let vc = &key.vc.clone();
        // A controller's own write may come back after the watch delivered
        // a newer version of the object: the newer one stays.
        if let Some(held) = self.objects.get(&key) {
            let newer = revision_of(held.object.as_ref()) > revision_of(&object);
            if newer && held.object.meta().uid == object.meta().uid {
                let current = held.object.clone();
                return Change {
                    key,
                    old: Some(current.clone()),
                    new: Some(current),
                };
            }
        }
        let old = self.take(&key);
        self.by_namespace
            .entry((vc.clone(), key.namespace.clone()))
            .or_default()
            .insert(key.name.clone());
        if let Some(owner) = controller_of(&object) {
            self.by_controller
                .entry((vc.clone(), owner.uid.clone()))
                .or_default()
                .insert(key.clone());
        }
        let object = Arc::new(object);
        self.objects.insert(
            key.clone(),
            Entry {
                object: object.clone(),
                epoch,
                written,
            },
        );
        Change {
            key,
            old,
            new: Some(object),
        }
    }

    fn take(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        let entry = self.objects.remove(key)?;
        let ns_key = (key.vc.clone(), key.namespace.clone());
        if let Some(names) = self.by_namespace.get_mut(&ns_key) {
            names.remove(&key.name);
            if names.is_empty() {
                self.by_namespace.remove(&ns_key);
            }
        }
        if let Some(owner) = controller_of(entry.object.as_ref()) {
            let owner_key = (key.vc.clone(), owner.uid.clone());
            if let Some(keys) = self.by_controller.get_mut(&owner_key) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_controller.remove(&owner_key);
                }
            }
        }
        Some(entry.object)
    }

    /// A listing ended: what it did not include is gone, unless a
    /// controller wrote it through lately and it is newer than the listing
    /// (the list may have been read before the write).
    fn relisted(&mut self) -> Vec<Change<K>> {
        let (epoch, listed) = (self.epoch, self.listed_up_to);
        let fresh = |e: &Entry<K>| {
            e.written.is_some_and(|at| at.elapsed() < WRITTEN_GRACE)
                && revision_of(e.object.as_ref()) > listed
        };
        let gone: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, e)| e.epoch < epoch && !fresh(e))
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .map(|key| {
                let old = self.take(&key);
                Change {
                    key,
                    old,
                    new: None,
                }
            })
            .collect()
    }
}

/// How the controllers' watches list: from the watch cache
/// (`resourceVersion=0`), in pages small enough that a listing of every VC
/// is a trickle, not a burst.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().any_semantic().page_size(100)
}

/// Listings (a watch's first, or after a gap) under way at once: each
/// reads every VC's objects of its kind page by page, and many at once
/// would make a burst of memory no steady state needs.
static LISTINGS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A watch's turn to list: taken when a listing starts, given back when it
/// is done.
#[derive(Default)]
pub struct ListingTurn(Option<tokio::sync::SemaphorePermit<'static>>);

impl ListingTurn {
    /// Follows a watch's events: waits for a turn at `Init`, gives it back
    /// at `InitDone`.
    pub async fn follow<K>(&mut self, event: &Result<watcher::Event<K>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Init) if self.0.is_none() => {
                self.0 = LISTINGS.acquire().await.ok();
            }
            Ok(watcher::Event::InitDone) | Err(_) => self.0 = None,
            _ => {}
        }
    }
}

/// Runs the cross-VC watch of `K` into `cache` for as long as the process
/// runs, calling `on_change` for each change (after the cache has it).
/// Failures are retried with kube-runtime's default backoff.
pub async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    cache: Arc<Cache<K>>,
    on_change: impl Fn(Change<K>) + Send + 'static,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    use kube::runtime::WatchStreamExt;
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut turn = ListingTurn::default();
    while let Some(event) = events.next().await {
        turn.follow(&event).await;
        match event {
            Ok(event) => {
                for change in cache.apply_event(event) {
                    on_change(change);
                }
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn pod(vc: &str, ns: &str, name: &str, rv: u64, owner: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(rv.to_string()),
                annotations: Some(
                    [
                        (CLUSTER_ANNOTATION.to_owned(), format!("vc-{vc}")),
                        (CLUSTER_UID_ANNOTATION.to_owned(), format!("uid-{vc}")),
                    ]
                    .into(),
                ),
                owner_references: owner.map(|uid| {
                    vec![OwnerReference {
                        uid: uid.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn two_vcs_holding_the_same_names_never_mix() {
        let cache = Cache::<Pod>::default();
        cache.apply_event(watcher::Event::Apply(pod(
            "a",
            "default",
            "web",
            1,
            Some("rs"),
        )));
        cache.apply_event(watcher::Event::Apply(pod(
            "b",
            "default",
            "web",
            2,
            Some("rs"),
        )));
        assert_eq!(cache.len(), 2);
        let a = Vc {
            uid: "uid-a".into(),
            name: "vc-a".into(),
        };
        let got = cache
            .get(&ObjectKey::new(&a, Some("default"), "web"))
            .unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some("1"));
        assert!(
            got.metadata.annotations.is_none(),
            "the VC annotations are taken off"
        );
        assert_eq!(cache.in_namespace(&a, Some("default")).len(), 1);
        assert_eq!(cache.controlled_by(&a, "rs").len(), 1);
        cache.apply_event(watcher::Event::Delete(pod(
            "b",
            "default",
            "web",
            3,
            Some("rs"),
        )));
        assert_eq!(cache.len(), 1);
        assert!(cache
            .get(&ObjectKey::new(&a, Some("default"), "web"))
            .is_some());
    }

    #[test]
    fn a_deleted_vc_is_forgotten_whole_and_a_lagging_watch_cannot_bring_it_back() {
        let cache = Cache::<Pod>::default();
        for (vc, name) in [("a", "one"), ("a", "two"), ("b", "one")] {
            cache.apply_event(watcher::Event::Apply(pod(
                vc,
                "default",
                name,
                1,
                Some("rs"),
            )));
        }
        let a = Vc {
            uid: "uid-a".into(),
            name: "vc-a".into(),
        };
        assert_eq!(cache.forget_vc(&a), 2);
        assert_eq!(cache.len(), 1);
        assert!(cache.in_vc(&a).is_empty());
        assert!(cache.controlled_by(&a, "rs").is_empty());
        // An event from before the deletion, delivered late.
        cache.apply_event(watcher::Event::Apply(pod("a", "default", "three", 2, None)));
        assert_eq!(cache.len(), 1);
        cache.apply_event(watcher::Event::Apply(pod("b", "default", "two", 2, None)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_write_returning_late_never_hides_what_the_watch_delivered() {
        let cache = Cache::<Pod>::default();
        let mut created = pod("a", "ns", "p", 5, Some("job"));
        created.metadata.uid = Some("u1".into());
        let mut failed = created.clone();
        failed.metadata.resource_version = Some("6".into());
        // The watch delivers the Pod created and then marked Failed…
        cache.apply_event(watcher::Event::Apply(created.clone()));
        cache.apply_event(watcher::Event::Apply(failed));
        // …before the create's answer is written through.
        let vc = take_vc(&mut created).unwrap();
        cache.upsert(&vc, created);
        let held = cache.get(&ObjectKey::new(&vc, Some("ns"), "p")).unwrap();
        assert_eq!(held.metadata.resource_version.as_deref(), Some("6"));
        // A delete written through takes out only the object it deleted.
        cache.remove_deleted(&ObjectKey::new(&vc, Some("ns"), "p"), Some("other"));
        assert_eq!(cache.len(), 1);
        cache.remove_deleted(&ObjectKey::new(&vc, Some("ns"), "p"), Some("u1"));
        assert!(cache.is_empty());
    }

    #[test]
    fn a_relist_drops_what_is_gone_but_keeps_newer_writes() {
        let cache = Cache::<Pod>::default();
        for p in [
            pod("a", "ns", "old", 5, None),
            pod("a", "ns", "kept", 6, None),
        ] {
            cache.apply_event(watcher::Event::Apply(p));
        }
        // Written through after the next listing was read.
        let mut fresh = pod("a", "ns", "fresh", 20, None);
        let vc = take_vc(&mut fresh).unwrap();
        cache.upsert(&vc, fresh);
        cache.apply_event(watcher::Event::Init);
        cache.apply_event(watcher::Event::InitApply(pod("a", "ns", "kept", 7, None)));
        let changes = cache.apply_event(watcher::Event::InitDone);
        let gone: Vec<&str> = changes.iter().map(|c| c.key.name.as_str()).collect();
        assert_eq!(gone, ["old"]);
        assert_eq!(cache.len(), 2);
        assert!(cache.is_synced());
    }
}
