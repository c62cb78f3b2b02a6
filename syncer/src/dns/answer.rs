//! How a name resolves for an asking Pod: in its VC's cluster domain from
//! its VC's entries only, the way a cluster's DNS names Services and Pods
//! (<https://kubernetes.io/docs/concepts/services-networking/dns-pod-service/>);
//! anything else is the upstream's.

use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};

use super::index::{Asker, Endpoint, ServiceEntry, Target, VcZone, Zones};

/// The TTL of every answer from a VC's entries (as CoreDNS's default).
pub const TTL: u32 = 5;

/// What a question comes to.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// A name of the VC: its records of the type asked (none: the name
    /// has no data of that type), and the addresses of names they point
    /// to.
    Records {
        /// The answer section.
        answers: Vec<Record>,
        /// The additional section.
        additionals: Vec<Record>,
    },
    /// No such name in the VC's domain (or one the VC may not learn of).
    NxDomain,
    /// An ExternalName Service: its CNAME, and the name to resolve next.
    Alias {
        /// The CNAME record.
        cname: Box<Record>,
        /// Its target.
        target: Name,
    },
    /// Not a name of the VC's domain: the upstream resolver's.
    Forward,
}

impl Answer {
    fn empty() -> Answer {
        Answer::Records {
            answers: Vec::new(),
            additionals: Vec::new(),
        }
    }

    fn of(answers: Vec<Record>) -> Answer {
        Answer::Records {
            answers,
            additionals: Vec::new(),
        }
    }
}

/// The SOA record of cluster domain `domain` (the authority of negative
/// answers; its minimum is how long they may be cached).
pub fn soa(domain: &str) -> Record {
    let apex = name(domain);
    let rdata = SOA::new(
        name(&format!("ns.dns.{domain}")),
        name(&format!("hostmaster.{domain}")),
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Record::from_rdata(apex, TTL, RData::SOA(rdata))
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap_or_else(|_| Name::root())
}

fn address_record(owner: &Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(owner.clone(), TTL, rdata)
}

fn family(qtype: RecordType) -> Option<fn(&IpAddr) -> bool> {
    match qtype {
        RecordType::A => Some(IpAddr::is_ipv4),
        RecordType::AAAA => Some(IpAddr::is_ipv6),
        _ => None,
    }
}

/// An address as a DNS label: `10-0-0-7`, `fd00--7`.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn undashed(label: &str) -> Option<IpAddr> {
    label
        .replace('-', ".")
        .parse::<std::net::Ipv4Addr>()
        .map(IpAddr::V4)
        .or_else(|_| label.replace('-', ":").parse::<IpAddr>())
        .ok()
}

