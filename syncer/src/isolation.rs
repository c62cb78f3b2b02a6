//! A VC's isolation policy on its host: checked again before a Pod is
//! placed (a Pod that got past the VC's admission some other way is not
//! synced: it gets a condition and an Event), the host copy hardened (user
//! namespace, seccomp, no escalation, the forced RuntimeClass, the node
//! pool, the granted networks), and every host namespace of the VC
//! guarded: a NetworkPolicy that lets in the VC's own Pods and the host's
//! (its ingress controllers, its DNS) and nothing of another VC, the VC's
//! quota as a ResourceQuota and its largest amounts as a LimitRange (the
//! backstop behind kplex's VC-wide quota), and the host's Pod Security
//! admission at the VC's level.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Pod, ResourceQuota, ResourceQuotaSpec,
    SeccompProfile, SecurityContext, Toleration,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kplex_api::isolation::{Isolation, Level};
use kplex_api::mapping;
use kplex_api::podsecurity;
use kplex_controllers::client::{is_status, Vc};
use kplex_controllers::Error;
use kube::api::{Api, DeleteParams, Patch, PatchParams};

use crate::hosts::Host;

/// What an `ExternalName` Service of `vc` may name on the host: any name
/// outside the cluster as it is; `<svc>.<ns>.svc[.<domain>]` — a Service
/// of the VC's own namespace `ns` — as that namespace's host namespace
/// (what the name means in the VC); never an address, a host namespace of
/// kplex's (another VC's), or another in-cluster name (a Pod's, a
/// namespace-less `svc`), which a shared proxy on the host (an ingress
/// controller, allowed through every wall) would resolve into another
/// VC. `Err` says why.
pub fn external_name(vc: &Vc, target: &str) -> Result<String, String> {
    let name = target.trim_end_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("externalName {target} is an address, not a name"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels
        .iter()
        .any(|l| l.starts_with(mapping::HOST_NAMESPACE_PREFIX))
    {
        return Err(format!(
            "externalName {target} names a namespace of the host cluster's tenants"
        ));
    }
    if labels.len() >= 3 && labels[2] == "svc" {
        let mut mapped = vec![
            labels[0].to_owned(),
            mapping::host_namespace(&vc.name, labels[1]),
        ];
        mapped.extend(labels[2..].iter().map(|l| (*l).to_owned()));
        return Ok(mapped.join("."));
    }
    if labels.iter().skip(1).any(|l| *l == "svc" || *l == "pod") {
        return Err(format!(
            "externalName {target} is an in-cluster name that is not a Service of this virtual cluster"
        ));
    }
    Ok(name)
}

/// Whether `ip` may be an address of `vc`'s selector-less Endpoints on
/// `host`: a Pod of the VC's own, or an address outside the host's Pods
/// (no Pod of another VC, nothing in a Node's Pod range). Else a shared
/// proxy on the host, let through every wall, would carry the VC's
/// traffic to another VC's Pods.
pub fn endpoint_allowed(host: &Host, vc: &Vc, ip: &str) -> bool {
    let Ok(address) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    // (An IPv4 address written as IPv6 is that IPv4 address.)
    let address = address.to_canonical();
    let special = match address {
        std::net::IpAddr::V4(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
        }
        std::net::IpAddr::V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if special {
        return false;
    }
    let same = |text: &str| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(|a| a.to_canonical())
            == Some(address)
    };
    // A Node (its node ports, its host-network Pods) or another VC's
    // Service address is as good as that VC's Pods.
    let node_address = host.nodes.read().expect("nodes lock").values().any(|node| {
        node.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .any(|a| same(&a.address))
    });
    let foreign_service = host.services.any(|key, service| {
        key.vc != *vc
            && service
                .spec
                .iter()
                .flat_map(|s| s.cluster_ips.iter().flatten().chain(s.cluster_ip.iter()))
                .any(|c| same(c))
    });
    if node_address || foreign_service {
        return false;
    }
    let pod_has = |pod: &Pod| {
        pod.status
            .iter()
            .flat_map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|p| p.ip.as_str())
                    .chain(s.pod_ip.as_deref())
            })
            .any(same)
    };
    let mut foreign = false;
    let mut own = false;
    host.pods.any(|key, pod| {
        if pod_has(pod) {
            if key.vc == *vc {
                own = true;
            } else {
                foreign = true;
            }
        }
        false
    });
    if own && !foreign {
        return true;
    }
    if foreign {
        return false;
    }
    let in_pod_range = host.nodes.read().expect("nodes lock").values().any(|node| {
        node.spec
            .iter()
            .flat_map(|s| s.pod_cidrs.iter().flatten().chain(s.pod_cidr.iter()))
            .any(|cidr| in_cidr(address, cidr))
    });
    !in_pod_range
}

