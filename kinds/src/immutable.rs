//! What an update may not change once an object exists, as kube-apiserver's
//! update validation refuses it: the selector of a Deployment, ReplicaSet or
//! DaemonSet; a StatefulSet's spec but for its rollout fields; a Job's
//! selector, template (while it may run), completion mode and count; a Pod's
//! spec but for images, deadlines and added tolerations; a
//! PersistentVolumeClaim's spec (a bound claim may grow); and the contents of
//! ConfigMaps and Secrets marked immutable. Each refusal is a 422 worded as
//! kube-apiserver words it, so tools that match on "field is immutable" (Helm,
//! Argo CD, users' scripts) react as they do against a real cluster.
//!
//! Both objects are checked after decoding and defaulting, so a field the
//! client left out and the server filled in reads the same on both sides.

use serde_json::{Map, Value};

use kplex_registry::error::ApiError;
use kplex_registry::ResourceInfo;

/// The StatefulSet spec fields an update may change.
const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

const STATEFULSET_RULE: &str = "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";

const POD_RULE: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

const CLAIM_RULE: &str = "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";

/// Refuses an update of `old` to `new` that changes what the kind keeps.
pub fn check(info: &ResourceInfo, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let refuse = Refusal { info, name };
    // Go reads an empty list or map as an absent one: so do the comparisons.
    let (old, new) = (&without_empty(old), &without_empty(new));
    match (info.group.as_str(), info.kind.as_str()) {
        ("", "ConfigMap" | "Secret") => contents(&refuse, old, new),
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => {
            refuse.unchanged(old, new, "selector")
        }
        ("apps", "StatefulSet") => {
            let (mut was, mut is) = specs(old, new);
            for field in STATEFULSET_MUTABLE {
                was.remove(*field);
                is.remove(*field);
            }
            refuse.same_spec(&was, &is, STATEFULSET_RULE)
        }
        ("batch", "Job") => job(&refuse, old, new),
        ("", "Pod") => pod(&refuse, old, new),
        ("", "PersistentVolumeClaim") => claim(&refuse, old, new),
        ("apiextensions.k8s.io", "CustomResourceDefinition")
            if old["spec"]["scope"] != new["spec"]["scope"] =>
        {
            Err(refuse.error(
                "spec.scope",
                &format!(
                    "Invalid value: {}: field is immutable",
                    new["spec"]["scope"]
                ),
            ))
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            match crate::custom::orphaned_stored_versions(new)
                .into_iter()
                .next()
            {
                Some((field, detail)) => Err(refuse.error(&field, &detail)),
                None => Ok(()),
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding")
            if old["roleRef"] != new["roleRef"] =>
        {
            Err(refuse.error(
                "roleRef",
                &format!("Invalid value: {}: cannot change roleRef", new["roleRef"]),
            ))
        }
        _ => Ok(()),
    }
}

/// The 422s of one object's update.
struct Refusal<'a> {
    info: &'a ResourceInfo,
    name: &'a str,
}

impl Refusal<'_> {
    fn error(&self, field: &str, detail: &str) -> ApiError {
        ApiError::field(&self.info.qualified_kind(), self.name, field, detail)
    }

    /// `spec.<field>: Invalid value: …: field is immutable`.
    fn immutable(&self, field: &str, value: &Value) -> ApiError {
        self.error(
            &format!("spec.{field}"),
            &format!("Invalid value: {value}: field is immutable"),
        )
    }

    fn unchanged(&self, old: &Value, new: &Value, field: &str) -> Result<(), ApiError> {
        let (was, is) = (&old["spec"][field], &new["spec"][field]);
        if was != is {
            return Err(self.immutable(field, is));
        }
        Ok(())
    }

    /// `spec: Forbidden: <rule>`, naming the fields that differ.
    fn same_spec(
        &self,
        was: &Map<String, Value>,
        is: &Map<String, Value>,
        rule: &str,
    ) -> Result<(), ApiError> {
        if was == is {
            return Ok(());
        }
        let mut changed: Vec<&str> = was
            .keys()
            .chain(is.keys())
            .filter(|k| was.get(*k) != is.get(*k))
            .map(String::as_str)
            .collect();
        changed.sort_unstable();
        changed.dedup();
        Err(self.error(
            "spec",
            &format!(
                "Forbidden: {rule}\n  changed: {}",
                changed
                    .iter()
                    .map(|f| format!("spec.{f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// `value` without nulls and empty lists and maps, at any depth.
fn without_empty(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_empty(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_empty).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    v.is_null()
        || v.as_object().is_some_and(Map::is_empty)
        || v.as_array().is_some_and(Vec::is_empty)
}

/// Copies of both specs, to neutralise what may change before comparing.
fn specs(old: &Value, new: &Value) -> (Map<String, Value>, Map<String, Value>) {
    let spec = |o: &Value| o["spec"].as_object().cloned().unwrap_or_default();
    (spec(old), spec(new))
}

/// A ConfigMap or Secret marked `immutable: true` keeps its data, and stays
/// immutable (it can still be relabelled, or deleted); a Secret keeps its type.
fn contents(refuse: &Refusal, old: &Value, new: &Value) -> Result<(), ApiError> {
    if refuse.info.kind == "Secret" && old.get("type") != new.get("type") {
        return Err(refuse.error(
            "type",
            &format!("Invalid value: {}: field is immutable", new["type"]),
        ));
    }
    if old["immutable"] != true {
        return Ok(());
    }
    for field in ["immutable", "data", "binaryData"] {
        if old.get(field) != new.get(field) {
            return Err(refuse.error(
                field,
                "Forbidden: field is immutable when `immutable` is set",
            ));
        }
    }
    Ok(())
}

/// A Job's selector and completion mode are fixed; its completion count too,
/// unless it is an elastic indexed job (completions kept equal to
/// parallelism). Its pod template is fixed once the job may have started: a
/// suspended job that never started may still have its pods' labels,
/// annotations and scheduling directives changed (what queueing controllers
/// such as Kueue do).
fn job(refuse: &Refusal, old: &Value, new: &Value) -> Result<(), ApiError> {
    refuse.unchanged(old, new, "selector")?;
    refuse.unchanged(old, new, "completionMode")?;
    let spec = &new["spec"];
    let elastic = spec["completionMode"] == "Indexed" && spec["completions"] == spec["parallelism"];
    if !elastic {
        refuse.unchanged(old, new, "completions")?;
    }
    let never_started = old["spec"]["suspend"] == true && old["status"]["startTime"].is_null();
    if !never_started {
        return refuse.unchanged(old, new, "template");
    }
    let scheduling = |job: &Value| {
        let mut template = job["spec"]["template"].clone();
        if let Some(meta) = template["metadata"].as_object_mut() {
            meta.remove("labels");
            meta.remove("annotations");
        }
        if let Some(pod) = template["spec"].as_object_mut() {
            for field in ["nodeSelector", "affinity", "tolerations", "schedulingGates"] {
                pod.remove(field);
            }
        }
        template
    };
    if scheduling(old) != scheduling(new) {
        return Err(refuse.immutable("template", &new["spec"]["template"]));
    }
    Ok(())
}

/// A Pod's spec is fixed but for container images, a shorter deadline, added
/// tolerations, removed scheduling gates, and a negative grace period set
/// to 1.
fn pod(refuse: &Refusal, old: &Value, new: &Value) -> Result<(), ApiError> {
    let (was, mut is) = specs(old, new);
    match (
        was.get("activeDeadlineSeconds").and_then(Value::as_i64),
        is.get("activeDeadlineSeconds"),
    ) {
        (Some(_), None | Some(Value::Null)) => {
            return Err(refuse.error(
                "spec.activeDeadlineSeconds",
                "Invalid value: \"null\": must not update from a positive integer to nil value",
            ))
        }
        (Some(before), Some(after)) if after.as_i64().is_some_and(|a| a > before) => {
            return Err(refuse.error(
                "spec.activeDeadlineSeconds",
                &format!("Invalid value: {after}: must be less than or equal to previous value"),
            ))
        }
        _ => {}
    }
    let neutral = |is: &mut Map<String, Value>, field: &str| match was.get(field) {
        Some(v) => is.insert(field.to_owned(), v.clone()),
        None => is.remove(field),
    };
    neutral(&mut is, "activeDeadlineSeconds");
    for list in ["containers", "initContainers"] {
        let before = was.get(list).and_then(Value::as_array);
        let after = is.get_mut(list).and_then(Value::as_array_mut);
        if let (Some(before), Some(after)) = (before, after) {
            if before.len() == after.len() {
                for (b, a) in before.iter().zip(after.iter_mut()) {
                    if let Some(a) = a.as_object_mut() {
                        match b.get("image") {
                            Some(image) => a.insert("image".into(), image.clone()),
                            None => a.remove("image"),
                        };
                    }
                }
            }
        }
    }
    let items = |m: &Map<String, Value>, field: &str| -> Vec<Value> {
        m.get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    // (Through a set of their texts: lists may be long.)
    let contains_all = |big: &[Value], small: &[Value]| {
        let big: std::collections::HashSet<String> = big.iter().map(Value::to_string).collect();
        small.iter().all(|x| big.contains(&x.to_string()))
    };
    // A pod its scheduling gates still hold may gain node selectors and
    // affinity (what queueing controllers set before they ungate it).
    if !items(&was, "schedulingGates").is_empty() {
        let selector = |m: &Map<String, Value>| {
            m.get("nodeSelector")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let (before, after) = (selector(&was), selector(&is));
        if before.iter().all(|(k, v)| after.get(k) == Some(v)) {
            neutral(&mut is, "nodeSelector");
        }
        neutral(&mut is, "affinity");
    }
    if contains_all(&items(&is, "tolerations"), &items(&was, "tolerations")) {
        neutral(&mut is, "tolerations");
    }
    if contains_all(
        &items(&was, "schedulingGates"),
        &items(&is, "schedulingGates"),
    ) {
        neutral(&mut is, "schedulingGates");
    }
    let grace = |m: &Map<String, Value>| {
        m.get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
    };
    if grace(&was).is_some_and(|g| g < 0) && grace(&is) == Some(1) {
        neutral(&mut is, "terminationGracePeriodSeconds");
    }
    refuse.same_spec(&was, &is, POD_RULE)
}

/// A claim's spec is fixed, but for its volume name and storage class when
/// they were unset (binding, and a default class assigned later), and for
/// its requests and volume attributes class once it is bound.
fn claim(refuse: &Refusal, old: &Value, new: &Value) -> Result<(), ApiError> {
    let (mut was, mut is) = specs(old, new);
    // A volume name may be set once (binding); a storage class once where
    // it was never set (a default class assigned later). An empty class is
    // a choice: "no class".
    if was.get("volumeName").is_none_or(|v| v == "") {
        was.remove("volumeName");
        is.remove("volumeName");
    }
    if !was.contains_key("storageClassName") {
        is.remove("storageClassName");
    }
    if old["status"]["phase"] == "Bound" {
        for spec in [&mut was, &mut is] {
            spec.remove("volumeAttributesClassName");
            if let Some(resources) = spec.get_mut("resources").and_then(Value::as_object_mut) {
                resources.remove("requests");
            }
        }
    }
    refuse.same_spec(&was, &is, CLAIM_RULE)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kind(group: &str, kind: &str) -> ResourceInfo {
        crate::catalog::builtin()
            .into_iter()
            .find(|r| r.group == group && r.kind == kind)
            .unwrap()
    }

    fn refused(info: &ResourceInfo, old: &Value, new: &Value) -> String {
        check(info, "x", old, new).unwrap_err().message
    }

    #[test]
    fn workload_selectors_are_fixed_but_templates_roll() {
        let deploy = kind("apps", "Deployment");
        let old = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"spec": {"containers": [{"name": "c", "image": "1"}]}}}});
        let mut rolled = old.clone();
        rolled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("2");
        rolled["spec"]["replicas"] = json!(5);
        check(&deploy, "x", &old, &rolled).unwrap();
        let mut moved = old.clone();
        moved["spec"]["selector"]["matchLabels"]["app"] = json!("b");
        assert_eq!(
            refused(&deploy, &old, &moved),
            r#"Deployment.apps "x" is invalid: spec.selector: Invalid value: {"matchLabels":{"app":"b"}}: field is immutable"#
        );
    }

    #[test]
    fn a_statefulset_changes_only_its_rollout_fields() {
        let sts = kind("apps", "StatefulSet");
        let old = json!({"spec": {"serviceName": "db", "replicas": 1, "volumeClaimTemplates": [{"metadata": {"name": "data"}}]}});
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
        check(&sts, "x", &old, &scaled).unwrap();
        let mut grown = old.clone();
        grown["spec"]["volumeClaimTemplates"][0]["spec"] =
            json!({"resources": {"requests": {"storage": "5Gi"}}});
        grown["spec"]["serviceName"] = json!("other");
        let message = refused(&sts, &old, &grown);
        assert!(
            message.starts_with(&format!(
                "StatefulSet.apps \"x\" is invalid: spec: Forbidden: {STATEFULSET_RULE}"
            )),
            "{message}"
        );
        assert!(
            message.ends_with("changed: spec.serviceName, spec.volumeClaimTemplates"),
            "{message}"
        );
    }

    #[test]
    fn a_job_keeps_its_template_unless_suspended_before_it_started() {
        let job = kind("batch", "Job");
        let old = json!({"spec": {"completions": 2, "template": {"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "c", "image": "1"}]}}}});
        let mut relabelled = old.clone();
        relabelled["spec"]["template"]["metadata"]["labels"]["a"] = json!("2");
        assert!(refused(&job, &old, &relabelled).contains("spec.template: Invalid value"));
        let mut more = old.clone();
        more["spec"]["completions"] = json!(3);
        assert!(refused(&job, &old, &more)
            .ends_with("spec.completions: Invalid value: 3: field is immutable"));

        let mut suspended = old.clone();
        suspended["spec"]["suspend"] = json!(true);
        let mut queued = relabelled.clone();
        queued["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
        check(&job, "x", &suspended, &queued).unwrap();
        let mut reimaged = suspended.clone();
        reimaged["spec"]["template"]["spec"]["containers"][0]["image"] = json!("2");
        assert!(refused(&job, &suspended, &reimaged).contains("field is immutable"));
        suspended["status"]["startTime"] = json!("2026-01-01T00:00:00Z");
        assert!(refused(&job, &suspended, &queued).contains("field is immutable"));

        let elastic =
            json!({"spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2}});
        let wider =
            json!({"spec": {"completionMode": "Indexed", "completions": 4, "parallelism": 4}});
        check(&job, "x", &elastic, &wider).unwrap();
    }

    #[test]
    fn a_pod_changes_images_deadlines_and_added_tolerations_only() {
        let pod = kind("", "Pod");
        let old = json!({"spec": {"containers": [{"name": "c", "image": "1"}], "tolerations": [{"key": "a"}], "activeDeadlineSeconds": 60, "schedulingGates": [{"name": "g"}]}});
        let mut fine = old.clone();
        fine["spec"]["containers"][0]["image"] = json!("2");
        fine["spec"]["tolerations"] = json!([{"key": "a"}, {"key": "b"}]);
        fine["spec"]["activeDeadlineSeconds"] = json!(30);
        fine["spec"]["schedulingGates"] = json!([]);
        check(&pod, "x", &old, &fine).unwrap();

        let mut dropped = old.clone();
        dropped["spec"]["tolerations"] = json!([]);
        let message = refused(&pod, &old, &dropped);
        assert!(
            message.starts_with(&format!(
                "Pod \"x\" is invalid: spec: Forbidden: {POD_RULE}"
            )),
            "{message}"
        );
        assert!(message.ends_with("changed: spec.tolerations"), "{message}");
        let mut ungated = old.clone();
        ungated["spec"]
            .as_object_mut()
            .unwrap()
            .remove("schedulingGates");
        let mut moved = ungated.clone();
        moved["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(refused(&pod, &ungated, &moved).ends_with("changed: spec.nodeSelector"));
        let mut longer = old.clone();
        longer["spec"]["activeDeadlineSeconds"] = json!(90);
        assert!(
            refused(&pod, &old, &longer).contains("must be less than or equal to previous value")
        );
        let mut unset = old.clone();
        unset["spec"]
            .as_object_mut()
            .unwrap()
            .remove("activeDeadlineSeconds");
        assert!(refused(&pod, &old, &unset)
            .contains("must not update from a positive integer to nil value"));
        let mut renamed = old.clone();
        renamed["spec"]["containers"][0]["name"] = json!("d");
        assert!(refused(&pod, &old, &renamed).ends_with("changed: spec.containers"));
    }

    #[test]
    fn a_gated_pod_may_gain_node_selectors_and_empty_reads_as_absent() {
        let pod = kind("", "Pod");
        let gated = json!({"spec": {"containers": [{"name": "c", "image": "1"}], "schedulingGates": [{"name": "q"}], "nodeSelector": {"a": "1"}}});
        let mut placed = gated.clone();
        placed["spec"]["nodeSelector"]["zone"] = json!("b");
        placed["spec"]["affinity"] = json!({"nodeAffinity": {}});
        check(&pod, "x", &gated, &placed).unwrap();
        let mut replaced = gated.clone();
        replaced["spec"]["nodeSelector"] = json!({"zone": "b"});
        assert!(refused(&pod, &gated, &replaced).ends_with("changed: spec.nodeSelector"));
        let mut volumes = gated.clone();
        volumes["spec"]["volumes"] = json!([]);
        check(&pod, "x", &gated, &volumes).unwrap();
        let deploy = kind("apps", "Deployment");
        let old =
            json!({"spec": {"selector": {"matchLabels": {"app": "a"}, "matchExpressions": []}}});
        let new = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}}});
        check(&deploy, "x", &old, &new).unwrap();
    }

    #[test]
    fn a_claim_is_fixed_but_may_grow_once_bound() {
        let pvc = kind("", "PersistentVolumeClaim");
        let old = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let mut classed = old.clone();
        classed["spec"]["storageClassName"] = json!("fast");
        classed["spec"]["volumeName"] = json!("pv-1");
        check(&pvc, "x", &old, &classed).unwrap();
        let mut no_class = old.clone();
        no_class["spec"]["storageClassName"] = json!("");
        assert!(refused(&pvc, &no_class, &classed).contains(CLAIM_RULE));
        let mut reclassed = classed.clone();
        reclassed["spec"]["storageClassName"] = json!("slow");
        assert!(refused(&pvc, &classed, &reclassed).contains(CLAIM_RULE));

        let mut grown = old.clone();
        grown["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert!(refused(&pvc, &old, &grown).ends_with("changed: spec.resources"));
        let mut bound = old.clone();
        bound["status"] = json!({"phase": "Bound"});
        check(&pvc, "x", &bound, &grown).unwrap();
        let mut shared = grown.clone();
        shared["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        assert!(refused(&pvc, &bound, &shared).ends_with("changed: spec.accessModes"));
    }

    #[test]
    fn kinds_without_rules_change_freely() {
        let svc_account = kind("", "ServiceAccount");
        check(
            &svc_account,
            "x",
            &json!({"spec": {"a": 1}}),
            &json!({"spec": {"a": 2}}),
        )
        .unwrap();
    }
}
