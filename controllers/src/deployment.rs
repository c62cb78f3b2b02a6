//! The Deployment controller, with kube-controller-manager's semantics:
//! one ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`,
//! revision annotations), rolled by RollingUpdate (maxSurge,
//! maxUnavailable) or Recreate; pause and resume; history beyond
//! `revisionHistoryLimit` removed; status and the Available, Progressing
//! (with the progress deadline) and ReplicaFailure conditions that
//! `kubectl rollout status` reads. `rollout undo` and `restart` are
//! kubectl's own template changes, rolled like any other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::json;

use crate::cache::{controller_of, ObjectKey};
use crate::client::Propagation;
use crate::pods;
use crate::{Ctx, Error, Outcome};

/// The label that tells a Deployment's ReplicaSets (and their Pods) apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// A ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// kube's alphabet for generated name parts (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The `pod-template-hash` of a template: FNV-1a of its JSON (with the
/// collision count), its decimal digits spelled in kube's safe alphabet.
pub fn template_hash(template: &PodTemplateSpec, collisions: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&without_hash(template)).unwrap_or_default());
    if let Some(c) = collisions {
        feed(&c.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// A template without the `pod-template-hash` label, for comparing a
/// ReplicaSet's template with its Deployment's.
pub fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t.metadata.as_mut().expect("has metadata").labels = None;
        }
    }
    t
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}

/// A percentage or a count of `total`, rounded up or down.
fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let text = match value {
        Some(IntOrString::Int(n)) => return *n,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    let Some(percent) = text.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
        return text.parse().unwrap_or(0);
    };
    let scaled = i64::from(total) * percent;
    (if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    }) as i32
}

/// maxSurge and maxUnavailable as counts (both zero is read as one unavailable).
fn surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let rolling = spec
        .strategy
        .and_then(|s| s.rolling_update)
        .unwrap_or_default();
    let surge = resolve(rolling.max_surge.as_ref(), replicas, true, "25%");
    let unavailable =
        resolve(rolling.max_unavailable.as_ref(), replicas, false, "25%").min(replicas);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// The ReplicaSets a Deployment controls, after adopting orphans its