/// Resolves question (`qname`, `qtype`) for `asker`. `lower` is `qname`
/// in lower case with the final dot; `host_domain` the host cluster's own
/// domain (never forwarded: its names are the host's, other VCs' among
/// them).
pub fn resolve(
    zones: &Zones,
    asker: &Asker,
    qname: &Name,
    lower: &str,
    qtype: RecordType,
    host_domain: &str,
) -> Answer {
    let domain = &*asker.domain;
    let zone = zones.zone(&asker.vc);
    if lower == domain {
        return match qtype {
            RecordType::SOA => Answer::of(vec![soa(domain)]),
            _ => Answer::empty(),
        };
    }
    if let Some(rest) = lower.strip_suffix(domain).and_then(|r| r.strip_suffix('.')) {
        return match zone {
            Some(zone) => in_domain(zone, domain, qname, rest, qtype),
            None => in_domain(&VcZone::default(), domain, qname, rest, qtype),
        };
    }
    if qtype == RecordType::PTR {
        if let Ok(net) = qname.parse_arpa_name() {
            if net.prefix_len() == net.max_prefix_len() {
                let ip = net.addr().to_canonical();
                if let Some(target) = zone.and_then(|z| reverse(z, domain, ip)) {
                    let record = Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(target)));
                    return Answer::of(vec![record]);
                }
                // Another VC's addresses are not this one's to learn of
                // (an upstream that knows the cluster would name them), and
                // no upstream knows a private address of the cluster.
                return if is_private(ip) || zones.zones().any(|z| reverse(z, domain, ip).is_some())
                {
                    Answer::NxDomain
                } else {
                    Answer::Forward
                };
            }
        }
    }
    if lower == host_domain || lower.ends_with(&format!(".{host_domain}")) {
        return Answer::NxDomain;
    }
    Answer::Forward
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                // 100.64.0.0/10, shared address space (often a Pod range).
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// A name under the VC's domain; `rest` is what comes before it.
fn in_domain(zone: &VcZone, domain: &str, qname: &Name, rest: &str, qtype: RecordType) -> Answer {
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        ["svc"] => Answer::empty(),
        [ns, "svc"] => {
            if zone.namespaces.contains_key(*ns) {
                Answer::empty()
            } else {
                Answer::NxDomain
            }
        }
        [_, _, "svc"] => {
            let key = &rest[..rest.len() - ".svc".len()];
            match zone.services.get(key) {
                Some(service) => service_answer(zone, domain, qname, key, service, qtype),
                None => Answer::NxDomain,
            }
        }
        [proto, _, _, "svc"] if proto.starts_with('_') => {
            // `_tcp.<svc>.<ns>.svc`: there when the Service is.
            let key = &rest[proto.len() + 1..rest.len() - ".svc".len()];
            if zone.services.contains_key(key) {
                Answer::empty()
            } else {
                Answer::NxDomain
            }
        }
        [host, _, _, "svc"] => {
            let key = &rest[host.len() + 1..rest.len() - ".svc".len()];
            match zone.services.get(key) {
                Some(service) if service.target == Target::Headless => {
                    let ips: Vec<IpAddr> = zone
                        .endpoints_of(key)
                        .filter(|(_, e)| e.ready && endpoint_label(e).as_deref() == Some(*host))
                        .flat_map(|(_, e)| e.ips.iter().copied())
                        .collect();
                    if ips.is_empty() {
                        return Answer::NxDomain;
                    }
                    addresses(qname, &ips, qtype)
                }
                _ => Answer::NxDomain,
            }
        }
        [port, proto, _, _, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
            let key = &rest[port.len() + proto.len() + 2..rest.len() - ".svc".len()];
            let Some(service) = zone.services.get(key) else {
                return Answer::NxDomain;
            };
            let records = srv(
                zone,
                domain,
                qname,
                key,
                service,
                Some((&port[1..], &proto[1..])),
            );
            match records {
                None => Answer::NxDomain,
                Some(_) if qtype != RecordType::SRV => Answer::empty(),
                Some((answers, additionals)) => Answer::Records {
                    answers,
                    additionals,
                },
            }
        }
        ["pod"] | [_, "pod"] => Answer::empty(),
        [label, ns, "pod"] => match undashed(label).map(|ip| ip.to_canonical()) {
            Some(ip) if zone.pods.get(&ip).is_some_and(|n| &**n == *ns) => {
                addresses(qname, &[ip], qtype)
            }
            _ => Answer::NxDomain,
        },
        _ => Answer::NxDomain,
    }
}

/// The label an endpoint's name begins with: its hostname, else its
/// first address, dashed.
fn endpoint_label(endpoint: &Endpoint) -> Option<String> {
    endpoint
        .hostname
        .as_deref()
        .map(str::to_owned)
        .or_else(|| endpoint.ips.first().map(|ip| dashed(*ip)))
}

fn addresses(qname: &Name, ips: &[IpAddr], qtype: RecordType) -> Answer {
    let Some(family) = family(qtype) else {
        return Answer::empty();
    };
    let mut seen = Vec::new();
    for ip in ips.iter().filter(|ip| family(ip)) {
        if !seen.contains(ip) {
            seen.push(*ip);
        }
    }
    Answer::of(
        seen.into_iter()
            .map(|ip| address_record(qname, ip))
            .collect(),
    )
}

fn service_answer(
    zone: &VcZone,
    domain: &str,
    qname: &Name,
    key: &str,
    service: &ServiceEntry,
    qtype: RecordType,
) -> Answer {
    match (&service.target, qtype) {
        (Target::External(target), _) => {
            let target = name(target);
            let cname = Record::from_rdata(qname.clone(), TTL, RData::CNAME(CNAME(target.clone())));
            if qtype == RecordType::CNAME {
                Answer::of(vec![cname])
            } else {
                Answer::Alias {
                    cname: Box::new(cname),
                    target,
                }
            }
        }
        (_, RecordType::SRV) => match srv(zone, domain, qname, key, service, None) {
            Some((answers, additionals)) => Answer::Records {
                answers,
                additionals,
            },
            None => Answer::empty(),
        },
        (Target::ClusterIps(ips), _) => addresses(qname, ips, qtype),
        (Target::Headless, _) => {
            let ips: Vec<IpAddr> = zone
                .endpoints_of(key)
                .filter(|(_, e)| e.ready)
                .flat_map(|(_, e)| e.ips.iter().copied())
                .collect();
            addresses(qname, &ips, qtype)
        }
    }
}

