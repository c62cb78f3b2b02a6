//! The rules a VC's isolation policy sets for its Pods: Pod Security
//! Standards (as kube-apiserver's PodSecurity admission checks them, with
//! kplex's user-namespace change, see [`crate::isolation`]), huge pages
//! (kube-apiserver's validation plus the sizes the VC may use) and the
//! network attachments it may name.
//!
//! Each check reads the Pod as JSON (the apiserver's form; the syncer
//! serializes its typed Pod) and returns the rules broken, each with the
//! details PodSecurity would print, so the refusal names them:
//! `pods "web" is forbidden: violates PodSecurity "restricted": privileged
//! (container "c" must not set securityContext.privileged=true)`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::isolation::{Isolation, Level, Network};

/// A rule a Pod breaks, with what breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule, as PodSecurity names it (`privileged`, `hostPath volumes`…).
    pub rule: &'static str,
    /// Which containers, volumes or fields, and how.
    pub details: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.details.is_empty() {
            f.write_str(self.rule)
        } else {
            write!(f, "{} ({})", self.rule, self.details.join(", "))
        }
    }
}

/// The sentence after `pods "x" is forbidden: ` for `violations`.
pub fn message(policy: &Isolation, violations: &[Violation]) -> String {
    let rules: Vec<String> = violations.iter().map(ToString::to_string).collect();
    format!(
        "violates PodSecurity \"{}\": {}",
        policy.pod_security.as_str(),
        rules.join(", ")
    )
}

/// The annotation Multus reads a Pod's extra networks from.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// Annotation prefixes that steer a host's network plugins; a tenant's are
/// never copied to a host (the syncer writes the networks one itself).
pub const NETWORK_ANNOTATION_PREFIXES: &[&str] = &["k8s.v1.cni.cncf.io/", "v1.multus-cni.io/"];

/// Capabilities `baseline` allows a container to add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types `restricted` allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls `baseline` allows (namespaced, and safe).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types `baseline` allows.
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Every container of the Pod spec (regular, init, ephemeral).
fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |list| spec[list].as_array().into_iter().flatten())
}

fn name(c: &Value) -> &str {
    c["name"].as_str().unwrap_or("")
}

/// Collects violations of one rule.
struct Rule {
    rule: &'static str,
    details: Vec<String>,
}

impl Rule {
    fn new(rule: &'static str) -> Rule {
        Rule {
            rule,
            details: Vec::new(),
        }
    }

    fn push(&mut self, detail: String) {
        if !self.details.contains(&detail) {
            self.details.push(detail);
        }
    }

    fn into(self, out: &mut Vec<Violation>) {
        if !self.details.is_empty() {
            out.push(Violation {
                rule: self.rule,
                details: self.details,
            });
        }
    }
}

/// The pod-security rules `pod` breaks under `policy`.
pub fn check(policy: &Isolation, pod: &Value) -> Vec<Violation> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    if policy.user_namespaces {
        user_namespaces(spec, &mut out);
    }
    if policy.pod_security >= Level::Baseline {
        baseline(pod, &mut out);
    }
    if policy.pod_security >= Level::Restricted {
        restricted(spec, policy.user_namespaces, &mut out);
    }
    out
}

/// Under user namespaces every host Pod has `hostUsers: false`, which the
/// node cannot combine with its namespaces.
fn user_namespaces(spec: &Value, out: &mut Vec<Violation>) {
    let mut rule = Rule::new("hostUsers");
    if spec["hostUsers"] == json!(true) {
        rule.push("pod must not set hostUsers=true: this virtual cluster runs every Pod in a user namespace".into());
    }
    rule.into(out);
}

