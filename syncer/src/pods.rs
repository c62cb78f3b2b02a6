//! Pods: each tenant Pod of a placed VC gets a copy on the VC's host (in
//! the mapped namespace, its name unchanged, unscheduled so the host's
//! scheduler places it), held by a finalizer until that copy is gone. What
//! the host makes of it comes back: its status (phase, conditions, IPs,
//! container states) and the Node it was bound to.
//!
//! On the host copy the Pod's own identity goes: no service account token
//! of the host (`automountServiceAccountToken: false`, the host's default
//! ServiceAccount), no host Service environment (`enableServiceLinks:
//! false`), no priority class or scheduler the host may not have.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, PersistentVolumeClaim, Pod, PodCondition, PodSpec, Secret,
    Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kplex_api::isolation::Isolation;
use kplex_api::mapping::{self, OBJECT_UID_ANNOTATION};
use kplex_controllers::cache::{Cache, Change, ObjectKey};

use crate::mirror::MirrorKind;
use kplex_controllers::client::{is_status, Vc, VcApi};
use kplex_controllers::Error;

use crate::hosts::{Host, Unplaced};
use crate::{ConfigKind, Ctx, Outcome, Task, FINALIZER};

/// The names a Pod references, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// ConfigMaps (volumes, projections, env, envFrom).
    pub configmaps: BTreeSet<String>,
    /// Secrets (volumes, projections, env, envFrom, image pull secrets).
    pub secrets: BTreeSet<String>,
    /// PersistentVolumeClaims.
    pub claims: BTreeSet<String>,
}

