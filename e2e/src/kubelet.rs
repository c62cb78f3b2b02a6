//! A stand-in for the kubelet and scheduler, for tests where Pods must
//! "run": it watches the Pods of a VC (or of a host) through the API and
//! writes their status as a kubelet would — phase, conditions, a Pod IP,
//! container statuses — through the `status` subresource. What it does
//! with each Pod is the test's choice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

/// What the stand-in does with a Pod it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Leave it as it is (Pending, or whatever it was marked).
    Hold,
    /// Running and Ready.
    Ready,
    /// Finished: Succeeded.
    Succeed,
    /// Finished: Failed.
    Fail,
}

/// The kube-rs client of a kubeconfig file.
pub async fn client_of(path: &std::path::Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a usable kubeconfig");
    kube::Client::try_from(config).expect("a client")
}

/// Pod IPs handed out, across stand-ins (unique within a test process).
static NEXT_IP: AtomicU32 = AtomicU32::new(1);

fn next_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    format!("10.244.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

/// Writes `fate` into the Pod's status (nothing for [`Fate::Hold`]).
pub async fn set_fate(client: &kube::Client, pod: &Pod, fate: Fate) -> Result<(), kube::Error> {
    let (phase, ready) = match fate {
        Fate::Hold => return Ok(()),
        Fate::Ready => ("Running", true),
        Fate::Succeed => ("Succeeded", false),
        Fate::Fail => ("Failed", false),
    };
    let ns = pod.namespace().unwrap_or_default();
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(next_ip);
    let now = "2026-01-01T00:00:00Z";
    let containers: Vec<serde_json::Value> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let state = match fate {
                Fate::Ready => json!({"running": {"startedAt": now}}),
                Fate::Succeed => json!({"terminated": {"exitCode": 0, "reason": "Completed"}}),
                _ => json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
            };
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": ready,
                   "restartCount": 0, "started": ready, "state": state})
        })
        .collect();
    let status = json!({"status": {
        "phase": phase,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "192.168.0.10",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": containers,
    }});
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map(|_| ())
}

/// Binds `pod` to `node`, as a scheduler does.
pub async fn bind(client: &kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod.name_any()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    api.create_subresource::<_, serde_json::Value>(
        "binding",
        &pod.name_any(),
        &Default::default(),
        &binding,
    )
    .await
    .map(|_| ())
}

/// Whether the stand-in already wrote this Pod's status.
fn handled(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p != "Pending")
}

/// The stand-in, running until dropped.
pub struct FakeKubelet {
    task: tokio::task::JoinHandle<()>,
    /// Pods it has written status for.
    pub handled: Arc<AtomicU32>,
}

impl FakeKubelet {
    /// Starts marking every new Pod of the client's cluster as `decide`
    /// says.
    pub fn start(
        client: kube::Client,
        decide: impl Fn(&Pod) -> Fate + Send + Sync + 'static,
    ) -> FakeKubelet {
        FakeKubelet::start_on(client, None, decide)
    }

    /// As [`FakeKubelet::start`], and as the scheduler first: each Pod not
    /// yet on a Node is bound to `node` (`pods/binding`) before its status
    /// is written.
    pub fn start_on(
        client: kube::Client,
        node: Option<String>,
        decide: impl Fn(&Pod) -> Fate + Send + Sync + 'static,
    ) -> FakeKubelet {
        let handled_count = Arc::new(AtomicU32::new(0));
        let count = handled_count.clone();
        let task = tokio::spawn(async move {
            let api: Api<Pod> = Api::all(client.clone());
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    _ => continue,
                };
                if handled(&pod) || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let fate = decide(&pod);
                let unbound = pod.spec.as_ref().is_none_or(|s| s.node_name.is_none());
                if let (Some(node), true, true) = (&node, unbound, fate != Fate::Hold) {
                    if bind(&client, &pod, node).await.is_err() {
                        continue;
                    }
                }
                if fate != Fate::Hold && set_fate(&client, &pod, fate).await.is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        FakeKubelet {
            task,
            handled: handled_count,
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}
