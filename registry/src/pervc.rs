//! What the server derives from a few resources of each VC, kept in
//! memory (its RBAC policy, its catalog of custom resources): answered
//! without a storage read on the request path.
//!
//! A VC's value is built the first time one of its requests needs it: its
//! objects of the resources are read at one revision, and from then on
//! kept by one watch per resource across every VC, opened once for the
//! whole server. A VC no request has asked about holds nothing here; one
//! storing none of the objects shares the empty value. Changes that arrive
//! while a VC's objects are being read are held and applied after the
//! read, those at or below its revision dropped (the read has them); each
//! change rebuilds the value outside the lock, installed unless a newer
//! change came meanwhile. While the watches are down (the feed broke),
//! nothing is kept: each request reads storage, until they are back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kplex_storage::{
    AcrossClusters, Event, Key, RangeRequest, Revision, Store, StoreResult, TenantKeyspace,
    WatchEvent,
};
use serde_json::Value;

use crate::watchcache::WatchCache;

/// One object of a VC: its resource (plural), namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// The resource's group.
    pub group: String,
    /// The resource (plural).
    pub resource: String,
    /// The namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// A VC's objects of the resources a value is derived from (without
/// their managed fields and last-applied annotation: what only clients
/// read), shared with the values built from them.
pub type Objects = BTreeMap<ObjectRef, Arc<Value>>;

/// How a value is derived from a VC's objects.
pub trait Derive: Send + Sync + 'static {
    /// The value.
    type Output: Send + Sync + 'static;
    /// The value of a VC holding `objects` (called with none once, for the
    /// value every VC without objects shares).
    fn build(&self, objects: &Objects) -> Self::Output;
}

enum Slot<T> {
    /// Being read by the load holding `token`; the changes seen meanwhile.
    Loading { token: u64, held: Vec<Event> },
    Ready {
        /// The revision it was read at.
        at: Revision,
        objects: Objects,
        value: Arc<T>,
        /// Raised by each change, so that a value built outside the lock
        /// is installed only if no change came meanwhile.
        version: u64,
        /// The newest revision the value reflects.
        seen: Revision,
    },
}

struct State<T> {
    /// Whether the watches are open (nothing is kept otherwise).
    live: bool,
    vcs: HashMap<String, Slot<T>>,
    /// Numbers loads.
    next_token: u64,
}

impl<T> State<T> {
    /// The events held for the load `token`, taken; `None` when the slot is
    /// no longer that load's (the watches broke, the VC was forgotten).
    fn take_held(&mut self, uid: &str, token: u64) -> Option<Vec<Event>> {
        match self.vcs.get_mut(uid) {
            Some(Slot::Loading { token: t, held }) if *t == token => Some(std::mem::take(held)),
            _ => None,
        }
    }
}

/// See the module documentation.
pub struct PerVc<D: Derive> {
    store: Arc<WatchCache>,
    /// What is kept, for logs.
    what: &'static str,
    /// The resources (group, plural) it is derived from.
    resources: Vec<(&'static str, &'static str)>,
    derive: D,
    state: RwLock<State<D::Output>>,
    loaded: tokio::sync::Notify,
    /// Woken whenever a VC's value is installed or changed.
    changed: tokio::sync::Notify,
    /// The value of a VC storing none of the objects.
    empty: Arc<D::Output>,
}

impl<D: Derive> PerVc<D> {
    /// Values `derive`d from `resources` of `store`'s VCs, the watches
    /// opened on a task of their own; `what` names them in logs.
    pub fn start(
        store: Arc<WatchCache>,
        what: &'static str,
        resources: &[(&'static str, &'static str)],
        derive: D,
    ) -> Arc<PerVc<D>> {
        let empty = Arc::new(derive.build(&Objects::new()));
        let this = Arc::new(PerVc {
            store,
            what,
            resources: resources.to_vec(),
            derive,
            state: RwLock::new(State {
                live: false,
                vcs: HashMap::new(),
                next_token: 0,
            }),
            loaded: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
            empty,
        });
        tokio::spawn(feed(Arc::downgrade(&this)));
        this
    }

