//! The EndpointSlice and Endpoints controllers: for each Service with a
//! selector, the addresses of the Pods it selects (with an IP, not
//! finished), ready when the Pod is Ready and not terminating, on the
//! Service's ports resolved against each Pod's container ports. Slices hold
//! at most 100 endpoints and are owned by their Service; the Endpoints
//! object carries the same addresses for older clients. Services without a
//! selector are left alone: their endpoints are their owner's to write.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::cache::ObjectKey;
use crate::client::Propagation;
use crate::pods;
use crate::{Ctx, Error, Outcome};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Most endpoints in one slice (kube's default).
const PER_SLICE: usize = 100;

/// A Service port resolved against a Pod: (name, protocol, port).
type Resolved = (Option<String>, String, i32);

fn resolve_ports(service: &Service, pod: &Pod) -> Option<Vec<Resolved>> {
    let ports = service.spec.as_ref()?.ports.clone().unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for port in ports {
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
        let number = match port
            .target_port
            .clone()
            .unwrap_or(IntOrString::Int(port.port))
        {
            IntOrString::Int(n) => n,
            IntOrString::String(name) => containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)?,
        };
        out.push((port.name.clone(), protocol, number));
    }
    Some(out)
}

fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .pod_ip
        .clone()
        .filter(|ip| !ip.is_empty())
}

