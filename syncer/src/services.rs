//! Services: each tenant Service of a placed VC gets a copy on the host —
//! its ports, type, session affinity and traffic policies; its selector
//! with the VC's UID label added, so it selects only the VC's Pods in the
//! mapped namespace; no ClusterIP or node ports of its own (the host
//! allocates them) — held by a finalizer until the copy is gone. The host's
//! addresses come back (`services/<name>/clusterip`, a system-only
//! subresource) so the ClusterIP the tenant sees is the one that routes
//! from its Pods, with the load balancer status. A Service without a
//! selector gets the tenant's Endpoints of the same name copied.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service, ServiceSpec};
use kube::api::Api;
use serde_json::json;

use kplex_api::mapping::{self, OBJECT_UID_ANNOTATION};
use kplex_controllers::cache::ObjectKey;
use kplex_controllers::client::{is_status, Vc};
use kplex_controllers::Error;

use crate::hosts::Host;
use crate::pods::{ensure_namespace, host_meta, is_host_copy, post_params};
use crate::{Ctx, Outcome};

/// The host copy of tenant Service `service`.
pub fn host_service(vc: &Vc, ns: &str, service: &Service) -> Service {
    let spec = service.spec.clone().unwrap_or_default();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let selector = spec
        .selector
        .clone()
        .filter(|s| !s.is_empty())
        .map(|mut s| {
            s.insert(mapping::VC_UID_LABEL.to_owned(), vc.uid.to_string());
            s
        });
    let ports = spec.ports.clone().map(|ports| {
        ports
            .into_iter()
            .map(|mut p| {
                p.node_port = None;
                p
            })
            .collect()
    });
    let external_name = spec
        .external_name
        .as_deref()
        .and_then(|t| crate::isolation::external_name(vc, t).ok());
    let mut metadata = host_meta(vc, ns, &service.metadata);
    // `kplex dns` answers the tenant's own name (the host's names the
    // host's namespaces).
    if let (Some(_), Some(theirs)) = (&external_name, &spec.external_name) {
        metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                mapping::EXTERNAL_NAME_ANNOTATION.to_owned(),
                theirs.trim_end_matches('.').to_ascii_lowercase(),
            );
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: spec.type_.clone(),
            ports,
            selector,
            cluster_ip: headless.then(|| "None".to_owned()),
            external_name,
            session_affinity: spec.session_affinity.clone(),
            session_affinity_config: spec.session_affinity_config.clone(),
            external_traffic_policy: spec.external_traffic_policy.clone(),
            internal_traffic_policy: spec.internal_traffic_policy.clone(),
            publish_not_ready_addresses: spec.publish_not_ready_addresses,
            ip_families: spec.ip_families.clone(),
            ip_family_policy: spec.ip_family_policy.clone(),
            load_balancer_class: spec.load_balancer_class.clone(),
            load_balancer_source_ranges: spec.load_balancer_source_ranges.clone(),
            allocate_load_balancer_node_ports: spec.allocate_load_balancer_node_ports,
            traffic_distribution: spec.traffic_distribution.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// What of a host Service the syncer owns (its spec but for what the
/// host allocates): equal means nothing to repair.
fn owned_part(service: &Service) -> serde_json::Value {
    let mut spec =
        serde_json::to_value(service.spec.clone().unwrap_or_default()).unwrap_or_default();
    if let Some(spec) = spec.as_object_mut() {
        for field in ["clusterIP", "clusterIPs", "healthCheckNodePort"] {
            spec.remove(field);
        }
        if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
            for port in ports {
                if let Some(port) = port.as_object_mut() {
                    port.remove("nodePort");
                }
            }
        }
        // The host's defaults are the host's.
        for field in [
            "sessionAffinity",
            "internalTrafficPolicy",
            "externalTrafficPolicy",
            "ipFamilies",
            "ipFamilyPolicy",
            "type",
        ] {
            if spec.get(field).is_some_and(|v| v.is_null()) {
                spec.remove(field);
            }
        }
    }
    json!({
        "selector": spec.get("selector"),
        "ports": spec.get("ports"),
        "externalName": spec.get("externalName"),
    })
}

/// The host copy of a selector-less Service's Endpoints: only the
/// addresses the VC may name there ([`crate::isolation::endpoint_allowed`]).
fn host_endpoints(host: &Host, vc: &Vc, ns: &str, endpoints: &Endpoints) -> Endpoints {
    let allowed = |list: &mut Option<Vec<k8s_openapi::api::core::v1::EndpointAddress>>| {
        if let Some(addresses) = list.as_mut() {
            addresses.retain(|a| crate::isolation::endpoint_allowed(host, vc, &a.ip));
        }
    };
    let subsets = endpoints
        .subsets
        .clone()
        .map(|subsets| {
            subsets
                .into_iter()
                .filter_map(|mut subset| {
                    allowed(&mut subset.addresses);
                    allowed(&mut subset.not_ready_addresses);
                    let empty = |l: &Option<Vec<_>>| l.as_ref().is_none_or(Vec::is_empty);
                    (!(empty(&subset.addresses) && empty(&subset.not_ready_addresses)))
                        .then_some(subset)
                })
                .collect::<Vec<_>>()
        })
        // (None, as the host answers an empty list: no rewrite each look.)
        .filter(|s| !s.is_empty());
    Endpoints {
        metadata: host_meta(vc, ns, &endpoints.metadata),
        subsets,
    }
}