    fn state(&self) -> std::sync::RwLockWriteGuard<'_, State<D::Output>> {
        self.state.write().expect("per-VC index lock")
    }

    /// The value of the VC with `uid`.
    pub async fn get(&self, uid: &str) -> StoreResult<Arc<D::Output>> {
        if let Some(Slot::Ready { value, .. }) =
            self.state.read().expect("per-VC index lock").vcs.get(uid)
        {
            return Ok(value.clone());
        }
        // Boxed: every request asks, and its future stays as small as
        // this answer from memory.
        Box::pin(self.load(uid)).await
    }

    /// The value of the VC with `uid`, loaded unless another caller is
    /// loading it.
    async fn load(&self, uid: &str) -> StoreResult<Arc<D::Output>> {
        let token = loop {
            if let Some(Slot::Ready { value, .. }) =
                self.state.read().expect("per-VC index lock").vcs.get(uid)
            {
                return Ok(value.clone());
            }
            let notified = self.loaded.notified();
            tokio::pin!(notified);
            let live = {
                let mut state = self.state();
                match state.vcs.get(uid) {
                    Some(Slot::Ready { value, .. }) => return Ok(value.clone()),
                    Some(Slot::Loading { .. }) => {
                        notified.as_mut().enable();
                        true
                    }
                    None if !state.live => false,
                    None => {
                        state.next_token += 1;
                        let token = state.next_token;
                        let held = Vec::new();
                        state
                            .vcs
                            .insert(uid.to_owned(), Slot::Loading { token, held });
                        break token;
                    }
                }
            };
            if !live {
                // Nothing can be kept while the watches are down.
                let (objects, _) = self.read(uid).await?;
                return Ok(self.build(&objects));
            }
            notified.await;
        };
        // Whatever happens below (the caller going away included), the
        // slot does not stay this load's, and its waiters wake.
        let _done = Done {
            index: self,
            uid,
            token,
        };
        let (mut objects, at) = self.read(uid).await?;
        // The changes seen during the read, then the value, built outside
        // the lock; changes seen during the build, applied under it.
        let Some(held) = self.state().take_held(uid, token) else {
            return Ok(self.build(&objects));
        };
        for event in held.iter().filter(|e| e.revision() > at) {
            apply(&mut objects, event);
        }
        let mut value = self.build(&objects);
        let mut state = self.state();
        let Some(late) = state.take_held(uid, token) else {
            return Ok(value);
        };
        let late: Vec<&Event> = late.iter().filter(|e| e.revision() > at).collect();
        if !late.is_empty() {
            for event in late {
                apply(&mut objects, event);
            }
            value = self.build(&objects);
        }
        state.vcs.insert(
            uid.to_owned(),
            Slot::Ready {
                at,
                objects,
                value: value.clone(),
                version: 0,
                seen: at,
            },
        );
        self.changed.notify_waiters();
        Ok(value)
    }

    fn build(&self, objects: &Objects) -> Arc<D::Output> {
        if objects.is_empty() {
            self.empty.clone()
        } else {
            Arc::new(self.derive.build(objects))
        }
    }

    /// A VC's objects, read at one revision.
    async fn read(&self, uid: &str) -> StoreResult<(Objects, Revision)> {
        let keyspace = TenantKeyspace::for_vc(uid)?;
        let mut objects = Objects::new();
        let mut at = None;
        for (group, resource) in &self.resources {
            let page = self
                .store
                .range(RangeRequest {
                    prefix: keyspace.resource_prefix(group, resource)?,
                    after: None,
                    limit: None,
                    revision: at,
                })
                .await?;
            at = Some(page.revision);
            for kv in page.kvs {
                set(&mut objects, &kv.key, Some(&kv.value));
            }
        }
        match at {
            Some(at) => Ok((objects, at)),
            None => Ok((objects, self.store.current_revision().await?)),
        }
    }

    /// Drops what is kept of the VC with `uid` (it was deleted).
    pub fn forget(&self, uid: &str) {
        self.state().vcs.remove(uid);
    }

    /// How many VCs have a value kept.
    pub fn kept(&self) -> usize {
        self.state.read().expect("per-VC index lock").vcs.len()
    }

    /// Whether the watches are open.
    pub fn is_live(&self) -> bool {
        self.state.read().expect("per-VC index lock").live
    }

    fn observe(&self, event: Event) {
        let Some(parts) = TenantKeyspace::parse(event.key()) else {
            return;
        };
        let uid = parts.vc_uid;
        let revision = event.revision();
        // The change is applied under the lock; the value is built outside
        // it, and installed unless another change came meanwhile.
        let (snapshot, built_from) = {
            let mut state = self.state();
            match state.vcs.get_mut(uid) {
                Some(Slot::Loading { held, .. }) => {
                    held.push(event);
                    return;
                }
                Some(Slot::Ready {
                    at,
                    objects,
                    version,
                    ..
                }) if event.revision() > *at => {
                    apply(objects, &event);
                    *version += 1;
                    (objects.clone(), *version)
                }
                _ => return,
            }
        };
        let built = self.build(&snapshot);
        if let Some(Slot::Ready {
            value,
            version,
            seen,
            ..
        }) = self.state().vcs.get_mut(uid)
        {
            if *version == built_from {
                *value = built;
                *seen = (*seen).max(revision);
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits (at most `limit`) until the VC's value satisfies `holds`,
    /// given it and the newest revision it reflects: how a write that
    /// changes it is answered only once it is in effect.
    pub async fn until(
        &self,
        uid: &str,
        limit: Duration,
        holds: impl Fn(&D::Output, Revision) -> bool,
    ) -> StoreResult<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let value = self.get(uid).await?;
            let seen = match self.state.read().expect("per-VC index lock").vcs.get(uid) {
                Some(Slot::Ready { seen, .. }) => *seen,
                // Not kept (the watches are down): what was read is current.
                _ => Revision::new(u64::MAX),
            };
            if holds(&value, seen) {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(false);
            }
        }
    }

    fn go_live(&self) {
        self.state().live = true;
    }

    fn go_dark(&self) {
        let mut state = self.state();
        state.live = false;
        state.vcs.clear();
        drop(state);
        self.loaded.notify_waiters();
    }
}