fn baseline(pod: &Value, out: &mut Vec<Violation>) {
    let spec = &pod["spec"];
    let mut rule = Rule::new("host namespaces");
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == json!(true) {
            rule.push(format!("{field}=true"));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("privileged");
    for c in containers(spec) {
        if c["securityContext"]["privileged"] == json!(true) {
            rule.push(format!(
                "container \"{}\" must not set securityContext.privileged=true",
                name(c)
            ));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("non-default capabilities");
    for c in containers(spec) {
        for cap in added_capabilities(c) {
            if !BASELINE_CAPABILITIES.contains(&cap) {
                rule.push(format!(
                    "container \"{}\" must not include \"{cap}\" in securityContext.capabilities.add",
                    name(c)
                ));
            }
        }
    }
    rule.into(out);

    let mut rule = Rule::new("hostPath volumes");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if v.get("hostPath").is_some_and(|h| !h.is_null()) {
            rule.push(format!("volume \"{}\"", name(v)));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("hostPort");
    for c in containers(spec) {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(port) = p["hostPort"].as_i64().filter(|p| *p != 0) {
                rule.push(format!("container \"{}\" uses hostPort {port}", name(c)));
            }
        }
    }
    rule.into(out);

    let mut rule = Rule::new("forbidden AppArmor profile");
    if spec["securityContext"]["appArmorProfile"]["type"] == "Unconfined" {
        rule.push("pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".into());
    }
    for c in containers(spec) {
        if c["securityContext"]["appArmorProfile"]["type"] == "Unconfined" {
            rule.push(format!(
                "container \"{}\" must not set securityContext.appArmorProfile.type to \"Unconfined\"",
                name(c)
            ));
        }
    }
    for (key, value) in pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && value == "unconfined"
        {
            rule.push(format!("annotation {key}=\"unconfined\""));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("seLinuxOptions");
    let mut selinux = |at: String, options: &Value| {
        let kind = options["type"].as_str().unwrap_or("");
        if !SELINUX_TYPES.contains(&kind) {
            rule.push(format!(
                "{at} set forbidden securityContext.seLinuxOptions: type \"{kind}\""
            ));
        }
        for field in ["user", "role"] {
            if options[field].as_str().is_some_and(|s| !s.is_empty()) {
                rule.push(format!(
                    "{at} set forbidden securityContext.seLinuxOptions: {field}"
                ));
            }
        }
    };
    selinux("pod".into(), &spec["securityContext"]["seLinuxOptions"]);
    for c in containers(spec) {
        selinux(
            format!("container \"{}\"", name(c)),
            &c["securityContext"]["seLinuxOptions"],
        );
    }
    rule.into(out);

    let mut rule = Rule::new("procMount");
    for c in containers(spec) {
        if let Some(mount) = c["securityContext"]["procMount"]
            .as_str()
            .filter(|m| *m != "Default")
        {
            rule.push(format!(
                "container \"{}\" must not set securityContext.procMount to \"{mount}\"",
                name(c)
            ));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("seccompProfile");
    if spec["securityContext"]["seccompProfile"]["type"] == "Unconfined" {
        rule.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".into());
    }
    for c in containers(spec) {
        if c["securityContext"]["seccompProfile"]["type"] == "Unconfined" {
            rule.push(format!(
                "container \"{}\" must not set securityContext.seccompProfile.type to \"Unconfined\"",
                name(c)
            ));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("forbidden sysctls");
    for s in spec["securityContext"]["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let sysctl = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&sysctl) {
            rule.push(sysctl.to_owned());
        }
    }
    rule.into(out);

    let mut rule = Rule::new("hostProcess");
    if spec["securityContext"]["windowsOptions"]["hostProcess"] == json!(true) {
        rule.push("pod must not set securityContext.windowsOptions.hostProcess=true".into());
    }
    for c in containers(spec) {
        if c["securityContext"]["windowsOptions"]["hostProcess"] == json!(true) {
            rule.push(format!(
                "container \"{}\" must not set securityContext.windowsOptions.hostProcess=true",
                name(c)
            ));
        }
    }
    rule.into(out);
}

fn added_capabilities(c: &Value) -> impl Iterator<Item = &str> {
    c["securityContext"]["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn restricted(spec: &Value, user_namespaces: bool, out: &mut Vec<Violation>) {
    let mut rule = Rule::new("restricted volume types");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let Some(fields) = v.as_object() else {
            continue;
        };
        for (kind, source) in fields {
            if kind == "name" || source.is_null() || kind == "hostPath" {
                continue;
            }
            if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
                rule.push(format!(
                    "volume \"{}\" uses restricted volume type \"{kind}\"",
                    name(v)
                ));
            }
        }
    }
    rule.into(out);

    let mut rule = Rule::new("allowPrivilegeEscalation != false");
    for c in containers(spec) {
        if c["securityContext"]["allowPrivilegeEscalation"] == json!(true) {
            rule.push(format!(
                "container \"{}\" must not set securityContext.allowPrivilegeEscalation=true",
                name(c)
            ));
        }
    }
    rule.into(out);

    let mut rule = Rule::new("unrestricted capabilities");
    for c in containers(spec) {
        for cap in added_capabilities(c) {
            if cap != "NET_BIND_SERVICE" && BASELINE_CAPABILITIES.contains(&cap) {
                rule.push(format!(
                    "container \"{}\" must not include \"{cap}\" in securityContext.capabilities.add",
                    name(c)
                ));
            }
        }
        // Without a user namespace the default set is the node's: drop it.
        if !user_namespaces {
            let drops_all = c["securityContext"]["capabilities"]["drop"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d == "ALL");
            if !drops_all {
                rule.push(format!(
                    "container \"{}\" must set securityContext.capabilities.drop=[\"ALL\"]",
                    name(c)
                ));
            }
        }
    }
    rule.into(out);

    if user_namespaces {
        return;
    }
    // Root in the container is root on the node: demand a non-root user.
    let pod_non_root = spec["securityContext"]["runAsNonRoot"] == json!(true);
    let mut rule = Rule::new("runAsNonRoot != true");
    if spec["securityContext"]["runAsNonRoot"] == json!(false) {
        rule.push("pod must not set securityContext.runAsNonRoot=false".into());
    }
    for c in containers(spec) {
        match &c["securityContext"]["runAsNonRoot"] {
            Value::Bool(true) => {}
            Value::Bool(false) => rule.push(format!(
                "container \"{}\" must not set securityContext.runAsNonRoot=false",
                name(c)
            )),
            _ if pod_non_root => {}
            _ => rule.push(format!(
                "pod or container \"{}\" must set securityContext.runAsNonRoot=true",
                name(c)
            )),
        }
    }
    rule.into(out);
    let mut rule = Rule::new("runAsUser=0");
    if spec["securityContext"]["runAsUser"] == json!(0) {
        rule.push("pod must not set runAsUser=0".into());
    }
    for c in containers(spec) {
        if c["securityContext"]["runAsUser"] == json!(0) {
            rule.push(format!(
                "container \"{}\" must not set runAsUser=0",
                name(c)
            ));
        }
    }
    rule.into(out);
}

/// Huge pages: kube-apiserver's rules (a container's huge page requests
/// equal its limits, and it asks for CPU or memory too; `HugePages`
/// volumes name a size the Pod asks for) and the sizes the VC may use
/// (any, for a `privileged` VC).
/// Each break as `(field, message)`, for a 422.
pub fn huge_pages(policy: &Isolation, spec: &Value) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    let mut sizes_used: BTreeSet<String> = BTreeSet::new();
    for (list, items) in ["initContainers", "containers"]
        .iter()
        .map(|l| (*l, spec[*l].as_array()))
    {
        for (i, c) in items.into_iter().flatten().enumerate() {
            let at = format!("spec.{list}[{i}].resources");
            let resources = &c["resources"];
            let mut uses = false;
            for kind in ["requests", "limits"] {
                for (key, amount) in resources[kind].as_object().into_iter().flatten() {
                    let Some(size) = key.strip_prefix("hugepages-") else {
                        continue;
                    };
                    uses = true;
                    sizes_used.insert(size.to_owned());
                    let allowed = policy.pod_security == Level::Privileged
                        || policy.huge_page_sizes.iter().any(|s| s == size);
                    if !allowed {
                        errors.push((
                            format!("{at}.{kind}[{key}]"),
                            format!(
                                "Forbidden: huge pages of size {size} are not allowed in this virtual cluster (allowed: [{}])",
                                policy.huge_page_sizes.join(", ")
                            ),
                        ));
                    }
                    if kind == "requests" && resources["limits"][key] != *amount {
                        errors.push((
                            format!("{at}.requests[{key}]"),
                            format!(
                                "Invalid value: {amount}: must be equal to {key} limit of {}",
                                resources["limits"][key]
                            ),
                        ));
                    }
                }
            }
            if uses {
                let asks = |r: &str| {
                    ["requests", "limits"]
                        .iter()
                        .any(|k| resources[*k].get(r).is_some())
                };
                if !asks("cpu") && !asks("memory") {
                    errors.push((
                        format!("{at}.limits"),
                        "Forbidden: HugePages require cpu or memory".to_owned(),
                    ));
                }
            }
        }
    }
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let Some(medium) = v["emptyDir"]["medium"].as_str() else {
            continue;
        };
        let at = format!("spec.volumes[{i}].emptyDir.medium");
        match medium.strip_prefix("HugePages") {
            None => {}
            Some("") if sizes_used.len() != 1 => errors.push((
                at,
                "Invalid value: \"HugePages\": a HugePages volume needs exactly one huge page size requested by the pod's containers".to_owned(),
            )),
            Some("") => {}
            Some(suffix) => {
                let size = suffix.strip_prefix('-').unwrap_or(suffix);
                if !sizes_used.contains(size) {
                    errors.push((
                        at,
                        format!("Invalid value: \"{medium}\": no container requests hugepages-{size}"),
                    ));
                }
            }
        }
    }
    errors
}

/// One network a Pod asks for (Multus' network selection element).
fn selections(text: &str) -> Result<Vec<Value>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| format!("the annotation is not a JSON list: {e}"))?;
        if let Some(bad) = items.iter().find(|i| !i["name"].is_string()) {
            return Err(format!("every element needs a name (got {bad})"));
        }
        return Ok(items);
    }
    text.split(',')
        .map(|item| {
            let item = item.trim();
            let (path, interface) = match item.split_once('@') {
                Some((p, i)) => (p, Some(i)),
                None => (item, None),
            };
            let mut element = match path.split_once('/') {
                Some((ns, n)) => json!({"namespace": ns, "name": n}),
                None => json!({"name": path}),
            };
            if let Some(i) = interface {
                element["interface"] = json!(i);
            }
            if element["name"].as_str().unwrap_or("").is_empty() {
                return Err(format!("\"{item}\" names no network"));
            }
            Ok(element)
        })
        .collect()
}

/// The networks annotation a Pod's host copy carries: the tenant's
/// aliases (and the VC's default networks) as the host attachments they
/// stand for, in Multus' JSON form; `None` when the Pod has none. A
/// tenant may name only aliases granted to its VC, never a namespace.
pub fn networks(policy: &Isolation, pod: &Value) -> Result<Option<String>, Violation> {
    let out: Vec<Value> = attachments(policy, pod)?
        .into_iter()
        .map(|(_, element)| element)
        .collect();
    if out.is_empty() {
        return Ok(None);
    }
    Ok(Some(Value::Array(out).to_string()))
}

/// The device resources a Pod's attachments take (a granted network's
/// `resourceName`, one per attachment), as quota names
/// (`requests.<resource>` → count); what the host's network resources
/// injector would ask for, counted by the VC quota.
pub fn network_resources(policy: &Isolation, pod: &Value) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (network, _) in attachments(policy, pod).unwrap_or_default() {
        if let Some(resource) = &network.resource_name {
            *out.entry(format!("requests.{resource}")).or_default() += 1;
        }
    }
    out
}

