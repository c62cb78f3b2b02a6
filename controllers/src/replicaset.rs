//! The ReplicaSet controller (and the ReplicationController one, its older
//! twin with a map selector): keeps the number of active Pods it controls
//! at `spec.replicas`, adopts orphans its selector takes and releases Pods
//! it no longer selects, and reports `status` (replicas, fully labeled,
//! ready, available, observed generation, ReplicaFailure).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerCondition,
    ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::ResourceExt;
use serde_json::json;

use crate::cache::{controller_of, ObjectKey};
use crate::client::Propagation;
use crate::pods::{self, Labels};
use crate::{Ctx, Error, Outcome};

/// Most Pods created or deleted in one reconcile (kube's burstReplicas).
pub const BURST: usize = 500;
/// Pod writes in flight at once for one controller: enough to keep the
/// API busy, few enough that a neighbour's requests do not queue long
/// behind a large ReplicaSet's.
const WRITES_AT_ONCE: usize = 4;

/// How a controller selects its Pods.
pub enum Selector<'a> {
    /// A label selector (ReplicaSet, StatefulSet, DaemonSet, Job).
    Labels(&'a LabelSelector),
    /// A map (ReplicationController).
    Map(Option<&'a Labels>),
}

impl Selector<'_> {
    /// Whether it takes `pod`.
    pub fn takes(&self, pod: &Pod) -> bool {
        let labels = pod.metadata.labels.as_ref();
        match self {
            Selector::Labels(s) => pods::selects(Some(s), labels),
            Selector::Map(m) => pods::map_selects(*m, labels),
        }
    }
}

/// The Pods a controller controls, after adopting the orphans its selector
/// takes and releasing those it no longer takes (adoption only while the
/// controller is not being deleted, as kube's ClaimPods).
pub async fn claim_pods(
    ctx: &Ctx,
    key: &ObjectKey,
    owner: &OwnerReference,
    selector: &Selector<'_>,
    deleting: bool,
) -> Result<Vec<Arc<Pod>>, Error> {
    let mut claimed = Vec::new();
    for pod in ctx.pods.in_namespace(&key.vc, key.namespace.as_deref()) {
        let controller = controller_of(pod.as_ref()).map(|r| r.uid.clone());
        let takes = selector.takes(&pod);
        match controller {
            Some(uid) if uid == owner.uid => {
                if takes || pod.metadata.deletion_timestamp.is_some() {
                    claimed.push(pod);
                } else {
                    set_owners(ctx, key, &pod, |refs| refs.retain(|r| r.uid != owner.uid)).await?;
                }
            }
            None if takes && !deleting && pod.metadata.deletion_timestamp.is_none() => {
                let adopted = set_owners(ctx, key, &pod, |refs| refs.push(owner.clone())).await?;
                if let Some(pod) = adopted {
                    claimed.push(pod);
                }
            }
            _ => {}
        }
    }
    Ok(claimed)
}

