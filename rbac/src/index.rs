//! Every VC's policy, in memory: what makes an authorization decision cost
//! no storage read. A VC's policy is derived from its Roles, ClusterRoles
//! and their bindings by the registry's per-VC index (`pervc`): read once
//! when a request first needs it, then kept by four watches of the watch
//! cache opened once for the server.

use std::sync::Arc;

use kplex_registry::pervc::{Derive, Objects as Stored, PerVc};
use kplex_registry::watchcache::WatchCache;
use serde_json::Value;

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

/// Builds a VC's policy from its RBAC objects.
pub struct Rbac;

impl Derive for Rbac {
    type Output = Policy;

    fn build(&self, stored: &Stored) -> Policy {
        let mut objects = Objects::default();
        for (at, object) in stored {
            objects.set(
                &at.resource,
                at.namespace.as_deref(),
                &at.name,
                Some(Value::clone(object)),
            );
        }
        Policy::build(&objects)
    }
}

/// Every VC's policy (see [`start`]).
pub type Authorizer = PerVc<Rbac>;

/// Every VC's policy over `store`, its watches opened on a task of their
/// own.
pub fn start(store: Arc<WatchCache>) -> Arc<Authorizer> {
    let resources: Vec<(&'static str, &'static str)> =
        RESOURCES.iter().map(|r| (GROUP, *r)).collect();
    PerVc::start(store, "rbac", &resources, Rbac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Attributes, Subject};
    use kplex_storage::{EmbeddedOptions, EmbeddedStore, Key, Store, TenantKeyspace};
    use serde_json::json;
    use std::time::Duration;

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
        let authorizer = start(cache);
        until("the watches open", async || authorizer.is_live()).await;
        assert_eq!(authorizer.kept(), 0, "nothing is kept before it is asked");
        let a = authorizer.get("vc-a").await.unwrap();
        assert!(may_edit(&a, "bob") && !may_edit(&a, "carol"));
        // The VC whose UID begins with the other's holds nothing of it.
        let b = authorizer.get("vc-a2").await.unwrap();
        assert!(!may_edit(&b, "bob"));
        assert_eq!(authorizer.kept(), 2);

        // A change after the read reaches the kept policy.
        store
            .create(&binding_key("vc-a", "carol"), binding("carol"))
            .await
            .unwrap();
        until("carol's binding", async || {
            may_edit(&authorizer.get("vc-a").await.unwrap(), "carol")
        })
        .await;
        let kv = store
            .get(&binding_key("vc-a", "bob"))
            .await
            .unwrap()
            .unwrap();
        store.delete(&kv.key, kv.mod_revision).await.unwrap();
        until("bob's unbinding", async || {
            !may_edit(&authorizer.get("vc-a").await.unwrap(), "bob")
        })
        .await;
        assert!(!may_edit(&authorizer.get("vc-a2").await.unwrap(), "carol"));
        authorizer.forget("vc-a");
        assert_eq!(authorizer.kept(), 1);
    }
}
