//! What an object uses of a ResourceQuota, as kube-apiserver's quota
//! evaluators count it: object counts (`pods`, `services`,
//! `count/deployments.apps`, …), a Pod's requests and limits (the larger
//! of its containers' sum and any init container, per resource), Service
//! node ports and load balancers, claims' storage. Shared by the
//! apiserver's quota admission and the quota controller's recount.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::{parse, Milli};

/// Resource name → amount.
pub type Usage = BTreeMap<String, Milli>;

fn one() -> Milli {
    Milli(1000)
}

/// The legacy count name of a core resource (`pods`, `configmaps`…).
fn legacy_count(group: &str, plural: &str) -> Option<&'static str> {
    if !group.is_empty() {
        return None;
    }
    Some(match plural {
        "pods" => "pods",
        "services" => "services",
        "configmaps" => "configmaps",
        "secrets" => "secrets",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "replicationcontrollers" => "replicationcontrollers",
        "resourcequotas" => "resourcequotas",
        _ => return None,
    })
}

/// Whether a Pod no longer counts (finished).
pub fn pod_is_terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// The amounts a Pod spec asks for: for each resource, the larger of its
/// containers' sum and each init container's (`kind` is `requests` or
/// `limits`).
fn pod_amounts(spec: &Value, kind: &str) -> BTreeMap<String, Milli> {
    let mut sums: BTreeMap<String, Milli> = BTreeMap::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        for (name, q) in c["resources"][kind].as_object().into_iter().flatten() {
            if let Some(q) = q.as_str().and_then(parse) {
                *sums.entry(name.clone()).or_default() += q;
            }
        }
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (name, q) in c["resources"][kind].as_object().into_iter().flatten() {
            if let Some(q) = q.as_str().and_then(parse) {
                let entry = sums.entry(name.clone()).or_default();
                *entry = (*entry).max(q);
            }
        }
    }
    for (name, q) in spec["overhead"].as_object().into_iter().flatten() {
        if let Some(q) = q.as_str().and_then(parse) {
            *sums.entry(name.clone()).or_default() += q;
        }
    }
    sums
}

/// What `object` (of `group`/`plural`) uses.
pub fn usage(group: &str, plural: &str, object: &Value) -> Usage {
    let mut usage = Usage::new();
    if (group, plural) == ("", "pods") && pod_is_terminal(object) {
        return usage;
    }
    let count_name = if group.is_empty() {
        format!("count/{plural}")
    } else {
        format!("count/{plural}.{group}")
    };
    usage.insert(count_name, one());
    if let Some(legacy) = legacy_count(group, plural) {
        usage.insert(legacy.to_owned(), one());
    }
    match (group, plural) {
        ("", "pods") => {
            let spec = &object["spec"];
            for (name, q) in pod_amounts(spec, "requests") {
                if name == "cpu" || name == "memory" {
                    usage.insert(name.clone(), q);
                }
                usage.insert(format!("requests.{name}"), q);
            }
            for (name, q) in pod_amounts(spec, "limits") {
                usage.insert(format!("limits.{name}"), q);
            }
        }
        ("", "services") => {
            let spec = &object["spec"];
            // Every port of a NodePort Service takes a node port, and of a
            // LoadBalancer unless it declines them.
            let ports = spec["ports"].as_array().map_or(0, Vec::len) as i128;
            match spec["type"].as_str() {
                Some("NodePort") => {
                    usage.insert("services.nodeports".into(), Milli(ports * 1000));
                }
                Some("LoadBalancer") => {
                    let node_ports = if spec["allocateLoadBalancerNodePorts"] == false {
                        0
                    } else {
                        ports
                    };
                    usage.insert("services.nodeports".into(), Milli(node_ports * 1000));
                    usage.insert("services.loadbalancers".into(), one());
                }
                _ => {}
            }
        }
        ("", "persistentvolumeclaims") => {
            if let Some(q) = object["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .and_then(parse)
            {
                usage.insert("requests.storage".into(), q);
            }
        }
        _ => {}
    }
    usage
}

/// Whether a quota's `hard` names a resource `usage` touches.
pub fn touches(hard: &BTreeMap<String, Milli>, usage: &Usage) -> bool {
    usage.keys().any(|k| hard.contains_key(k))
}

/// The compute resources a quota can demand every container states.
const COMPUTE: &[&str] = &[
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "cpu",
    "memory",
];

/// The containers of a Pod that do not state a compute resource a quota
/// limits, by resource (`limits.cpu` → container names), as kube's quota
/// admission refuses them.
pub fn unstated(pod: &Value, hard: &BTreeMap<String, Milli>) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for resource in COMPUTE.iter().filter(|r| hard.contains_key(**r)) {
        let (kind, name) = match resource.split_once('.') {
            Some((kind, name)) => (kind, name),
            None => ("requests", *resource),
        };
        let missing: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["resources"][kind][name].is_null())
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        if !missing.is_empty() {
            out.push(((*resource).to_owned(), missing));
        }
    }
    out
}

/// Why a quota named `quota` refuses a Pod that leaves resources
/// unstated (`unstated` non-empty), as kube's quota admission words it:
/// `failed quota: <quota>: must specify limits.cpu for: a,b; …`.
pub fn unstated_refusal(quota: &str, unstated: &[(String, Vec<String>)]) -> String {
    let parts: Vec<String> = unstated
        .iter()
        .map(|(resource, containers)| format!("{resource} for: {}", containers.join(",")))
        .collect();
    format!("failed quota: {quota}: must specify {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_uses_its_count_and_requests() {
        let pod = json!({"spec": {
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                {"resources": {"requests": {"cpu": "250m"}}},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
        }});
        let u = usage("", "pods", &pod);
        assert_eq!(u["pods"], Milli(1000));
        assert_eq!(u["count/pods"], Milli(1000));
        assert_eq!(
            u["requests.cpu"],
            Milli(2000),
            "the init container's is larger"
        );
        assert_eq!(u["cpu"], Milli(2000));
        assert_eq!(u["requests.memory"], parse("64Mi").unwrap());
        assert_eq!(u["limits.cpu"], Milli(1000));
        let done = json!({"spec": {}, "status": {"phase": "Succeeded"}});
        assert!(usage("", "pods", &done).is_empty());
    }

    #[test]
    fn services_and_other_kinds_count_as_kube_counts_them() {
        let svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage("", "services", &svc);
        assert_eq!(u["services"], Milli(1000));
        assert_eq!(u["services.nodeports"], Milli(2000));
        let d = usage("apps", "deployments", &json!({}));
        assert_eq!(d.keys().collect::<Vec<_>>(), ["count/deployments.apps"]);
    }
}