/// Rewrites a Pod's owner references (guarded by its UID); the Pod as
/// written, or `None` if it is gone.
async fn set_owners(
    ctx: &Ctx,
    key: &ObjectKey,
    pod: &Pod,
    change: impl FnOnce(&mut Vec<OwnerReference>),
) -> Result<Option<Arc<Pod>>, Error> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    change(&mut refs);
    let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    match api.merge(&pod.name_any(), &patch).await {
        Ok(written) => Ok(ctx.pods.upsert(&key.vc, written).new),
        Err(e) if e.is_status(404) || e.is_status(409) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What managing the replicas came to.
pub struct Managed {
    /// The active Pods now controlled (after this round's writes).
    pub active: Vec<Arc<Pod>>,
    /// Why creating a Pod failed, if it did.
    pub failure: Option<String>,
    /// Whether more writes remain for a next round (past the burst).
    pub more: bool,
}

/// Creates or deletes Pods until `replicas` active ones exist.
#[allow(clippy::too_many_arguments)]
pub async fn manage(
    ctx: &Ctx,
    key: &ObjectKey,
    owner: &OwnerReference,
    owner_kind: &str,
    template: &PodTemplateSpec,
    claimed: Vec<Arc<Pod>>,
    replicas: usize,
    deleting: bool,
) -> Managed {
    let mut active: Vec<Arc<Pod>> = claimed.into_iter().filter(|p| pods::is_active(p)).collect();
    let mut failure = None;
    let mut more = false;
    if deleting {
        return Managed {
            active,
            failure,
            more,
        };
    }
    let ns = key.ns();
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    if active.len() < replicas {
        let missing = replicas - active.len();
        more = missing > BURST;
        let make = |_| {
            let pod = pods::from_template(
                template,
                owner.clone(),
                ns,
                None,
                &format!("{}-", owner.name),
            );
            let api = &api;
            async move { api.create(&pod).await }
        };
        let mut writes = futures::stream::iter(0..missing.min(BURST))
            .map(make)
            .buffer_unordered(WRITES_AT_ONCE);
        while let Some(result) = writes.next().await {
            match result {
                Ok(pod) => {
                    ctx.events.normal(
                        key,
                        owner_kind,
                        &owner.uid,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.name_any()),
                    );
                    if let Some(pod) = ctx.pods.upsert(&key.vc, pod).new {
                        active.push(pod);
                    }
                }
                Err(e) => {
                    let message = api_message(&e);
                    if failure.is_none() {
                        ctx.events.warning(
                            key,
                            owner_kind,
                            &owner.uid,
                            "FailedCreate",
                            &format!("Error creating: {message}"),
                        );
                    }
                    failure = Some(message);
                }
            }
            if failure.is_some() {
                // Stop at the first refusal: the next round tries again.
                break;
            }
        }
    } else if active.len() > replicas {
        let extra = active.len() - replicas;
        more = extra > BURST;
        active.sort_by(|a, b| pods::deletion_order(a, b));
        let doomed: Vec<Arc<Pod>> = active.drain(..extra.min(BURST)).collect();
        let mut deletes = futures::stream::iter(doomed)
            .map(|pod| {
                let api = &api;
                async move {
                    let result = api
                        .delete(
                            &pod.name_any(),
                            Propagation::Background,
                            pod.metadata.uid.as_deref(),
                        )
                        .await;
                    (pod, result)
                }
            })
            .buffer_unordered(WRITES_AT_ONCE);
        while let Some((pod, result)) = deletes.next().await {
            match result {
                Ok(()) => {
                    ctx.pods.remove_deleted(
                        &ObjectKey::new(&key.vc, key.namespace.as_deref(), &pod.name_any()),
                        pod.metadata.uid.as_deref(),
                    );
                    ctx.events.normal(
                        key,
                        owner_kind,
                        &owner.uid,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", pod.name_any()),
                    );
                }
                Err(e) => {
                    // Not deleted: it still counts.
                    active.push(pod);
                    tracing::debug!(%key, error = %e, "deleting a pod failed");
                    more = true;
                }
            }
        }
    }
    Managed {
        active,
        failure,
        more,
    }
}

/// The message of an API refusal (what kubectl would print).
pub fn api_message(e: &Error) -> String {
    match e {
        Error::Api(kube::Error::Api(status)) => status.message.clone(),
        other => other.to_string(),
    }
}

/// Counts of a replica set's Pods for its status.
struct Counts {
    replicas: i32,
    fully_labeled: i32,
    ready: i32,
    available: i32,
    /// How long until a ready Pod becomes available, if one is waiting.
    next_available: Option<Duration>,
}

fn count(active: &[Arc<Pod>], template_labels: Option<&Labels>, min_ready: i32) -> Counts {
    let now = pods::now();
    let mut counts = Counts {
        replicas: active.len() as i32,
        fully_labeled: 0,
        ready: 0,
        available: 0,
        next_available: None,
    };
    for pod in active {
        if pods::map_selects(template_labels, pod.metadata.labels.as_ref())
            || template_labels.is_none_or(|l| l.is_empty())
        {
            counts.fully_labeled += 1;
        }
        if pods::is_ready(pod) {
            counts.ready += 1;
        }
        match pods::availability(pod, min_ready, now) {
            Ok(()) => counts.available += 1,
            Err(Some(wait)) => {
                counts.next_available = Some(counts.next_available.map_or(wait, |w| w.min(wait)))
            }
            Err(None) => {}
        }
    }
    counts
}