/// What `spec` references.
pub fn references(spec: &PodSpec) -> References {
    let mut refs = References::default();
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = volume.config_map.as_ref() {
            refs.configmaps.insert(cm.name.clone());
        }
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(name);
        }
        if let Some(claim) = volume.persistent_volume_claim.as_ref() {
            refs.claims.insert(claim.claim_name.clone());
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = source.config_map.as_ref() {
                refs.configmaps.insert(cm.name.clone());
            }
            if let Some(secret) = source.secret.as_ref() {
                refs.secrets.insert(secret.name.clone());
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in containers {
        for env in container.env.iter().flatten() {
            let Some(from) = env.value_from.as_ref() else {
                continue;
            };
            if let Some(key) = from.config_map_key_ref.as_ref() {
                refs.configmaps.insert(key.name.clone());
            }
            if let Some(key) = from.secret_key_ref.as_ref() {
                refs.secrets.insert(key.name.clone());
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(cm) = from.config_map_ref.as_ref() {
                refs.configmaps.insert(cm.name.clone());
            }
            if let Some(secret) = from.secret_ref.as_ref() {
                refs.secrets.insert(secret.name.clone());
            }
        }
    }
    for secret in spec.image_pull_secrets.iter().flatten() {
        refs.secrets.insert(secret.name.clone());
    }
    refs.configmaps.retain(|n| !n.is_empty());
    refs.secrets.retain(|n| !n.is_empty());
    refs.claims.retain(|n| !n.is_empty());
    refs
}

/// The Secrets an Ingress's TLS sections name.
pub fn tls_secrets(ingress: &Ingress) -> Vec<String> {
    ingress
        .spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|t| t.secret_name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The metadata of a host copy of a tenant object of `vc` in tenant
/// namespace `ns`: its name, the mapped namespace, its labels and
/// annotations with kplex's added.
pub fn host_meta(vc: &Vc, ns: &str, meta: &ObjectMeta) -> ObjectMeta {
    // kplex's own keys on a tenant object say nothing on the host: only
    // the syncer's do.
    let ours = |key: &String| key.starts_with(mapping::KEY_PREFIX);
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !ours(k));
    let synced: Vec<&str> = labels.keys().map(String::as_str).collect();
    let synced = synced.join(",");
    labels.extend(mapping::host_labels(&vc.name, &vc.uid, Some(ns)));
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    // Nor do a tenant's network-plugin annotations: they would name the
    // host's networks. The syncer writes the granted ones itself.
    let steers_network = |key: &String| {
        kplex_api::podsecurity::NETWORK_ANNOTATION_PREFIXES
            .iter()
            .any(|p| key.starts_with(p))
    };
    annotations.retain(|k, _| !ours(k) && !steers_network(k));
    annotations.insert(
        OBJECT_UID_ANNOTATION.to_owned(),
        meta.uid.clone().unwrap_or_default(),
    );
    annotations.insert(mapping::SYNCED_LABELS_ANNOTATION.to_owned(), synced);
    ObjectMeta {
        name: meta.name.clone(),
        namespace: Some(mapping::host_namespace(&vc.name, ns)),
        labels: Some(labels),
        annotations: Some(annotations),
        ..Default::default()
    }
}

/// The host copy of tenant Pod `pod` of `vc`.
pub fn host_pod(vc: &Vc, ns: &str, pod: &Pod) -> Pod {
    let mut spec = pod.spec.clone().unwrap_or_default();
    spec.node_name = None;
    spec.service_account_name = None;
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);
    spec.enable_service_links = Some(false);
    spec.priority_class_name = None;
    spec.priority = None;
    spec.scheduler_name = None;
    confine_affinity(vc, &mut spec);
    // Tolerations a tenant writes could take its Pods onto nodes tainted
    // for another VC's pool: only the node-condition ones (which Kubernetes
    // adds itself) stay; the VC's pool adds its own (`isolation::harden`).
    if let Some(tolerations) = spec.tolerations.as_mut() {
        tolerations.retain(|t| {
            t.key
                .as_deref()
                .is_some_and(|k| k.starts_with("node.kubernetes.io/"))
        });
    }
    // A projected ServiceAccount token would be the host's, for the host's
    // ServiceAccount, and a projected Pod certificate one the host's signer
    // issues for the host Pod's identity: never the tenant's to have. A
    // ClusterTrustBundle is the host's object, not the VC's.
    for volume in spec.volumes.iter_mut().flatten() {
        if let Some(projected) = volume.projected.as_mut() {
            if let Some(sources) = projected.sources.as_mut() {
                sources.retain(|s| {
                    s.service_account_token.is_none()
                        && s.pod_certificate.is_none()
                        && s.cluster_trust_bundle.is_none()
                });
            }
        }
    }
    Pod {
        metadata: host_meta(vc, ns, &pod.metadata),
        spec: Some(spec),
        status: None,
    }
}

/// Pod (anti-)affinity terms select Pods in the VC's own host namespaces
/// only: `namespaces` mapped, `namespaceSelector` confined (a term of
/// another VC's namespaces would let a tenant keep another VC's Pods off
/// nodes, or learn where they run).
fn confine_affinity(vc: &Vc, spec: &mut k8s_openapi::api::core::v1::PodSpec) {
    use k8s_openapi::api::core::v1::PodAffinityTerm;
    let confine = |term: &mut PodAffinityTerm| {
        if let Some(namespaces) = term.namespaces.as_mut() {
            for n in namespaces.iter_mut() {
                *n = mapping::host_namespace(&vc.name, n);
            }
        }
        if let Some(selector) = term.namespace_selector.as_mut() {
            crate::mirror::confine_namespaces(vc, selector);
        }
    };
    let Some(affinity) = spec.affinity.as_mut() else {
        return;
    };
    let mut terms: Vec<&mut PodAffinityTerm> = Vec::new();
    if let Some(a) = affinity.pod_affinity.as_mut() {
        terms.extend(terms_of(
            &mut a.required_during_scheduling_ignored_during_execution,
            &mut a.preferred_during_scheduling_ignored_during_execution,
        ));
    }
    if let Some(a) = affinity.pod_anti_affinity.as_mut() {
        terms.extend(terms_of(
            &mut a.required_during_scheduling_ignored_during_execution,
            &mut a.preferred_during_scheduling_ignored_during_execution,
        ));
    }
    for term in terms {
        confine(term);
    }
}

/// The terms of one kind of (anti-)affinity, required and preferred.
fn terms_of<'a>(
    required: &'a mut Option<Vec<k8s_openapi::api::core::v1::PodAffinityTerm>>,
    preferred: &'a mut Option<Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>,
) -> impl Iterator<Item = &'a mut k8s_openapi::api::core::v1::PodAffinityTerm> {
    required.iter_mut().flatten().chain(
        preferred
            .iter_mut()
            .flatten()
            .map(|w| &mut w.pod_affinity_term),
    )
}

/// Whether a VC's object is itself a syncer's host copy (the VC serves as
/// a host cluster, as in kplex's own tests): it stays where it is, or
/// every copy would be copied again.
pub fn is_host_copy(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(mapping::VC_UID_LABEL))
}

/// Whether `have` holds every entry of `want`.
pub fn holds(
    have: &Option<BTreeMap<String, String>>,
    want: &Option<BTreeMap<String, String>>,
) -> bool {
    want.iter()
        .flatten()
        .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
}

/// Whether the host object was made from the tenant object with `uid`.
fn copies(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(OBJECT_UID_ANNOTATION))
        .map(String::as_str)
        == uid
}

