//! What kube-apiserver checks of the kinds users get wrong most: pod specs
//! (in pods and in every template), apps/v1 workloads' selectors and
//! replicas, and resource quantities.

use serde_json::Value;

use kplex_registry::error::ApiError;
use kplex_registry::ResourceInfo;

/// Whether `s` is a Kubernetes quantity: a decimal number, then a binary
/// (`Ki`…`Ei`) or decimal (`n u m k M G T P E`) suffix or an exponent.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let digits = number.bytes().filter(u8::is_ascii_digit).count();
    let valid_number = digits > 0 && number.matches('.').count() <= 1;
    let valid_suffix = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())),
    };
    valid_number && valid_suffix
}

/// The checks of a decoded object of a built-in kind: its pod spec, if it
/// carries one, and an apps/v1 workload's replicas and selector.
pub fn validate(info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    if info.group == "apps" && info.kind != "ControllerRevision" {
        validate_workload(info, object)?;
    }
    if let Some((path, spec)) = pod_spec_of(&info.group, &info.kind, object) {
        validate_pod_spec(info, object, &path, spec)?;
    }
    if (info.group.as_str(), info.kind.as_str())
        == ("apiextensions.k8s.io", "CustomResourceDefinition")
    {
        let problems = crate::custom::problems(object);
        let ignored = crate::custom::not_enforced(object);
        if !ignored.is_empty() {
            kplex_registry::warnings::add(format!(
                "this CRD's schemas use {} which kplex stores but does not enforce yet",
                ignored.join(", ")
            ));
        }
        if !problems.is_empty() {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            return Err(ApiError::fields(&info.qualified_kind(), name, &problems));
        }
    }
    if info.group == "rbac.authorization.k8s.io" && info.kind.ends_with("Binding") {
        validate_binding(info, object)?;
    }
    Ok(())
}

/// A binding's role reference and subjects, as kube-apiserver checks them.
fn validate_binding(info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let invalid = |field: &str, detail: String| {
        Err(ApiError::field(
            &info.qualified_kind(),
            name,
            field,
            &detail,
        ))
    };
    let role_ref = &object["roleRef"];
    let kinds: &[&str] = if info.namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = role_ref["kind"].as_str().unwrap_or_default();
    if !kinds.contains(&kind) {
        let supported: Vec<String> = kinds.iter().map(|k| format!("{k:?}")).collect();
        return invalid(
            "roleRef.kind",
            format!(
                "Unsupported value: {kind:?}: supported values: {}",
                supported.join(", ")
            ),
        );
    }
    let group = role_ref["apiGroup"].as_str().unwrap_or_default();
    if group != "rbac.authorization.k8s.io" {
        return invalid(
            "roleRef.apiGroup",
            format!(
                "Unsupported value: {group:?}: supported values: \"rbac.authorization.k8s.io\""
            ),
        );
    }
    if role_ref["name"].as_str().is_none_or(str::is_empty) {
        return invalid("roleRef.name", "Required value".into());
    }
    for (i, subject) in object["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if subject["name"].as_str().is_none_or(str::is_empty) {
            return invalid(&format!("subjects[{i}].name"), "Required value".into());
        }
        match subject["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                let group = subject["apiGroup"].as_str().unwrap_or_default();
                if !group.is_empty() {
                    return invalid(
                        &format!("subjects[{i}].apiGroup"),
                        format!("Unsupported value: {group:?}: supported values: \"\""),
                    );
                }
                if !info.namespaced && subject["namespace"].as_str().is_none_or(str::is_empty) {
                    return invalid(&format!("subjects[{i}].namespace"), "Required value".into());
                }
            }
            "User" | "Group" => {
                // (An empty group is defaulted to RBAC's.)
                let group = subject["apiGroup"].as_str().unwrap_or_default();
                if !group.is_empty() && group != "rbac.authorization.k8s.io" {
                    return invalid(
                        &format!("subjects[{i}].apiGroup"),
                        format!("Unsupported value: {group:?}: supported values: \"rbac.authorization.k8s.io\""),
                    );
                }
            }
            other => {
                return invalid(
                    &format!("subjects[{i}].kind"),
                    format!("Unsupported value: {other:?}: supported values: \"ServiceAccount\", \"User\", \"Group\""),
                )
            }
        }
    }
    Ok(())
}