/// Whether `address` is within `cidr` (`a.b.c.d/n` or an IPv6 range).
fn in_cidr(address: std::net::IpAddr, cidr: &str) -> bool {
    use std::net::IpAddr;
    let Some((base, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(base), Ok(bits)) = (base.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (address, base) {
        (IpAddr::V4(a), IpAddr::V4(b)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// The NetworkPolicy that walls a VC's host namespace.
pub const WALL: &str = "kplex-isolation";
/// The ResourceQuota that carries a VC's quota into each host namespace.
pub const QUOTA: &str = "kplex-quota";
/// The LimitRange that caps one container at the VC's whole quota.
pub const LIMITS: &str = "kplex-limits";

/// Why `pod` may not be placed under `policy`, if it may not: the same
/// words the VC's admission would have refused it with.
pub fn refusal(policy: &Isolation, pod: &Pod) -> Option<String> {
    let object = serde_json::to_value(pod).ok()?;
    let violations = podsecurity::violations(policy, &object);
    if !violations.is_empty() {
        return Some(podsecurity::message(policy, &violations));
    }
    let huge = podsecurity::huge_pages(policy, &object["spec"]);
    if !huge.is_empty() {
        let errors: Vec<String> = huge.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        return Some(format!("invalid huge pages: {}", errors.join(", ")));
    }
    None
}

/// Why placing `pod` would take `vc` past its quota on `host`, if it
/// would: what the VC's copies there use (by the host's view of them: a
/// copy that runs counts, whatever its tenant Pod's status says — a
/// tenant can write its Pods' status) and what `pod` asks for. The VC's
/// admission counted the tenant's objects; this counts what runs.
pub fn over_quota(policy: &Isolation, host: &Host, vc: &Vc, pod: &Pod) -> Option<String> {
    let hard = policy.quota_amounts();
    let asked = kplex_api::isolation::usage(policy, "", "pods", &serde_json::to_value(pod).ok()?);
    let limited: Vec<&String> = asked.keys().filter(|k| hard.contains_key(*k)).collect();
    if limited.is_empty() {
        return None;
    }
    let mut used: BTreeMap<&String, i128> = limited.iter().map(|k| (*k, 0)).collect();
    for copy in host.pods.in_vc(vc) {
        let Ok(copy) = serde_json::to_value(&*copy) else {
            continue;
        };
        let counted = kplex_api::quota::usage("", "pods", &copy);
        for (name, total) in used.iter_mut() {
            *total += counted.get(*name).map_or(0, |q| q.0);
        }
    }
    let over: Vec<String> = limited
        .iter()
        .filter(|k| used[*k] + asked[**k].0 > hard[**k].0)
        .map(|k| {
            format!(
                "{k}: {} used on the host, {} asked, {} allowed",
                kplex_api::quantity::format(kplex_api::quantity::Milli(used[*k])),
                kplex_api::quantity::format(asked[*k]),
                kplex_api::quantity::format(hard[*k])
            )
        })
        .collect();
    (!over.is_empty()).then(|| {
        format!(
            "exceeded quota of the virtual cluster ({})",
            over.join("; ")
        )
    })
}

/// The host copy as `policy` wants it on the node (`pod` is the tenant's
/// Pod, for its network annotation).
pub fn harden(policy: &Isolation, tenant: &Pod, copy: &mut Pod) {
    let Some(spec) = copy.spec.as_mut() else {
        return;
    };
    if policy.user_namespaces {
        spec.host_users = Some(false);
    }
    if policy.pod_security == Level::Restricted {
        let context = spec.security_context.get_or_insert_with(Default::default);
        let containers_choose = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .all(|c| {
                c.security_context
                    .as_ref()
                    .is_some_and(|s| s.seccomp_profile.is_some())
            });
        if context.seccomp_profile.is_none() && !containers_choose {
            context.seccomp_profile = Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            });
        }
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let context: &mut SecurityContext =
                c.security_context.get_or_insert_with(Default::default);
            if context.allow_privilege_escalation.is_none() {
                context.allow_privilege_escalation = Some(false);
            }
        }
    }
    if let Some(class) = &policy.runtime_class_name {
        spec.runtime_class_name = Some(class.clone());
    }
    if !policy.node_selector.is_empty() {
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(policy.node_selector.clone());
    }
    let granted: Vec<Toleration> = policy
        .tolerations
        .iter()
        .filter_map(|t| serde_json::from_value(t.clone()).ok())
        .collect();
    if !granted.is_empty() {
        spec.tolerations
            .get_or_insert_with(Vec::new)
            .extend(granted);
    }
    let tenant_json = serde_json::to_value(tenant).ok();
    // The device resources the attachments take, asked for by the first
    // container (as the host's network resources injector would).
    let devices = tenant_json
        .as_ref()
        .map(|p| podsecurity::network_resources(policy, p))
        .unwrap_or_default();
    if let Some(first) = spec.containers.first_mut() {
        let resources = first.resources.get_or_insert_with(Default::default);
        for (name, count) in devices {
            let resource = name.trim_start_matches("requests.").to_owned();
            let amount = Quantity(count.to_string());
            resources
                .requests
                .get_or_insert_with(BTreeMap::new)
                .insert(resource.clone(), amount.clone());
            resources
                .limits
                .get_or_insert_with(BTreeMap::new)
                .insert(resource, amount);
        }
    }
    let networks = tenant_json.and_then(|p| podsecurity::networks(policy, &p).ok().flatten());
    if let Some(networks) = networks {
        copy.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(podsecurity::NETWORKS_ANNOTATION.to_owned(), networks);
    }
}

/// The Pod Security admission level of a VC's host namespaces: the host
/// checks `baseline` for `restricted` and `baseline` VCs (kplex checks the
/// rest, with user namespaces in mind, which the host's PodSecurity may
/// not), nothing for a `privileged` one.
pub fn host_level(policy: &Isolation) -> &'static str {
    match policy.pod_security {
        Level::Privileged => "privileged",
        Level::Baseline | Level::Restricted => "baseline",
    }
}

fn meta(vc: &Vc, ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(mapping::host_namespace(&vc.name, ns)),
        labels: Some(mapping::host_labels(&vc.name, &vc.uid, Some(ns))),
        ..Default::default()
    }
}

