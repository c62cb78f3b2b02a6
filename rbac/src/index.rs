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
    /// Being read; the changes seen meanwhile.
    Loading(Vec<Event>),
    Ready {
        /// The revision it was read at.
        at: Revision,
        objects: Objects,
        policy: Arc<Policy>,
    },
}

#[derive(Default)]
struct State {
    /// Whether the watches are open (nothing is kept otherwise).
    live: bool,
    vcs: HashMap<String, Slot>,
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
        loop {
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
                    Some(Slot::Loading(_)) => {
                        notified.as_mut().enable();
                        true
                    }
                    None if !state.live => false,
                    None => {
                        state.vcs.insert(uid.to_owned(), Slot::Loading(Vec::new()));
                        break;
                    }
                }
            };
            if !live {
                // Nothing can be kept while the watches are down.
                let (objects, _) = self.read(uid).await?;
                return Ok(self.compile(&objects));
            }
            notified.await;
        }
        // A caller that goes away mid-read leaves no slot loading forever.
        let mut abandoned = Abandoned {
            authorizer: self,
            uid,
            armed: true,
        };
        let read = self.read(uid).await;
        abandoned.armed = false;
        let mut state = self.state();
        let held = match state.vcs.remove(uid) {
            Some(Slot::Loading(held)) => Some(held),
            // The watches broke meanwhile: keep nothing.
            _ => None,
        };
        let result = match read {
            Ok((mut objects, at)) => {
                let policy = match held {
                    Some(held) => {
                        for event in held.iter().filter(|e| e.revision() > at) {
                            apply(&mut objects, event);
                        }
                        let policy = self.compile(&objects);
                        state.vcs.insert(
                            uid.to_owned(),
                            Slot::Ready {
                                at,
                                objects,
                                policy: policy.clone(),
                            },
                        );
                        policy
                    }
                    None => self.compile(&objects),
                };
                Ok(policy)
            }
            Err(e) => Err(e),
        };
        drop(state);
        self.loaded.notify_waiters();
        result
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
        let mut state = self.state();
        match state.vcs.get_mut(parts.vc_uid) {
            Some(Slot::Loading(held)) => held.push(event),
            Some(Slot::Ready {
                at,
                objects,
                policy,
            }) if event.revision() > *at => {
                apply(objects, &event);
                *policy = if objects.is_empty() {
                    self.defaults.clone()
                } else {
                    Arc::new(Policy::build(objects))
                };
            }
            _ => {}
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

/// Drops a VC's loading slot (and wakes its waiters) if its read is
/// abandoned.
struct Abandoned<'a> {
    authorizer: &'a Authorizer,
    uid: &'a str,
    armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.authorizer.state();
        if matches!(state.vcs.get(self.uid), Some(Slot::Loading(_))) {
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