/// Syncs one tenant Service (and, without a selector, its Endpoints) with
/// the host.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let tenant = ctx.services.get(key);
    if tenant.as_ref().is_some_and(|s| is_host_copy(&s.metadata)) {
        return Ok(None);
    }
    let Ok(host) = ctx.hosts.placement(&key.vc) else {
        // Nothing on a host to wait for: the finalizer goes.
        if let Some(service) = tenant.filter(|s| s.metadata.deletion_timestamp.is_some()) {
            let api = ctx.clients.vc::<Service>(&key.vc, key.namespace.as_deref());
            crate::pods::release(api, &ctx.services, key, &*service).await?;
        }
        return Ok(None);
    };
    let copy = host.services.get(key);
    let Some(service) = tenant else {
        if let Some(copy) = copy {
            crate::pods::delete_owned(&host_api_of(&host, key), &copy.metadata).await?;
        }
        return Ok(None);
    };
    let api = ctx.clients.vc::<Service>(&key.vc, key.namespace.as_deref());
    let uid = service.metadata.uid.as_deref();
    if service.metadata.deletion_timestamp.is_some() {
        if let Some(copy) = copy {
            crate::pods::delete_owned(&host_api_of(&host, key), &copy.metadata).await?;
            return Ok(None);
        }
        sync_endpoints(&host, key, None).await?;
        ctx.forget(uid.unwrap_or_default());
        return crate::pods::release(api, &ctx.services, key, &*service).await;
    }
    if let Some(copy) = copy.as_ref().filter(|c| {
        c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OBJECT_UID_ANNOTATION))
            .map(String::as_str)
            != uid
    }) {
        crate::pods::delete_owned(&host_api_of(&host, key), &copy.metadata).await?;
        return Ok(None);
    }
    if !crate::pods::has_finalizer(&service.metadata) {
        crate::pods::hold(api, &ctx.services, key, &*service).await?;
        return Ok(None);
    }
    // An ExternalName a shared proxy of the host would follow into another
    // VC is not copied (and a copy made before goes).
    if let Some(Err(why)) = service
        .spec
        .as_ref()
        .and_then(|s| s.external_name.as_deref())
        .map(|t| crate::isolation::external_name(&key.vc, t))
    {
        if let Some(copy) = copy {
            crate::pods::delete_owned(&host_api_of(&host, key), &copy.metadata).await?;
        }
        let uid = uid.unwrap_or_default();
        if ctx.reported(uid, &why) {
            ctx.events.warning(
                key,
                "Service",
                uid,
                "ExternalNameRefused",
                &format!("not copied to the host: {why}"),
            );
        }
        return Ok(None);
    }
    let desired = host_service(&key.vc, key.ns(), &service);
    let selectorless = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_none_or(|s| s.is_empty());
    let host_api = host_api_of(&host, key);
    let copy = match copy {
        None => {
            ensure_namespace(ctx, &host, &key.vc, key.ns()).await?;
            match host_api.create(&post_params(), &desired).await {
                Ok(created) => {
                    host.services.upsert_host(created.clone());
                    Arc::new(created)
                }
                Err(e) if is_status(&e, 409) => {
                    let existing = host_api.get(&key.name).await.map_err(Error::Api)?;
                    if !mapping::owned_by(existing.metadata.labels.as_ref(), &key.vc.uid) {
                        tracing::warn!(service = %key, host = %host.name, "a host Service of that name was not placed by kplex; left alone");
                        return Ok(Some(std::time::Duration::from_secs(30)));
                    }
                    host.services.upsert_host(existing);
                    return Ok(None);
                }
                Err(e) => return Err(Error::Api(e)),
            }
        }
        Some(copy)
            if owned_part(&copy) != owned_part(&desired)
                || !crate::pods::holds(&copy.metadata.labels, &desired.metadata.labels)
                || !crate::pods::holds(
                    &copy.metadata.annotations,
                    &desired.metadata.annotations,
                ) =>
        {
            let mut fixed = (*copy).clone();
            fixed
                .metadata
                .labels
                .get_or_insert_with(Default::default)
                .extend(desired.metadata.labels.clone().unwrap_or_default());
            fixed
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .extend(desired.metadata.annotations.clone().unwrap_or_default());
            if let (Some(spec), Some(want)) = (fixed.spec.as_mut(), desired.spec.as_ref()) {
                spec.selector = want.selector.clone();
                spec.external_name = want.external_name.clone();
                // Ports as the tenant has them, node ports as the host gave.
                let given: Vec<Option<i32>> =
                    spec.ports.iter().flatten().map(|p| p.node_port).collect();
                spec.ports = want.ports.clone().map(|ports| {
                    ports
                        .into_iter()
                        .zip(given.into_iter().chain(std::iter::repeat(None)))
                        .map(|(mut p, n)| {
                            p.node_port = n;
                            p
                        })
                        .collect()
                });
            }
            match host_api.replace(&key.name, &post_params(), &fixed).await {
                Ok(written) => {
                    host.services.upsert_host(written.clone());
                    Arc::new(written)
                }
                Err(e) if is_status(&e, 404) => return Ok(Some(std::time::Duration::ZERO)),
                Err(e) => return Err(Error::Api(e)),
            }
        }
        Some(copy) => copy,
    };
    let endpoints = selectorless.then(|| ctx.endpoints.get(key)).flatten();
    sync_endpoints(&host, key, endpoints.as_deref()).await?;
    upsync(ctx, key, &service, &copy).await
}

