//! Every VC's policy, in memory: what makes an authorization decision cost
//! no storage read.
//!
//! A VC's policy is built the first time one of its requests needs it: its
//! RBAC objects are read at one revision, and from then on kept by four
//! watches of the watch cache (Roles, ClusterRoles and their bindings in
//! every VC), opened once for the whole server. A VC no request has asked
//! about holds nothing here; one storing no RBAC object shares the
//! defaults' policy. Changes that arrive while a VC's objects are being
//! read are held and applied after the read, those at or below its
//! revision dropped (the read has them). While the watches are down (the
//! feed broke), nothing is kept: each decision reads storage, until they
//! are back.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kplex_registry::watchcache::WatchCache;
use kplex_storage::{
    AcrossClusters, Event, RangeRequest, Revision, Store, StoreResult, TenantKeyspace, WatchEvent,
};

use crate::policy::{Objects, Policy};

/// The RBAC resources a policy is built from.
pub const RESOURCES: [&str; 4] = [
    "clusterroles",
    "clusterrolebindings",
    "roles",
    "rolebindings",
];
/// Their group.
pub const GROUP: &str = "rbac.authorization.k8s.io";

enum Slot {
    /// Being read by the loader holding `token`; the changes seen meanwhile.
    Loading { token: u64, held: Vec<Event> },
    Ready {
        /// The revision it was read at.
        at: Revision,
        objects: Objects,
        policy: Arc<Policy>,
        /// Raised by each change, so that a policy built outside the lock
        /// is installed only if no change came meanwhile.
        version: u64,
    },
}

#[derive(Default)]
struct State {
    /// Whether the watches are open (nothing is kept otherwise).
    live: bool,
    vcs: HashMap<String, Slot>,
    /// Numbers loads.
    next_token: u64,
}

impl State {
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
pub struct Authorizer {
    store: Arc<WatchCache>,
    state: RwLock<State>,
    loaded: tokio::sync::Notify,
    /// The policy of a VC that stores no RBAC object.
    defaults: Arc<Policy>,
}

impl Authorizer {
    /// An authorizer over `store`'s VCs, its watches opened on a task of
    /// their own.
    pub fn start(store: Arc<WatchCache>) -> Arc<Authorizer> {
        let authorizer = Arc::new(Authorizer {
            store,
            state: RwLock::default(),
            loaded: tokio::sync::Notify::new(),
            defaults: Arc::new(Policy::build(&Objects::default())),
        });
        tokio::spawn(feed(Arc::downgrade(&authorizer)));
        authorizer
    }

    fn state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().expect("rbac index lock")
    }

