//! The syncer's side: a host Pod whose tenant asked for the cluster's DNS
//! (`dnsPolicy: ClusterFirst`, the default) is pointed at the host's shared
//! `kplex dns` instead of the host's own cluster DNS (which answers the
//! host's names, other VCs' among them): `dnsPolicy: None`, that server as
//! its nameserver, the VC's search path in the VC's cluster domain,
//! `ndots:5`, and the tenant's own `dnsConfig` merged in as Kubernetes
//! merges it. `dnsPolicy: Default` (the node's resolver) and `None` (the
//! tenant's own configuration) are kept as written.

use k8s_openapi::api::core::v1::{Pod, PodDNSConfig, PodDNSConfigOption};
use k8s_openapi::api::networking::v1::{
    NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use kplex_api::mapping;

/// Where the shared DNS Service of a host is, unless its HostCluster says.
pub const DEFAULT_SERVICE: (&str, &str) = ("kplex-system", "kplex-dns");

/// Nameservers a Pod may have (glibc reads three).
const MAX_NAMESERVERS: usize = 3;
/// Search domains a Pod may have (as the kubelet allows).
const MAX_SEARCHES: usize = 32;

/// Points host copy `copy` of tenant Pod `pod` (tenant namespace `ns`) at
/// the DNS server `server` for cluster domain `domain`.
pub fn wire(server: &str, domain: &str, ns: &str, pod: &Pod, copy: &mut Pod) {
    let Some(spec) = copy.spec.as_mut() else {
        return;
    };
    let tenant = pod.spec.as_ref();
    let policy = tenant
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = tenant.and_then(|s| s.host_network) == Some(true);
    match policy {
        "None" | "Default" => return,
        // The shared server cannot tell a Pod on the node's network from
        // the node: such a Pod gets the node's resolver (as Kubernetes
        // gives it under ClusterFirst; under ClusterFirstWithHostNet too).
        _ if host_network => {
            spec.dns_policy = Some("Default".to_owned());
            return;
        }
        _ => {}
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let theirs = tenant
        .and_then(|s| s.dns_config.clone())
        .unwrap_or_default();
    let mut nameservers = vec![server.to_owned()];
    for extra in theirs.nameservers.into_iter().flatten() {
        if !nameservers.contains(&extra) && nameservers.len() < MAX_NAMESERVERS {
            nameservers.push(extra);
        }
    }
    let mut searches = vec![
        format!("{ns}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.clone(),
    ];
    for extra in theirs.searches.into_iter().flatten() {
        if !searches.contains(&extra) && searches.len() < MAX_SEARCHES {
            searches.push(extra);
        }
    }
    let mut options = vec![PodDNSConfigOption {
        name: Some("ndots".to_owned()),
        value: Some("5".to_owned()),
    }];
    for option in theirs.options.into_iter().flatten() {
        options.retain(|o| o.name != option.name);
        options.push(option);
    }
    spec.dns_policy = Some("None".to_owned());
    spec.dns_config = Some(PodDNSConfig {
        nameservers: Some(nameservers),
        searches: Some(searches),
        options: Some(options),
    });
    copy.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(mapping::DNS_DOMAIN_ANNOTATION.to_owned(), domain);
}

/// The label of the shared DNS server's Pods (deploy/host/dns.yaml).
pub const SERVER_LABEL: (&str, &str) = ("app.kubernetes.io/name", "kplex-dns");

/// Whether a NetworkPolicy port lets DNS through: port 53, a range
/// holding it, a port named as DNS ports are, or every port.
pub fn is_dns_port(port: &NetworkPolicyPort) -> bool {
    match &port.port {
        Some(IntOrString::Int(p)) => {
            *p == 53 || (*p <= 53 && port.end_port.is_some_and(|end| end >= 53))
        }
        Some(IntOrString::String(name)) => matches!(name.as_str(), "dns" | "dns-tcp" | "domain"),
        None => true,
    }
}

/// The egress rule to the shared DNS server's Pods: their named ports
/// (`dns` over UDP, `dns-tcp` over TCP) in the host's `kplex-system`.
pub fn egress_rule() -> NetworkPolicyEgressRule {
    let (ns, _) = DEFAULT_SERVICE;
    let (key, value) = SERVER_LABEL;
    let selector = |k: &str, v: &str| LabelSelector {
        match_labels: Some([(k.to_owned(), v.to_owned())].into()),
        match_expressions: None,
    };
    let port = |protocol: &str, name: &str| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::String(name.to_owned())),
        end_port: None,
    };
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(selector("kubernetes.io/metadata.name", ns)),
            pod_selector: Some(selector(key, value)),
            ip_block: None,
        }]),
        ports: Some(vec![port("UDP", "dns"), port("TCP", "dns-tcp")]),
    }
}

/// A VC's cluster domain: its `spec.dns.domain`, else `cluster.local`.
pub fn domain_of(spec: &serde_json::Value) -> String {
    spec["dns"]["domain"]
        .as_str()
        .filter(|d| !d.is_empty())
        .unwrap_or(mapping::DEFAULT_DNS_DOMAIN)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wired(spec: serde_json::Value) -> Pod {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap();
        let mut copy = pod.clone();
        wire("10.96.0.53", "cluster.local", "shop", &pod, &mut copy);
        copy
    }

    #[test]
    fn cluster_first_pods_ask_the_shared_server_in_their_vcs_domain() {
        let copy = wired(json!({"containers": []}));
        let spec = copy.spec.unwrap();
        assert_eq!(spec.dns_policy.as_deref(), Some("None"));
        let config = spec.dns_config.unwrap();
        assert_eq!(config.nameservers.unwrap(), ["10.96.0.53"]);
        assert_eq!(
            config.searches.unwrap(),
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(config.options.unwrap()[0].value.as_deref(), Some("5"));
        assert_eq!(
            copy.metadata.annotations.unwrap()[mapping::DNS_DOMAIN_ANNOTATION],
            "cluster.local"
        );
    }

    #[test]
    fn the_tenants_dns_config_is_merged() {
        let copy = wired(json!({"containers": [], "dnsConfig": {
            "nameservers": ["192.0.2.1"], "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let config = copy.spec.unwrap().dns_config.unwrap();
        assert_eq!(config.nameservers.unwrap(), ["10.96.0.53", "192.0.2.1"]);
        assert_eq!(
            config.searches.unwrap().last().map(String::as_str),
            Some("corp.example")
        );
        let options = config.options.unwrap();
        assert_eq!(options.len(), 2);
        assert!(options
            .iter()
            .any(|o| o.name.as_deref() == Some("ndots") && o.value.as_deref() == Some("2")));
    }

    #[test]
    fn default_none_and_host_network_keep_their_resolver() {
        for policy in ["Default", "None"] {
            let copy = wired(json!({"containers": [], "dnsPolicy": policy}));
            assert_eq!(copy.spec.unwrap().dns_policy.as_deref(), Some(policy));
            assert!(copy.metadata.annotations.is_none());
        }
        for policy in ["ClusterFirst", "ClusterFirstWithHostNet"] {
            let copy = wired(json!({"containers": [], "hostNetwork": true, "dnsPolicy": policy}));
            assert_eq!(copy.spec.unwrap().dns_policy.as_deref(), Some("Default"));
        }
    }

    #[test]
    fn the_domain_is_the_vcs_or_cluster_local() {
        assert_eq!(domain_of(&json!({})), "cluster.local");
        assert_eq!(
            domain_of(&json!({"dns": {"domain": "Team.Internal."}})),
            "team.internal"
        );
    }
}
