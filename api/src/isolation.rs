//! A VC's isolation policy (`VirtualCluster.spec.isolation`) and the rules
//! it sets for the VC's Pods, shared by the apiserver (admission: a
//! tenant's create is refused with the rule named) and the syncer (a Pod
//! that got in another way is not placed on a host).
//!
//! Pod security follows the Pod Security Standards (`baseline`,
//! `restricted`) as kube-apiserver's PodSecurity admission checks them,
//! with one change under user namespaces (the default): every host Pod
//! runs with `hostUsers: false`, so root in the container is not root on
//! the node, and `restricted` then neither demands `runAsNonRoot` nor
//! dropping every capability (the default set is the user namespace's).
//! What stays refused is every way out: host namespaces, host paths and
//! ports, privileged containers, capabilities beyond `NET_BIND_SERVICE`,
//! unconfined seccomp or AppArmor, escalation, unsafe sysctls, unmasked
//! `/proc`, volume types that reach the node.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::quantity;

/// The Pod Security Standards level a VC's Pods are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes (only when the admin says so for the VC).
    Privileged,
    /// No known privilege escalation.
    Baseline,
    /// Hardened (the default).
    Restricted,
}

impl Level {
    /// The level's name, as in the policy and the PodSecurity labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A host network attachment granted to a VC under an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The name tenants use in their Pods' network annotation.
    pub alias: String,
    /// The host `NetworkAttachmentDefinition`'s namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The device resource an attachment takes (the NAD's
    /// `k8s.v1.cni.cncf.io/resourceName`, e.g. an SR-IOV pool): counted by
    /// the VC quota as `requests.<resource>`, asked for by the host copy.
    pub resource_name: Option<String>,
}

/// `spec.isolation`, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Isolation {
    /// `podSecurity`.
    pub pod_security: Level,
    /// `userNamespaces`: `hostUsers: false` on every host Pod.
    pub user_namespaces: bool,
    /// `runtimeClassName`, forced on every host Pod when set.
    pub runtime_class_name: Option<String>,
    /// `quota.hard`: resource name → amount, across all the VC's namespaces.
    pub quota: BTreeMap<String, String>,
    /// `hugePageSizes`: the huge page sizes the VC's Pods may use.
    pub huge_page_sizes: Vec<String>,
    /// `nodeSelector`, merged into every host Pod (over the tenant's).
    pub node_selector: BTreeMap<String, String>,
    /// `tolerations`, added to every host Pod.
    pub tolerations: Vec<Value>,
    /// `networks`: host attachments granted by alias.
    pub networks: Vec<Network>,
    /// `defaultNetworks`: aliases attached to every Pod.
    pub default_networks: Vec<String>,
}

impl Default for Isolation {
    fn default() -> Isolation {
        Isolation {
            pod_security: Level::Restricted,
            user_namespaces: true,
            runtime_class_name: None,
            quota: BTreeMap::from([("services.nodeports".to_owned(), "0".to_owned())]),
            huge_page_sizes: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            networks: Vec::new(),
            default_networks: Vec::new(),
        }
    }
}

/// A field of the policy that is wrong: its path under `spec` and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// E.g. `spec.isolation.podSecurity`.
    pub field: String,
    /// What is wrong, as kube-apiserver words field errors.
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

const FIELDS: &[&str] = &[
    "podSecurity",
    "userNamespaces",
    "runtimeClassName",
    "quota",
    "hugePageSizes",
    "nodeSelector",
    "tolerations",
    "networks",
    "defaultNetworks",
];

const HUGE_PAGE_SIZES: &[&str] = &["64Ki", "2Mi", "32Mi", "512Mi", "1Gi", "16Gi"];

fn strings(value: &Value, field: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item.as_str() {
                Some(s) => Some(s.to_owned()),
                None => {
                    errors.push(field_error(format!("{field}[{i}]"), "must be a string"));
                    None
                }
            })
            .collect(),
        _ => {
            errors.push(field_error(field, "must be a list of strings"));
            Vec::new()
        }
    }
}

fn string_map(
    value: &Value,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, String> {
    match value {
        Value::Null => BTreeMap::new(),
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| match v.as_str() {
                Some(s) => Some((k.clone(), s.to_owned())),
                None => {
                    errors.push(field_error(format!("{field}.{k}"), "must be a string"));
                    None
                }
            })
            .collect(),
        _ => {
            errors.push(field_error(field, "must be a map of strings"));
            BTreeMap::new()
        }
    }
}

