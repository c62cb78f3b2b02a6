//! Events about the objects the controllers act on (`kubectl describe`
//! shows them): written by one task from a bounded queue, so a flood of
//! work never waits on its events, and events beyond the queue are
//! dropped (as client-go's broadcaster drops them under pressure).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::mpsc;

use crate::cache::ObjectKey;
use crate::client::Clients;

/// Events waiting to be written.
const QUEUED: usize = 1024;

/// The component the controllers' events come from.
const COMPONENT: &str = "kplex-controllers";

struct Pending {
    key: ObjectKey,
    kind: String,
    uid: String,
    type_: &'static str,
    reason: String,
    message: String,
}

/// Records events; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Pending>,
}

impl Recorder {
    /// A recorder writing through `clients` (one task, started here).
    pub fn new(clients: Clients) -> Recorder {
        Recorder::of(clients, COMPONENT)
    }

    /// A recorder whose events name `component` as their source.
    pub fn of(clients: Clients, component: &'static str) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUED);
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                write(&clients, component, p).await;
            }
        });
        Recorder { tx }
    }

    /// A `Normal` event about the object at `key` (of `kind`, with `uid`).
    pub fn normal(&self, key: &ObjectKey, kind: &str, uid: &str, reason: &str, message: &str) {
        self.record(key, kind, uid, "Normal", reason, message);
    }

    /// A `Warning` event.
    pub fn warning(&self, key: &ObjectKey, kind: &str, uid: &str, reason: &str, message: &str) {
        self.record(key, kind, uid, "Warning", reason, message);
    }

    fn record(
        &self,
        key: &ObjectKey,
        kind: &str,
        uid: &str,
        type_: &'static str,
        reason: &str,
        message: &str,
    ) {
        let _ = self.tx.try_send(Pending {
            key: key.clone(),
            kind: kind.to_owned(),
            uid: uid.to_owned(),
            type_,
            reason: reason.to_owned(),
            message: message.to_owned(),
        });
    }
}

fn api_version_of(kind: &str) -> &'static str {
    match kind {
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "ControllerRevision" => {
            "apps/v1"
        }
        "Job" | "CronJob" => "batch/v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => "v1",
    }
}

async fn write(clients: &Clients, component: &'static str, p: Pending) {
    let now = crate::pods::now();
    // Events of cluster-scoped objects live in `default`, as kube's.
    let ns = p.key.namespace.clone().unwrap_or_else(|| "default".into());
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", p.key.name, now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version_of(&p.kind).into()),
            kind: Some(p.kind),
            name: Some(p.key.name.clone()),
            namespace: p.key.namespace.clone(),
            uid: Some(p.uid),
            ..Default::default()
        },
        reason: Some(p.reason),
        message: Some(p.message),
        type_: Some(p.type_.into()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        first_timestamp: Some(crate::pods::time(now)),
        last_timestamp: Some(crate::pods::time(now)),
        count: Some(1),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        ..Default::default()
    };
    if let Err(e) = clients
        .vc::<Event>(&p.key.vc, Some(&ns))
        .create(&event)
        .await
    {
        tracing::debug!(key = %p.key, error = %e, "event not recorded");
    }
}