/// selector takes and releasing those it no longer takes.
async fn claim(
    ctx: &Ctx,
    key: &ObjectKey,
    owner: &OwnerReference,
    selector: &LabelSelector,
    deleting: bool,
) -> Result<Vec<Arc<ReplicaSet>>, Error> {
    let api = ctx
        .clients
        .vc::<ReplicaSet>(&key.vc, key.namespace.as_deref());
    let mut claimed = Vec::new();
    for rs in ctx
        .replicasets
        .in_namespace(&key.vc, key.namespace.as_deref())
    {
        let takes = pods::selects(Some(selector), rs.metadata.labels.as_ref());
        let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
        match controller_of(rs.as_ref()).map(|r| r.uid.clone()) {
            Some(uid) if uid == owner.uid => {
                if takes || rs.metadata.deletion_timestamp.is_some() {
                    claimed.push(rs);
                    continue;
                }
                refs.retain(|r| r.uid != owner.uid);
            }
            None if takes && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                refs.push(owner.clone());
            }
            _ => continue,
        }
        let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
        match api.merge(&rs.name_any(), &patch).await {
            Ok(written) => {
                let adopted = controller_of(&written).is_some_and(|r| r.uid == owner.uid);
                if let Some(rs) = ctx
                    .replicasets
                    .upsert(&key.vc, written)
                    .new
                    .filter(|_| adopted)
                {
                    claimed.push(rs);
                }
            }
            Err(e) if e.is_status(404) || e.is_status(409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(claimed)
}

/// Scales `rs` to `to` (and stamps the Deployment's size on it).
async fn scale(
    ctx: &Ctx,
    key: &ObjectKey,
    d: &Deployment,
    rs: &ReplicaSet,
    to: i32,
) -> Result<Arc<ReplicaSet>, Error> {
    let (surge, _) = surge_and_unavailable(d);
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let from = spec_replicas(rs);
    let patch = json!({
        "metadata": {"annotations": {
            DESIRED_REPLICAS: replicas.to_string(),
            MAX_REPLICAS: (replicas + surge).to_string(),
        }},
        "spec": {"replicas": to},
    });
    let api = ctx
        .clients
        .vc::<ReplicaSet>(&key.vc, key.namespace.as_deref());
    let written = api.merge(&rs.name_any(), &patch).await?;
    if from != to {
        let way = if to > from { "up" } else { "down" };
        ctx.events.normal(
            key,
            "Deployment",
            d.metadata.uid.as_deref().unwrap_or_default(),
            "ScalingReplicaSet",
            &format!(
                "Scaled {way} replica set {} from {from} to {to}",
                rs.name_any()
            ),
        );
    }
    Ok(ctx
        .replicasets
        .upsert(&key.vc, written)
        .new
        .expect("an upsert yields the object"))
}

/// The annotations a Deployment passes to its new ReplicaSet.
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.annotations()
        .iter()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED && !k.starts_with("deployment.kubernetes.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Creates the ReplicaSet of the Deployment's current template.
async fn create_new(
    ctx: &Ctx,
    key: &ObjectKey,
    d: &Deployment,
    owner: &OwnerReference,
    revision: i64,
    replicas: i32,
) -> Result<Option<Arc<ReplicaSet>>, Error> {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collisions);
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.clone());
    let (surge, _) = surge_and_unavailable(d);
    let desired = spec.replicas.unwrap_or(1);
    let mut annotations = copied_annotations(d);
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS.into(), desired.to_string());
    annotations.insert(MAX_REPLICAS.into(), (desired + surge).to_string());
    let name = format!("{}-{hash}", key.name);
    let rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: key.namespace.clone(),
            labels: meta.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    };
    let api = ctx
        .clients
        .vc::<ReplicaSet>(&key.vc, key.namespace.as_deref());
    match api.create(&rs).await {
        Ok(created) => {
            ctx.events.normal(
                key,
                "Deployment",
                &owner.uid,
                "ScalingReplicaSet",
                &format!("Scaled up replica set {name} from 0 to {replicas}"),
            );
            Ok(ctx.replicasets.upsert(&key.vc, created).new)
        }
        Err(e) if e.is_status(409) => {
            // Ours, not yet seen by the cache? Otherwise another template
            // holds the name: count a collision and hash again.
            if let Some(existing) = api.get_opt(&name).await? {
                let ours = controller_of(&existing).is_some_and(|r| r.uid == owner.uid)
                    && existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(without_hash)
                        == Some(without_hash(&spec.template));
                if ours {
                    return Ok(ctx.replicasets.upsert(&key.vc, existing).new);
                }
            }
            let mut updated = d.clone();
            let status = updated.status.get_or_insert_with(Default::default);
            status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
            ctx.clients
                .vc::<Deployment>(&key.vc, key.namespace.as_deref())
                .replace_status(&key.name, &updated)
                .await?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Sets a condition as kube's SetDeploymentCondition: unchanged when
/// status and reason are; the transition time kept while the status is.
fn set_condition(status: &mut DeploymentStatus, mut new: DeploymentCondition, touch: bool) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(current) = conditions.iter().find(|c| c.type_ == new.type_) {
        if current.status == new.status && current.reason == new.reason && !touch {
            return;
        }
        if current.status == new.status {
            new.last_transition_time = current.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    let now = pods::time(pods::now());
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Reconciles one Deployment.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(d) = ctx.deployments.get(key) else {
        return Ok(None);
    };
    let spec = d.spec.clone().unwrap_or_default();
    let owner = pods::controller_ref(d.as_ref());
    let deleting = d.metadata.deletion_timestamp.is_some();
    let mut all = claim(ctx, key, &owner, &spec.selector, deleting).await?;
    let replicas = spec.replicas.unwrap_or(1);
    let paused = spec.paused == Some(true);
    let wanted = without_hash(&spec.template);
    let is_new = |rs: &ReplicaSet| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(without_hash)
            .as_ref()
            == Some(&wanted)
    };
    // The oldest is "the" new one should two carry the template.
    all.sort_by_key(|rs| rs.metadata.creation_timestamp.clone());
    let mut new_rs = all.iter().find(|rs| is_new(rs)).cloned();
    let max_old_revision = all
        .iter()
        .filter(|rs| {
            new_rs
                .as_ref()
                .is_none_or(|n| n.metadata.uid != rs.metadata.uid)
        })
        .map(|rs| revision_of(rs))
        .max()
        .unwrap_or(0);
    let (surge, max_unavailable) = surge_and_unavailable(&d);
    let mut created_new = false;
    if !deleting && !paused {
        match &new_rs {
            None => {
                let initial = if is_recreate(&d) {
                    let old_pods: i32 = all.iter().map(|rs| status_of(rs).0).sum();
                    if old_pods > 0 {
                        0
                    } else {
                        replicas
                    }
                } else {
                    let current: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
                    (replicas + surge - current).clamp(0, replicas)
                };
                new_rs = create_new(ctx, key, &d, &owner, max_old_revision + 1, initial).await?;
                match &new_rs {
                    Some(rs) => {
                        created_new = true;
                        all.push(rs.clone());
                    }
                    // A name collision was counted: hash again.
                    None => return Ok(Some(Duration::ZERO)),
                }
            }
            Some(rs) if revision_of(rs) <= max_old_revision => {
                // A template rolled back to: it becomes the newest revision.
                let mut annotations = copied_annotations(&d);
                annotations.insert(REVISION.into(), (max_old_revision + 1).to_string());
                let history = match rs.annotations().get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{}", revision_of(rs)),
                    _ => revision_of(rs).to_string(),
                };
                annotations.insert(REVISION_HISTORY.into(), history);
                let api = ctx
                    .clients
                    .vc::<ReplicaSet>(&key.vc, key.namespace.as_deref());
                let written = api
                    .merge(
                        &rs.name_any(),
                        &json!({"metadata": {"annotations": annotations}}),
                    )
                    .await?;
                let written = ctx
                    .replicasets
                    .upsert(&key.vc, written)
                    .new
                    .expect("upserted");
                all.retain(|r| r.metadata.uid != written.metadata.uid);
                all.push(written.clone());
                new_rs = Some(written);
            }
            Some(_) => {}
        }
    }
    let new_uid = new_rs.as_ref().and_then(|rs| rs.metadata.uid.clone());
    let is_old = |rs: &ReplicaSet| rs.metadata.uid != new_uid;
    if !deleting {
        if paused {
            // Paused: no rollout, but a change of size is followed when
            // one ReplicaSet holds every replica.
            let active: Vec<&Arc<ReplicaSet>> =
                all.iter().filter(|rs| spec_replicas(rs) > 0).collect();
            if let [only] = active.as_slice() {
                if spec_replicas(only) != replicas {
                    let scaled = scale(ctx, key, &d, only, replicas).await?;
                    replace(&mut all, scaled);
                }
            }
        } else if is_recreate(&d) {
            let mut old_pods = 0;
            for rs in all.clone().iter().filter(|rs| is_old(rs)) {
                if spec_replicas(rs) > 0 {
                    let scaled = scale(ctx, key, &d, rs, 0).await?;
                    replace(&mut all, scaled);
                }
                old_pods += status_of(rs).0;
            }
            if old_pods == 0 {
                if let Some(rs) = &new_rs {
                    if spec_replicas(rs) != replicas {
                        let scaled = scale(ctx, key, &d, rs, replicas).await?;
                        replace(&mut all, scaled.clone());
                        new_rs = Some(scaled);
                    }
                }
            }
        } else if let Some(rs) = new_rs.clone() {
            roll(ctx, key, &d, &mut all, rs, surge, max_unavailable).await?;
            new_rs = all.iter().find(|r| r.metadata.uid == new_uid).cloned();
        }
    }
    let status = compute_status(&d, &all, new_rs.as_deref(), max_unavailable, created_new);
    let complete = is_complete(&d, &status);
    if complete && !paused && !deleting {
        cleanup(ctx, key, &d, &all, new_uid.as_deref()).await?;
    }
    // The Deployment carries its newest revision.
    if let Some(rs) = &new_rs {
        let revision = revision_of(rs).to_string();
        if d.annotations().get(REVISION) != Some(&revision) {
            let api = ctx
                .clients
                .vc::<Deployment>(&key.vc, key.namespace.as_deref());
            let written = api
                .merge(
                    &key.name,
                    &json!({"metadata": {"annotations": {REVISION: revision}}}),
                )
                .await?;
            ctx.deployments.upsert(&key.vc, written);
        }
    }
    let current = ctx.deployments.get(key).unwrap_or(d.clone());
    if current.status.as_ref() != Some(&status) {
        let mut updated = (*current).clone();
        updated.status = Some(status.clone());
        let api = ctx
            .clients
            .vc::<Deployment>(&key.vc, key.namespace.as_deref());
        if !ctx
            .deployments
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?
        {
            return Ok(None);
        }
    }
    Ok(next_look(&d, &status, complete, paused))
}

fn replace(all: &mut Vec<Arc<ReplicaSet>>, rs: Arc<ReplicaSet>) {
    all.retain(|r| r.metadata.uid != rs.metadata.uid);
    all.push(rs);
}

/// One step of a rolling update: the new ReplicaSet up to what maxSurge
/// allows, the old ones down to what maxUnavailable allows (unhealthy
/// replicas first, oldest ReplicaSets first).
async fn roll(
    ctx: &Ctx,
    key: &ObjectKey,
    d: &Deployment,
    all: &mut Vec<Arc<ReplicaSet>>,
    new_rs: Arc<ReplicaSet>,
    surge: i32,
    max_unavailable: i32,
) -> Result<(), Error> {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let new_uid = new_rs.metadata.uid.clone();
    // Up.
    let current: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let new_count = spec_replicas(&new_rs);
    let wanted = if new_count > replicas {
        replicas
    } else if current >= replicas + surge {
        new_count
    } else {
        new_count + (replicas + surge - current).min(replicas - new_count)
    };
    let mut new_rs = new_rs;
    if wanted != new_count {
        new_rs = scale(ctx, key, d, &new_rs, wanted).await?;
        replace(all, new_rs.clone());
    }
    // Down.
    let mut old: Vec<Arc<ReplicaSet>> = all
        .iter()
        .filter(|rs| rs.metadata.uid != new_uid)
        .cloned()
        .collect();
    old.sort_by_key(|rs| rs.metadata.creation_timestamp.clone());
    if old.iter().map(|rs| spec_replicas(rs)).sum::<i32>() == 0 {
        return Ok(());
    }
    let all_pods: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let min_available = replicas - max_unavailable;
    let new_unavailable = spec_replicas(&new_rs) - status_of(&new_rs).2;
    let mut budget = all_pods - min_available - new_unavailable;
    if budget <= 0 {
        return Ok(());
    }
    // Unhealthy replicas of old sets first: removing them costs nothing.
    for rs in &mut old {
        let (spec, available) = (spec_replicas(rs), status_of(rs).2);
        if budget <= 0 || spec <= available {
            continue;
        }
        let cut = (spec - available).min(budget);
        *rs = scale(ctx, key, d, rs, spec - cut).await?;
        replace(all, rs.clone());
        budget -= cut;
    }
    // Then available ones, down to minAvailable.
    let available: i32 = all.iter().map(|rs| status_of(rs).2).sum();
    let mut left = available - min_available;
    for rs in &mut old {
        let spec = spec_replicas(rs);
        if left <= 0 || spec == 0 {
            continue;
        }
        let cut = spec.min(left);
        *rs = scale(ctx, key, d, rs, spec - cut).await?;
        replace(all, rs.clone());
        left -= cut;
    }
    Ok(())
}

/// kube's DeploymentComplete.
fn is_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    status.updated_replicas == Some(replicas)
        && status.replicas == Some(replicas)
        && status.available_replicas == Some(replicas)
        && status.observed_generation >= d.metadata.generation
}

