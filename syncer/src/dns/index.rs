//! What `kplex dns` knows: a projection of the host's kplex Pods, Services
//! and EndpointSlices, grouped per VC, small enough to hold for a whole
//! host (a few hundred bytes per Service, nothing per idle VC).
//!
//! Three watches feed it ([`Kind`]): each object is projected to the little
//! DNS needs and the object dropped. A Pod says who is asking (its IPs,
//! its VC, its tenant namespace, its cluster domain); a Service and its
//! EndpointSlices say what a VC's names resolve to. Only objects carrying
//! kplex's VC labels are watched, so every entry knows its VC.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use kplex_api::mapping;

/// A VC, by UID.
pub type VcUid = Arc<str>;

/// The label of an EndpointSlice that names its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Pod that may ask: its VC, tenant namespace and cluster domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asker {
    /// The Pod's VC.
    pub vc: VcUid,
    /// Its namespace in the VC.
    pub ns: Box<str>,
    /// The cluster domain it resolves in, lower case, with the final dot.
    pub domain: Arc<str>,
}

/// A live Pod with addresses of its own.
#[derive(Clone, Debug)]
pub struct PodEntry {
    asker: Asker,
    ips: Vec<IpAddr>,
}

/// A port of a Service or an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Its name (may be empty).
    pub name: Box<str>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: Box<str>,
    /// The port number.
    pub port: u16,
}

/// What a Service's name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Its cluster IPs.
    ClusterIps(Vec<IpAddr>),
    /// Its ready endpoints (a headless Service).
    Headless,
    /// Another name (an ExternalName Service), as the tenant wrote it.
    External(Box<str>),
}

/// A Service of a VC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// What its name resolves to.
    pub target: Target,
    /// Its ports.
    pub ports: Vec<Port>,
}

/// An endpoint of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Its hostname (a StatefulSet Pod's, under its headless Service).
    pub hostname: Option<Box<str>>,
    /// Whether it is ready.
    pub ready: bool,
}

/// One EndpointSlice of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEntry {
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Its ports.
    pub ports: Vec<Port>,
}

/// One VC's names.
#[derive(Default, Debug)]
pub struct VcZone {
    /// Its Services, keyed `<name>.<namespace>` (how a query spells them).
    pub services: HashMap<Box<str>, ServiceEntry>,
    /// Its Services' EndpointSlices, keyed as the Services, then by the
    /// slice's host key.
    pub endpoints: HashMap<Box<str>, BTreeMap<Box<str>, SliceEntry>>,
    /// Its live Pods' addresses, with their namespace.
    pub pods: HashMap<IpAddr, Box<str>>,
    /// How many Services each of its namespaces has.
    pub namespaces: HashMap<Box<str>, u32>,
}

impl VcZone {
    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.endpoints.is_empty() && self.pods.is_empty()
    }

    /// The endpoints of Service `key` (`<name>.<namespace>`), over all
    /// its slices.
    pub fn endpoints_of<'a>(
        &'a self,
        key: &str,
    ) -> impl Iterator<Item = (&'a SliceEntry, &'a Endpoint)> {
        self.endpoints
            .get(key)
            .into_iter()
            .flat_map(|slices| slices.values())
            .flat_map(|slice| slice.endpoints.iter().map(move |e| (slice, e)))
    }
}

/// Everything, for every VC on the host.
#[derive(Default, Debug)]
pub struct Zones {
    /// Live Pods by host key (`<host namespace>/<name>`).
    pods: HashMap<Box<str>, PodEntry>,
    /// Which Pods have each address.
    askers: HashMap<IpAddr, Vec<Box<str>>>,
    /// Services by host key: their VC and their key in it.
    services: HashMap<Box<str>, (VcUid, Box<str>)>,
    /// EndpointSlices by host key: their VC and their Service's key in it.
    slices: HashMap<Box<str>, (VcUid, Box<str>)>,
    /// Each VC's names.
    vcs: HashMap<VcUid, VcZone>,
    /// The cluster domains in use (few: each held once).
    domains: Vec<Arc<str>>,
}

