//! The DaemonSet controller: one Pod per (virtual) Node the set may run
//! on — the Node matches the template's node selector and required node
//! affinity, and its NoSchedule/NoExecute taints are tolerated — pinned to
//! its Node by node affinity as kube-controller-manager pins it. No Nodes,
//! no Pods. Rolling updates replace out-of-date Pods one Node at a time
//! (maxUnavailable 1); revisions are ControllerRevisions.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodTemplateSpec, Toleration,
};
use kube::ResourceExt;

use crate::cache::ObjectKey;
use crate::client::Propagation;
use crate::pods;
use crate::replicaset::{claim_pods, Selector};
use crate::statefulset::{prune_revisions, revision_data, revision_for, REVISION_LABEL};
use crate::{Ctx, Outcome};

const TEMPLATE_GENERATION: &str = "pod-template-generation";

/// The tolerations every DaemonSet Pod gets (kube's daemon set controller
/// adds them so its Pods stay through node trouble).
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

fn tolerates(tolerations: &[Toleration], taint: &k8s_openapi::api::core::v1::Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = t.operator.as_deref() == Some("Exists")
            || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        effect_ok && key_ok && value_ok
    })
}

fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.labels();
    let expressions_ok = term.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    let fields_ok = term.match_fields.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        e.key != "metadata.name" || values.contains(&node.name_any()) == (e.operator == "In")
    });
    expressions_ok && fields_ok
}

/// Whether the set's Pods may run on `node`.
fn should_run(template: &PodTemplateSpec, node: &Node) -> bool {
    let Some(spec) = template.spec.as_ref() else {
        return false;
    };
    let labels = node.labels();
    if spec
        .node_selector
        .iter()
        .flatten()
        .any(|(k, v)| labels.get(k) != Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(required) = required {
        if !required
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node))
        {
            return false;
        }
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations());
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .all(|t| tolerates(&tolerations, t))
}

/// The Node a DaemonSet Pod is pinned to.
fn node_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = &spec.node_name {
        return Some(node.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// The set's Pod for `node`: the template pinned to the Node.
fn pod_for(set: &DaemonSet, template: &PodTemplateSpec, revision: &str, node: &str) -> Pod {
    let owner = pods::controller_ref(set);
    let ns = set.namespace().unwrap_or_default();
    let mut pod = pods::from_template(template, owner, &ns, None, &format!("{}-", set.name_any()));
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(
        REVISION_LABEL.into(),
        revision.rsplit('-').next().unwrap_or(revision).into(),
    );
    labels.insert(
        TEMPLATE_GENERATION.into(),
        set.metadata.generation.unwrap_or(1).to_string(),
    );
    if let Some(spec) = pod.spec.as_mut() {
        let pin = NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.into()]),
            }]),
            match_expressions: None,
        };
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let node_affinity = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![pin],
        });
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations() {
            if !tolerations.contains(&t) {
                tolerations.push(t);
            }
        }
    }
    pod
}

/// Reconciles one DaemonSet.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(set) = ctx.daemonsets.get(key) else {
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
    let revision =
        revision_for(ctx, key, &owner, revision_data(&spec.template), collisions).await?;
    let hash = revision
        .name_any()
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_owned();
    let nodes = ctx.nodes.in_namespace(&key.vc, None);
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in claimed.iter().filter(|p| pods::is_active(p)) {
        if let Some(node) = node_of(pod) {
            by_node.entry(node).or_default().push(pod.clone());
        }
    }
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let pod_key = |name: &str| ObjectKey::new(&key.vc, key.namespace.as_deref(), name);
    let wanted: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|n| should_run(&spec.template, n))
        .collect();
    let is_current = |p: &Pod| p.labels().get(REVISION_LABEL) == Some(&hash);
    let mut misscheduled = 0;
    if !deleting {
        let mut delete: Vec<Arc<Pod>> = Vec::new();
        for (node, pods_here) in &by_node {
            if !wanted.iter().any(|n| &n.name_any() == node) {
                misscheduled += pods_here.len() as i32;
                delete.extend(pods_here.iter().cloned());
            } else if pods_here.len() > 1 {
                // One per Node: the newest extras go.
                let mut extra = pods_here.clone();
                extra.sort_by_key(|p| p.metadata.creation_timestamp.clone());
                delete.extend(extra.into_iter().skip(1));
            }
        }
        for node in &wanted {
            if by_node.get(&node.name_any()).is_none_or(Vec::is_empty) {
                let pod = pod_for(&set, &spec.template, &revision.name_any(), &node.name_any());
                match api.create(&pod).await {
                    Ok(created) => {
                        ctx.events.normal(
                            key,
                            "DaemonSet",
                            &uid,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", created.name_any()),
                        );
                        if let Some(created) = ctx.pods.upsert(&key.vc, created).new {
                            by_node.entry(node.name_any()).or_default().push(created);
                        }
                    }
                    Err(e) => {
                        ctx.events.warning(
                            key,
                            "DaemonSet",
                            &uid,
                            "FailedCreate",
                            &format!("Error creating: {}", crate::replicaset::api_message(&e)),
                        );
                        return Err(e);
                    }
                }
            }
        }
        // Rolling update: one out-of-date Pod at a time, once the others
        // are available.
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            != Some("OnDelete");
        let all_available = by_node
            .values()
            .flatten()
            .all(|p| pods::is_available(p, spec.min_ready_seconds.unwrap_or(0), pods::now()));
        if rolling && all_available {
            if let Some(stale) = by_node.values().flatten().find(|p| !is_current(p)) {
                delete.push(stale.clone());
            }
        }
        for pod in delete {
            api.delete(
                &pod.name_any(),
                Propagation::Background,
                pod.metadata.uid.as_deref(),
            )
            .await?;
            ctx.pods
                .remove_deleted(&pod_key(&pod.name_any()), pod.metadata.uid.as_deref());
            for pods_here in by_node.values_mut() {
                pods_here.retain(|p| p.metadata.uid != pod.metadata.uid);
            }
            ctx.events.normal(
                key,
                "DaemonSet",
                &uid,
                "SuccessfulDelete",
                &format!("Deleted pod: {}", pod.name_any()),
            );
        }
    }
    let now = pods::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let scheduled: Vec<&Arc<Pod>> = wanted
        .iter()
        .filter_map(|n| by_node.get(&n.name_any()).and_then(|p| p.first()))
        .collect();
    let available = scheduled
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count() as i32;
    let status = DaemonSetStatus {
        desired_number_scheduled: wanted.len() as i32,
        current_number_scheduled: scheduled.len() as i32,
        number_misscheduled: misscheduled,
        number_ready: scheduled.iter().filter(|p| pods::is_ready(p)).count() as i32,
        updated_number_scheduled: Some(scheduled.iter().filter(|p| is_current(p)).count() as i32),
        number_available: Some(available),
        number_unavailable: Some(wanted.len() as i32 - available).filter(|n| *n > 0),
        observed_generation: set.metadata.generation,
        collision_count: collisions,
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if set.status.as_ref() != Some(&status) {
        let mut updated = (*set).clone();
        updated.status = Some(status);
        let api = ctx
            .clients
            .vc::<DaemonSet>(&key.vc, key.namespace.as_deref());
        if !ctx
            .daemonsets
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?
        {
            return Ok(None);
        }
    }
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    prune_revisions(ctx, key, &owner, &[revision.name_any()], limit).await?;
    Ok(None)
}