/// SRV records of a Service: for port `wanted` (name, protocol), or for
/// every named port. `None` when no port matches.
fn srv(
    zone: &VcZone,
    domain: &str,
    qname: &Name,
    key: &str,
    service: &ServiceEntry,
    wanted: Option<(&str, &str)>,
) -> Option<(Vec<Record>, Vec<Record>)> {
    let matches = |port: &super::index::Port| match wanted {
        Some((name, protocol)) => &*port.name == name && &*port.protocol == protocol,
        None => true,
    };
    let service_name = name(&format!("{key}.svc.{domain}"));
    let mut targets: Vec<(u16, Name, Vec<IpAddr>)> = Vec::new();
    match &service.target {
        Target::ClusterIps(ips) => {
            for port in service.ports.iter().filter(|p| matches(p)) {
                targets.push((port.port, service_name.clone(), ips.clone()));
            }
        }
        Target::Headless => {
            for (slice, endpoint) in zone.endpoints_of(key).filter(|(_, e)| e.ready) {
                let Some(label) = endpoint_label(endpoint) else {
                    continue;
                };
                let target = name(&format!("{label}.{key}.svc.{domain}"));
                for port in slice.ports.iter().filter(|p| matches(p)) {
                    targets.push((port.port, target.clone(), endpoint.ips.clone()));
                }
            }
            // A Service whose endpoints are not there yet still has the port.
            if targets.is_empty() && service.ports.iter().any(matches) {
                return Some((Vec::new(), Vec::new()));
            }
        }
        Target::External(_) => return None,
    }
    if targets.is_empty() {
        return None;
    }
    // (A dual-stack endpoint is in two slices: one record for it.)
    let mut seen = Vec::new();
    targets.retain(|(port, target, _)| {
        let new = !seen.contains(&(*port, target.clone()));
        if new {
            seen.push((*port, target.clone()));
        }
        new
    });
    let weight = u16::try_from(100 / targets.len()).unwrap_or(1).max(1);
    let mut answers = Vec::new();
    let mut additionals = Vec::new();
    for (port, target, ips) in targets {
        let rdata = RData::SRV(SRV::new(0, weight, port, target.clone()));
        answers.push(Record::from_rdata(qname.clone(), TTL, rdata));
        for ip in ips {
            let record = address_record(&target, ip);
            if !additionals.contains(&record) {
                additionals.push(record);
            }
        }
    }
    Some((answers, additionals))
}