fn compute_status(
    d: &Deployment,
    all: &[Arc<ReplicaSet>],
    new_rs: Option<&ReplicaSet>,
    max_unavailable: i32,
    created_new: bool,
) -> DeploymentStatus {
    let old = d.status.clone().unwrap_or_default();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let actual: i32 = all.iter().map(|rs| status_of(rs).0).sum();
    let ready: i32 = all.iter().map(|rs| status_of(rs).1).sum();
    let available: i32 = all.iter().map(|rs| status_of(rs).2).sum();
    let total_spec: i32 = all.iter().map(|rs| spec_replicas(rs)).sum();
    let updated = new_rs.map_or(0, |rs| status_of(rs).0);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(actual),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        terminating_replicas: old.terminating_replicas,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    if available >= replicas - max_unavailable {
        set_condition(
            &mut status,
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
            false,
        );
    } else {
        set_condition(
            &mut status,
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
            false,
        );
    }
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let name = new_rs.map(|rs| rs.name_any()).unwrap_or_default();
    let progressing = condition(&status, "Progressing").cloned();
    if paused {
        if progressing.as_ref().and_then(|c| c.reason.as_deref()) != Some("DeploymentPaused") {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                ),
                false,
            );
        }
    } else if progressing.as_ref().and_then(|c| c.reason.as_deref()) == Some("DeploymentPaused") {
        set_condition(
            &mut status,
            new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            ),
            false,
        );
    } else if d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some()
        && new_rs.is_some()
    {
        if is_complete(d, &status) {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{name}\" has successfully progressed."),
                ),
                false,
            );
        } else if created_new {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{name}\""),
                ),
                false,
            );
        } else if made_progress(&old, &status) {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{name}\" is progressing."),
                ),
                true,
            );
        } else if progressing.is_none() {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{name}\""),
                ),
                false,
            );
        } else if timed_out(d, &status) {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{name}\" has timed out progressing."),
                ),
                false,
            );
        }
    }
    // A ReplicaSet that cannot create its Pods says so on the Deployment.
    let failure = new_rs
        .and_then(|rs| rs.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
        });
    match failure {
        Some(f) => set_condition(
            &mut status,
            new_condition(
                "ReplicaFailure",
                "True",
                f.reason.as_deref().unwrap_or("FailedCreate"),
                f.message.clone().unwrap_or_default(),
            ),
            false,
        ),
        None => {
            if let Some(conditions) = status.conditions.as_mut() {
                conditions.retain(|c| c.type_ != "ReplicaFailure");
            }
        }
    }
    status
}