/// A DNS-1123 label: lower-case alphanumerics and `-`, alphanumeric at
/// both ends, at most 63 characters.
pub fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether a quota may name `name`: kube's standard quota resources,
/// `requests.*`, `limits.*`, `count/*`, huge pages, or a qualified
/// (extended) resource.
fn quota_resource(name: &str) -> bool {
    const STANDARD: &[&str] = &[
        "pods",
        "services",
        "services.nodeports",
        "services.loadbalancers",
        "configmaps",
        "secrets",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "resourcequotas",
        "cpu",
        "memory",
        "ephemeral-storage",
    ];
    let simple = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'))
    };
    STANDARD.contains(&name)
        || name
            .strip_prefix("hugepages-")
            .is_some_and(|s| HUGE_PAGE_SIZES.contains(&s))
        || ["requests.", "limits.", "count/"]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(simple))
        || qualified_resource(name)
}

/// An extended resource name: `<DNS subdomain>/<name>`.
fn qualified_resource(s: &str) -> bool {
    s.split_once('/').is_some_and(|(domain, name)| {
        dns_subdomain(domain)
            && !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    })
}

/// What a Pod of a VC with `policy` uses of a quota: what
/// [`crate::quota::usage`] counts, and for a Pod the device resources its
/// network attachments take.
pub fn usage(policy: &Isolation, group: &str, plural: &str, object: &Value) -> crate::quota::Usage {
    let mut usage = crate::quota::usage(group, plural, object);
    if (group, plural) == ("", "pods") && !usage.is_empty() {
        for (name, count) in crate::podsecurity::network_resources(policy, object) {
            usage.entry(name).or_default().0 += i128::from(count) * 1000;
        }
    }
    usage
}

/// A DNS-1123 subdomain: labels joined by `.`, at most 253 characters.
pub fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

fn unknown_fields(
    map: &Map<String, Value>,
    known: &[&str],
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
        errors.push(field_error(
            format!("{at}.{key}"),
            "field not declared in schema",
        ));
    }
}