/// The name of address `ip` in the VC: a Service's, an endpoint's of a
/// headless Service, or a Pod's.
fn reverse(zone: &VcZone, domain: &str, ip: IpAddr) -> Option<Name> {
    for (key, service) in &zone.services {
        match &service.target {
            Target::ClusterIps(ips) if ips.contains(&ip) => {
                return Some(name(&format!("{key}.svc.{domain}")));
            }
            Target::Headless => {
                if let Some((_, endpoint)) =
                    zone.endpoints_of(key).find(|(_, e)| e.ips.contains(&ip))
                {
                    let label = endpoint
                        .hostname
                        .as_deref()
                        .map(str::to_owned)
                        .unwrap_or_else(|| dashed(ip));
                    return Some(name(&format!("{label}.{key}.svc.{domain}")));
                }
            }
            _ => {}
        }
    }
    let ns = zone.pods.get(&ip)?;
    Some(name(&format!("{}.{ns}.pod.{domain}", dashed(ip))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::index::{apply, Kind};
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kplex_api::mapping;
    use serde_json::json;

    fn labels(vc: &str, ns: &str) -> serde_json::Value {
        json!({mapping::VC_UID_LABEL: vc, mapping::NAMESPACE_LABEL: ns})
    }

    /// Two VCs, each with `web` in `shop`; VC a also a headless `db` with
    /// two endpoints and an ExternalName `ext`.
    fn zones() -> Zones {
        let mut zones = Zones::default();
        for (vc, ip, pod_ip) in [
            ("a", "10.96.0.10", "10.0.0.2"),
            ("b", "10.96.0.20", "10.0.0.3"),
        ] {
            let service: Service = serde_json::from_value(json!({
                "metadata": {"namespace": format!("kplex-{vc}-shop"), "name": "web", "labels": labels(vc, "shop")},
                // (VC b's web is dual-stack, on a public IPv6 range.)
                "spec": {"clusterIP": ip, "clusterIPs": if vc == "b" { json!([ip, "2001:db8::20"]) } else { json!([ip]) },
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            }))
            .unwrap();
            apply(&mut zones, &service);
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"namespace": format!("kplex-{vc}-shop"), "name": "client", "labels": labels(vc, "shop")},
                "status": {"phase": "Running", "podIP": pod_ip},
            }))
            .unwrap();
            apply(&mut zones, &pod);
        }
        let db: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "kplex-a-shop", "name": "db", "labels": labels("a", "shop")},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]},
        }))
        .unwrap();
        apply(&mut zones, &db);
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"namespace": "kplex-a-shop", "name": "db-x", "labels": {
                mapping::VC_UID_LABEL: "a", mapping::NAMESPACE_LABEL: "shop",
                "kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.1.1"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.0.1.2"], "hostname": "db-1", "conditions": {"ready": false}},
            ],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
        }))
        .unwrap();
        assert!(slice.project().is_some());
        apply(&mut zones, &slice);
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "kplex-a-shop", "name": "ext", "labels": labels("a", "shop"),
                "annotations": {mapping::EXTERNAL_NAME_ANNOTATION: "web.shop.svc.cluster.local"}},
            "spec": {"type": "ExternalName", "externalName": "web.kplex-a-shop.svc.cluster.local"},
        }))
        .unwrap();
        apply(&mut zones, &ext);
        zones
    }

    fn ask(zones: &Zones, from: &str, q: &str, qtype: RecordType) -> Answer {
        let asker = zones.asker(from.parse().unwrap()).expect("a known Pod");
        let qname = Name::from_ascii(q).unwrap();
        resolve(
            zones,
            &asker,
            &qname,
            &q.to_ascii_lowercase(),
            qtype,
            "cluster.local.",
        )
    }

    fn ips(answer: &Answer) -> Vec<String> {
        match answer {
            Answer::Records { answers, .. } => answers.iter().map(|r| r.data.to_string()).collect(),
            other => panic!("no records: {other:?}"),
        }
    }

    #[test]
    fn each_vc_resolves_its_own_service() {
        let zones = zones();
        let q = "web.shop.svc.cluster.local.";
        assert_eq!(
            ips(&ask(&zones, "10.0.0.2", q, RecordType::A)),
            ["10.96.0.10"]
        );
        assert_eq!(
            ips(&ask(&zones, "10.0.0.3", q, RecordType::A)),
            ["10.96.0.20"]
        );
        assert_eq!(
            ips(&ask(&zones, "10.0.0.2", q, RecordType::AAAA)),
            Vec::<String>::new()
        );
        // VC b has no db: NXDOMAIN, though VC a has one.
        let db = "db.shop.svc.cluster.local.";
        assert_eq!(ask(&zones, "10.0.0.3", db, RecordType::A), Answer::NxDomain);
        // The host's names of either VC are nobody's.
        let host = "web.kplex-a-shop.svc.cluster.local.";
        assert_eq!(
            ask(&zones, "10.0.0.2", host, RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ask(&zones, "10.0.0.3", host, RecordType::A),
            Answer::NxDomain
        );
        assert_eq!(
            ask(&zones, "10.0.0.2", "example.com.", RecordType::A),
            Answer::Forward
        );
    }

    #[test]
    fn headless_services_answer_their_ready_endpoints() {
        let zones = zones();
        let a = "10.0.0.2";
        assert_eq!(
            ips(&ask(&zones, a, "db.shop.svc.cluster.local.", RecordType::A)),
            ["10.0.1.1"]
        );
        assert_eq!(
            ips(&ask(
                &zones,
                a,
                "db-0.db.shop.svc.cluster.local.",
                RecordType::A
            )),
            ["10.0.1.1"]
        );
        assert_eq!(
            ask(&zones, a, "db-1.db.shop.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
        let Answer::Records {
            answers,
            additionals,
        } = ask(
            &zones,
            a,
            "_pg._tcp.db.shop.svc.cluster.local.",
            RecordType::SRV,
        )
        else {
            panic!("no SRV");
        };
        assert_eq!(
            answers[0].data.to_string(),
            "0 100 5432 db-0.db.shop.svc.cluster.local."
        );
        assert_eq!(additionals[0].data.to_string(), "10.0.1.1");
        assert_eq!(
            ask(
                &zones,
                a,
                "_nope._tcp.db.shop.svc.cluster.local.",
                RecordType::SRV
            ),
            Answer::NxDomain
        );
    }

    #[test]
    fn external_names_alias_the_tenants_target() {
        let zones = zones();
        match ask(
            &zones,
            "10.0.0.2",
            "ext.shop.svc.cluster.local.",
            RecordType::A,
        ) {
            Answer::Alias { target, .. } => {
                assert_eq!(target.to_string(), "web.shop.svc.cluster.local.")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reverse_names_are_the_vcs_own() {
        let zones = zones();
        let ptr = |from, q: &str| ips(&ask(&zones, from, q, RecordType::PTR));
        assert_eq!(
            ptr("10.0.0.2", "10.0.96.10.in-addr.arpa."),
            ["web.shop.svc.cluster.local."]
        );
        assert_eq!(
            ptr("10.0.0.2", "2.0.0.10.in-addr.arpa."),
            ["10-0-0-2.shop.pod.cluster.local."]
        );
        // VC b's Service address is not VC a's to name, nor forwarded.
        assert_eq!(
            ask(
                &zones,
                "10.0.0.2",
                "20.0.96.10.in-addr.arpa.",
                RecordType::PTR
            ),
            Answer::NxDomain
        );
        assert_eq!(
            ask(&zones, "10.0.0.2", "8.8.8.8.in-addr.arpa.", RecordType::PTR),
            Answer::Forward
        );
        // Nor another VC's public address: an upstream may know it.
        let v6 = "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.";
        assert_eq!(
            ask(&zones, "10.0.0.2", v6, RecordType::PTR),
            Answer::NxDomain
        );
        assert_eq!(
            ips(&ask(&zones, "10.0.0.3", v6, RecordType::PTR)),
            ["web.shop.svc.cluster.local."]
        );
    }

    #[test]
    fn names_with_names_below_them_exist() {
        let zones = zones();
        let a = "10.0.0.2";
        for name in [
            "pod.cluster.local.",
            "shop.pod.cluster.local.",
            "_tcp.db.shop.svc.cluster.local.",
            "svc.cluster.local.",
        ] {
            assert_eq!(
                ask(&zones, a, name, RecordType::A),
                Answer::empty(),
                "{name}"
            );
        }
        assert_eq!(
            ask(
                &zones,
                a,
                "_tcp.nope.shop.svc.cluster.local.",
                RecordType::A
            ),
            Answer::NxDomain
        );
    }

    #[test]
    fn pod_names_are_verified() {
        let zones = zones();
        let q = |from, name: &str| ask(&zones, from, name, RecordType::A);
        assert_eq!(
            ips(&q("10.0.0.2", "10-0-0-2.shop.pod.cluster.local.")),
            ["10.0.0.2"]
        );
        // VC b's Pod, named from VC a.
        assert_eq!(
            q("10.0.0.2", "10-0-0-3.shop.pod.cluster.local."),
            Answer::NxDomain
        );
    }

    #[test]
    fn a_vc_with_its_own_domain_answers_there_only() {
        let mut zones = zones();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "kplex-a-shop", "name": "client", "labels": labels("a", "shop"),
                "annotations": {mapping::DNS_DOMAIN_ANNOTATION: "Team.Internal"}},
            "status": {"phase": "Running", "podIP": "10.0.0.2"},
        }))
        .unwrap();
        apply(&mut zones, &pod);
        let a = "10.0.0.2";
        assert_eq!(
            ips(&ask(
                &zones,
                a,
                "web.shop.svc.team.internal.",
                RecordType::A
            )),
            ["10.96.0.10"]
        );
        // The host's domain is never forwarded.
        assert_eq!(
            ask(&zones, a, "web.shop.svc.cluster.local.", RecordType::A),
            Answer::NxDomain
        );
    }
}