/// The first malformed quantity among a kind's resource amounts (container
/// requests and limits, claim requests, quota limits).
pub fn bad_quantity(group: &str, kind: &str, object: &Value) -> Option<String> {
    let mut maps: Vec<&Value> = Vec::new();
    if let Some((_, spec)) = pod_spec_of(group, kind, object) {
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                maps.push(&c["resources"]["requests"]);
                maps.push(&c["resources"]["limits"]);
            }
        }
    }
    match (group, kind) {
        ("", "PersistentVolumeClaim") => maps.push(&object["spec"]["resources"]["requests"]),
        ("", "ResourceQuota") => maps.push(&object["spec"]["hard"]),
        _ => {}
    }
    maps.into_iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.values())
        .filter_map(Value::as_str)
        .find(|q| !is_quantity(q))
        .map(str::to_owned)
}

/// The pod spec a kind carries, and its path.
fn pod_spec_of<'a>(group: &str, kind: &str, object: &'a Value) -> Option<(String, &'a Value)> {
    let path = match (group, kind) {
        ("", "Pod") => "spec",
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => "spec.template.spec",
        ("", "PodTemplate") => "template.spec",
        ("batch", "CronJob") => "spec.jobTemplate.spec.template.spec",
        _ => return None,
    };
    let spec = path.split('.').fold(object, |v, field| &v[field]);
    spec.is_object().then(|| (path.to_owned(), spec))
}