/// The networks a Pod attaches (the VC's defaults, then its own), each
/// with the host attachment element it becomes.
fn attachments<'a>(
    policy: &'a Isolation,
    pod: &Value,
) -> Result<Vec<(&'a Network, Value)>, Violation> {
    let mut rule = Rule::new("network attachments");
    let asked = match pod["metadata"]["annotations"][NETWORKS_ANNOTATION].as_str() {
        Some(text) => match selections(text) {
            Ok(items) => items,
            Err(e) => {
                return Err(Violation {
                    rule: "network attachments",
                    details: vec![format!("annotation {NETWORKS_ANNOTATION}: {e}")],
                })
            }
        },
        None => Vec::new(),
    };
    let mut out: Vec<(&Network, Value)> = Vec::new();
    let granted = |alias: &str| policy.networks.iter().find(|n| n.alias == alias);
    for alias in &policy.default_networks {
        if let Some(n) = granted(alias) {
            out.push((n, json!({"name": n.name, "namespace": n.namespace})));
        }
    }
    for mut element in asked {
        let alias = element["name"].as_str().unwrap_or("").to_owned();
        if element.get("namespace").is_some() {
            rule.push(format!(
                "network \"{alias}\" must be named by its alias alone, without a namespace"
            ));
            continue;
        }
        let Some(n) = granted(&alias) else {
            rule.push(format!(
                "network \"{alias}\" is not granted to this virtual cluster"
            ));
            continue;
        };
        // Only where to attach and under which interface name: static
        // IPs, MACs, device IDs or CNI arguments could pose as another VC
        // on a network granted to several.
        let mut attached = json!({"name": n.name, "namespace": n.namespace});
        if let Some(interface) = element.get_mut("interface").map(Value::take) {
            attached["interface"] = interface;
        }
        out.push((n, attached));
    }
    if !rule.details.is_empty() {
        return Err(Violation {
            rule: rule.rule,
            details: rule.details,
        });
    }
    Ok(out)
}

