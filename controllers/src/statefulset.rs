//! The StatefulSet controller: Pods with stable names (`<set>-<ordinal>`)
//! and stable storage (a PersistentVolumeClaim per `volumeClaimTemplate`
//! and ordinal), made in order and waited for (OrderedReady) or all at once
//! (Parallel), removed highest ordinal first; template revisions kept as
//! ControllerRevisions; RollingUpdate (highest ordinal first, down to the
//! partition) or OnDelete; status as kube-controller-manager reports it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use serde_json::json;

use crate::cache::ObjectKey;
use crate::client::Propagation;
use crate::pods;
use crate::replicaset::{claim_pods, Selector};
use crate::{Ctx, Error, Outcome};

/// The label naming the revision a Pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The revision a template is stored as: kube's patch form.
pub fn revision_data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut template = serde_json::to_value(template).unwrap_or_default();
    template["$patch"] = json!("replace");
    json!({"spec": {"template": template}})
}

/// The ControllerRevision of `data` among `owner`'s, made if missing
/// (numbered after the highest).
pub async fn revision_for(
    ctx: &Ctx,
    key: &ObjectKey,
    owner: &OwnerReference,
    data: serde_json::Value,
    collisions: Option<i32>,
) -> Result<Arc<ControllerRevision>, Error> {
    let mut revisions = ctx.revisions.controlled_by(&key.vc, &owner.uid);
    revisions.sort_by_key(|r| r.revision);
    if let Some(found) = revisions
        .iter()
        .rev()
        .find(|r| r.data.as_ref().map(|d| &d.0) == Some(&data))
    {
        return Ok(found.clone());
    }
    let hash = {
        let template: PodTemplateSpec =
            serde_json::from_value(data["spec"]["template"].clone()).unwrap_or_default();
        crate::deployment::template_hash(&template, collisions)
    };
    let next = revisions.last().map_or(1, |r| r.revision + 1);
    let revision = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", owner.name)),
            namespace: key.namespace.clone(),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: next,
    };
    let api = ctx
        .clients
        .vc::<ControllerRevision>(&key.vc, key.namespace.as_deref());
    let created = match api.create(&revision).await {
        Ok(created) => created,
        Err(e) if e.is_status(409) => api.get_opt(&revision.name_any()).await?.ok_or(e)?,
        Err(e) => return Err(e),
    };
    Ok(ctx
        .revisions
        .upsert(&key.vc, created)
        .new
        .expect("an upsert yields the object"))
}

/// The ordinal of a Pod of `set`, from its name.
fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && pods::is_ready(pod)
}