fn address_type(ip: &str) -> &'static str {
    if ip.contains(':') {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn target(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Reconciles one Service's endpoints.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let endpoints_api = ctx
        .clients
        .vc::<Endpoints>(&key.vc, key.namespace.as_deref());
    let Some(service) = ctx.services.get(key) else {
        // The Service is gone: so are its Endpoints (slices go with their owner).
        let ours = endpoints_api
            .get_opt(&key.name)
            .await?
            .filter(|e| e.labels().contains_key(SKIP_MIRROR_LABEL));
        if let Some(e) = ours {
            endpoints_api
                .delete(
                    &key.name,
                    Propagation::Background,
                    e.metadata.uid.as_deref(),
                )
                .await?;
        }
        return Ok(None);
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.selector.as_ref().is_none_or(|s| s.is_empty())
        || service.metadata.deletion_timestamp.is_some()
    {
        return Ok(None);
    }
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    // Pods grouped by their resolved ports (and address family).
    let mut groups: BTreeMap<(Vec<Resolved>, &'static str), Vec<Arc<Pod>>> = BTreeMap::new();
    let mut selected: Vec<Arc<Pod>> = ctx
        .pods
        .in_namespace(&key.vc, key.namespace.as_deref())
        .into_iter()
        .filter(|p| pods::service_selects(&service, p.metadata.labels.as_ref()))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    selected.sort_by_key(|p| p.name_any());
    for pod in selected {
        let (Some(ip), Some(ports)) = (pod_ip(&pod), resolve_ports(&service, &pod)) else {
            continue;
        };
        groups
            .entry((ports, address_type(&ip)))
            .or_default()
            .push(pod);
    }
    let ready = |p: &Pod| {
        (pods::is_ready(p) || publish_not_ready) && p.metadata.deletion_timestamp.is_none()
    };
    let owner = pods::controller_ref(service.as_ref());
    // Slices.
    let mut desired: Vec<EndpointSlice> = Vec::new();
    for ((ports, family), members) in &groups {
        for chunk in members.chunks(PER_SLICE) {
            let endpoints = chunk
                .iter()
                .map(|p| {
                    let spec = p.spec.as_ref();
                    let hostname = spec
                        .filter(|s| s.subdomain.as_deref() == Some(key.name.as_str()))
                        .and_then(|s| s.hostname.clone());
                    Endpoint {
                        addresses: vec![pod_ip(p).unwrap_or_default()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready(p)),
                            serving: Some(pods::is_ready(p) || publish_not_ready),
                            terminating: Some(p.metadata.deletion_timestamp.is_some()),
                        }),
                        hostname,
                        node_name: spec.and_then(|s| s.node_name.clone()),
                        target_ref: Some(target(p)),
                        ..Default::default()
                    }
                })
                .collect();
            desired.push(EndpointSlice {
                metadata: ObjectMeta::default(),
                address_type: (*family).into(),
                endpoints,
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, protocol, port)| EndpointPort {
                            name: Some(name.clone().unwrap_or_default()),
                            protocol: Some(protocol.clone()),
                            port: Some(*port),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    let slices_api = ctx
        .clients
        .vc::<EndpointSlice>(&key.vc, key.namespace.as_deref());
    let mut existing = ctx.slices.controlled_by(&key.vc, &owner.uid);
    existing.sort_by_key(|s| s.name_any());
    let labels: BTreeMap<String, String> = service
        .labels()
        .clone()
        .into_iter()
        .chain([
            (SERVICE_NAME_LABEL.to_owned(), key.name.clone()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        ])
        .collect();
    for (i, mut slice) in desired.into_iter().enumerate() {
        match existing.get(i) {
            Some(current)
                if current.endpoints == slice.endpoints
                    && current.ports == slice.ports
                    && current.address_type == slice.address_type
                    && current.metadata.labels.as_ref() == Some(&labels) => {}
            Some(current) => {
                slice.metadata = current.metadata.clone();
                slice.metadata.labels = Some(labels.clone());
                let written = slices_api.replace(&current.name_any(), &slice).await?;
                ctx.slices.upsert(&key.vc, written);
            }
            None => {
                slice.metadata = ObjectMeta {
                    generate_name: Some(format!("{}-", key.name)),
                    namespace: key.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                };
                let written = slices_api.create(&slice).await?;
                ctx.slices.upsert(&key.vc, written);
            }
        }
    }
    let wanted = groups
        .values()
        .map(|m| m.len().div_ceil(PER_SLICE))
        .sum::<usize>();
    for extra in existing.iter().skip(wanted) {
        slices_api
            .delete(
                &extra.name_any(),
                Propagation::Background,
                extra.metadata.uid.as_deref(),
            )
            .await?;
        ctx.slices.remove_deleted(
            &ObjectKey::new(&key.vc, key.namespace.as_deref(), &extra.name_any()),
            extra.metadata.uid.as_deref(),
        );
    }
    write_endpoints(ctx, key, &service, &groups, &ready).await?;
    Ok(None)
}

/// The Endpoints object: one subset per set of ports.
async fn write_endpoints(
    ctx: &Ctx,
    key: &ObjectKey,
    service: &Service,
    groups: &BTreeMap<(Vec<Resolved>, &'static str), Vec<Arc<Pod>>>,
    ready: &(dyn Fn(&Pod) -> bool + Sync),
) -> Result<(), Error> {
    let mut subsets: Vec<EndpointSubset> = Vec::new();
    for ((ports, _), members) in groups {
        let address = |p: &Pod| EndpointAddress {
            ip: pod_ip(p).unwrap_or_default(),
            node_name: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target(p)),
            hostname: None,
        };
        let addresses: Vec<EndpointAddress> = members
            .iter()
            .filter(|p| ready(p))
            .map(|p| address(p))
            .collect();
        let not_ready: Vec<EndpointAddress> = members
            .iter()
            .filter(|p| !ready(p))
            .map(|p| address(p))
            .collect();
        subsets.push(EndpointSubset {
            addresses: (!addresses.is_empty()).then_some(addresses),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, protocol, port)| CorePort {
                        name: name.clone(),
                        port: *port,
                        protocol: Some(protocol.clone()),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        });
    }
    let mut labels = service.labels().clone();
    labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
    let api = ctx
        .clients
        .vc::<Endpoints>(&key.vc, key.namespace.as_deref());
    let subsets = (!subsets.is_empty()).then_some(subsets);
    match api.get_opt(&key.name).await? {
        Some(current)
            if current.subsets == subsets && current.metadata.labels.as_ref() == Some(&labels) => {}
        Some(mut current) => {
            current.subsets = subsets;
            current.metadata.labels = Some(labels);
            api.replace(&key.name, &current).await?;
        }
        None => {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(key.name.clone()),
                    namespace: key.namespace.clone(),
                    labels: Some(labels),
                    ..Default::default()
                },
                subsets,
            };
            match api.create(&endpoints).await {
                Ok(_) => {}
                Err(e) if e.is_status(409) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