/// Starts the tenant-side watches (Pods, ConfigMaps, Secrets, Services,
/// Endpoints, Nodes of every VC).
pub fn watch(ctx: &Arc<Ctx>, tasks: &mut tokio::task::JoinSet<()>) {
    // Objects that are themselves host copies (a VC serving as a host)
    // are never synced: the server leaves them out.
    let nodes_config = kplex_controllers::cache::watch_config();
    let config = nodes_config
        .clone()
        .labels(&format!("!{}", mapping::VC_UID_LABEL));
    let across = ctx.clients.across.clone();
    let c = ctx.clone();
    tasks.spawn(kplex_controllers::cache::run(
        Api::<Pod>::all(across.clone()),
        config.clone(),
        ctx.pods.clone(),
        move |change: Change<Pod>| pod_changed(&c, change),
    ));
    crate::follow::<ConfigMap>(tasks, &across, &config, &ctx.configmaps, ctx, |key| {
        Task::Config(ConfigKind::ConfigMap, key)
    });
    crate::follow::<Secret>(tasks, &across, &config, &ctx.secrets, ctx, |key| {
        Task::Config(ConfigKind::Secret, key)
    });
    crate::follow::<Service>(tasks, &across, &config, &ctx.services, ctx, Task::Service);
    crate::follow::<PersistentVolumeClaim>(tasks, &across, &config, &ctx.claims, ctx, Task::Claim);
    let c = ctx.clone();
    tasks.spawn(kplex_controllers::cache::run(
        Api::<Ingress>::all(across.clone()),
        config.clone(),
        ctx.ingresses.clone(),
        move |change: Change<Ingress>| {
            // Its TLS Secrets go to the host with it.
            for ingress in change.old.iter().chain(change.new.iter()) {
                for name in tls_secrets(ingress) {
                    let k = ObjectKey::new(&change.key.vc, change.key.namespace.as_deref(), &name);
                    c.queue.add(Task::Config(ConfigKind::Secret, k));
                }
            }
            c.queue.add(Task::Mirror(MirrorKind::Ingress, change.key))
        },
    ));
    crate::follow::<PodDisruptionBudget>(tasks, &across, &config, &ctx.budgets, ctx, |key| {
        Task::Mirror(MirrorKind::Budget, key)
    });
    crate::follow::<k8s_openapi::api::networking::v1::NetworkPolicy>(
        tasks,
        &across,
        &config,
        &ctx.policies,
        ctx,
        |key| Task::Mirror(MirrorKind::NetworkPolicy, key),
    );
    tasks.spawn(crate::namespaces::run(
        ctx.clone(),
        Api::<Namespace>::all(across.clone()),
        config.clone(),
    ));
    crate::follow::<Endpoints>(tasks, &across, &config, &ctx.endpoints, ctx, Task::Service);
    crate::follow::<k8s_openapi::api::core::v1::Node>(
        tasks,
        &across,
        &nodes_config,
        &ctx.nodes,
        ctx,
        Task::Node,
    );
}

/// A tenant Pod changed: its own task, those of what it references (old
/// and new), and the virtual Nodes it left or reached.
fn pod_changed(ctx: &Ctx, change: Change<Pod>) {
    let key = change.key;
    let copies = change.new.as_ref().or(change.old.as_ref());
    if copies.is_some_and(|p| is_host_copy(&p.metadata)) {
        return;
    }
    for pod in change.old.iter().chain(change.new.iter()) {
        if let Some(spec) = pod.spec.as_ref() {
            let refs = references(spec);
            for name in refs.configmaps {
                let k = ObjectKey::new(&key.vc, key.namespace.as_deref(), &name);
                ctx.queue.add(Task::Config(ConfigKind::ConfigMap, k));
            }
            for name in refs.secrets {
                let k = ObjectKey::new(&key.vc, key.namespace.as_deref(), &name);
                ctx.queue.add(Task::Config(ConfigKind::Secret, k));
            }
            for name in refs.claims {
                let k = ObjectKey::new(&key.vc, key.namespace.as_deref(), &name);
                ctx.queue.add(Task::Claim(k));
            }
            if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
                ctx.queue
                    .add(Task::Node(ObjectKey::new(&key.vc, None, node)));
            }
        }
    }
    ctx.queue.add(Task::Pod(key));
}