/// kube's DeploymentProgressing: more updated, ready or available
/// replicas, or fewer old ones, than before.
fn made_progress(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas > old.updated_replicas
        || new_old < old_old
        || new.ready_replicas > old.ready_replicas
        || new.available_replicas > old.available_replicas
}

/// Seconds left before the progress deadline passes (negative: passed).
fn deadline_left(d: &Deployment, status: &DeploymentStatus) -> Option<i64> {
    let deadline = d.spec.as_ref()?.progress_deadline_seconds?;
    let progressing = condition(status, "Progressing")?;
    if progressing.reason.as_deref() == Some("ProgressDeadlineExceeded") {
        return None;
    }
    let since = progressing.last_update_time.as_ref()?.0.as_second();
    Some(since + i64::from(deadline) - pods::now().as_second())
}

fn timed_out(d: &Deployment, status: &DeploymentStatus) -> bool {
    deadline_left(d, status).is_some_and(|left| left < 0)
}

/// When to look again without news: at the progress deadline of a rollout
/// under way.
fn next_look(
    d: &Deployment,
    status: &DeploymentStatus,
    complete: bool,
    paused: bool,
) -> Option<Duration> {
    if complete || paused {
        return None;
    }
    deadline_left(d, status).map(|left| Duration::from_secs(left.max(0) as u64 + 1))
}