fn failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn revision_label(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

/// The claim of template `template` for ordinal `ordinal`.
fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// The Pod of ordinal `ordinal`, from `template` at `revision`.
fn pod_for(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
    owner: &OwnerReference,
) -> Pod {
    let name = format!("{}-{ordinal}", set.name_any());
    let ns = set.namespace().unwrap_or_default();
    let mut pod = pods::from_template(template, owner.clone(), &ns, Some(name.clone()), "");
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(REVISION_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    let spec_of_set = set.spec.clone().unwrap_or_default();
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = Some(name);
        if let Some(service) = spec_of_set.service_name.filter(|s| !s.is_empty()) {
            spec.subdomain = Some(service);
        }
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for claim in spec_of_set.volume_claim_templates.iter().flatten() {
            let template = claim.name_any();
            volumes.retain(|v| v.name != template);
            volumes.push(Volume {
                name: template.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&template, &set.name_any(), ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    pod
}

/// Makes the ordinal's claims that are missing.
async fn ensure_claims(
    ctx: &Ctx,
    key: &ObjectKey,
    set: &StatefulSet,
    ordinal: i32,
    owner: &OwnerReference,
) -> Result<(), Error> {
    let spec = set.spec.clone().unwrap_or_default();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    let api = ctx
        .clients
        .vc::<PersistentVolumeClaim>(&key.vc, key.namespace.as_deref());
    for template in spec.volume_claim_templates.iter().flatten() {
        let name = claim_name(&template.name_any(), &key.name, ordinal);
        let claim_key = ObjectKey::new(&key.vc, key.namespace.as_deref(), &name);
        if ctx.claims.get(&claim_key).is_some() {
            continue;
        }
        let mut labels: BTreeMap<String, String> = template.labels().clone();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        let mut owner = owner.clone();
        owner.controller = None;
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: key.namespace.clone(),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                owner_references: delete_with_set.then(|| vec![owner]),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        };
        match api.create(&claim).await {
            Ok(created) => {
                ctx.claims.upsert(&key.vc, created);
                ctx.events.normal(
                    key,
                    "StatefulSet",
                    set.metadata.uid.as_deref().unwrap_or_default(),
                    "SuccessfulCreate",
                    &format!(
                        "create Claim {name} Pod {}-{ordinal} in StatefulSet {} success",
                        key.name, key.name
                    ),
                );
            }
            Err(e) if e.is_status(409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reconciles one StatefulSet.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(set) = ctx.statefulsets.get(key) else {
        return Ok(None);
    };
    let spec = set.spec.clone().unwrap_or_default();
    let owner = pods::controller_ref(set.as_ref());
    let deleting = set.metadata.deletion_timestamp.is_some();
    let claimed = claim_pods(
        ctx,
        key,
        &owner,
        &Selector::Labels(&spec.selector),
        deleting,
    )
    .await?;
    let collisions = set.status.as_ref().and_then(|s| s.collision_count);
    let update = revision_for(ctx, key, &owner, revision_data(&spec.template), collisions).await?;
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_ref())
        .and_then(|name| {
            ctx.revisions
                .get(&ObjectKey::new(&key.vc, key.namespace.as_deref(), name))
        })
        .unwrap_or_else(|| update.clone());
    let current_template: PodTemplateSpec = current
        .data
        .as_ref()
        .and_then(|d| serde_json::from_value(d.0["spec"]["template"].clone()).ok())
        .unwrap_or_else(|| spec.template.clone());
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        != Some("OnDelete");
    let partition = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for pod in claimed {
        if let Some(ordinal) = ordinal_of(&key.name, &pod.name_any()) {
            by_ordinal.insert(ordinal, pod);
        }
    }
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    let pod_key = |name: &str| ObjectKey::new(&key.vc, key.namespace.as_deref(), name);
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let mut waiting = false;
    if !deleting {
        // Make and mend the ordinals in order.
        for ordinal in start..start + replicas {
            match by_ordinal.get(&ordinal) {
                None => {
                    ensure_claims(ctx, key, &set, ordinal, &owner).await?;
                    let (template, revision) = if rolling && ordinal < partition {
                        (&current_template, current.name_any())
                    } else {
                        (&spec.template, update.name_any())
                    };
                    let pod = pod_for(&set, template, &revision, ordinal, &owner);
                    match api.create(&pod).await {
                        Ok(created) => {
                            ctx.events.normal(
                                key,
                                "StatefulSet",
                                &uid,
                                "SuccessfulCreate",
                                &format!(
                                    "create Pod {} in StatefulSet {} successful",
                                    created.name_any(),
                                    key.name
                                ),
                            );
                            if let Some(created) = ctx.pods.upsert(&key.vc, created).new {
                                by_ordinal.insert(ordinal, created);
                            }
                        }
                        Err(e) if e.is_status(409) => {}
                        Err(e) => {
                            ctx.events.warning(
                                key,
                                "StatefulSet",
                                &uid,
                                "FailedCreate",
                                &format!(
                                    "create Pod {} in StatefulSet {} failed error: {}",
                                    pod.name_any(),
                                    key.name,
                                    crate::replicaset::api_message(&e)
                                ),
                            );
                            return Err(e);
                        }
                    }
                    if !parallel {
                        waiting = true;
                        break;
                    }
                }
                Some(pod) if failed(pod) => {
                    api.delete(
                        &pod.name_any(),
                        Propagation::Background,
                        pod.metadata.uid.as_deref(),
                    )
                    .await?;
                    ctx.pods
                        .remove_deleted(&pod_key(&pod.name_any()), pod.metadata.uid.as_deref());
                    by_ordinal.remove(&ordinal);
                    if !parallel {
                        waiting = true;
                        break;
                    }
                }
                Some(pod) => {
                    ensure_claims(ctx, key, &set, ordinal, &owner).await?;
                    if !parallel && !running_and_ready(pod) {
                        waiting = true;
                        break;
                    }
                }
            }
        }
        // Ordinals past the end go, highest first.
        if !waiting {
            let condemned: Vec<Arc<Pod>> = by_ordinal
                .range(start + replicas..)
                .chain(by_ordinal.range(..start))
                .map(|(_, p)| p.clone())
                .rev()
                .collect();
            for pod in condemned {
                if pod.metadata.deletion_timestamp.is_some() {
                    if !parallel {
                        waiting = true;
                        break;
                    }
                    continue;
                }
                api.delete(
                    &pod.name_any(),
                    Propagation::Background,
                    pod.metadata.uid.as_deref(),
                )
                .await?;
                ctx.pods
                    .remove_deleted(&pod_key(&pod.name_any()), pod.metadata.uid.as_deref());
                ctx.events.normal(
                    key,
                    "StatefulSet",
                    &uid,
                    "SuccessfulDelete",
                    &format!(
                        "delete Pod {} in StatefulSet {} successful",
                        pod.name_any(),
                        key.name
                    ),
                );
                if let Some(o) = ordinal_of(&key.name, &pod.name_any()) {
                    by_ordinal.remove(&o);
                }
                if !parallel {
                    waiting = true;
                    break;
                }
            }
        }
        // A rolling update: the highest out-of-date ordinal at or above the
        // partition goes once every Pod is running and ready.
        let all_ready = by_ordinal.values().all(|p| running_and_ready(p));
        if rolling && !waiting && all_ready {
            let stale = by_ordinal
                .range(partition.max(start)..start + replicas)
                .rev()
                .find(|(_, p)| revision_label(p) != Some(update.name_any().as_str()));
            if let Some((ordinal, pod)) = stale {
                api.delete(
                    &pod.name_any(),
                    Propagation::Background,
                    pod.metadata.uid.as_deref(),
                )
                .await?;
                ctx.pods
                    .remove_deleted(&pod_key(&pod.name_any()), pod.metadata.uid.as_deref());
                let ordinal = *ordinal;
                by_ordinal.remove(&ordinal);
            }
        }
    }
    // Status.
    let now = pods::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let present: Vec<&Arc<Pod>> = by_ordinal.values().collect();
    let count = |f: &dyn Fn(&Pod) -> bool| present.iter().filter(|p| f(p)).count() as i32;
    let update_name = update.name_any();
    let mut current_name = current.name_any();
    let updated = count(&|p| revision_label(p) == Some(update_name.as_str()));
    let ready = count(&|p| pods::is_ready(p));
    let mut current_count = count(&|p| revision_label(p) == Some(current_name.as_str()));
    let total = present.len() as i32;
    if rolling && updated == total && ready == total && total == replicas {
        current_name = update_name.clone();
        current_count = updated;
    }
    let status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: total,
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| pods::is_available(p, min_ready, now))),
        current_replicas: Some(current_count),
        updated_replicas: Some(updated),
        current_revision: Some(current_name.clone()),
        update_revision: Some(update_name.clone()),
        collision_count: collisions,
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if set.status.as_ref() != Some(&status) {
        let mut updated = (*set).clone();
        updated.status = Some(status);
        let api = ctx
            .clients
            .vc::<StatefulSet>(&key.vc, key.namespace.as_deref());
        if !ctx
            .statefulsets
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?
        {
            return Ok(None);
        }
    }
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let in_use: Vec<String> = by_ordinal
        .values()
        .filter_map(|p| revision_label(p).map(str::to_owned))
        .chain([current_name, update_name])
        .collect();
    prune_revisions(ctx, key, &owner, &in_use, limit).await?;
    Ok(None)
}

/// Deletes the owner's revisions no Pod and no status uses, beyond `limit`,
/// oldest first.
pub async fn prune_revisions(
    ctx: &Ctx,
    key: &ObjectKey,
    owner: &OwnerReference,
    in_use: &[String],
    limit: usize,
) -> Result<(), Error> {
    let mut unused: Vec<Arc<ControllerRevision>> = ctx
        .revisions
        .controlled_by(&key.vc, &owner.uid)
        .into_iter()
        .filter(|r| !in_use.contains(&r.name_any()))
        .collect();
    if unused.len() <= limit {
        return Ok(());
    }
    unused.sort_by_key(|r| r.revision);
    let api = ctx
        .clients
        .vc::<ControllerRevision>(&key.vc, key.namespace.as_deref());
    for revision in &unused[..unused.len() - limit] {
        api.delete(
            &revision.name_any(),
            Propagation::Background,
            revision.metadata.uid.as_deref(),
        )
        .await?;
        ctx.revisions.remove_deleted(
            &ObjectKey::new(&key.vc, key.namespace.as_deref(), &revision.name_any()),
            revision.metadata.uid.as_deref(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_come_from_names_of_the_set_only() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(claim_name("data", "web", 2), "data-web-2");
    }
}