/// What kube-apiserver checks of every pod spec that users get wrong most:
/// containers present, named as DNS labels, uniquely, each with an image,
/// and a restart policy the kind allows.
fn validate_pod_spec(
    info: &ResourceInfo,
    object: &Value,
    path: &str,
    spec: &Value,
) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let kind = info.qualified_kind();
    let invalid = |field: String, detail: String| {
        ApiError::field(&kind, name, &format!("{path}.{field}"), &detail)
    };
    if spec["containers"].as_array().is_none_or(|c| c.is_empty()) {
        return Err(invalid("containers".into(), "Required value".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let container = c["name"].as_str().unwrap_or_default();
            let label = |s: &str| {
                !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !s.starts_with('-')
                    && !s.ends_with('-')
            };
            if container.is_empty() {
                return Err(invalid(
                    format!("{list}[{i}].name"),
                    "Required value".into(),
                ));
            }
            if !label(container) {
                return Err(invalid(
                    format!("{list}[{i}].name"),
                    format!("Invalid value: {container:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
                ));
            }
            if !seen.insert(container.to_owned()) {
                return Err(invalid(
                    format!("{list}[{i}].name"),
                    format!("Duplicate value: {container:?}"),
                ));
            }
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                return Err(invalid(
                    format!("{list}[{i}].image"),
                    "Required value".into(),
                ));
            }
        }
    }
    let allowed: &[&str] = if info.group == "batch" {
        &["OnFailure", "Never"]
    } else if info.group == "apps" || info.kind == "ReplicationController" {
        &["Always"]
    } else {
        &["Always", "OnFailure", "Never"]
    };
    if info.group == "batch" && spec["restartPolicy"].as_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "restartPolicy".into(),
            "Required value: valid values: \"OnFailure\", \"Never\"".into(),
        ));
    }
    if let Some(policy) = spec["restartPolicy"].as_str().filter(|p| !p.is_empty()) {
        if !allowed.contains(&policy) {
            let supported: Vec<String> = allowed.iter().map(|p| format!("{p:?}")).collect();
            return Err(invalid(
                "restartPolicy".into(),
                format!(
                    "Unsupported value: {policy:?}: supported values: {}",
                    supported.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a `LabelSelector` object selects these labels.
fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// What kube-apiserver checks of every apps/v1 workload: a replica count
/// that is not negative, and a non-empty selector its pod template matches.
fn validate_workload(info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    let spec = &object["spec"];
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let invalid = |field: &str, value: String, why: &str| {
        ApiError::field(
            &info.qualified_kind(),
            name,
            field,
            &format!("Invalid value: {value}: {why}"),
        )
    };
    if let Some(replicas) = spec["replicas"].as_i64().filter(|r| *r < 0) {
        return Err(invalid(
            "spec.replicas",
            replicas.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let selector = &spec["selector"];
    let empty = |f: &str| {
        selector[f].as_object().is_none_or(|m| m.is_empty())
            && selector[f].as_array().is_none_or(|a| a.is_empty())
    };
    if empty("matchLabels") && empty("matchExpressions") {
        return Err(invalid(
            "spec.selector",
            selector.to_string(),
            &format!("empty selector is invalid for {}", info.singular()),
        ));
    }
    let labels = &spec["template"]["metadata"]["labels"];
    if !selector_matches(selector, labels) {
        return Err(invalid(
            "spec.template.metadata.labels",
            labels.to_string(),
            "`selector` does not match template `labels`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_specs_need_named_containers_with_images_and_a_known_restart_policy() {
        let catalog = crate::catalog::shared();
        let pod = catalog.find("", "v1", "pods").unwrap();
        let job = catalog.find("batch", "v1", "jobs").unwrap();
        let check_pod = |spec: Value| {
            let object = json!({"metadata": {"name": "p"}, "spec": spec});
            let (path, spec) = pod_spec_of("", "Pod", &object).unwrap();
            validate_pod_spec(pod, &object, &path, spec)
        };
        check_pod(
            json!({"containers": [{"name": "web", "image": "nginx"}], "restartPolicy": "Never"}),
        )
        .unwrap();
        for (spec, message) in [
            (json!({"containers": []}), "spec.containers: Required value"),
            (
                json!({"containers": [{"name": "web"}]}),
                "spec.containers[0].image: Required value",
            ),
            (
                json!({"containers": [{"name": "Web", "image": "x"}]}),
                "spec.containers[0].name: Invalid value: \"Web\"",
            ),
            (
                json!({"initContainers": [{"name": "a", "image": "x"}], "containers": [{"name": "a", "image": "x"}]}),
                "spec.containers[0].name: Duplicate value: \"a\"",
            ),
            (
                json!({"containers": [{"name": "a", "image": "x"}], "restartPolicy": "Sometimes"}),
                "spec.restartPolicy: Unsupported value: \"Sometimes\"",
            ),
        ] {
            let err = check_pod(spec.clone()).unwrap_err();
            assert_eq!(err.code, kplex_registry::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains(message), "{spec}: {}", err.message);
        }
        // A job's pods may not restart Always.
        let object = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "x"}], "restartPolicy": "Always"}}}});
        let (path, spec) = pod_spec_of("batch", "Job", &object).unwrap();
        let err = validate_pod_spec(job, &object, &path, spec).unwrap_err();
        assert!(
            err.message
                .starts_with("Job.batch \"j\" is invalid: spec.template.spec.restartPolicy"),
            "{}",
            err.message
        );
    }

    #[test]
    fn quantities_are_numbers_with_a_known_suffix() {
        for good in [
            "1", "500m", "0.5", ".5", "1.5Gi", "128Mi", "2e3", "1E-2", "+1k", "100n",
        ] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in [
            "abc", "", "1.2.3", "500mi", "1Gb", "e3", "1e", "--1", "1 Gi",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let with = |cpu: &str| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x",
                "resources": {"limits": {"cpu": cpu, "memory": "64Mi"}}}]}})
        };
        assert_eq!(bad_quantity("", "Pod", &with("250m")), None);
        assert_eq!(
            bad_quantity("", "Pod", &with("abc")).as_deref(),
            Some("abc")
        );
        // Through the kind's strategy it is a decoding error (a 400).
        let pod = crate::catalog::shared()
            .find("", "v1", "pods")
            .unwrap()
            .clone();
        let err = pod.strategy.decode(&with("abc")).unwrap_err();
        assert!(err.starts_with("\"abc\": quantities must match"), "{err}");
    }

    #[test]
    fn workloads_need_a_selector_their_template_matches() {
        let catalog = crate::catalog::shared();
        let deploy = catalog.find("apps", "v1", "deployments").unwrap();
        let with = |spec: Value| {
            validate_workload(deploy, &json!({"metadata": {"name": "web"}, "spec": spec}))
        };
        let template = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        with(json!({"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template})).unwrap();
        with(json!({"selector": {"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "legacy", "operator": "DoesNotExist"}]}, "template": template}))
        .unwrap();
        for (spec, why) in [
            (
                json!({"replicas": -5, "selector": {"matchLabels": {"app": "web"}}, "template": template}),
                "greater than or equal to 0",
            ),
            (
                json!({"selector": {}, "template": template}),
                "empty selector",
            ),
            (
                json!({"selector": {"matchLabels": {"app": "db"}}, "template": template}),
                "does not match template",
            ),
            (
                json!({"selector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, "template": template}),
                "does not match template",
            ),
        ] {
            let err = with(spec.clone()).unwrap_err();
            assert_eq!(err.code, kplex_registry::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains(why), "{spec}: {}", err.message);
            assert!(
                err.message
                    .starts_with("Deployment.apps \"web\" is invalid"),
                "{}",
                err.message
            );
        }
    }
}
