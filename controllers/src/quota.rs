//! The ResourceQuota controller: recounts what a namespace uses of each
//! resource its quotas name (`status.used`, with `status.hard` from the
//! spec), so usage falls again when objects go. The apiserver's quota
//! admission refuses what would exceed `hard` and adds each admitted
//! object to `used` at once; this recount is the truth it settles to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kplex_api::quantity::{self, Milli};
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

use crate::cache::ObjectKey;
use crate::{Ctx, Error, Outcome};

/// How often a quota counting kinds the controllers do not watch in full
/// is recounted anyway.
const RECOUNT: Duration = Duration::from_secs(300);

/// The served version of a group's resources, for listing them.
fn version_of(group: &str) -> &'static str {
    match group {
        ""
        | "apps"
        | "batch"
        | "networking.k8s.io"
        | "policy"
        | "discovery.k8s.io"
        | "coordination.k8s.io"
        | "events.k8s.io"
        | "rbac.authorization.k8s.io" => "v1",
        "autoscaling" => "v2",
        _ => "v1",
    }
}

fn to_values<K: Serialize>(objects: Vec<Arc<K>>) -> Vec<Value> {
    objects
        .iter()
        .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
        .collect()
}

/// The objects of `group`/`plural` in the namespace: from a cache when
/// one holds them, else listed.
async fn objects_of(
    ctx: &Ctx,
    key: &ObjectKey,
    group: &str,
    plural: &str,
) -> Result<(Vec<Value>, bool), Error> {
    let (vc, ns) = (&key.vc, key.namespace.as_deref());
    let cached = match (group, plural) {
        ("", "pods") => Some(to_values(ctx.pods.in_namespace(vc, ns))),
        ("", "services") => Some(to_values(ctx.services.in_namespace(vc, ns))),
        ("", "persistentvolumeclaims") => Some(to_values(ctx.claims.in_namespace(vc, ns))),
        ("", "replicationcontrollers") => Some(to_values(ctx.rcs.in_namespace(vc, ns))),
        ("", "resourcequotas") => Some(to_values(ctx.quotas.in_namespace(vc, ns))),
        ("apps", "deployments") => Some(to_values(ctx.deployments.in_namespace(vc, ns))),
        ("apps", "replicasets") => Some(to_values(ctx.replicasets.in_namespace(vc, ns))),
        ("apps", "statefulsets") => Some(to_values(ctx.statefulsets.in_namespace(vc, ns))),
        ("apps", "daemonsets") => Some(to_values(ctx.daemonsets.in_namespace(vc, ns))),
        ("batch", "jobs") => Some(to_values(ctx.jobs.in_namespace(vc, ns))),
        ("batch", "cronjobs") => Some(to_values(ctx.cronjobs.in_namespace(vc, ns))),
        _ => None,
    };
    if let Some(values) = cached {
        return Ok((values, true));
    }
    let base = if group.is_empty() {
        format!("/clusters/{}/api/v1", vc.name)
    } else {
        format!("/clusters/{}/apis/{group}/{}", vc.name, version_of(group))
    };
    let path = format!("{base}/namespaces/{}/{plural}", key.ns());
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Request(e.to_string()))?;
    match ctx.clients.root.request::<Value>(request).await {
        Ok(list) => Ok((list["items"].as_array().cloned().unwrap_or_default(), false)),
        // A kind this server does not serve counts nothing.
        Err(e) if crate::client::is_status(&e, 404) => Ok((Vec::new(), false)),
        Err(e) => Err(Error::Api(e)),
    }
}

/// The (group, plural) a quota resource name counts.
fn counted(resource: &str) -> (&str, &str) {
    if let Some(rest) = resource.strip_prefix("count/") {
        return match rest.split_once('.') {
            Some((plural, group)) => (group, plural),
            None => ("", rest),
        };
    }
    match resource {
        "services" | "services.loadbalancers" | "services.nodeports" => ("", "services"),
        "configmaps" => ("", "configmaps"),
        "secrets" => ("", "secrets"),
        "persistentvolumeclaims" | "requests.storage" => ("", "persistentvolumeclaims"),
        "replicationcontrollers" => ("", "replicationcontrollers"),
        "resourcequotas" => ("", "resourcequotas"),
        r if r.ends_with(".storageclass.storage.k8s.io/requests.storage")
            || r.ends_with(".storageclass.storage.k8s.io/persistentvolumeclaims") =>
        {
            ("", "persistentvolumeclaims")
        }
        // pods, cpu, memory, requests.*, limits.*, hugepages…
        _ => ("", "pods"),
    }
}

/// Reconciles one ResourceQuota's usage.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(quota) = ctx.quotas.get(key) else {
        return Ok(None);
    };
    let hard = quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default();
    let mut used: BTreeMap<String, Milli> = hard.keys().map(|k| (k.clone(), Milli(0))).collect();
    let mut kinds: Vec<(&str, &str)> = hard.keys().map(|r| counted(r)).collect();
    kinds.sort();
    kinds.dedup();
    let mut all_cached = true;
    for (group, plural) in kinds {
        let (objects, cached) = objects_of(ctx, key, group, plural).await?;
        all_cached &= cached;
        for object in &objects {
            for (resource, amount) in kplex_api::quota::usage(group, plural, object) {
                if let Some(total) = used.get_mut(&resource) {
                    if counted(&resource) == (group, plural) {
                        *total += amount;
                    }
                }
            }
        }
    }
    let status = ResourceQuotaStatus {
        hard: (!hard.is_empty()).then(|| hard.clone()),
        used: Some(
            used.into_iter()
                .map(|(k, v)| (k, Quantity(quantity::format(v))))
                .collect(),
        ),
    };
    if quota.status.as_ref() != Some(&status) {
        let mut updated = (*quota).clone();
        updated.status = Some(status);
        let api = ctx
            .clients
            .vc::<ResourceQuota>(&key.vc, key.namespace.as_deref());
        if !ctx
            .quotas
            .write_status(&api, &key.vc, &quota.name_any(), &updated)
            .await?
        {
            return Ok(None);
        }
    }
    Ok((!all_cached).then_some(RECOUNT))
}