impl Zones {
    /// Who asks from `ip`: the VC of the live Pods with that address, if
    /// they are all of one VC (an address two VCs' Pods claim at once
    /// names neither).
    pub fn asker(&self, ip: IpAddr) -> Option<Asker> {
        let ip = ip.to_canonical();
        let keys = self.askers.get(&ip)?;
        let mut found: Option<&Asker> = None;
        for key in keys {
            let asker = &self.pods.get(key)?.asker;
            match found {
                Some(f) if f.vc != asker.vc => return None,
                Some(_) => {}
                None => found = Some(asker),
            }
        }
        found.cloned()
    }

    /// VC `vc`'s names.
    pub fn zone(&self, vc: &str) -> Option<&VcZone> {
        self.vcs.get(vc)
    }

    /// Every VC's names.
    pub fn zones(&self) -> impl Iterator<Item = &VcZone> {
        self.vcs.values()
    }

    /// How many VCs have names here.
    pub fn vc_count(&self) -> usize {
        self.vcs.len()
    }

    /// The shared `Arc` of VC `uid` (one per VC, however many entries).
    fn vc_uid(&self, uid: &str) -> VcUid {
        self.vcs
            .get_key_value(uid)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| uid.into())
    }

    fn domain(&mut self, domain: &str) -> Arc<str> {
        if let Some(d) = self.domains.iter().find(|d| &***d == domain) {
            return d.clone();
        }
        let d: Arc<str> = domain.into();
        self.domains.push(d.clone());
        d
    }

    fn zone_mut(&mut self, vc: &VcUid) -> &mut VcZone {
        self.vcs.entry(vc.clone()).or_default()
    }

    fn tidy(&mut self, vc: &str) {
        if self.vcs.get(vc).is_some_and(VcZone::is_empty) {
            self.vcs.remove(vc);
        }
    }

    fn put_pod(&mut self, key: Box<str>, mut entry: PodEntry) {
        self.drop_pod(&key);
        entry.asker.vc = self.vc_uid(&entry.asker.vc);
        entry.asker.domain = self.domain(&entry.asker.domain);
        for ip in &entry.ips {
            self.askers.entry(*ip).or_default().push(key.clone());
        }
        let zone = self.zone_mut(&entry.asker.vc.clone());
        for ip in &entry.ips {
            zone.pods.insert(*ip, entry.asker.ns.clone());
        }
        self.pods.insert(key, entry);
    }

    fn drop_pod(&mut self, key: &str) {
        let Some(old) = self.pods.remove(key) else {
            return;
        };
        for ip in &old.ips {
            if let Some(keys) = self.askers.get_mut(ip) {
                keys.retain(|k| &**k != key);
                if keys.is_empty() {
                    self.askers.remove(ip);
                }
            }
            // Another live Pod of the VC may hold the address now.
            let successor = self.askers.get(ip).and_then(|keys| {
                keys.iter()
                    .filter_map(|k| self.pods.get(k))
                    .find(|p| p.asker.vc == old.asker.vc)
                    .map(|p| p.asker.ns.clone())
            });
            if let Some(zone) = self.vcs.get_mut(&old.asker.vc) {
                match successor {
                    Some(ns) => {
                        zone.pods.insert(*ip, ns);
                    }
                    None => {
                        zone.pods.remove(ip);
                    }
                }
            }
        }
        self.tidy(&old.asker.vc);
    }

    fn put_service(&mut self, key: Box<str>, (vc, name, entry): (VcUid, Box<str>, ServiceEntry)) {
        self.drop_service(&key);
        let vc = self.vc_uid(&vc);
        let zone = self.zone_mut(&vc);
        if let Some((_, ns)) = name.split_once('.') {
            *zone.namespaces.entry(ns.into()).or_default() += 1;
        }
        zone.services.insert(name.clone(), entry);
        self.services.insert(key, (vc, name));
    }

    fn drop_service(&mut self, key: &str) {
        let Some((vc, name)) = self.services.remove(key) else {
            return;
        };
        if let Some(zone) = self.vcs.get_mut(&vc) {
            zone.services.remove(&name);
            if let Some((_, ns)) = name.split_once('.') {
                if let Some(count) = zone.namespaces.get_mut(ns) {
                    *count -= 1;
                    if *count == 0 {
                        zone.namespaces.remove(ns);
                    }
                }
            }
        }
        self.tidy(&vc);
    }

    fn put_slice(&mut self, key: Box<str>, (vc, service, entry): (VcUid, Box<str>, SliceEntry)) {
        self.drop_slice(&key);
        let vc = self.vc_uid(&vc);
        self.zone_mut(&vc)
            .endpoints
            .entry(service.clone())
            .or_default()
            .insert(key.clone(), entry);
        self.slices.insert(key, (vc, service));
    }

    fn drop_slice(&mut self, key: &str) {
        let Some((vc, service)) = self.slices.remove(key) else {
            return;
        };
        if let Some(zone) = self.vcs.get_mut(&vc) {
            if let Some(slices) = zone.endpoints.get_mut(&service) {
                slices.remove(key);
                if slices.is_empty() {
                    zone.endpoints.remove(&service);
                }
            }
        }
        self.tidy(&vc);
    }
}