/// The host's addresses and load balancer status, onto the tenant's
/// Service.
async fn upsync(ctx: &Ctx, key: &ObjectKey, service: &Service, copy: &Service) -> Outcome {
    let api = ctx.clients.vc::<Service>(&key.vc, key.namespace.as_deref());
    let (tenant_spec, host_spec) = (
        service.spec.clone().unwrap_or_default(),
        copy.spec.clone().unwrap_or_default(),
    );
    let node_ports = |spec: &ServiceSpec| -> Vec<Option<i32>> {
        spec.ports.iter().flatten().map(|p| p.node_port).collect()
    };
    let host_ip = host_spec
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty() && ip != "None");
    if let Some(ip) = host_ip {
        let differs = tenant_spec.cluster_ip.as_deref() != Some(ip.as_str())
            || tenant_spec.cluster_ips != host_spec.cluster_ips
            || node_ports(&tenant_spec) != node_ports(&host_spec);
        if differs {
            let body = json!({
                "clusterIP": ip,
                "clusterIPs": host_spec.cluster_ips,
                "nodePorts": node_ports(&host_spec),
            });
            match api.put_subresource("clusterip", &key.name, &body).await {
                Ok(written) => {
                    ctx.services.upsert(&key.vc, written);
                }
                Err(e) if e.is_status(404) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
    if let Some(status) = copy.status.clone() {
        let current = ctx
            .services
            .get(key)
            .unwrap_or_else(|| Arc::new(service.clone()));
        if current.status.as_ref() != Some(&status) {
            let mut updated = (*current).clone();
            updated.status = Some(status);
            ctx.services
                .write_status(&api, &key.vc, &key.name, &updated)
                .await?;
        }
    }
    Ok(None)
}

/// A selector-less Service's Endpoints: the tenant's copied, or the copy
/// removed.
async fn sync_endpoints(
    host: &Host,
    key: &ObjectKey,
    tenant: Option<&Endpoints>,
) -> Result<(), Error> {
    let api: Api<Endpoints> = Api::namespaced(
        host.client.clone(),
        &mapping::host_namespace(&key.vc.name, key.ns()),
    );
    // Only Endpoints the syncer made: the host's endpoints controller makes
    // its own for Services with a selector (with their labels).
    let copy = host.endpoints.get(key).filter(|e| {
        e.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(OBJECT_UID_ANNOTATION))
    });
    match (tenant, copy) {
        (None, Some(copy)) => crate::pods::delete_owned(&api, &copy.metadata).await,
        (None, None) => Ok(()),
        (Some(tenant), None) => {
            let desired = host_endpoints(host, &key.vc, key.ns(), tenant);
            match api.create(&post_params(), &desired).await {
                Ok(created) => {
                    host.endpoints.upsert_host(created);
                    Ok(())
                }
                // Another's, or ours not yet seen: the next look decides.
                Err(e) if is_status(&e, 409) => Ok(()),
                Err(e) => Err(Error::Api(e)),
            }
        }
        (Some(tenant), Some(copy)) => {
            let desired = host_endpoints(host, &key.vc, key.ns(), tenant);
            if desired.subsets == copy.subsets && desired.metadata.labels == copy.metadata.labels {
                return Ok(());
            }
            let mut fixed = desired;
            fixed.metadata.resource_version = copy.metadata.resource_version.clone();
            match api.replace(&key.name, &post_params(), &fixed).await {
                Ok(written) => {
                    host.endpoints.upsert_host(written);
                    Ok(())
                }
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
                Err(e) => Err(Error::Api(e)),
            }
        }
    }
}

/// The host API of Services in `key`'s mapped namespace.
fn host_api_of(host: &Host, key: &ObjectKey) -> Api<Service> {
    Api::namespaced(
        host.client.clone(),
        &mapping::host_namespace(&key.vc.name, key.ns()),
    )
}