/// Syncs one tenant Pod with its host copy.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let ns = key.ns().to_owned();
    let tenant = ctx.pods.get(key);
    if tenant.as_ref().is_some_and(|p| is_host_copy(&p.metadata)) {
        return Ok(None);
    }
    let host = match ctx.hosts.placement(&key.vc) {
        Ok(host) => host,
        Err(unplaced) => {
            if let Some(pod) = tenant {
                mark_unplaced(ctx, key, &pod, &unplaced).await?;
            }
            // A host that is not listed yet will be: look again then.
            return Ok(match unplaced {
                Unplaced::NotReady(_) => Some(std::time::Duration::from_secs(1)),
                _ => None,
            });
        }
    };
    let copy = host.pods.get(key);
    let Some(pod) = tenant else {
        // The tenant Pod is gone (deleted without the finalizer, or its VC
        // is going): so goes the copy.
        if let Some(copy) = copy {
            delete_copy(&host, &copy).await?;
            let uid = copy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(OBJECT_UID_ANNOTATION));
            crate::token::remove(&host, key, uid.map(String::as_str)).await?;
            if let Some(uid) = uid {
                ctx.forget(uid);
            }
        }
        return Ok(None);
    };
    let uid = pod.metadata.uid.as_deref();
    if pod.metadata.deletion_timestamp.is_some() {
        if let Some(copy) = copy {
            delete_copy(&host, &copy).await?;
            // The host's watch says when it is gone.
            return Ok(None);
        }
        crate::token::remove(&host, key, uid).await?;
        return release(pod_api(ctx, key), &ctx.pods, key, &*pod).await;
    }
    // A copy of an earlier Pod of this name goes first.
    if let Some(copy) = copy.as_ref().filter(|c| !copies(&c.metadata, uid)) {
        delete_copy(&host, copy).await?;
        return Ok(None);
    }
    if !has_finalizer(&pod.metadata) {
        hold(pod_api(ctx, key), &ctx.pods, key, &*pod).await?;
        // The write comes back through the watch, and with it this task.
        return Ok(None);
    }
    // The VC's policy, again: a Pod that got past its admission (written
    // before the policy changed, or by a way around the API) is not
    // placed; one already placed keeps running and is reported.
    let policy = ctx.hosts.policy(&key.vc);
    // With a quota, the count and the placement are one step per VC (the
    // turn is held until the copy is in the host cache), so two Pods
    // checked at once cannot both take the last place.
    let _turn = if copy.is_none() && !policy.quota_amounts().is_empty() {
        Some(ctx.placement_turn(&key.vc).await)
    } else {
        None
    };
    // (A Pod held back by the quota is looked at again: the quota frees up
    // as other Pods finish.)
    let over_quota = copy
        .is_none()
        .then(|| crate::isolation::over_quota(&policy, &host, &key.vc, &pod))
        .flatten();
    let again = over_quota
        .as_ref()
        .map(|_| std::time::Duration::from_secs(10));
    if let Some(why) = crate::isolation::refusal(&policy, &pod).or(over_quota) {
        let uid = uid.unwrap_or_default();
        if copy.is_none() {
            if mark_unplaced(ctx, key, &pod, &Unplaced::Refused(why.clone())).await? {
                ctx.events.warning(
                    key,
                    "Pod",
                    uid,
                    "PolicyViolation",
                    &format!("not placed on a host: {why}"),
                );
            }
            return Ok(again);
        }
        if ctx.reported(uid, &why) {
            ctx.events.warning(
                key,
                "Pod",
                uid,
                "PolicyViolation",
                &format!("placed before the virtual cluster's policy changed; it keeps running, but {why}"),
            );
        }
    }
    // The Pod's VC token, made before the copy that mounts it, renewed
    // before it expires.
    let renew = crate::token::ensure(ctx, &host, key, &pod).await?;
    let Some(copy) = copy else {
        ensure_namespace(ctx, &host, &key.vc, &ns).await?;
        for kind in [ConfigKind::ConfigMap, ConfigKind::Secret] {
            let refs = pod.spec.as_ref().map(references).unwrap_or_default();
            let names = match kind {
                ConfigKind::ConfigMap => refs.configmaps,
                ConfigKind::Secret => refs.secrets,
            };
            for name in names {
                let k = ObjectKey::new(&key.vc, Some(&ns), &name);
                crate::configs::reconcile(ctx, kind, &k).await?;
            }
        }
        let claims = pod.spec.as_ref().map(references).unwrap_or_default().claims;
        for name in claims {
            crate::claims::reconcile(ctx, &ObjectKey::new(&key.vc, Some(&ns), &name)).await?;
        }
        return create_copy(ctx, &host, key, &pod).await;
    };
    repair(&host, key, &pod, &copy).await?;
    let after = upsync(ctx, key, &pod, &copy).await?;
    Ok(match (after, renew) {
        (Some(a), Some(r)) => Some(a.min(r)),
        (a, r) => a.or(r),
    })
}

/// Whether the tenant object carries the syncer's finalizer.
pub fn has_finalizer(meta: &ObjectMeta) -> bool {
    meta.finalizers.iter().flatten().any(|f| f == FINALIZER)
}