/// Ends a load: its slot, if still loading for it (its read failed, or its
/// caller went away), is dropped, and its waiters wake.
struct Done<'a, D: Derive> {
    index: &'a PerVc<D>,
    uid: &'a str,
    token: u64,
}

impl<D: Derive> Drop for Done<'_, D> {
    fn drop(&mut self) {
        let mut state = self.index.state();
        if matches!(state.vcs.get(self.uid), Some(Slot::Loading { token, .. }) if *token == self.token)
        {
            state.vcs.remove(self.uid);
        }
        drop(state);
        self.index.loaded.notify_waiters();
    }
}

fn apply(objects: &mut Objects, event: &Event) {
    match event {
        Event::Put { kv, .. } => set(objects, &kv.key, Some(&kv.value)),
        Event::Delete { prev, .. } => set(objects, &prev.key, None),
    }
}

fn set(objects: &mut Objects, key: &Key, value: Option<&[u8]>) {
    let Some(parts) = TenantKeyspace::parse(key) else {
        return;
    };
    let at = ObjectRef {
        group: parts.group.to_owned(),
        resource: parts.resource.to_owned(),
        namespace: parts.namespace.map(str::to_owned),
        name: parts.name.to_owned(),
    };
    match value.map(serde_json::from_slice::<Value>) {
        Some(Ok(mut object)) => {
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("managedFields");
                if let Some(annotations) =
                    meta.get_mut("annotations").and_then(Value::as_object_mut)
                {
                    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            }
            objects.insert(at, Arc::new(object));
        }
        // Unreadable, or gone: not the VC's any more.
        Some(Err(_)) | None => {
            objects.remove(&at);
        }
    }
}

/// Keeps the watches open for as long as the index exists.
async fn feed<D: Derive>(index: std::sync::Weak<PerVc<D>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = index.upgrade() else {
            return;
        };
        let what = strong.what;
        let opened = async {
            let after = strong.store.current_revision().await?;
            let mut streams = Vec::new();
            for (group, resource) in &strong.resources {
                let across = AcrossClusters::resource(group, resource)?;
                streams.push(strong.store.watch_across(&across, after).await?);
            }
            StoreResult::Ok(futures::stream::select_all(streams))
        }
        .await;
        let mut events = match opened {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, what, "cannot watch every VC's objects; retrying");
                drop(strong);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        strong.go_live();
        backoff = Duration::from_millis(100);
        drop(strong);
        while let Some(next) = events.next().await {
            let Some(strong) = index.upgrade() else {
                return;
            };
            match next {
                Ok(WatchEvent::Change(event)) => strong.observe(event),
                Ok(WatchEvent::Progress(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, what, "a watch of every VC's objects failed; reopening");
                    break;
                }
            }
        }
        let Some(strong) = index.upgrade() else {
            return;
        };
        strong.go_dark();
        drop(strong);
        tokio::time::sleep(backoff).await;
    }
}
