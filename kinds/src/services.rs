//! The Service strategy: what kube-apiserver's service registry does beyond
//! storing the object — defaults, ClusterIP and NodePort allocation, and the
//! allocated values kept across updates (clients need not echo them back)
//! and immutable once set.
//!
//! Each VC has its own service network, `10.96.0.0/12` (kube's default;
//! `10.96.0.1` is left for the `kubernetes` service), and its own NodePort
//! range, 30000–32767. A free value is picked at random (or the client's
//! choice taken) and checked against the VC's services. Service writes of
//! one VC that allocate take turns (the registry's `AllocationLocks`), from reading what
//! is taken until their write is stored, so two services never get the same
//! ClusterIP or NodePort. kplex keeps no allocator state per VC: the lock
//! exists only while a service write holds or awaits it.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use kplex_registry::error::ApiError;
use kplex_registry::resource::Allocator;
use rand::Rng;
use serde_json::{json, Value};

const NETWORK: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const NETWORK_SIZE: u32 = 1 << 20;
/// The address of the `kubernetes` service, never handed out.
const KUBERNETES: u32 = NETWORK + 1;
const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

/// The Service kind's allocator: a ClusterIP and NodePorts unique in the VC.
pub struct ServiceAllocator;

impl Allocator for ServiceAllocator {
    fn on_create(&self, object: &mut Value, others: &[Value]) -> Result<(), ApiError> {
        on_create(object, &Taken::of(others))
    }

    fn on_update(&self, object: &mut Value, old: &Value, others: &[Value]) -> Result<(), ApiError> {
        on_update(object, old, &Taken::of(others))
    }
}

/// Values the VC's other services hold (the one being written excluded).
#[derive(Debug, Default)]
pub struct Taken {
    pub cluster_ips: HashSet<String>,
    pub node_ports: HashSet<i64>,
}

impl Taken {
    /// What these services hold.
    pub fn of(services: &[Value]) -> Taken {
        let mut taken = Taken::default();
        services.iter().for_each(|s| taken.add(s));
        taken
    }

    /// Adds what `service` holds.
    pub fn add(&mut self, service: &Value) {
        let spec = &service["spec"];
        if let Some(ip) = spec["clusterIP"].as_str().filter(|ip| !ip.is_empty()) {
            self.cluster_ips.insert(ip.to_owned());
        }
        for port in spec["ports"].as_array().into_iter().flatten() {
            if let Some(n) = port["nodePort"].as_i64().filter(|n| *n != 0) {
                self.node_ports.insert(n);
            }
        }
    }
}

/// 422 naming the field and what is wrong with it (`detail` carries the
/// value, as kube-apiserver's field errors do).
fn invalid(name: &str, field: &str, detail: &str) -> ApiError {
    ApiError::field("Service", name, field, detail)
}

