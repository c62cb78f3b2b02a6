//! What several controllers need of Pods and selectors: which Pods count
//! (active, ready, available), whether a selector takes a Pod, Pods made
//! from a template, and which Pods to delete first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use kube::{Resource, ResourceExt};

use crate::cache::ObjectKey;
use crate::{Ctx, Task};

/// Labels of an object (empty when it has none).
pub type Labels = BTreeMap<String, String>;

/// Whether a Pod still counts toward its controller's replicas: not
/// finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// The Pod's Ready condition, if true: since when.
pub fn ready_since(pod: &Pod) -> Option<Option<&Time>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref())
}

/// Whether the Pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the Pod has been Ready for `min_ready_seconds`; else, if it is
/// Ready, how long until it is available.
pub fn availability(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Result<(), Option<std::time::Duration>> {
    let Some(since) = ready_since(pod) else {
        return Err(None);
    };
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    let Some(since) = since else {
        return Ok(());
    };
    let ready_for = now.as_second() - since.0.as_second();
    let needed = i64::from(min_ready_seconds);
    if ready_for >= needed {
        Ok(())
    } else {
        Err(Some(std::time::Duration::from_secs(
            (needed - ready_for) as u64,
        )))
    }
}

/// Whether the Pod is available (Ready for `min_ready_seconds`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    availability(pod, min_ready_seconds, now).is_ok()
}

/// Whether `selector` takes an object with `labels`. An empty selector
/// takes everything (as `metav1.LabelSelectorAsSelector` reads it); a
/// missing one nothing.
pub fn selects(selector: Option<&LabelSelector>, labels: Option<&Labels>) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let empty = Labels::new();
    let labels = labels.unwrap_or(&empty);
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
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
    by_labels && by_expressions
}

/// Whether a map selector (a Service's, a ReplicationController's) takes
/// `labels`: an empty or missing one takes nothing.
pub fn map_selects(selector: Option<&Labels>, labels: Option<&Labels>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return false;
    };
    let empty = Labels::new();
    let labels = labels.unwrap_or(&empty);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `service` selects Pods with `labels`.
pub fn service_selects(service: &Service, labels: Option<&Labels>) -> bool {
    map_selects(
        service.spec.as_ref().and_then(|s| s.selector.as_ref()),
        labels,
    )
}

/// The controllers of the Pod's namespace that would adopt it, an orphan.
pub fn would_adopt(ctx: &Ctx, key: &ObjectKey, pod: &Pod) -> Vec<Task> {
    let (vc, ns) = (&key.vc, key.namespace.as_deref());
    let labels = pod.metadata.labels.as_ref();
    let mut tasks = Vec::new();
    let key_of = |name: String| ObjectKey::new(vc, ns, &name);
    for rs in ctx.replicasets.in_namespace(vc, ns) {
        if selects(rs.spec.as_ref().map(|s| &s.selector), labels) {
            tasks.push(Task::ReplicaSet(key_of(rs.name_any())));
        }
    }
    for rc in ctx.rcs.in_namespace(vc, ns) {
        if map_selects(rc.spec.as_ref().and_then(|s| s.selector.as_ref()), labels) {
            tasks.push(Task::ReplicationController(key_of(rc.name_any())));
        }
    }
    for sts in ctx.statefulsets.in_namespace(vc, ns) {
        if selects(sts.spec.as_ref().map(|s| &s.selector), labels) {
            tasks.push(Task::StatefulSet(key_of(sts.name_any())));
        }
    }
    for ds in ctx.daemonsets.in_namespace(vc, ns) {
        if selects(ds.spec.as_ref().map(|s| &s.selector), labels) {
            tasks.push(Task::DaemonSet(key_of(ds.name_any())));
        }
    }
    tasks
}

/// The reference a controller puts on what it makes.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A Pod from `template`, controlled by `owner`, named `name` or generated
/// from `generate_name`.
pub fn from_template(
    template: &PodTemplateSpec,
    owner: OwnerReference,
    namespace: &str,
    name: Option<String>,
    generate_name: &str,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: name.clone(),
            generate_name: name.is_none().then(|| generate_name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// The order in which to delete Pods when there are too many (first
/// first), as kube-controller-manager's ranking: not yet scheduled before
/// scheduled, pending before unknown before running, not ready before
/// ready, more restarts first, newer before older.
pub fn deletion_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let scheduled = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase_rank = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum())
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(is_ready(a).cmp(&is_ready(b)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// Now, to the second.
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// A timestamp as the API carries it (whole seconds).
pub fn time(at: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(at.as_second()).unwrap_or(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_read_as_kubernetes_reads_them() {
        let labels: Labels = [
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ]
        .into();
        let sel = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            match_expressions: Some(exprs),
        };
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).into()).collect()),
        };
        assert!(selects(
            Some(&sel(&[("app", "web")], vec![])),
            Some(&labels)
        ));
        assert!(!selects(
            Some(&sel(&[("app", "db")], vec![])),
            Some(&labels)
        ));
        assert!(selects(
            Some(&sel(&[], vec![req("tier", "In", &["front", "back"])])),
            Some(&labels)
        ));
        assert!(!selects(
            Some(&sel(&[], vec![req("tier", "NotIn", &["front"])])),
            Some(&labels)
        ));
        assert!(selects(
            Some(&sel(&[], vec![req("x", "DoesNotExist", &[])])),
            Some(&labels)
        ));
        assert!(
            selects(Some(&LabelSelector::default()), Some(&labels)),
            "empty takes all"
        );
        assert!(!selects(None, Some(&labels)), "missing takes none");
        assert!(
            !map_selects(Some(&Labels::new()), Some(&labels)),
            "an empty map takes none"
        );
    }
}