/// The wall: Pods of this VC's host namespaces and of namespaces that
/// belong to no VC (the host's own) may connect; no other VC's may.
pub fn wall(vc: &Vc, ns: &str) -> NetworkPolicy {
    let same_vc = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                mapping::VC_UID_LABEL.to_owned(),
                vc.uid.to_string(),
            )])),
            match_expressions: None,
        }),
        ..Default::default()
    };
    let hosts_own = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: mapping::VC_UID_LABEL.to_owned(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(vc, ns, WALL),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_vc, hosts_own]),
                ports: None,
            }]),
            egress: None,
        }),
    }
}

/// Whether a quota resource counts the same on the host as in the VC:
/// compute, storage, Pods and Services do; object counts do not (the host
/// namespace also holds the syncer's token Secrets, the host's own
/// ConfigMaps).
fn counts_alike(name: &str) -> bool {
    matches!(
        name,
        "pods" | "cpu" | "memory" | "services" | "services.nodeports" | "services.loadbalancers"
    ) || name.starts_with("requests.")
        || name.starts_with("limits.")
}

/// The VC's quota in one host namespace, of what counts alike there
/// (`None` when that is nothing).
pub fn quota(policy: &Isolation, vc: &Vc, ns: &str) -> Option<ResourceQuota> {
    let hard: BTreeMap<String, Quantity> = policy
        .quota_hard()
        .into_iter()
        .filter(|(k, _)| counts_alike(k))
        .map(|(k, v)| (k, Quantity(v)))
        .collect();
    if hard.is_empty() {
        return None;
    }
    Some(ResourceQuota {
        metadata: meta(vc, ns, QUOTA),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        status: None,
    })
}

/// The most one container may be limited to: the VC's whole quota of CPU
/// and memory limits (`None` when the quota caps neither). Only limits: a
/// LimitRange's `max` also becomes the default limit of a container that
/// states none, which a limits quota demands be stated anyway; a request
/// or huge page cap would be put on containers that never asked.
pub fn limits(policy: &Isolation, vc: &Vc, ns: &str) -> Option<LimitRange> {
    let mut max = BTreeMap::new();
    for (name, amount) in &policy.quota_hard() {
        if let Some(resource @ ("cpu" | "memory")) = name.strip_prefix("limits.") {
            max.insert(resource.to_owned(), Quantity(amount.clone()));
        }
    }
    if max.is_empty() {
        return None;
    }
    Some(LimitRange {
        metadata: meta(vc, ns, LIMITS),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                max: Some(max),
                ..Default::default()
            }],
        }),
    })
}