/// Adds the finalizer to a tenant object (guarded by its resourceVersion).
pub async fn hold<K>(
    api: VcApi<K>,
    cache: &Cache<K>,
    key: &ObjectKey,
    object: &K,
) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let meta = object.meta();
    let mut finalizers = meta.finalizers.clone().unwrap_or_default();
    finalizers.push(FINALIZER.to_owned());
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": meta.resource_version,
    }});
    match api.merge(&key.name, &patch).await {
        Ok(written) => {
            cache.upsert(&key.vc, written);
            Ok(())
        }
        Err(e) if e.is_status(404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The copy is gone: the finalizer goes, and with it the tenant object.
pub async fn release<K>(api: VcApi<K>, cache: &Cache<K>, key: &ObjectKey, object: &K) -> Outcome
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let meta = object.meta();
    if !has_finalizer(meta) {
        return Ok(None);
    }
    let finalizers: Vec<&String> = meta
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": meta.resource_version,
    }});
    match api.merge(&key.name, &patch).await {
        // The last finalizer gone, the object is too: the answer is its
        // final state, which must not go back into the cache. The watch's
        // DELETED event takes it out (and queues what depended on it).
        Ok(written) if written.meta().finalizers.iter().flatten().next().is_none() => Ok(None),
        Ok(written) => {
            cache.upsert(&key.vc, written);
            Ok(None)
        }
        Err(e) if e.is_status(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A tenant Pod that cannot go to a host stays Pending, with a
/// `PodScheduled` condition that says why.
/// Says on the tenant Pod why it is not placed: its `PodScheduled`
/// condition (`False`, with the reason); true if that was news (the
/// condition written now).
async fn mark_unplaced(
    ctx: &Ctx,
    key: &ObjectKey,
    pod: &Pod,
    why: &Unplaced,
) -> Result<bool, Error> {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some();
    let status = pod.status.clone().unwrap_or_default();
    let pending = matches!(status.phase.as_deref(), None | Some("Pending"));
    if scheduled || !pending || pod.metadata.deletion_timestamp.is_some() {
        // A Pod on its way out, or already placed, keeps what it has.
        if pod.metadata.deletion_timestamp.is_some() {
            release(pod_api(ctx, key), &ctx.pods, key, pod).await?;
        }
        return Ok(false);
    }
    let message = why.message();
    let current = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    if current.is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(&message)) {
        return Ok(false);
    }
    let mut updated = pod.clone();
    let status = updated.status.get_or_insert_with(Default::default);
    status.phase = Some("Pending".into());
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != "PodScheduled");
    conditions.push(PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some(why.reason().into()),
        message: Some(message),
        last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        )),
        ..Default::default()
    });
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    ctx.pods
        .write_status(&api, &key.vc, &key.name, &updated)
        .await
        .map(|_| true)
}

fn pod_api(ctx: &Ctx, key: &ObjectKey) -> VcApi<Pod> {
    ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref())
}

/// The Pod Security label key of the host's admission.
const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// The labels of a VC's host namespace: whose it is, and the host's Pod
/// Security admission at the level the VC's policy sets there
/// ([`crate::isolation::host_level`]), so no tenant Pod reaches its node
/// past the host's own check either.
pub fn host_namespace_labels(vc: &Vc, ns: &str, policy: &Isolation) -> BTreeMap<String, String> {
    let mut labels = mapping::host_labels(&vc.name, &vc.uid, Some(ns));
    labels.insert(
        ENFORCE_LABEL.to_owned(),
        crate::isolation::host_level(policy).to_owned(),
    );
    labels
}

/// The labels a VC's host namespace should carry: kplex's
/// ([`host_namespace_labels`]) and the tenant namespace's own, under
/// kplex's prefix ([`mapping::namespace_label_key`]), for the VC's
/// NetworkPolicies to select.
pub fn namespace_labels(
    ctx: &Ctx,
    vc: &Vc,
    ns: &str,
    policy: &Isolation,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (key, value) in ctx.namespace_labels.get(vc, ns) {
        if let Some(copied) = mapping::namespace_label_key(&key) {
            labels.insert(copied, value);
        }
    }
    labels.extend(host_namespace_labels(vc, ns, policy));
    labels
}

/// Puts the labels [`namespace_labels`] wants on host namespace `host_ns`
/// (tenant namespace `ns` of `vc`), dropping tenant labels copied before
/// that the tenant has since removed.
pub async fn relabel(
    ctx: &Ctx,
    host: &Host,
    vc: &Vc,
    ns: &str,
    host_ns: &Namespace,
) -> Result<(), Error> {
    let want = namespace_labels(ctx, vc, ns, &ctx.hosts.policy(vc));
    let have = host_ns.metadata.labels.clone().unwrap_or_default();
    let mut patch = serde_json::Map::new();
    for key in have.keys() {
        if mapping::is_namespace_label_copy(key) && !want.contains_key(key) {
            patch.insert(key.clone(), serde_json::Value::Null);
        }
    }
    for (key, value) in &want {
        if have.get(key) != Some(value) {
            patch.insert(key.clone(), json!(value));
        }
    }
    if patch.is_empty() {
        return Ok(());
    }
    let api = Api::<Namespace>::all(host.client.clone());
    let written = api
        .patch(
            &kube::ResourceExt::name_any(host_ns),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"metadata": {"labels": patch}})),
        )
        .await
        .map_err(Error::Api)?;
    host.namespaces.upsert_host(written);
    Ok(())
}

