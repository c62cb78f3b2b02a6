//! Events: what the host says about a VC's Pods (scheduled, pulling,
//! started, failing) is what `kubectl get events` and `describe pod` show
//! in the VC. Each host Event about a host copy of a Pod becomes an Event
//! of the same name in the tenant namespace, about the tenant's Pod; later
//! changes to it (count, last time, message) follow.

use std::sync::{Arc, Weak};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::watcher;
use serde_json::json;

use kplex_api::mapping::OBJECT_UID_ANNOTATION;
use kplex_controllers::cache::ObjectKey;

use crate::hosts::Host;
use crate::{Ctx, Outcome, Task};

/// Watches the host's Events; those about Pods in kplex's namespaces are
/// queued for their VC. Ends when the host is disconnected.
pub async fn watch(ctx: Arc<Ctx>, host: Weak<Host>, client: kube::Client) {
    use kube::runtime::WatchStreamExt;
    // Only what happens from now on: old Events of a restarted syncer's
    // host were copied before.
    let config = watcher::Config::default();
    let events = watcher(Api::<Event>::all(client), config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut listed = false;
    while let Some(event) = events.next().await {
        let Some(host) = host.upgrade() else {
            return;
        };
        let event = match event {
            Ok(watcher::Event::Apply(e)) => e,
            Ok(watcher::Event::InitApply(e)) if listed => e,
            Ok(watcher::Event::InitDone) => {
                listed = true;
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(host = %host.name, error = %e, "watching host events failed");
                continue;
            }
        };
        let involved = &event.involved_object;
        if involved.kind.as_deref() != Some("Pod") {
            continue;
        }
        let Some(host_ns) = event.metadata.namespace.clone() else {
            continue;
        };
        let owner = host
            .namespace_owners
            .read()
            .expect("owners lock")
            .get(&host_ns)
            .cloned();
        let Some((vc, tenant_ns)) = owner else {
            continue;
        };
        let key = ObjectKey::new(
            &vc,
            Some(&tenant_ns),
            event.metadata.name.as_deref().unwrap_or_default(),
        );
        host.pending_events
            .lock()
            .expect("events lock")
            .insert(key.clone(), Arc::new(event));
        ctx.queue.add(Task::Event(key));
    }
}

/// Copies one host Event to the VC, about the tenant's Pod.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    // Taken from whichever host holds it (a VC may have moved meanwhile).
    let mut pending = None;
    for host in ctx.hosts.all() {
        if let Some(event) = host.pending_events.lock().expect("events lock").remove(key) {
            pending = Some(event);
        }
    }
    let Ok(host) = ctx.hosts.placement(&key.vc) else {
        return Ok(None);
    };
    let Some(event) = pending else {
        return Ok(None);
    };
    let involved = &event.involved_object;
    let pod_name = involved.name.clone().unwrap_or_default();
    let pod_key = ObjectKey::new(&key.vc, key.namespace.as_deref(), &pod_name);
    // The Event must be about this VC's copy of this Pod.
    let (Some(pod), Some(copy)) = (ctx.pods.get(&pod_key), host.pods.get(&pod_key)) else {
        return Ok(None);
    };
    let copies = copy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OBJECT_UID_ANNOTATION))
        == pod.metadata.uid.as_ref();
    if involved.uid.is_some() && involved.uid != copy.metadata.uid || !copies {
        return Ok(None);
    }
    let tenant = Event {
        metadata: ObjectMeta {
            name: Some(key.name.clone()),
            namespace: key.namespace.clone(),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod_name.clone()),
            namespace: key.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: involved.field_path.clone(),
        },
        reason: event.reason.clone(),
        message: event.message.clone(),
        type_: event.type_.clone(),
        count: event.count,
        first_timestamp: event.first_timestamp.clone(),
        last_timestamp: event.last_timestamp.clone(),
        event_time: event.event_time.clone(),
        source: event.source.clone(),
        reporting_component: event.reporting_component.clone(),
        reporting_instance: event.reporting_instance.clone(),
        action: event.action.clone(),
        ..Default::default()
    };
    let api = ctx.clients.vc::<Event>(&key.vc, key.namespace.as_deref());
    match api.create(&tenant).await {
        Ok(_) => Ok(None),
        Err(e) if e.is_status(409) => {
            let patch = json!({
                "count": tenant.count,
                "message": tenant.message,
                "lastTimestamp": tenant.last_timestamp,
                "eventTime": tenant.event_time,
            });
            match api.merge(&key.name, &patch).await {
                Ok(_) => Ok(None),
                Err(e) if e.is_status(404) => Ok(None),
                Err(e) => Err(e),
            }
        }
        // The namespace is going, or the Pod's VC: nothing to tell.
        Err(e) if e.is_status(404) || e.is_status(403) => Ok(None),
        Err(e) => Err(e),
    }
}