/// Deletes old ReplicaSets without replicas beyond `revisionHistoryLimit`,
/// oldest revision first.
async fn cleanup(
    ctx: &Ctx,
    key: &ObjectKey,
    d: &Deployment,
    all: &[Arc<ReplicaSet>],
    new_uid: Option<&str>,
) -> Result<(), Error> {
    let limit = d
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(10)
        .max(0) as usize;
    let mut cleanable: Vec<&Arc<ReplicaSet>> = all
        .iter()
        .filter(|rs| rs.metadata.uid.as_deref() != new_uid)
        .filter(|rs| spec_replicas(rs) == 0 && status_of(rs).0 == 0)
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    if cleanable.len() <= limit {
        return Ok(());
    }
    cleanable.sort_by_key(|rs| revision_of(rs));
    let api = ctx
        .clients
        .vc::<ReplicaSet>(&key.vc, key.namespace.as_deref());
    for rs in &cleanable[..cleanable.len() - limit] {
        api.delete(
            &rs.name_any(),
            Propagation::Background,
            rs.metadata.uid.as_deref(),
        )
        .await?;
        ctx.replicasets.remove_deleted(
            &ObjectKey::new(&key.vc, key.namespace.as_deref(), &rs.name_any()),
            rs.metadata.uid.as_deref(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_as_kube_rounds_them() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(resolve(Some(&pct("25%")), 10, true, "0"), 3);
        assert_eq!(resolve(Some(&pct("25%")), 10, false, "0"), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(4)), 10, true, "0"), 4);
        assert_eq!(resolve(None, 4, true, "25%"), 1);
        assert_eq!(resolve(None, 4, false, "25%"), 1);
        assert_eq!(resolve(None, 1, false, "25%"), 0);
    }

    #[test]
    fn the_hash_ignores_its_own_label_and_changes_with_collisions() {
        let mut template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".into(), "web".into())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let plain = template_hash(&template, None);
        template
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(HASH_LABEL.into(), plain.clone());
        assert_eq!(template_hash(&template, None), plain);
        assert_ne!(template_hash(&template, Some(1)), plain);
        assert!(plain.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{plain}");
    }
}