/// Reconciles one ReplicaSet.
pub async fn reconcile_rs(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(rs) = ctx.replicasets.get(key) else {
        return Ok(None);
    };
    let spec = rs.spec.clone().unwrap_or_default();
    let owner = pods::controller_ref(rs.as_ref());
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let claimed = claim_pods(
        ctx,
        key,
        &owner,
        &Selector::Labels(&spec.selector),
        deleting,
    )
    .await?;
    let template = spec.template.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let managed = manage(
        ctx,
        key,
        &owner,
        "ReplicaSet",
        &template,
        claimed,
        replicas,
        deleting,
    )
    .await;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    let counts = count(&managed.active, labels, min_ready);
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    set_failure_condition(
        &mut conditions,
        managed.failure.as_deref(),
        |reason, message| ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(pods::time(pods::now())),
        },
        |c| c.type_ == "ReplicaFailure",
    );
    let status = ReplicaSetStatus {
        replicas: counts.replicas,
        fully_labeled_replicas: Some(counts.fully_labeled),
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.available),
        terminating_replicas: old.terminating_replicas,
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
    };
    if Some(&status) != rs.status.as_ref() {
        let mut updated = (*rs).clone();
        updated.status = Some(status);
        let api = ctx
            .clients
            .vc::<ReplicaSet>(&key.vc, key.namespace.as_deref());
        if !ctx
            .replicasets
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?
        {
            return Ok(None);
        }
    }
    Ok(next_round(&managed, counts.next_available))
}

/// When to look again: soon after a failure or a partial round, when a
/// ready Pod turns available, else when something changes.
fn next_round(managed: &Managed, next_available: Option<Duration>) -> Option<Duration> {
    if managed.more {
        return Some(Duration::ZERO);
    }
    if managed.failure.is_some() {
        return Some(Duration::from_secs(5));
    }
    next_available
}

/// Sets or clears the ReplicaFailure condition, as kube's replica set
/// controller keeps it.
fn set_failure_condition<C>(
    conditions: &mut Vec<C>,
    failure: Option<&str>,
    make: impl Fn(&str, &str) -> C,
    is_failure: impl Fn(&C) -> bool,
) {
    match failure {
        Some(message) => {
            if !conditions.iter().any(&is_failure) {
                conditions.push(make("FailedCreate", message));
            }
        }
        None => conditions.retain(|c| !is_failure(c)),
    }
}

/// Reconciles one ReplicationController.
pub async fn reconcile_rc(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(rc) = ctx.rcs.get(key) else {
        return Ok(None);
    };
    let spec = rc.spec.clone().unwrap_or_default();
    let template = spec.template.clone().unwrap_or_default();
    // An RC without a selector selects its template's labels.
    let selector = spec
        .selector
        .clone()
        .or_else(|| template.metadata.as_ref().and_then(|m| m.labels.clone()));
    let owner = pods::controller_ref(rc.as_ref());
    let deleting = rc.metadata.deletion_timestamp.is_some();
    let claimed = claim_pods(
        ctx,
        key,
        &owner,
        &Selector::Map(selector.as_ref()),
        deleting,
    )
    .await?;
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let managed = manage(
        ctx,
        key,
        &owner,
        "ReplicationController",
        &template,
        claimed,
        replicas,
        deleting,
    )
    .await;
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    let counts = count(&managed.active, labels, spec.min_ready_seconds.unwrap_or(0));
    let old = rc.status.clone().unwrap_or_default();
    let mut conditions = old.conditions.clone().unwrap_or_default();
    set_failure_condition(
        &mut conditions,
        managed.failure.as_deref(),
        |reason, message| ReplicationControllerCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(pods::time(pods::now())),
        },
        |c| c.type_ == "ReplicaFailure",
    );
    let status = ReplicationControllerStatus {
        replicas: counts.replicas,
        fully_labeled_replicas: Some(counts.fully_labeled),
        ready_replicas: Some(counts.ready),
        available_replicas: Some(counts.available),
        observed_generation: rc.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
    };
    if Some(&status) != rc.status.as_ref() {
        let mut updated = (*rc).clone();
        updated.status = Some(status);
        let api = ctx
            .clients
            .vc::<ReplicationController>(&key.vc, key.namespace.as_deref());
        if !ctx
            .rcs
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?
        {
            return Ok(None);
        }
    }
    Ok(next_round(&managed, counts.next_available))
}