impl Isolation {
    /// The policy of a VC's `spec` (defaults where unset); every field that
    /// is wrong or unknown, named, when it is not one.
    pub fn from_spec(spec: &Value) -> Result<Isolation, Vec<FieldError>> {
        const AT: &str = "spec.isolation";
        let mut policy = Isolation::default();
        let section = &spec["isolation"];
        let map = match section {
            Value::Null => return Ok(policy),
            Value::Object(map) => map,
            _ => return Err(vec![field_error(AT, "must be an object")]),
        };
        let mut errors = Vec::new();
        unknown_fields(map, FIELDS, AT, &mut errors);
        match &section["podSecurity"] {
            Value::Null => {}
            Value::String(s) => match s.as_str() {
                "restricted" => policy.pod_security = Level::Restricted,
                "baseline" => policy.pod_security = Level::Baseline,
                "privileged" => policy.pod_security = Level::Privileged,
                other => errors.push(field_error(
                    format!("{AT}.podSecurity"),
                    format!(
                        "Unsupported value: \"{other}\": supported values: \"baseline\", \"privileged\", \"restricted\""
                    ),
                )),
            },
            _ => errors.push(field_error(format!("{AT}.podSecurity"), "must be a string")),
        }
        match &section["userNamespaces"] {
            Value::Null => {}
            Value::Bool(b) => policy.user_namespaces = *b,
            _ => errors.push(field_error(
                format!("{AT}.userNamespaces"),
                "must be a boolean",
            )),
        }
        match &section["runtimeClassName"] {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => {
                if !dns_subdomain(s) {
                    errors.push(field_error(
                        format!("{AT}.runtimeClassName"),
                        "must be a DNS subdomain (a RuntimeClass name)",
                    ));
                }
                policy.runtime_class_name = Some(s.clone());
            }
            _ => errors.push(field_error(
                format!("{AT}.runtimeClassName"),
                "must be a string",
            )),
        }
        match &section["quota"] {
            Value::Null => {}
            Value::Object(quota) => {
                unknown_fields(quota, &["hard"], &format!("{AT}.quota"), &mut errors);
                let at = format!("{AT}.quota.hard");
                let hard = string_map(&section["quota"]["hard"], &at, &mut errors);
                for (name, amount) in &hard {
                    if !quota_resource(name) {
                        errors.push(field_error(
                            format!("{at}.{name}"),
                            "Invalid value: not a resource a quota counts (a standard name, requests.*, limits.*, count/*, hugepages-*, or a qualified name)",
                        ));
                    }
                    if quantity::parse(amount).is_none_or(|q| q.0 < 0) {
                        errors.push(field_error(
                            format!("{at}.{name}"),
                            format!("Invalid value: \"{amount}\": must be a non-negative quantity"),
                        ));
                    }
                }
                // The admin's quota replaces the default one whole, so a
                // VC that is to have node ports says so.
                if section["quota"].get("hard").is_some() {
                    policy.quota = hard;
                }
            }
            _ => errors.push(field_error(format!("{AT}.quota"), "must be an object")),
        }
        let at = format!("{AT}.hugePageSizes");
        policy.huge_page_sizes = strings(&section["hugePageSizes"], &at, &mut errors);
        for (i, size) in policy.huge_page_sizes.iter().enumerate() {
            if !HUGE_PAGE_SIZES.contains(&size.as_str()) {
                errors.push(field_error(
                    format!("{at}[{i}]"),
                    format!(
                        "Unsupported value: \"{size}\": supported values: {}",
                        HUGE_PAGE_SIZES.join(", ")
                    ),
                ));
            }
        }
        policy.node_selector = string_map(
            &section["nodeSelector"],
            &format!("{AT}.nodeSelector"),
            &mut errors,
        );
        match &section["tolerations"] {
            Value::Null => {}
            Value::Array(items) => {
                for (i, t) in items.iter().enumerate() {
                    let at = format!("{AT}.tolerations[{i}]");
                    match t {
                        Value::Object(m) => unknown_fields(
                            m,
                            &["key", "operator", "value", "effect", "tolerationSeconds"],
                            &at,
                            &mut errors,
                        ),
                        _ => errors.push(field_error(at, "must be an object")),
                    }
                }
                policy.tolerations = items.clone();
            }
            _ => errors.push(field_error(format!("{AT}.tolerations"), "must be a list")),
        }
        match &section["networks"] {
            Value::Null => {}
            Value::Array(items) => {
                for (i, n) in items.iter().enumerate() {
                    let at = format!("{AT}.networks[{i}]");
                    let Value::Object(m) = n else {
                        errors.push(field_error(at, "must be an object"));
                        continue;
                    };
                    unknown_fields(
                        m,
                        &["alias", "namespace", "name", "resourceName"],
                        &at,
                        &mut errors,
                    );
                    let resource_name = match &n["resourceName"] {
                        Value::Null => None,
                        Value::String(r) if qualified_resource(r) => Some(r.clone()),
                        _ => {
                            errors.push(field_error(
                                format!("{at}.resourceName"),
                                "Invalid value: must be a qualified resource name (vendor.example/name)",
                            ));
                            None
                        }
                    };
                    let part = |key: &str, errors: &mut Vec<FieldError>| match n[key].as_str() {
                        Some(s) if dns_label(s) => s.to_owned(),
                        _ => {
                            errors.push(field_error(
                                format!("{at}.{key}"),
                                "Required value: a DNS label",
                            ));
                            String::new()
                        }
                    };
                    let network = Network {
                        alias: part("alias", &mut errors),
                        namespace: part("namespace", &mut errors),
                        name: part("name", &mut errors),
                        resource_name,
                    };
                    if policy.networks.iter().any(|n| n.alias == network.alias) {
                        errors.push(field_error(
                            format!("{at}.alias"),
                            format!("Duplicate value: \"{}\"", network.alias),
                        ));
                    }
                    policy.networks.push(network);
                }
            }
            _ => errors.push(field_error(format!("{AT}.networks"), "must be a list")),
        }
        let at = format!("{AT}.defaultNetworks");
        policy.default_networks = strings(&section["defaultNetworks"], &at, &mut errors);
        for (i, alias) in policy.default_networks.iter().enumerate() {
            if !policy.networks.iter().any(|n| &n.alias == alias) {
                errors.push(field_error(
                    format!("{at}[{i}]"),
                    format!("Invalid value: \"{alias}\": not an alias in spec.isolation.networks"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(policy)
        } else {
            Err(errors)
        }
    }

    /// The policy as served (every field, defaults included).
    pub fn to_value(&self) -> Value {
        json!({
            "podSecurity": self.pod_security.as_str(),
            "userNamespaces": self.user_namespaces,
            "runtimeClassName": self.runtime_class_name.clone().unwrap_or_default(),
            "quota": {"hard": self.quota},
            "hugePageSizes": self.huge_page_sizes,
            "nodeSelector": self.node_selector,
            "tolerations": self.tolerations,
            "networks": self.networks.iter().map(|n| {
                let mut grant = json!({"alias": n.alias, "namespace": n.namespace, "name": n.name});
                if let Some(r) = &n.resource_name {
                    grant["resourceName"] = json!(r);
                }
                grant
            }).collect::<Vec<_>>(),
            "defaultNetworks": self.default_networks,
        })
    }

    /// The policy's quota under the names ResourceQuotas count by: huge
    /// pages (`hugepages-1Gi`, as the policy may say) are
    /// `requests.hugepages-1Gi`.
    pub fn quota_hard(&self) -> BTreeMap<String, String> {
        self.quota
            .iter()
            .map(|(k, v)| {
                let name = if k.starts_with("hugepages-") {
                    format!("requests.{k}")
                } else {
                    k.clone()
                };
                (name, v.clone())
            })
            .collect()
    }

    /// [`Isolation::quota_hard`] as parsed amounts.
    pub fn quota_amounts(&self) -> BTreeMap<String, quantity::Milli> {
        self.quota_hard()
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), quantity::parse(v)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_policy_is_the_safe_default() {
        let policy = Isolation::from_spec(&json!({})).unwrap();
        assert_eq!(policy, Isolation::default());
        assert_eq!(policy.pod_security, Level::Restricted);
        assert!(policy.user_namespaces);
        assert_eq!(policy.quota["services.nodeports"], "0");
        let served = policy.to_value();
        assert_eq!(served["podSecurity"], "restricted");
        assert_eq!(served["quota"]["hard"]["services.nodeports"], "0");
    }

    #[test]
    fn every_field_is_read() {
        let spec = json!({"isolation": {
            "podSecurity": "baseline",
            "userNamespaces": false,
            "runtimeClassName": "kata",
            "quota": {"hard": {"pods": "10", "requests.cpu": "2", "hugepages-1Gi": "4Gi"}},
            "hugePageSizes": ["2Mi", "1Gi"],
            "nodeSelector": {"pool": "a"},
            "tolerations": [{"key": "pool", "operator": "Equal", "value": "a", "effect": "NoSchedule"}],
            "networks": [{"alias": "data", "namespace": "telco", "name": "sriov-a"}],
            "defaultNetworks": ["data"],
        }});
        let policy = Isolation::from_spec(&spec).unwrap();
        assert_eq!(policy.pod_security, Level::Baseline);
        assert!(!policy.user_namespaces);
        assert_eq!(policy.runtime_class_name.as_deref(), Some("kata"));
        assert_eq!(
            policy.quota.len(),
            3,
            "the admin's quota replaces the default"
        );
        assert_eq!(policy.huge_page_sizes, ["2Mi", "1Gi"]);
        assert_eq!(policy.node_selector["pool"], "a");
        assert_eq!(policy.tolerations.len(), 1);
        assert_eq!(policy.networks[0].name, "sriov-a");
        assert_eq!(
            Isolation::from_spec(&json!({"isolation": policy.to_value()})).unwrap(),
            policy
        );
    }

    #[test]
    fn wrong_and_unknown_fields_are_named() {
        let errors = Isolation::from_spec(&json!({"isolation": {
            "podSecurity": "lax",
            "userNamespace": true,
            "quota": {"hard": {"pods": "many", "foo": "1", "cpu": "-2"}, "soft": {}},
            "hugePageSizes": ["3Mi"],
            "networks": [{"alias": "a", "namespace": "n", "name": "x"}, {"alias": "a", "namespace": "n", "name": "y"}],
            "defaultNetworks": ["b"],
            "runtimeClassName": "Kata!",
        }}))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for want in [
            "spec.isolation.podSecurity",
            "spec.isolation.userNamespace",
            "spec.isolation.quota.hard.pods",
            "spec.isolation.quota.hard.foo",
            "spec.isolation.quota.hard.cpu",
            "spec.isolation.quota.soft",
            "spec.isolation.hugePageSizes[0]",
            "spec.isolation.networks[1].alias",
            "spec.isolation.defaultNetworks[0]",
            "spec.isolation.runtimeClassName",
        ] {
            assert!(fields.contains(&want), "{want} not in {fields:?}");
        }
        assert!(Isolation::from_spec(&json!({"isolation": "strict"})).is_err());
    }
}