/// A kind `kplex dns` watches: how an object becomes an entry, and where
/// entries go.
pub trait Kind:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// What of the object is kept.
    type Entry: Send + 'static;
    /// The entry, or `None` when the object adds no names (a finished
    /// Pod, a Pod without an address yet).
    fn project(&self) -> Option<Self::Entry>;
    /// Puts (or replaces) the entry of host key `key`.
    fn put(zones: &mut Zones, key: Box<str>, entry: Self::Entry);
    /// Drops the entry of host key `key`, if any.
    fn drop(zones: &mut Zones, key: &str);
    /// The host keys of every entry of the kind.
    fn keys(zones: &Zones) -> Vec<Box<str>>;
}

/// An object's host key: `<namespace>/<name>`.
pub fn host_key(meta: &ObjectMeta) -> Box<str> {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
    .into()
}

/// The VC UID and tenant namespace an object's kplex labels name.
fn owner(meta: &ObjectMeta) -> Option<(VcUid, &str)> {
    let labels = meta.labels.as_ref()?;
    let vc = labels
        .get(mapping::VC_UID_LABEL)
        .filter(|v| !v.is_empty())?;
    let ns = labels
        .get(mapping::NAMESPACE_LABEL)
        .filter(|v| !v.is_empty())?;
    Some((vc.as_str().into(), ns.as_str()))
}

/// A cluster domain in the form queries compare with: lower case, with the
/// final dot.
pub fn fqdn(domain: &str) -> String {
    let mut d = domain.trim_end_matches('.').to_ascii_lowercase();
    d.push('.');
    d
}

fn ips<'a>(addresses: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in addresses
        .into_iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

impl Kind for Pod {
    type Entry = PodEntry;

    fn project(&self) -> Option<PodEntry> {
        let (vc, ns) = owner(&self.metadata)?;
        let status = self.status.as_ref()?;
        // A finished Pod's address may be another Pod's now (so may a
        // deleted one's whose containers have all stopped); a Pod on the
        // node's network shares the node's address with everything there.
        let stopped = self.metadata.deletion_timestamp.is_some()
            && status
                .container_statuses
                .iter()
                .flatten()
                .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
            || stopped
            || self.spec.as_ref().and_then(|s| s.host_network) == Some(true)
        {
            return None;
        }
        let mut addresses: Vec<&String> = status.pod_ips.iter().flatten().map(|p| &p.ip).collect();
        addresses.extend(status.pod_ip.iter());
        let ips = ips(addresses);
        if ips.is_empty() {
            return None;
        }
        let domain = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(mapping::DNS_DOMAIN_ANNOTATION))
            .map(String::as_str)
            .unwrap_or(mapping::DEFAULT_DNS_DOMAIN);
        Some(PodEntry {
            asker: Asker {
                vc,
                ns: ns.into(),
                domain: fqdn(domain).into(),
            },
            ips,
        })
    }

    fn put(zones: &mut Zones, key: Box<str>, entry: PodEntry) {
        zones.put_pod(key, entry);
    }

    fn drop(zones: &mut Zones, key: &str) {
        zones.drop_pod(key);
    }

    fn keys(zones: &Zones) -> Vec<Box<str>> {
        zones.pods.keys().cloned().collect()
    }
}