/// A tenant namespace changed: its labels onto its host namespace.
pub async fn namespace_changed(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Ok(host) = ctx.hosts.placement(&key.vc) else {
        return Ok(None);
    };
    let host_name = mapping::host_namespace(&key.vc.name, &key.name);
    // Not on the host (yet): it is made with the labels when it is.
    let Some(host_ns) = host
        .namespaces
        .get(&ObjectKey::new(&key.vc, None, &host_name))
    else {
        return Ok(None);
    };
    if !mapping::owned_by(host_ns.metadata.labels.as_ref(), &key.vc.uid)
        || host_ns.metadata.deletion_timestamp.is_some()
    {
        return Ok(None);
    }
    relabel(ctx, &host, &key.vc, &key.name, &host_ns).await?;
    Ok(None)
}

/// Makes the host namespace of `ns` of `vc`, unless it is there, guarded
/// before anything runs in it ([`crate::isolation::guard`]). One that is
/// there but not labelled for this VC is another's: refused.
pub async fn ensure_namespace(ctx: &Ctx, host: &Host, vc: &Vc, ns: &str) -> Result<(), Error> {
    let name = mapping::host_namespace(&vc.name, ns);
    let key = ObjectKey::new(vc, None, &name);
    let policy = ctx.hosts.policy(vc);
    if host.namespaces.get(&key).is_some() {
        // Made before: walled unless putting the wall there failed (or
        // someone took it away), when it is put back first.
        if host
            .policies
            .get(&ObjectKey::new(vc, Some(ns), crate::isolation::WALL))
            .is_none()
        {
            crate::isolation::guard(host, vc, ns, &policy).await?;
        }
        return Ok(());
    }
    let api = Api::<Namespace>::all(host.client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(namespace_labels(ctx, vc, ns, &policy)),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&post_params(), &namespace).await {
        Ok(created) => {
            crate::isolation::guard(host, vc, ns, &policy).await?;
            host.namespaces.upsert_host(created);
            Ok(())
        }
        Err(e) if is_status(&e, 409) => {
            let existing = api.get(&name).await.map_err(Error::Api)?;
            if mapping::owned_by(existing.metadata.labels.as_ref(), &vc.uid) {
                crate::isolation::guard(host, vc, ns, &policy).await?;
                host.namespaces.upsert_host(existing);
                Ok(())
            } else {
                Err(Error::Request(format!(
                    "host namespace {name} exists and belongs to another owner"
                )))
            }
        }
        Err(e) => Err(Error::Api(e)),
    }
}

/// The syncer's create options on a host.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(crate::MANAGER.into()),
        ..Default::default()
    }
}

async fn create_copy(ctx: &Ctx, host: &Host, key: &ObjectKey, pod: &Pod) -> Outcome {
    let mut copy = host_pod(&key.vc, key.ns(), pod);
    if let Some(spec) = copy.spec.as_mut() {
        crate::token::Wiring::of(ctx, &key.vc, key.ns(), pod).apply(spec);
    }
    crate::isolation::harden(&ctx.hosts.policy(&key.vc), pod, &mut copy);
    let dns = host.dns_server.read().expect("dns lock").clone();
    if let Some(server) = dns {
        let domain = ctx.hosts.domain(&key.vc);
        crate::dns::wiring::wire(&server, &domain, key.ns(), pod, &mut copy);
    }
    let ns = copy.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = host.api(&ns);
    match api.create(&post_params(), &copy).await {
        Ok(created) => {
            host.pods.upsert_host(created);
            tracing::debug!(pod = %key, host = %host.name, "pod placed on host");
            Ok(None)
        }
        Err(e) if is_status(&e, 409) => {
            // Not in the cache: a foreign Pod of that name, or one of ours
            // the watch has not delivered yet.
            let existing = api.get(&key.name).await.map_err(Error::Api)?;
            if mapping::owned_by(existing.metadata.labels.as_ref(), &key.vc.uid) {
                host.pods.upsert_host(existing);
                return Ok(None);
            }
            let message = format!(
                "a Pod named {} that kplex did not place exists in host namespace {ns}; it is left alone",
                key.name
            );
            mark_unplaced(ctx, key, pod, &Unplaced::NotReady(message.clone())).await?;
            tracing::warn!(pod = %key, host = %host.name, "{message}");
            Ok(Some(std::time::Duration::from_secs(30)))
        }
        // The host's own admission or quota said no: the tenant is told,
        // and the host asked again in a few seconds (a quota the host has
        // not counted yet says no for a moment).
        Err(kube::Error::Api(status)) if matches!(status.code, 403 | 422) => {
            let why = Unplaced::HostRefused(status.message.clone());
            if mark_unplaced(ctx, key, pod, &why).await? {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                ctx.events
                    .warning(key, "Pod", uid, "HostRefused", &why.message());
            }
            Ok(Some(std::time::Duration::from_secs(5)))
        }
        Err(e) => Err(Error::Api(e)),
    }
}