/// Defaults and allocations of a new Service.
pub fn on_create(service: &mut Value, taken: &Taken) -> Result<(), ApiError> {
    let name = service["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    defaults(service);
    allocate(service, &name, taken)
}

/// An update: values allocated before are kept when the client left them
/// out; a set ClusterIP may not change.
pub fn on_update(service: &mut Value, old: &Value, taken: &Taken) -> Result<(), ApiError> {
    let name = service["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    defaults(service);
    let headless_or_external =
        |s: &Value| s["spec"]["type"] == "ExternalName" || s["spec"]["clusterIP"] == "None";
    let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or_default();
    let new_ip = service["spec"]["clusterIP"].as_str().unwrap_or_default();
    if service["spec"]["type"] != "ExternalName" && new_ip.is_empty() && !old_ip.is_empty() {
        service["spec"]["clusterIP"] = json!(old_ip);
        service["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    } else if !old_ip.is_empty()
        && !new_ip.is_empty()
        && new_ip != old_ip
        && !headless_or_external(old)
        && !headless_or_external(service)
    {
        return Err(invalid(
            &name,
            "spec.clusterIPs[0]",
            &format!("Invalid value: {new_ip:?}: may not change once set"),
        ));
    }
    let with_node_ports = |s: &Value| {
        matches!(
            s["spec"]["type"].as_str(),
            Some("NodePort" | "LoadBalancer")
        )
    };
    if with_node_ports(old) && !with_node_ports(service) {
        // A service that stops being a NodePort gives its ports back.
        for port in service["spec"]["ports"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            if let Some(port) = port.as_object_mut() {
                port.remove("nodePort");
            }
        }
        return allocate(service, &name, taken);
    }
    // Node ports the client left out keep the port's old one.
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if let Some(ports) = service["spec"]["ports"].as_array_mut() {
        for port in ports {
            if port["nodePort"].as_i64().unwrap_or(0) != 0 {
                continue;
            }
            let same = old_ports
                .iter()
                .find(|p| p["port"] == port["port"] && p["protocol"] == port["protocol"]);
            if let Some(n) = same.and_then(|p| p["nodePort"].as_i64()) {
                port["nodePort"] = json!(n);
            }
        }
    }
    allocate(service, &name, taken)
}

/// kube's defaults for the fields `kubectl get svc` shows.
fn defaults(service: &mut Value) {
    let spec = &mut service["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    if spec["type"].as_str().is_none_or(str::is_empty) {
        spec["type"] = json!("ClusterIP");
    }
    let external_name = spec["type"] == "ExternalName";
    if spec["sessionAffinity"].as_str().is_none_or(str::is_empty) {
        spec["sessionAffinity"] = json!("None");
    }
    if !external_name && spec["internalTrafficPolicy"].is_null() {
        spec["internalTrafficPolicy"] = json!("Cluster");
    }
    if matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
        && spec["externalTrafficPolicy"].is_null()
    {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    for port in spec["ports"].as_array_mut().into_iter().flatten() {
        if port["protocol"].as_str().is_none_or(str::is_empty) {
            port["protocol"] = json!("TCP");
        }
        if port["targetPort"].is_null() || port["targetPort"] == 0 || port["targetPort"] == "" {
            port["targetPort"] = port["port"].clone();
        }
    }
}

/// The service's type and ports as kube-apiserver checks them: a known
/// type; ports (but for ExternalName) numbered 1–65535 with a known
/// protocol, named when there are several, names unique.
fn validate_spec(spec: &Value, name: &str) -> Result<(), ApiError> {
    let service_type = spec["type"].as_str().unwrap_or_default();
    if !matches!(
        service_type,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(invalid(
            name,
            "spec.type",
            &format!("Unsupported value: {service_type:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let ports = spec["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if ports.is_empty() && service_type != "ExternalName" && spec["clusterIP"] != "None" {
        return Err(invalid(name, "spec.ports", "Required value"));
    }
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let field = |f: &str| format!("spec.ports[{i}].{f}");
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            return Err(invalid(
                name,
                &field("port"),
                &format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
            ));
        }
        let protocol = port["protocol"].as_str().unwrap_or("TCP");
        if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
            return Err(invalid(
                name,
                &field("protocol"),
                &format!(
                    "Unsupported value: {protocol:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        let port_name = port["name"].as_str().unwrap_or_default();
        if port_name.is_empty() && ports.len() > 1 {
            return Err(invalid(name, &field("name"), "Required value"));
        }
        if !port_name.is_empty() && !names.insert(port_name) {
            return Err(invalid(
                name,
                &field("name"),
                &format!("Duplicate value: {port_name:?}"),
            ));
        }
    }
    Ok(())
}

fn allocate(service: &mut Value, name: &str, taken: &Taken) -> Result<(), ApiError> {
    validate_spec(&service["spec"], name)?;
    let spec = &mut service["spec"];
    if spec["type"] == "ExternalName" {
        return Ok(());
    }
    let requested = spec["clusterIP"].as_str().unwrap_or_default().to_owned();
    let ip = if requested == "None" {
        requested
    } else if requested.is_empty() {
        free_ip(taken)
            .ok_or_else(|| ApiError::internal("the virtual cluster's service network is full"))?
    } else {
        let parsed: Ipv4Addr = requested.parse().map_err(|_| {
            invalid(
                name,
                "spec.clusterIPs[0]",
                &format!("Invalid value: {requested:?}: must be a valid IP"),
            )
        })?;
        let n = u32::from(parsed);
        // The network and broadcast addresses are not the range's to give.
        if !(NETWORK + 1..NETWORK + NETWORK_SIZE - 1).contains(&n) {
            return Err(invalid(
                name,
                "spec.clusterIPs",
                &format!(
                    "Invalid value: {requested:?}: failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
                ),
            ));
        }
        requested
    };
    if ip != "None" && taken.cluster_ips.contains(&ip) {
        return Err(invalid(
            name,
            "spec.clusterIPs",
            &format!("Invalid value: {ip:?}: failed to allocate IP {ip}: provided IP is already allocated"),
        ));
    }
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if spec["ipFamilies"].is_null() && ip != "None" {
        spec["ipFamilies"] = json!(["IPv4"]);
    }
    if spec["ipFamilyPolicy"].is_null() {
        spec["ipFamilyPolicy"] = json!("SingleStack");
    }
    let service_type = spec["type"].as_str().unwrap_or_default().to_owned();
    if !matches!(service_type.as_str(), "NodePort" | "LoadBalancer") {
        let ports = spec["ports"].as_array().into_iter().flatten();
        for (i, port) in ports.enumerate() {
            if port["nodePort"].as_i64().unwrap_or(0) != 0 {
                return Err(invalid(
                    name,
                    &format!("spec.ports[{i}].nodePort"),
                    &format!("Forbidden: may not be used when `type` is '{service_type}'"),
                ));
            }
        }
        return Ok(());
    }
    if spec["clusterIP"] == "None" {
        return Err(invalid(
            name,
            "spec.clusterIPs[0]",
            &format!(
                "Invalid value: \"None\": may not be set to 'None' for {service_type} services"
            ),
        ));
    }
    let mut used: HashSet<i64> = HashSet::new();
    for (i, port) in spec["ports"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let requested = port["nodePort"].as_i64().unwrap_or(0);
        let n = if requested == 0 {
            free_node_port(taken, &used).ok_or_else(|| {
                ApiError::internal("the virtual cluster's node port range is full")
            })?
        } else if !NODE_PORTS.contains(&requested) {
            return Err(invalid(
                name,
                &format!("spec.ports[{i}].nodePort"),
                &format!("Invalid value: {requested}: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            ));
        } else if taken.node_ports.contains(&requested) || used.contains(&requested) {
            return Err(invalid(
                name,
                &format!("spec.ports[{i}].nodePort"),
                &format!("Invalid value: {requested}: provided port is already allocated"),
            ));
        } else {
            requested
        };
        used.insert(n);
        port["nodePort"] = json!(n);
    }
    Ok(())
}

fn free_ip(taken: &Taken) -> Option<String> {
    let mut rng = rand::rng();
    for _ in 0..64 {
        let n = NETWORK + rng.random_range(2..NETWORK_SIZE - 1);
        let ip = Ipv4Addr::from(n).to_string();
        if n != KUBERNETES && !taken.cluster_ips.contains(&ip) {
            return Some(ip);
        }
    }
    None
}

fn free_node_port(taken: &Taken, used: &HashSet<i64>) -> Option<i64> {
    let mut rng = rand::rng();
    for _ in 0..256 {
        let n = rng.random_range(NODE_PORTS);
        if !taken.node_ports.contains(&n) && !used.contains(&n) {
            return Some(n);
        }
    }
    NODE_PORTS
        .clone()
        .find(|n| !taken.node_ports.contains(n) && !used.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": spec})
    }

    #[test]
    fn types_and_ports_are_checked() {
        let taken = Taken::default();
        for (spec, message) in [
            (
                json!({"type": "Bogus", "ports": [{"port": 80}]}),
                "spec.type: Unsupported value: \"Bogus\"",
            ),
            (json!({"ports": []}), "spec.ports: Required value"),
            (
                json!({"ports": [{"port": 0}]}),
                "spec.ports[0].port: Invalid value: 0",
            ),
            (
                json!({"ports": [{"port": 70000}]}),
                "spec.ports[0].port: Invalid value: 70000",
            ),
            (
                json!({"ports": [{"port": 80, "protocol": "ICMP"}]}),
                "spec.ports[0].protocol: Unsupported value: \"ICMP\"",
            ),
            (
                json!({"ports": [{"port": 80}, {"port": 81}]}),
                "spec.ports[0].name: Required value",
            ),
            (
                json!({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
                "spec.ports[1].name: Duplicate value: \"a\"",
            ),
        ] {
            let err = on_create(&mut service(spec.clone()), &taken).unwrap_err();
            assert_eq!(err.code, kplex_registry::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains(message), "{spec}: {}", err.message);
        }
        // Headless services and ExternalNames need no ports.
        on_create(&mut service(json!({"clusterIP": "None"})), &taken).unwrap();
        on_create(
            &mut service(json!({"type": "ExternalName", "externalName": "db.example.com"})),
            &taken,
        )
        .unwrap();
    }

    #[test]
    fn node_ports_belong_to_node_port_services_only() {
        let taken = Taken::default();
        let mut cluster_ip = service(json!({"ports": [{"port": 80, "nodePort": 30001}]}));
        let err = on_create(&mut cluster_ip, &taken).unwrap_err();
        assert_eq!(
            err.message,
            "Service \"web\" is invalid: spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
        );
        let mut headless =
            service(json!({"type": "NodePort", "clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(on_create(&mut headless, &taken)
            .unwrap_err()
            .message
            .contains("may not be set to 'None'"));
        for edge in ["10.96.0.0", "10.111.255.255"] {
            let mut s = service(json!({"clusterIP": edge, "ports": [{"port": 80}]}));
            assert!(on_create(&mut s, &taken)
                .unwrap_err()
                .message
                .contains("not in the valid range"));
        }
        // NodePort → ClusterIP: the node ports go.
        let mut node_port = service(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        on_create(&mut node_port, &taken).unwrap();
        let mut patched = node_port.clone();
        patched["spec"]["type"] = json!("ClusterIP");
        on_update(&mut patched, &node_port, &taken).unwrap();
        assert!(
            patched["spec"]["ports"][0].get("nodePort").is_none(),
            "{patched}"
        );
        assert_eq!(patched["spec"]["clusterIP"], node_port["spec"]["clusterIP"]);
    }

    #[test]
    fn a_node_port_another_service_holds_is_refused() {
        let mut taken = Taken::default();
        let mut first =
            service(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}));
        on_create(&mut first, &taken).unwrap();
        taken.add(&first);
        let mut second =
            service(json!({"type": "NodePort", "ports": [{"port": 81, "nodePort": 30080}]}));
        let err = on_create(&mut second, &taken).unwrap_err();
        assert_eq!(err.code, kplex_registry::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.message.contains("spec.ports[0].nodePort")
                && err.message.contains("already allocated"),
            "{}",
            err.message
        );
        // Nor twice within one service.
        let mut twice = service(json!({"type": "NodePort", "ports": [
            {"name": "a", "port": 82, "nodePort": 30090}, {"name": "b", "port": 83, "nodePort": 30090}]}));
        assert!(on_create(&mut twice, &Taken::default()).is_err());
    }

    #[test]
    fn a_new_service_gets_defaults_and_a_free_cluster_ip() {
        let mut taken = Taken::default();
        let mut s = service(json!({"ports": [{"port": 80}]}));
        on_create(&mut s, &taken).unwrap();
        let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
        assert!((NETWORK + 2..NETWORK + NETWORK_SIZE).contains(&u32::from(ip)));
        assert_eq!(s["spec"]["clusterIPs"], json!([ip.to_string()]));
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert!(s["spec"]["ports"][0].get("nodePort").is_none());

        // The same address, asked for by another service: refused.
        taken.add(&s);
        let mut other = service(json!({"clusterIP": ip.to_string(), "ports": [{"port": 81}]}));
        let err = on_create(&mut other, &taken).unwrap_err();
        assert_eq!(err.code, kplex_registry::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("already allocated"), "{}", err.message);
        // Out of range, or not an address.
        for bad in ["192.168.0.1", "banana"] {
            let mut s = service(json!({"clusterIP": bad, "ports": [{"port": 80}]}));
            assert_eq!(
                on_create(&mut s, &taken).unwrap_err().code,
                kplex_registry::StatusCode::UNPROCESSABLE_ENTITY
            );
        }
    }

    #[test]
    fn headless_external_and_node_port_services() {
        let taken = Taken::default();
        let mut headless = service(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        on_create(&mut headless, &taken).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let mut external = service(json!({"type": "ExternalName", "externalName": "example.com"}));
        on_create(&mut external, &taken).unwrap();
        assert!(external["spec"].get("clusterIP").is_none());
        let mut node = service(
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443, "nodePort": 30443}]}),
        );
        on_create(&mut node, &taken).unwrap();
        let first = node["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!(NODE_PORTS.contains(&first));
        assert_eq!(node["spec"]["ports"][1]["nodePort"], 30443);
        let mut bad = service(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}));
        assert!(on_create(&mut bad, &taken).is_err());
    }

    #[test]
    fn updates_keep_allocated_values_and_refuse_a_new_cluster_ip() {
        let mut old = service(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        on_create(&mut old, &Taken::default()).unwrap();
        // What the VC's other services hold: not this one's own values.
        let taken = Taken::default();
        // kubectl replace without the allocated values: they are kept.
        let mut new = service(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        on_update(&mut new, &old, &taken).unwrap();
        assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
        assert_eq!(
            new["spec"]["ports"][0]["nodePort"],
            old["spec"]["ports"][0]["nodePort"]
        );
        let mut moved = service(json!({"clusterIP": "10.96.9.9", "ports": [{"port": 80}]}));
        let err = on_update(&mut moved, &old, &taken).unwrap_err();
        assert!(
            err.message.contains("may not change once set"),
            "{}",
            err.message
        );
    }
}
