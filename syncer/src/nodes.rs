//! Virtual Nodes: a VC sees a Node for each host Node that runs one of its
//! Pods — its name, labels, capacity and conditions — and no other; it
//! goes when the last of the VC's Pods there does. (A DaemonSet in the VC
//! then gets a Pod per such Node.) Only Nodes the syncer made (labelled
//! with their host cluster) are changed or deleted: a Node a tenant made
//! itself is left alone.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kplex_api::mapping::HOST_CLUSTER_LABEL;
use kplex_controllers::cache::ObjectKey;
use kplex_controllers::client::Propagation;

use crate::hosts::Host;
use crate::{Ctx, Outcome, Task};

/// A host Node changed: the virtual Nodes mirroring it are looked at
/// again.
pub fn host_node_changed(ctx: &Ctx, host: &Host, name: &str) {
    for vc in ctx.hosts.vcs_on(&host.name) {
        let key = ObjectKey::new(&vc, None, name);
        if ctx.nodes.get(&key).is_some() {
            ctx.queue.add(Task::Node(key));
        }
    }
}

/// The virtual Node mirroring host Node `node` of `host`.
fn mirror(host: &Host, node: &Node) -> Node {
    let mut labels = node.metadata.labels.clone().unwrap_or_default();
    labels.insert(HOST_CLUSTER_LABEL.to_owned(), host.name.clone());
    let status = node.status.as_ref().map(|s| NodeStatus {
        capacity: s.capacity.clone(),
        allocatable: s.allocatable.clone(),
        conditions: s.conditions.clone(),
        addresses: s.addresses.clone(),
        node_info: s.node_info.clone(),
        phase: s.phase.clone(),
        ..Default::default()
    });
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name.clone(),
            labels: Some(labels),
            ..Default::default()
        },
        spec: None,
        status,
    }
}

fn is_mirror(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(HOST_CLUSTER_LABEL))
}

/// Keeps the VC's virtual Node `key.name` as its host Node is, while one
/// of the VC's Pods runs there.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let tenant = ctx.nodes.get(key);
    let api = ctx.clients.vc::<Node>(&key.vc, None);
    let host = ctx.hosts.placement(&key.vc).ok();
    // Where the host runs the VC's Pods (not where a tenant says they
    // run: a Pod's nodeName is the tenant's to write, the host's Nodes are
    // not the tenant's to see).
    let runs_here = host.as_ref().is_some_and(|h| {
        h.pods.in_vc(&key.vc).iter().any(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(key.name.as_str())
        })
    });
    let source = host
        .as_ref()
        .and_then(|h| h.node(&key.name).map(|n| (h.clone(), n)));
    let (host, source) = match source {
        Some(found) if runs_here => found,
        _ => {
            if let Some(node) = tenant.filter(|n| is_mirror(n)) {
                api.delete(
                    &key.name,
                    Propagation::Background,
                    node.metadata.uid.as_deref(),
                )
                .await?;
                ctx.nodes.remove_deleted(key, node.metadata.uid.as_deref());
            }
            return Ok(None);
        }
    };
    let desired = mirror(&host, &source);
    let current = match tenant {
        Some(node) if !is_mirror(&node) => return Ok(None),
        Some(node) => node,
        None => {
            let created = match api.create(&desired).await {
                Ok(created) => created,
                Err(e) if e.is_status(409) => return Ok(Some(std::time::Duration::ZERO)),
                Err(e) => return Err(e),
            };
            ctx.nodes.upsert(&key.vc, created.clone());
            Arc::new(created)
        }
    };
    let mut updated = (*current).clone();
    if updated.metadata.labels != desired.metadata.labels {
        updated.metadata.labels = desired.metadata.labels.clone();
        updated = api.replace(&key.name, &updated).await?;
        ctx.nodes.upsert(&key.vc, updated.clone());
    }
    if updated.status != desired.status {
        updated.status = desired.status;
        ctx.nodes
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?;
    }
    Ok(None)
}