/// Deletes a host copy (only one labelled for its VC, only that object:
/// the UID precondition).
async fn delete_copy(host: &Host, copy: &Pod) -> Result<(), Error> {
    let api: Api<Pod> = host.api(copy.metadata.namespace.as_deref().unwrap_or_default());
    delete_owned(&api, &copy.metadata).await
}

/// Deletes the host object `meta` describes, that object only (a UID
/// precondition: a newer object of the name stays); one already going or
/// gone, or replaced meanwhile, is not an error.
pub async fn delete_owned<K>(api: &Api<K>, meta: &ObjectMeta) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if meta.deletion_timestamp.is_some() {
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: meta.uid.clone().map(|uid| kube::api::Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api
        .delete(meta.name.as_deref().unwrap_or_default(), &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
        Err(e) => Err(Error::Api(e)),
    }
}

/// The tenant's spec wins: labels, annotations and images the host copy
/// drifted from are put back.
async fn repair(host: &Host, key: &ObjectKey, pod: &Pod, copy: &Pod) -> Result<(), Error> {
    let desired = host_pod(&key.vc, key.ns(), pod);
    let images = |p: &Pod| -> Vec<(String, Option<String>)> {
        p.spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .map(|c| (c.name.clone(), c.image.clone()))
            .collect()
    };
    // What the host's own controllers add (their labels, annotations) may
    // stay: only what the syncer put there is put back, and what it put
    // there that the tenant has since removed goes.
    let removed = removed_labels(copy, &desired);
    let same = holds(&copy.metadata.labels, &desired.metadata.labels)
        && holds(&copy.metadata.annotations, &desired.metadata.annotations)
        && images(&desired) == images(copy)
        && removed.is_empty();
    if same {
        return Ok(());
    }
    let mut fixed = copy.clone();
    if let Some(labels) = fixed.metadata.labels.as_mut() {
        labels.retain(|k, _| !removed.contains(k));
    }
    let merge = |have: &mut Option<BTreeMap<String, String>>,
                 want: Option<BTreeMap<String, String>>| {
        have.get_or_insert_with(BTreeMap::new)
            .extend(want.unwrap_or_default());
    };
    merge(&mut fixed.metadata.labels, desired.metadata.labels);
    merge(
        &mut fixed.metadata.annotations,
        desired.metadata.annotations,
    );
    if let (Some(spec), Some(want)) = (fixed.spec.as_mut(), desired.spec.as_ref()) {
        for (have, want) in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
            .zip(
                want.containers
                    .iter()
                    .chain(want.init_containers.iter().flatten()),
            )
        {
            have.image = want.image.clone();
        }
    }
    let ns = copy.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = host.api(&ns);
    match api.replace(&key.name, &post_params(), &fixed).await {
        Ok(written) => {
            host.pods.upsert_host(written);
            Ok(())
        }
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(Error::Api(e)),
    }
}

/// The labels the syncer copied onto `copy` before (its
/// [`mapping::SYNCED_LABELS_ANNOTATION`]) that the tenant object no longer
/// has (`desired`, the copy as it would be made now) and the copy still
/// carries.
pub fn removed_labels(copy: &Pod, desired: &Pod) -> BTreeSet<String> {
    let before = copy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(mapping::SYNCED_LABELS_ANNOTATION));
    let now = desired.metadata.labels.clone().unwrap_or_default();
    let carried = copy.metadata.labels.clone().unwrap_or_default();
    before
        .into_iter()
        .flat_map(|keys| keys.split(','))
        .filter(|k| !k.is_empty() && !now.contains_key(*k) && carried.contains_key(*k))
        .map(str::to_owned)
        .collect()
}