fn port(name: Option<&String>, protocol: Option<&String>, port: Option<i32>) -> Option<Port> {
    Some(Port {
        name: name.map(String::as_str).unwrap_or_default().into(),
        protocol: protocol
            .map(String::as_str)
            .unwrap_or("TCP")
            .to_ascii_lowercase()
            .into(),
        port: u16::try_from(port?).ok()?,
    })
}

impl Kind for Service {
    type Entry = (VcUid, Box<str>, ServiceEntry);

    fn project(&self) -> Option<Self::Entry> {
        let (vc, ns) = owner(&self.metadata)?;
        let name = self.metadata.name.as_deref()?;
        let spec = self.spec.as_ref()?;
        let target = if spec.type_.as_deref() == Some("ExternalName") {
            let tenant = self
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(mapping::EXTERNAL_NAME_ANNOTATION))
                .or(spec.external_name.as_ref())?;
            Target::External(fqdn(tenant).into())
        } else if spec.cluster_ip.as_deref() == Some("None") {
            Target::Headless
        } else {
            let mut addresses: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
            addresses.extend(spec.cluster_ip.iter());
            Target::ClusterIps(ips(addresses))
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port(p.name.as_ref(), p.protocol.as_ref(), Some(p.port)))
            .collect();
        Some((
            vc,
            format!("{name}.{ns}").into(),
            ServiceEntry { target, ports },
        ))
    }

    fn put(zones: &mut Zones, key: Box<str>, entry: Self::Entry) {
        zones.put_service(key, entry);
    }

    fn drop(zones: &mut Zones, key: &str) {
        zones.drop_service(key);
    }

    fn keys(zones: &Zones) -> Vec<Box<str>> {
        zones.services.keys().cloned().collect()
    }
}

impl Kind for EndpointSlice {
    type Entry = (VcUid, Box<str>, SliceEntry);

    fn project(&self) -> Option<Self::Entry> {
        let (vc, ns) = owner(&self.metadata)?;
        let service = self.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if self.address_type == "FQDN" {
            return None;
        }
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| Endpoint {
                ips: ips(&e.addresses),
                hostname: e
                    .hostname
                    .as_deref()
                    .filter(|h| !h.is_empty())
                    .map(Into::into),
                // (Unset means ready, as the API says.)
                ready: e.conditions.as_ref().and_then(|c| c.ready) != Some(false),
            })
            .collect();
        let ports = self
            .ports
            .iter()
            .flatten()
            .filter_map(|p| port(p.name.as_ref(), p.protocol.as_ref(), p.port))
            .collect();
        Some((
            vc,
            format!("{service}.{ns}").into(),
            SliceEntry { endpoints, ports },
        ))
    }

    fn put(zones: &mut Zones, key: Box<str>, entry: Self::Entry) {
        zones.put_slice(key, entry);
    }

    fn drop(zones: &mut Zones, key: &str) {
        zones.drop_slice(key);
    }

    fn keys(zones: &Zones) -> Vec<Box<str>> {
        zones.slices.keys().cloned().collect()
    }
}

/// Applies a watch's full listing: entries no longer listed go, the
/// listed ones are put.
pub fn relist<K: Kind>(zones: &mut Zones, listed: Vec<(Box<str>, K::Entry)>) {
    let keep: std::collections::HashSet<&str> = listed.iter().map(|(k, _)| &**k).collect();
    for key in K::keys(zones) {
        if !keep.contains(&*key) {
            K::drop(zones, &key);
        }
    }
    for (key, entry) in listed {
        K::put(zones, key, entry);
    }
}