/// Every rule `pod` breaks under `policy` that is a refusal (403): pod
/// security and network attachments. A `privileged` VC (the admin trusts
/// its Pods with the node) may name any network here; what reaches a host
/// is still only what [`networks`] makes of the granted aliases.
pub fn violations(policy: &Isolation, pod: &Value) -> Vec<Violation> {
    let mut out = check(policy, pod);
    if policy.pod_security == Level::Privileged {
        return out;
    }
    if let Err(v) = networks(policy, pod) {
        out.push(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    fn nginx() -> Value {
        pod(json!({"containers": [{"name": "nginx", "image": "nginx"}]}))
    }

    fn rules(policy: &Isolation, pod: &Value) -> Vec<&'static str> {
        violations(policy, pod).iter().map(|v| v.rule).collect()
    }

    fn policy(level: Level, user_namespaces: bool) -> Isolation {
        Isolation {
            pod_security: level,
            user_namespaces,
            ..Isolation::default()
        }
    }

    #[test]
    fn an_ordinary_root_image_passes_the_default_policy() {
        assert!(violations(&Isolation::default(), &nginx()).is_empty());
        // With NET_BIND_SERVICE added, explicit hardening, a Localhost
        // seccomp profile and the safe volume types.
        let hardened = pod(json!({
            "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
                "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]},
            "volumes": [{"name": "c", "configMap": {"name": "c"}}, {"name": "e", "emptyDir": {}},
                {"name": "p", "persistentVolumeClaim": {"claimName": "d"}}],
            "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 80}],
                "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 0,
                    "capabilities": {"add": ["NET_BIND_SERVICE"]}}}],
        }));
        assert!(violations(&Isolation::default(), &hardened).is_empty());
    }

    #[test]
    fn every_escape_is_refused_under_the_default_policy() {
        let default = Isolation::default();
        let cases = [
            (
                json!({"hostNetwork": true, "containers": [{"name": "c"}]}),
                "host namespaces",
            ),
            (
                json!({"hostPID": true, "containers": [{"name": "c"}]}),
                "host namespaces",
            ),
            (
                json!({"hostIPC": true, "containers": [{"name": "c"}]}),
                "host namespaces",
            ),
            (
                json!({"hostUsers": true, "containers": [{"name": "c"}]}),
                "hostUsers",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}]}),
                "privileged",
            ),
            (
                json!({"initContainers": [{"name": "i", "securityContext": {"privileged": true}}], "containers": [{"name": "c"}]}),
                "privileged",
            ),
            (
                json!({"ephemeralContainers": [{"name": "e", "securityContext": {"privileged": true}}], "containers": [{"name": "c"}]}),
                "privileged",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}),
                "non-default capabilities",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["CHOWN"]}}}]}),
                "unrestricted capabilities",
            ),
            (
                json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": [{"name": "c"}]}),
                "hostPath volumes",
            ),
            (
                json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                "hostPort",
            ),
            (
                json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}, "containers": [{"name": "c"}]}),
                "forbidden AppArmor profile",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"seLinuxOptions": {"type": "spc_t"}}}]}),
                "seLinuxOptions",
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"user": "system_u"}}, "containers": [{"name": "c"}]}),
                "seLinuxOptions",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"procMount": "Unmasked"}}]}),
                "procMount",
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": [{"name": "c"}]}),
                "seccompProfile",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}),
                "seccompProfile",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}, "containers": [{"name": "c"}]}),
                "forbidden sysctls",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"windowsOptions": {"hostProcess": true}}}]}),
                "hostProcess",
            ),
            (
                json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}], "containers": [{"name": "c"}]}),
                "restricted volume types",
            ),
            (
                json!({"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": true}}]}),
                "allowPrivilegeEscalation != false",
            ),
        ];
        for (spec, rule) in cases {
            let got = rules(&default, &pod(spec.clone()));
            assert!(got.contains(&rule), "{spec} broke {got:?}, not {rule}");
        }
        let annotated = json!({"metadata": {"name": "p", "annotations": {
            "container.apparmor.security.beta.kubernetes.io/c": "unconfined"}},
            "spec": {"containers": [{"name": "c"}]}});
        assert_eq!(rules(&default, &annotated), ["forbidden AppArmor profile"]);
    }

    #[test]
    fn the_refusal_names_each_rule_as_podsecurity_does() {
        let p = pod(
            json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true}}]}),
        );
        let policy = Isolation::default();
        assert_eq!(
            message(&policy, &violations(&policy, &p)),
            "violates PodSecurity \"restricted\": privileged (container \"c\" must not set \
             securityContext.privileged=true), hostPath volumes (volume \"root\")"
        );
    }

    #[test]
    fn levels_relax_in_order() {
        let nfs = pod(
            json!({"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["CHOWN"]}}}]}),
        );
        assert!(!rules(&Isolation::default(), &nfs).is_empty());
        assert!(rules(&policy(Level::Baseline, true), &nfs).is_empty());
        let privileged = pod(
            json!({"containers": [{"name": "c", "securityContext": {"privileged": true}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
        );
        assert!(!rules(&policy(Level::Baseline, true), &privileged).is_empty());
        assert!(rules(&policy(Level::Privileged, true), &privileged).is_empty());
        // Host namespaces cannot run in a user namespace at any level.
        let host_net = pod(json!({"hostNetwork": true, "containers": [{"name": "c"}]}));
        assert!(rules(&policy(Level::Privileged, false), &host_net).is_empty());
        let host_users = pod(json!({"hostUsers": true, "containers": [{"name": "c"}]}));
        assert_eq!(
            rules(&policy(Level::Privileged, true), &host_users),
            ["hostUsers"]
        );
    }

    #[test]
    fn without_user_namespaces_restricted_demands_a_non_root_user_and_no_capabilities() {
        let strict = policy(Level::Restricted, false);
        let got = rules(&strict, &nginx());
        assert!(got.contains(&"runAsNonRoot != true"), "{got:?}");
        assert!(got.contains(&"unrestricted capabilities"), "{got:?}");
        let good = pod(json!({"securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}));
        assert!(rules(&strict, &good).is_empty());
        let root = pod(
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0},
            "containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}),
        );
        assert_eq!(rules(&strict, &root), ["runAsUser=0"]);
    }

    #[test]
    fn huge_pages_follow_kube_rules_and_the_allowed_sizes() {
        let allowed = Isolation {
            huge_page_sizes: vec!["2Mi".into()],
            ..Isolation::default()
        };
        let good = json!({"containers": [{"name": "c", "resources": {
            "requests": {"hugepages-2Mi": "4Mi", "memory": "64Mi"},
            "limits": {"hugepages-2Mi": "4Mi", "memory": "64Mi"}}}],
            "volumes": [{"name": "h", "emptyDir": {"medium": "HugePages-2Mi"}}]});
        assert!(huge_pages(&allowed, &good).is_empty());
        assert!(
            !huge_pages(&Isolation::default(), &good).is_empty(),
            "no size allowed by default"
        );
        let unequal = json!({"containers": [{"name": "c", "resources": {
            "requests": {"hugepages-2Mi": "2Mi", "memory": "64Mi"},
            "limits": {"hugepages-2Mi": "4Mi", "memory": "64Mi"}}}]});
        assert_eq!(
            huge_pages(&allowed, &unequal)[0].0,
            "spec.containers[0].resources.requests[hugepages-2Mi]"
        );
        let alone = json!({"containers": [{"name": "c", "resources": {"limits": {"hugepages-2Mi": "4Mi"}}}]});
        assert_eq!(
            huge_pages(&allowed, &alone)[0].1,
            "Forbidden: HugePages require cpu or memory"
        );
        let wrong_size = json!({"containers": [{"name": "c", "resources": {
            "limits": {"hugepages-1Gi": "1Gi", "memory": "1Gi"}}}]});
        assert!(huge_pages(&allowed, &wrong_size)[0]
            .1
            .contains("not allowed"));
        let orphan_volume = json!({"containers": [{"name": "c"}],
            "volumes": [{"name": "h", "emptyDir": {"medium": "HugePages-1Gi"}}]});
        assert_eq!(
            huge_pages(&allowed, &orphan_volume)[0].0,
            "spec.volumes[0].emptyDir.medium"
        );
    }

    fn telco() -> Isolation {
        Isolation::from_spec(&json!({"isolation": {
            "networks": [{"alias": "data", "namespace": "telco", "name": "sriov-a"},
                         {"alias": "oam", "namespace": "telco", "name": "oam-vrf"}],
            "defaultNetworks": ["oam"]}}))
        .unwrap()
    }

    fn annotated(networks: &str) -> Value {
        json!({"metadata": {"name": "p", "annotations": {NETWORKS_ANNOTATION: networks}},
            "spec": {"containers": [{"name": "c"}]}})
    }

    #[test]
    fn granted_aliases_become_the_host_attachments() {
        let rewritten = networks(&telco(), &annotated("data@net1"))
            .unwrap()
            .unwrap();
        let items: Value = serde_json::from_str(&rewritten).unwrap();
        assert_eq!(
            items,
            json!([{"name": "oam-vrf", "namespace": "telco"},
                   {"name": "sriov-a", "namespace": "telco", "interface": "net1"}])
        );
        let json_form = annotated(
            r#"[{"name": "data", "interface": "net1", "ips": ["10.0.0.5/24"], "mac": "02:00:00:00:00:01", "deviceID": "0000:03:00.1", "cni-args": {"x": 1}}]"#,
        );
        let items: Value =
            serde_json::from_str(&networks(&telco(), &json_form).unwrap().unwrap()).unwrap();
        assert_eq!(
            items[1],
            json!({"name": "sriov-a", "namespace": "telco", "interface": "net1"}),
            "no addresses, MACs, devices or CNI arguments of the tenant's choosing"
        );
        // A privileged VC's Pods are not refused for their networks.
        let trusted = Isolation {
            pod_security: Level::Privileged,
            ..telco()
        };
        assert!(violations(&trusted, &annotated("telco/sriov-a")).is_empty());
        // Only the defaults when the Pod asks for none; nothing without them.
        assert!(networks(&telco(), &nginx()).unwrap().is_some());
        assert_eq!(networks(&Isolation::default(), &nginx()).unwrap(), None);
    }

    #[test]
    fn a_networks_device_resource_is_counted_per_attachment() {
        let policy = Isolation::from_spec(&json!({"isolation": {
            "networks": [{"alias": "data", "namespace": "telco", "name": "sriov-a",
                          "resourceName": "intel.com/sriov_a"},
                         {"alias": "oam", "namespace": "telco", "name": "oam-vrf"}],
            "defaultNetworks": ["oam"]}}))
        .unwrap();
        let used = network_resources(&policy, &annotated("data@net1,data@net2,oam"));
        assert_eq!(
            used,
            BTreeMap::from([("requests.intel.com/sriov_a".to_owned(), 2)])
        );
        assert!(network_resources(&policy, &nginx()).is_empty());
    }

    #[test]
    fn other_networks_and_namespaces_are_refused() {
        for bad in [
            "other",
            "telco/sriov-a",
            "kplex-b-default/data",
            r#"[{"name": "sriov-a", "namespace": "telco"}]"#,
            r#"[{"name": "nope"}]"#,
            r#"[{"namespace": "x"}]"#,
            "[not json",
            "data,,",
        ] {
            let got = networks(&telco(), &annotated(bad));
            assert!(got.is_err(), "{bad} was let through: {got:?}");
        }
    }
}