/// The host's status wins: the tenant Pod gets the copy's status, and is
/// bound to the Node the host bound the copy to.
async fn upsync(ctx: &Arc<Ctx>, key: &ObjectKey, pod: &Pod, copy: &Pod) -> Outcome {
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    let host_node = copy.spec.as_ref().and_then(|s| s.node_name.clone());
    let tenant_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if let (Some(node), None) = (&host_node, &tenant_node) {
        // The virtual Node first, so the tenant never sees a Pod on a
        // Node it does not have.
        crate::nodes::reconcile(ctx, &ObjectKey::new(&key.vc, None, node)).await?;
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": key.name, "namespace": key.ns()},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        match api.create_subresource("binding", &key.name, &binding).await {
            Ok(_) => {}
            Err(e) if e.is_status(404) || e.is_status(409) => {}
            Err(e) => return Err(e),
        }
    }
    let Some(status) = copy.status.clone() else {
        return Ok(None);
    };
    if pod.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    let mut updated = pod.clone();
    updated.status = Some(status);
    if let (Some(spec), Some(node)) = (updated.spec.as_mut(), host_node) {
        spec.node_name.get_or_insert(node);
    }
    ctx.pods
        .write_status(&api, &key.vc, &key.name, &updated)
        .await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs", "controller": true}],
                "finalizers": ["x"], "resourceVersion": "7"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn every_reference_is_found() {
        let p = pod(json!({
            "containers": [{"name": "c", "image": "i",
                "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                        {"name": "C", "value": "plain"}],
                "envFrom": [{"configMapRef": {"name": "cm-from"}}, {"secretRef": {"name": "s-from"}}]}],
            "initContainers": [{"name": "i", "image": "i",
                "env": [{"name": "D", "valueFrom": {"secretKeyRef": {"name": "s-init", "key": "k"}}}]}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "cm-vol"}},
                {"name": "v2", "secret": {"secretName": "s-vol"}},
                {"name": "v3", "projected": {"sources": [{"configMap": {"name": "cm-proj"}}, {"secret": {"name": "s-proj"}}]}},
                {"name": "v4", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "v5", "emptyDir": {}}],
            "imagePullSecrets": [{"name": "pull"}],
        }));
        let refs = references(p.spec.as_ref().unwrap());
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            refs.configmaps,
            set(&["cm-env", "cm-from", "cm-vol", "cm-proj"])
        );
        assert_eq!(
            refs.secrets,
            set(&["s-env", "s-from", "s-init", "s-vol", "s-proj", "pull"])
        );
        assert_eq!(refs.claims, set(&["data"]));
    }

    #[test]
    fn the_host_copy_keeps_the_name_and_drops_the_identity() {
        let vc = Vc {
            uid: "vc-uid".into(),
            name: "team-a".into(),
        };
        let p = pod(json!({"containers": [{"name": "c", "image": "nginx"}],
            "nodeName": "virtual", "serviceAccountName": "builder",
            "priorityClassName": "high", "schedulerName": "mine",
            "volumes": [{"name": "creds", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"podCertificate": {"signerName": "host.example.com/identity", "keyType": "ED25519"}},
                {"clusterTrustBundle": {"signerName": "host.example.com/identity", "path": "ca"}},
                {"configMap": {"name": "kept"}}]}}]}));
        let copy = host_pod(&vc, "shop", &p);
        assert_eq!(copy.metadata.name.as_deref(), Some("web"));
        assert_eq!(
            copy.metadata.namespace.as_deref(),
            Some("kplex-team-a-shop")
        );
        let labels = copy.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[mapping::VC_LABEL], "team-a");
        assert_eq!(labels[mapping::VC_UID_LABEL], "vc-uid");
        assert_eq!(labels[mapping::NAMESPACE_LABEL], "shop");
        assert_eq!(
            copy.metadata.annotations.as_ref().unwrap()[OBJECT_UID_ANNOTATION],
            "u-1"
        );
        assert!(copy.metadata.owner_references.is_none());
        assert!(copy.metadata.finalizers.is_none());
        assert!(copy.metadata.uid.is_none() && copy.metadata.resource_version.is_none());
        // A tenant's claim to be kplex's is dropped.
        let mut forged = p.clone();
        forged.metadata.annotations =
            Some([(mapping::TOKEN_FOR_ANNOTATION.to_owned(), "x".to_owned())].into());
        forged.metadata.labels =
            Some([(mapping::VC_UID_LABEL.to_owned(), "another-vc".to_owned())].into());
        let copied = host_pod(&vc, "shop", &forged);
        let annotations = copied.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(mapping::TOKEN_FOR_ANNOTATION));
        assert_eq!(
            copied.metadata.labels.unwrap()[mapping::VC_UID_LABEL],
            "vc-uid"
        );
        let spec = copy.spec.unwrap();
        assert_eq!(spec.node_name, None);
        assert_eq!(spec.service_account_name, None);
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.priority_class_name, None);
        assert_eq!(spec.scheduler_name, None);
        // Of the projected sources, only the VC's own objects stay.
        let volumes = spec.volumes.unwrap();
        let sources = volumes[0]
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].config_map.as_ref().unwrap().name, "kept");
    }
}