/// Applies one object as it now is.
pub fn apply<K: Kind>(zones: &mut Zones, object: &K) {
    let key = host_key(object.meta());
    match object.project() {
        Some(entry) => K::put(zones, key, entry),
        None => K::drop(zones, &key),
    }
}

/// Forgets a deleted object.
pub fn delete<K: Kind>(zones: &mut Zones, object: &K) {
    K::drop(zones, &host_key(object.meta()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, vc: &str, ips: &[&str], phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": {
                mapping::VC_UID_LABEL: vc, mapping::NAMESPACE_LABEL: "default"}},
            "spec": {"containers": []},
            "status": {"phase": phase, "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn an_address_names_the_vc_of_its_live_pods_only() {
        let mut zones = Zones::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        apply(
            &mut zones,
            &pod("kplex-a-default", "p", "uid-a", &["10.0.0.7"], "Running"),
        );
        assert_eq!(&*zones.asker(ip).unwrap().vc, "uid-a");
        assert_eq!(&*zones.asker(ip).unwrap().domain, "cluster.local.");
        // A finished Pod of another VC with the old address changes nothing.
        apply(
            &mut zones,
            &pod("kplex-b-default", "q", "uid-b", &["10.0.0.7"], "Succeeded"),
        );
        assert_eq!(&*zones.asker(ip).unwrap().vc, "uid-a");
        // Two live Pods of two VCs on one address: neither is answered.
        apply(
            &mut zones,
            &pod("kplex-b-default", "q", "uid-b", &["10.0.0.7"], "Running"),
        );
        assert_eq!(zones.asker(ip), None);
        delete(
            &mut zones,
            &pod("kplex-a-default", "p", "uid-a", &[], "Running"),
        );
        assert_eq!(&*zones.asker(ip).unwrap().vc, "uid-b");
        assert!(zones.zone("uid-a").is_none(), "an emptied VC holds nothing");
        delete(
            &mut zones,
            &pod("kplex-b-default", "q", "uid-b", &[], "Running"),
        );
        assert_eq!(zones.asker(ip), None);
        assert_eq!(zones.vc_count(), 0);
    }

    #[test]
    fn a_deleted_pod_whose_containers_stopped_no_longer_asks() {
        let mut zones = Zones::default();
        let ip: IpAddr = "10.0.0.8".parse().unwrap();
        let mut p = pod("kplex-a-default", "p", "uid-a", &["10.0.0.8"], "Running");
        p.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        p.status.as_mut().unwrap().container_statuses = Some(vec![serde_json::from_value(json!({
            "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"running": {}}}))
        .unwrap()]);
        apply(&mut zones, &p);
        assert!(
            zones.asker(ip).is_some(),
            "still running while it shuts down"
        );
        p.status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .state = Some(serde_json::from_value(json!({"terminated": {"exitCode": 0}})).unwrap());
        apply(&mut zones, &p);
        assert_eq!(
            zones.asker(ip),
            None,
            "its address may be another Pod's now"
        );
    }

    #[test]
    fn a_relisting_drops_what_is_gone() {
        let mut zones = Zones::default();
        let service = |name: &str| -> Service {
            serde_json::from_value(json!({
                "metadata": {"namespace": "kplex-a-shop", "name": name, "labels": {
                    mapping::VC_UID_LABEL: "uid-a", mapping::NAMESPACE_LABEL: "shop"}},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}]},
            }))
            .unwrap()
        };
        apply(&mut zones, &service("web"));
        apply(&mut zones, &service("db"));
        assert_eq!(
            zones.zone("uid-a").unwrap().namespaces.get("shop"),
            Some(&2)
        );
        let listed = [service("web")]
            .iter()
            .map(|s| (host_key(&s.metadata), s.project().unwrap()))
            .collect();
        relist::<Service>(&mut zones, listed);
        let zone = zones.zone("uid-a").unwrap();
        assert!(zone.services.contains_key("web.shop"));
        assert!(!zone.services.contains_key("db.shop"));
        assert_eq!(zone.namespaces.get("shop"), Some(&1));
    }
}