    /// The policy of the VC with `uid`.
    pub async fn policy(&self, uid: &str) -> StoreResult<Arc<Policy>> {
        let token = loop {
            if let Some(Slot::Ready { policy, .. }) =
                self.state.read().expect("rbac index lock").vcs.get(uid)
            {
                return Ok(policy.clone());
            }
            let notified = self.loaded.notified();
            tokio::pin!(notified);
            let live = {
                let mut state = self.state();
                match state.vcs.get(uid) {
                    Some(Slot::Ready { policy, .. }) => return Ok(policy.clone()),
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
                return Ok(self.compile(&objects));
            }
            notified.await;
        };
        // Whatever happens below (the caller going away included), the
        // slot does not stay this load's, and its waiters wake.
        let _done = Done {
            authorizer: self,
            uid,
            token,
        };
        let (mut objects, at) = self.read(uid).await?;
        // The changes seen during the read, then the policy, built outside
        // the lock; changes seen during the build, applied under it.
        let Some(held) = self.state().take_held(uid, token) else {
            return Ok(self.compile(&objects));
        };
        for event in held.iter().filter(|e| e.revision() > at) {
            apply(&mut objects, event);
        }
        let mut policy = self.compile(&objects);
        let mut state = self.state();
        let Some(late) = state.take_held(uid, token) else {
            return Ok(policy);
        };
        let late: Vec<&Event> = late.iter().filter(|e| e.revision() > at).collect();
        if !late.is_empty() {
            for event in late {
                apply(&mut objects, event);
            }
            policy = self.compile(&objects);
        }
        state.vcs.insert(
            uid.to_owned(),
            Slot::Ready {
                at,
                objects,
                policy: policy.clone(),
                version: 0,
            },
        );
        Ok(policy)
    }

    fn compile(&self, objects: &Objects) -> Arc<Policy> {
        if objects.is_empty() {
            self.defaults.clone()
        } else {
            Arc::new(Policy::build(objects))
        }
    }

    /// A VC's RBAC objects, read at one revision.
    async fn read(&self, uid: &str) -> StoreResult<(Objects, Revision)> {
        let keyspace = TenantKeyspace::for_vc(uid)?;
        let mut objects = Objects::default();
        let mut at = None;
        for resource in RESOURCES {
            let page = self
                .store
                .range(RangeRequest {
                    prefix: keyspace.resource_prefix(GROUP, resource)?,
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
        Ok((objects, at.expect("four reads")))
    }

    /// Drops what is kept of the VC with `uid` (it was deleted).
    pub fn forget(&self, uid: &str) {
        self.state().vcs.remove(uid);
    }

    /// How many VCs have a policy kept.
    pub fn kept(&self) -> usize {
        self.state.read().expect("rbac index lock").vcs.len()
    }

    fn observe(&self, event: Event) {
        let Some(parts) = TenantKeyspace::parse(event.key()) else {
            return;
        };
        let uid = parts.vc_uid;
        // The change is applied under the lock; the policy is built
        // outside it, and installed unless another change came meanwhile.
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
        let built = self.compile(&snapshot);
        if let Some(Slot::Ready {
            policy, version, ..
        }) = self.state().vcs.get_mut(uid)
        {
            if *version == built_from {
                *policy = built;
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
struct Done<'a> {
    authorizer: &'a Authorizer,
    uid: &'a str,
    token: u64,
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        let mut state = self.authorizer.state();
        if matches!(state.vcs.get(self.uid), Some(Slot::Loading { token, .. }) if *token == self.token)
        {
            state.vcs.remove(self.uid);
        }
        drop(state);
        self.authorizer.loaded.notify_waiters();
    }
}

fn apply(objects: &mut Objects, event: &Event) {
    match event {
        Event::Put { kv, .. } => set(objects, &kv.key, Some(&kv.value)),
        Event::Delete { prev, .. } => set(objects, &prev.key, None),
    }
}

fn set(objects: &mut Objects, key: &kplex_storage::Key, value: Option<&[u8]>) {
    let Some(parts) = TenantKeyspace::parse(key) else {
        return;
    };
    let object = match value {
        Some(bytes) => match serde_json::from_slice(bytes) {
            Ok(object) => Some(object),
            Err(_) => return,
        },
        None => None,
    };
    objects.set(parts.resource, parts.namespace, parts.name, object);
}

/// Keeps the four watches open for as long as the authorizer exists.
async fn feed(authorizer: std::sync::Weak<Authorizer>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = authorizer.upgrade() else {
            return;
        };
        let opened = async {
            let after = strong.store.current_revision().await?;
            let mut streams = Vec::new();
            for resource in RESOURCES {
                let across = AcrossClusters::resource(GROUP, resource)?;
                streams.push(strong.store.watch_across(&across, after).await?);
            }
            StoreResult::Ok(futures::stream::select_all(streams))
        }
        .await;
        let mut events = match opened {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "rbac: cannot watch the VCs' roles; retrying");
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
            let Some(strong) = authorizer.upgrade() else {
                return;
            };
            match next {
                Ok(WatchEvent::Change(event)) => strong.observe(event),
                Ok(WatchEvent::Progress(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "rbac: a watch of the VCs' roles failed; reopening");
                    break;
                }
            }
        }
        let Some(strong) = authorizer.upgrade() else {
            return;
        };
        strong.go_dark();
        drop(strong);
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attributes, Subject};
    use kplex_storage::{EmbeddedOptions, EmbeddedStore, Key};
    use serde_json::json;

    fn binding_key(vc: &str, name: &str) -> Key {
        TenantKeyspace::for_vc(vc)
            .unwrap()
            .object_key(GROUP, "rolebindings", Some("dev"), name)
            .unwrap()
    }

    fn binding(user: &str) -> bytes::Bytes {
        bytes::Bytes::from(
            json!({
                "roleRef": {"kind": "ClusterRole", "name": "edit", "apiGroup": GROUP},
                "subjects": [{"kind": "User", "name": user, "apiGroup": GROUP}],
            })
            .to_string(),
        )
    }

    fn may_edit(policy: &Policy, user: &str) -> bool {
        let none = Vec::new();
        policy.allows(
            &Subject {
                user,
                groups: &none,
            },
            &Attributes {
                verb: "update".into(),
                resource_request: true,
                resource: "configmaps".into(),
                namespace: "dev".into(),
                ..Attributes::default()
            },
        )
    }

    /// Polls `check` until it holds (the watches deliver asynchronously).
    async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check().await {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_vcs_policy_is_read_once_then_kept_by_the_watches_and_no_other_vc_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
                .await
                .unwrap(),
        );
        store
            .create(&binding_key("vc-a", "bob"), binding("bob"))
            .await
            .unwrap();
        let cache = WatchCache::start(store.clone()).await;
        let authorizer = Authorizer::start(cache);
        until("the watches open", async || {
            authorizer.state.read().unwrap().live
        })
        .await;
        assert_eq!(authorizer.kept(), 0, "nothing is kept before it is asked");
        let a = authorizer.policy("vc-a").await.unwrap();
        assert!(may_edit(&a, "bob") && !may_edit(&a, "carol"));
        // The VC whose UID begins with the other's holds nothing of it.
        let b = authorizer.policy("vc-a2").await.unwrap();
        assert!(!may_edit(&b, "bob"));
        assert_eq!(authorizer.kept(), 2);

        // A change after the read reaches the kept policy.
        store
            .create(&binding_key("vc-a", "carol"), binding("carol"))
            .await
            .unwrap();
        until("carol's binding", async || {
            may_edit(&authorizer.policy("vc-a").await.unwrap(), "carol")
        })
        .await;
        let kv = store
            .get(&binding_key("vc-a", "bob"))
            .await
            .unwrap()
            .unwrap();
        store.delete(&kv.key, kv.mod_revision).await.unwrap();
        until("bob's unbinding", async || {
            !may_edit(&authorizer.policy("vc-a").await.unwrap(), "bob")
        })
        .await;
        assert!(!may_edit(
            &authorizer.policy("vc-a2").await.unwrap(),
            "carol"
        ));
        authorizer.forget("vc-a");
        assert_eq!(authorizer.kept(), 1);
    }
}
