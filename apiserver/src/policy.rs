//! A VC's isolation policy at admission: every Pod a tenant creates (or
//! whose spec it changes) is held to the VC's `spec.isolation` before it is
//! stored: refused with 403 naming each Pod Security rule broken, as
//! kube-apiserver's PodSecurity admission words it, or with 422 for huge
//! page requests kube-apiserver would not accept or the VC may not use.
//! The syncer checks again before a Pod reaches a host.
//!
//! And the VC's quota (`spec.isolation.quota.hard`), across all its
//! namespaces, as kube-apiserver's ResourceQuota admission words a
//! refusal (403 `exceeded quota: …`): a create or update that would take
//! the VC's usage of a resource past its amount is refused. Usage is
//! counted from the VC's stored objects of the written kind (the watch
//! cache), one write at a time per VC while a quota is being counted, so
//! two writes cannot both take the last unit.

use std::collections::BTreeMap;
use std::sync::Arc;

use kplex_api::isolation::Isolation;
use kplex_api::podsecurity;
use kplex_api::quantity::{self, Milli};
use kplex_registry::generic::{Admission, Admitted, GenericStore, ListOptions};
use kplex_registry::{ApiError, ResourceInfo};
use serde_json::Value;

/// The admission of one VC's policy.
pub struct VcPolicy {
    /// The VC's name, for messages.
    vc: String,
    policy: Arc<Isolation>,
}

impl VcPolicy {
    /// Admission by `policy` of the VC named `vc`.
    pub fn new(vc: &str, policy: Arc<Isolation>) -> Arc<VcPolicy> {
        Arc::new(VcPolicy {
            vc: vc.to_owned(),
            policy,
        })
    }

    fn pods(&self, old: Option<&Value>, object: &Value, name: &str) -> Result<(), ApiError> {
        if old.is_some_and(|old| !judged_change(old, object)) {
            return Ok(());
        }
        let violations = podsecurity::violations(&self.policy, object);
        if !violations.is_empty() {
            return Err(ApiError::forbidden(format!(
                "pods \"{name}\" is forbidden: {}",
                podsecurity::message(&self.policy, &violations)
            )));
        }
        let huge = podsecurity::huge_pages(&self.policy, &object["spec"]);
        if !huge.is_empty() {
            return Err(ApiError::fields("Pod", name, &huge));
        }
        Ok(())
    }

    /// The VC's quota: what the write adds to the usage of a limited
    /// resource must fit.
    async fn quota(
        &self,
        store: &GenericStore,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
        name: &str,
    ) -> Result<Admitted, ApiError> {
        let hard = self.policy.quota_amounts();
        let usage = kplex_api::isolation::usage(&self.policy, &info.group, &info.plural, object);
        let before = old
            .map(|o| kplex_api::isolation::usage(&self.policy, &info.group, &info.plural, o))
            .unwrap_or_default();
        // Only what grows counts (a create grows from nothing).
        let grows: BTreeMap<&String, Milli> = usage
            .iter()
            .filter(|(k, _)| hard.contains_key(*k))
            .filter_map(|(k, q)| {
                let added = Milli(q.0 - before.get(k).copied().unwrap_or_default().0);
                (added > Milli::default()).then_some((k, added))
            })
            .collect();
        if grows.is_empty() {
            return Ok(None);
        }
        let forbidden = |why: String| {
            ApiError::forbidden(format!(
                "{} \"{name}\" is forbidden: {why}",
                info.qualified()
            ))
        };
        let quota_name = format!("virtual cluster \"{}\"", self.vc);
        if old.is_none() && (info.group.as_str(), info.plural.as_str()) == ("", "pods") {
            let unstated = kplex_api::quota::unstated(object, &hard);
            if !unstated.is_empty() {
                return Err(forbidden(kplex_api::quota::unstated_refusal(
                    &quota_name,
                    &unstated,
                )));
            }
        }
        let turn = store.quota_turn().await;
        let mut used: BTreeMap<&String, Milli> =
            grows.keys().map(|k| (*k, Milli::default())).collect();
        let all = store.list(info, None, &ListOptions::default()).await?;
        for item in &all.items {
            let counted =
                kplex_api::isolation::usage(&self.policy, &info.group, &info.plural, item);
            for (k, total) in used.iter_mut() {
                *total += counted.get(*k).copied().unwrap_or_default();
            }
        }
        // (On an update the stored object is in the list: what it used
        // stays counted, and only the growth is asked for.)
        let exceeded: Vec<&String> = grows
            .keys()
            .copied()
            .filter(|k| used[k] + grows[k] > hard[*k])
            .collect();
        if exceeded.is_empty() {
            return Ok(Some(Box::new(turn)));
        }
        let listing = |f: &dyn Fn(&String) -> Milli| {
            exceeded
                .iter()
                .map(|k| format!("{k}={}", quantity::format(f(k))))
                .collect::<Vec<_>>()
                .join(",")
        };
        Err(forbidden(format!(
            "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
            listing(&|k| grows[k]),
            listing(&|k| used[k]),
            listing(&|k| hard[k]),
        )))
    }
}

/// Whether an update changes what the policy judges: the spec, or the
/// annotations that steer AppArmor and networks. (A label change on a Pod
/// admitted under an older policy is let through, as PodSecurity does.)
fn judged_change(old: &Value, object: &Value) -> bool {
    let steering = |o: &Value| -> Vec<(String, Value)> {
        o["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| {
                k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                    || podsecurity::NETWORK_ANNOTATION_PREFIXES
                        .iter()
                        .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    old["spec"] != object["spec"] || steering(old) != steering(object)
}

#[async_trait::async_trait]
impl Admission for VcPolicy {
    async fn admit(
        &self,
        store: &GenericStore,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<Admitted, ApiError> {
        let name = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .or(object["metadata"]["generateName"].as_str())
            .unwrap_or_default();
        if (info.group.as_str(), info.plural.as_str()) == ("", "pods") {
            self.pods(old, object, name)?;
        }
        self.quota(store, info, old, object, name).await
    }
}