fn apply_params() -> PatchParams {
    PatchParams::apply(crate::MANAGER).force()
}

/// Puts `object` in place (server-side apply by the syncer), or removes
/// the syncer's one of that name when `object` is `None`.
async fn put<K>(api: &Api<K>, name: &str, object: Option<K>, vc: &Vc) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    match object {
        Some(object) => api
            .patch(name, &apply_params(), &Patch::Apply(&object))
            .await
            .map(|_| ())
            .map_err(Error::Api),
        None => match api.get_opt(name).await.map_err(Error::Api)? {
            Some(existing) if mapping::owned_by(existing.meta().labels.as_ref(), &vc.uid) => {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_status(&e, 404) => Ok(()),
                    Err(e) => Err(Error::Api(e)),
                }
            }
            _ => Ok(()),
        },
    }
}

/// Guards the host namespace of tenant namespace `ns` of `vc` as `policy`
/// says: the wall, the quota and limits, the PodSecurity level.
pub async fn guard(host: &Host, vc: &Vc, ns: &str, policy: &Isolation) -> Result<(), Error> {
    let name = mapping::host_namespace(&vc.name, ns);
    let client = host.client.clone();
    put(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &name),
        WALL,
        Some(wall(vc, ns)),
        vc,
    )
    .await?;
    put(
        &Api::<ResourceQuota>::namespaced(client.clone(), &name),
        QUOTA,
        quota(policy, vc, ns),
        vc,
    )
    .await?;
    put(
        &Api::<LimitRange>::namespaced(client.clone(), &name),
        LIMITS,
        limits(policy, vc, ns),
        vc,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vc() -> Vc {
        Vc {
            uid: "uid-a".into(),
            name: "a".into(),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_default_policy_hardens_the_copy() {
        let tenant = pod(json!({"containers": [{"name": "c", "image": "nginx"}]}));
        let mut copy = tenant.clone();
        harden(&Isolation::default(), &tenant, &mut copy);
        let spec = copy.spec.unwrap();
        assert_eq!(spec.host_users, Some(false));
        assert_eq!(
            spec.security_context
                .unwrap()
                .seccomp_profile
                .unwrap()
                .type_,
            "RuntimeDefault"
        );
        let c = spec.containers[0].security_context.clone().unwrap();
        assert_eq!(c.allow_privilege_escalation, Some(false));
        assert_eq!(spec.runtime_class_name, None);
    }

    #[test]
    fn the_pool_runtime_and_networks_are_forced() {
        let policy = Isolation::from_spec(&json!({"isolation": {
            "runtimeClassName": "kata",
            "nodeSelector": {"pool": "a"},
            "tolerations": [{"key": "pool", "operator": "Equal", "value": "a", "effect": "NoSchedule"}],
            "networks": [{"alias": "data", "namespace": "telco", "name": "sriov-a"}],
        }}))
        .unwrap();
        let mut tenant = pod(json!({
            "nodeSelector": {"pool": "b", "disk": "ssd"},
            "runtimeClassName": "runc",
            "containers": [{"name": "c", "image": "x"}]}));
        tenant.metadata.annotations = Some(BTreeMap::from([(
            podsecurity::NETWORKS_ANNOTATION.to_owned(),
            "data".to_owned(),
        )]));
        let mut copy = tenant.clone();
        copy.metadata.annotations = None;
        harden(&policy, &tenant, &mut copy);
        let spec = copy.spec.clone().unwrap();
        assert_eq!(spec.runtime_class_name.as_deref(), Some("kata"));
        let selector = spec.node_selector.unwrap();
        assert_eq!(selector["pool"], "a", "the pool wins over the tenant's");
        assert_eq!(selector["disk"], "ssd");
        assert_eq!(spec.tolerations.unwrap()[0].value.as_deref(), Some("a"));
        let networks = &copy.metadata.annotations.unwrap()[podsecurity::NETWORKS_ANNOTATION];
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(networks).unwrap(),
            json!([{"name": "sriov-a", "namespace": "telco"}])
        );
    }

    #[test]
    fn a_pod_past_admission_is_refused_here_too() {
        let escape = pod(json!({"hostPID": true, "containers": [{"name": "c"}]}));
        let why = refusal(&Isolation::default(), &escape).unwrap();
        assert!(why.contains("host namespaces (hostPID=true)"), "{why}");
        let fine = pod(json!({"containers": [{"name": "c", "image": "nginx"}]}));
        assert_eq!(refusal(&Isolation::default(), &fine), None);
    }

    #[test]
    fn external_names_stay_outside_other_vcs() {
        let vc = vc();
        assert_eq!(
            external_name(&vc, "db.example.com.").unwrap(),
            "db.example.com"
        );
        assert_eq!(
            external_name(&vc, "web.shop.svc.cluster.local").unwrap(),
            "web.kplex-a-shop.svc.cluster.local",
            "the VC's own Service, where it is on the host"
        );
        assert_eq!(
            external_name(&vc, "web.shop.svc").unwrap(),
            "web.kplex-a-shop.svc"
        );
        for refused in [
            "web.kplex-b-default.svc.cluster.local",
            "web.kplex-b-default",
            "10-0-0-7.kplex-b-default.pod.cluster.local",
            "10-0-0-7.default.pod.cluster.local",
            "x.y.z.svc.cluster.local",
            "10.244.0.7",
            "fd00::7",
        ] {
            assert!(
                external_name(&vc, refused).is_err(),
                "{refused} was let through"
            );
        }
    }

    #[test]
    fn ranges_hold_their_addresses_only() {
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_cidr(ip("10.244.1.7"), "10.244.0.0/16"));
        assert!(!in_cidr(ip("10.245.0.1"), "10.244.0.0/16"));
        assert!(in_cidr(ip("10.0.0.1"), "0.0.0.0/0"));
        assert!(in_cidr(ip("fd00::7"), "fd00::/64"));
        assert!(!in_cidr(ip("fd01::7"), "fd00::/64"));
        assert!(!in_cidr(ip("10.0.0.1"), "fd00::/64"));
        assert!(!in_cidr(ip("10.0.0.1"), "garbage"));
    }

    #[test]
    fn the_wall_admits_the_vc_and_the_host_only() {
        let wall = serde_json::to_value(wall(&vc(), "shop")).unwrap();
        assert_eq!(wall["metadata"]["namespace"], "kplex-a-shop");
        assert_eq!(wall["spec"]["podSelector"], json!({}));
        assert_eq!(wall["spec"]["policyTypes"], json!(["Ingress"]));
        let from = &wall["spec"]["ingress"][0]["from"];
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"][mapping::VC_UID_LABEL],
            "uid-a"
        );
        assert_eq!(
            from[1]["namespaceSelector"]["matchExpressions"][0]["operator"],
            "DoesNotExist"
        );
        assert_eq!(from.as_array().unwrap().len(), 2);
    }

    #[test]
    fn quota_and_limits_carry_the_vcs_amounts() {
        let policy = Isolation::from_spec(&json!({"isolation": {"quota": {"hard": {
            "pods": "10", "requests.cpu": "2", "limits.cpu": "4", "memory": "8Gi"}}}}))
        .unwrap();
        let q = quota(&policy, &vc(), "shop").unwrap();
        assert_eq!(q.spec.unwrap().hard.unwrap()["pods"], Quantity("10".into()));
        let l = limits(&policy, &vc(), "shop").unwrap();
        let max = l.spec.unwrap().limits[0].max.clone().unwrap();
        assert_eq!(
            max["cpu"],
            Quantity("4".into()),
            "the limits amount, not the requests one"
        );
        assert!(!max.contains_key("memory"), "no memory limit in the quota");
        assert!(!max.contains_key("pods"));
        let counted = Isolation::from_spec(&json!({"isolation": {"quota": {"hard": {
            "configmaps": "5", "count/secrets": "3", "requests.hugepages-2Mi": "1Gi"}}}}))
        .unwrap();
        let q = quota(&counted, &vc(), "shop")
            .unwrap()
            .spec
            .unwrap()
            .hard
            .unwrap();
        assert_eq!(
            q.keys().collect::<Vec<_>>(),
            ["requests.hugepages-2Mi"],
            "object counts stay in kplex"
        );
        assert!(
            limits(&counted, &vc(), "shop").is_none(),
            "huge pages are no LimitRange's"
        );
        let open = Isolation::from_spec(&json!({"isolation": {"quota": {"hard": {}}}})).unwrap();
        assert!(quota(&open, &vc(), "shop").is_none());
        assert!(limits(&Isolation::default(), &vc(), "shop").is_none());
    }
}
