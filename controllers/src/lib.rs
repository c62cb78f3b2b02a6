//! One set of controllers for every virtual cluster.
//!
//! A client of kplex over HTTPS, like any controller: it watches each
//! resource type once for all VCs (`/clusters/*/…`, a system credential),
//! keeps what it needs per object (never per VC), and writes to each
//! object's own VC. The controllers are kube-controller-manager's, with its
//! semantics, status fields and conditions: Deployments, ReplicaSets,
//! ReplicationControllers, StatefulSets, DaemonSets, Jobs, CronJobs, the
//! garbage collector, EndpointSlices and Endpoints, ResourceQuota usage and
//! the `kube-root-ca.crt` ConfigMap of every namespace.
//!
//! Each is a level-triggered reconcile of one object (keyed by VC,
//! namespace and name), fed by the watches, run by workers from one work
//! queue that serves VCs round-robin (`queue`). With several kplex
//! processes, one runs the controllers at a time (`leader`).

pub mod cache;
pub mod client;
pub mod cron;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod job;
pub mod leader;
pub mod pods;
pub mod queue;
pub mod quota;
pub mod replicaset;
pub mod rootca;
pub mod statefulset;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Node, PersistentVolumeClaim, Pod, ReplicationController, ResourceQuota, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use cache::{Cache, ObjectKey};
use client::{Clients, Vc};
use queue::{Work, WorkQueue};

/// What can go wrong in a controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with a failure (or could not be reached).
    #[error("{0}")]
    Api(kube::Error),
    /// A request could not be built.
    #[error("building a request: {0}")]
    Request(String),
    /// The configuration (kubeconfig) is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    fn client(e: kube::Error) -> Error {
        Error::Config(e.to_string())
    }

    fn request(e: kube::core::request::Error) -> Error {
        Error::Request(e.to_string())
    }

    fn json(e: serde_json::Error) -> Error {
        Error::Request(e.to_string())
    }

    /// Whether this is a 409 (a write raced another: read again, retry).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(e) if client::is_status(e, 409))
    }

    /// Whether this is an API answer with `code`.
    pub fn is_status(&self, code: u16) -> bool {
        matches!(self, Error::Api(e) if client::is_status(e, code))
    }
}

/// How the controllers reach kplex.
#[derive(Clone)]
pub struct Options {
    /// A system credential's configuration; the server is kplex's root URL.
    pub config: kube::Config,
    /// The CA bundle every VC's `kube-root-ca.crt` carries.
    pub ca_pem: String,
    /// Workers reconciling at once, over all VCs.
    pub workers: usize,
    /// Items one VC may have in flight at once.
    pub per_vc: usize,
    /// Who this process is, in the leader-election Lease.
    pub identity: String,
    /// Called once the caches have their first listing (the `kplex`
    /// binary asks its allocator to give back what the listing's burst
    /// left free).
    pub on_synced: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Options {
    /// Options from a kubeconfig's text (`kplex serve
    /// --write-system-kubeconfig controllers=…` writes one).
    pub async fn from_kubeconfig_text(text: &str) -> Result<Options, String> {
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(text).map_err(|e| format!("kubeconfig: {e}"))?;
        let ca_pem = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.certificate_authority_data.as_deref())
            .map(|data| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| format!("kubeconfig CA: {e}"))
                    .and_then(|pem| String::from_utf8(pem).map_err(|e| e.to_string()))
            })
            .transpose()?
            .unwrap_or_default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| format!("kubeconfig: {e}"))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "kplex".into());
        Ok(Options {
            config,
            ca_pem,
            workers: 64,
            per_vc: 4,
            identity: format!("{host}-{}-{:08x}", std::process::id(), rand_u32()),
            on_synced: None,
        })
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

/// One unit of work: which controller, and the object it reconciles.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// A ReplicaSet.
    ReplicaSet(ObjectKey),
    /// A ReplicationController.
    ReplicationController(ObjectKey),
    /// A Deployment.
    Deployment(ObjectKey),
    /// A StatefulSet.
    StatefulSet(ObjectKey),
    /// A DaemonSet.
    DaemonSet(ObjectKey),
    /// A Job.
    Job(ObjectKey),
    /// A CronJob.
    CronJob(ObjectKey),
    /// A Service's EndpointSlices and Endpoints.
    Endpoints(ObjectKey),
    /// A namespace's `kube-root-ca.crt` (the key's name is the namespace).
    RootCa(ObjectKey),
    /// A ResourceQuota's usage.
    Quota(ObjectKey),
    /// The garbage collector's look at one object.
    Collect(gc::Item),
}

impl Work for Task {
    fn vc(&self) -> &Vc {
        match self {
            Task::ReplicaSet(k)
            | Task::ReplicationController(k)
            | Task::Deployment(k)
            | Task::StatefulSet(k)
            | Task::DaemonSet(k)
            | Task::Job(k)
            | Task::CronJob(k)
            | Task::Endpoints(k)
            | Task::RootCa(k)
            | Task::Quota(k) => &k.vc,
            Task::Collect(item) => &item.vc,
        }
    }
}

/// What every reconcile can reach.
pub struct Ctx {
    /// The clients.
    pub clients: Clients,
    /// The one work queue.
    pub queue: Arc<WorkQueue<Task>>,
    /// Pods of every VC.
    pub pods: Arc<Cache<Pod>>,
    /// ReplicaSets of every VC.
    pub replicasets: Arc<Cache<ReplicaSet>>,
    /// ReplicationControllers of every VC.
    pub rcs: Arc<Cache<ReplicationController>>,
    /// Deployments of every VC.
    pub deployments: Arc<Cache<Deployment>>,
    /// StatefulSets of every VC.
    pub statefulsets: Arc<Cache<StatefulSet>>,
    /// DaemonSets of every VC.
    pub daemonsets: Arc<Cache<DaemonSet>>,
    /// ControllerRevisions of every VC.
    pub revisions: Arc<Cache<ControllerRevision>>,
    /// Jobs of every VC.
    pub jobs: Arc<Cache<Job>>,
    /// CronJobs of every VC.
    pub cronjobs: Arc<Cache<CronJob>>,
    /// Services of every VC.
    pub services: Arc<Cache<Service>>,
    /// EndpointSlices of every VC.
    pub slices: Arc<Cache<EndpointSlice>>,
    /// (Virtual) Nodes of every VC.
    pub nodes: Arc<Cache<Node>>,
    /// PersistentVolumeClaims of every VC.
    pub claims: Arc<Cache<PersistentVolumeClaim>>,
    /// ResourceQuotas of every VC.
    pub quotas: Arc<Cache<ResourceQuota>>,
    /// The garbage collector's graph of owners and dependents.
    pub graph: Arc<gc::Graph>,
    /// Events about the objects reconciled.
    pub events: events::Recorder,
    /// The CA bundle of `kube-root-ca.crt`.
    pub ca_pem: String,
    /// Consecutive failures per task, while it fails.
    failures: Arc<queue::Backoff<Task>>,
}

/// What a reconcile asks for next.
pub type Outcome = Result<Option<Duration>, Error>;

impl Ctx {
    /// Drops everything held of `vc`, which was deleted (see
    /// [`cache::Cache::forget_vc`]).
    pub fn forget_vc(&self, vc: &Vc) {
        let dropped = self.pods.forget_vc(vc)
            + self.replicasets.forget_vc(vc)
            + self.rcs.forget_vc(vc)
            + self.deployments.forget_vc(vc)
            + self.statefulsets.forget_vc(vc)
            + self.daemonsets.forget_vc(vc)
            + self.revisions.forget_vc(vc)
            + self.jobs.forget_vc(vc)
            + self.cronjobs.forget_vc(vc)
            + self.services.forget_vc(vc)
            + self.slices.forget_vc(vc)
            + self.nodes.forget_vc(vc)
            + self.claims.forget_vc(vc)
            + self.quotas.forget_vc(vc);
        self.graph.forget_vc(vc);
        tracing::info!(vc = %vc.name, dropped, "virtual cluster deleted; its objects forgotten");
    }

    /// A context with empty caches.
    pub fn new(options: &Options) -> Result<Arc<Ctx>, Error> {
        let clients = Clients::new(&options.config)?;
        Ok(Arc::new(Ctx {
            events: events::Recorder::new(clients.clone()),
            clients,
            queue: WorkQueue::new(options.per_vc),
            pods: Default::default(),
            replicasets: Default::default(),
            rcs: Default::default(),
            deployments: Default::default(),
            statefulsets: Default::default(),
            daemonsets: Default::default(),
            revisions: Default::default(),
            jobs: Default::default(),
            cronjobs: Default::default(),
            services: Default::default(),
            slices: Default::default(),
            nodes: Default::default(),
            claims: Default::default(),
            quotas: Default::default(),
            graph: Default::default(),
            ca_pem: options.ca_pem.clone(),
            failures: Default::default(),
        }))
    }

    /// What the controllers hold, for logs and benchmarks: objects cached,
    /// objects in the collector's graph, queued and active tasks.
    pub fn held(&self) -> String {
        let q = self.queue.stats();
        format!(
            "pods={} replicasets={} deployments={} statefulsets={} daemonsets={} jobs={} cronjobs={} services={} slices={} nodes={} claims={} quotas={} revisions={} rcs={} graph={} queued={} active={} queue_vcs={}",
            self.pods.len(), self.replicasets.len(), self.deployments.len(), self.statefulsets.len(),
            self.daemonsets.len(), self.jobs.len(), self.cronjobs.len(), self.services.len(),
            self.slices.len(), self.nodes.len(), self.claims.len(), self.quotas.len(),
            self.revisions.len(), self.rcs.len(), self.graph.len(), q.queued, q.active, q.vcs
        )
    }

    /// Runs one task.
    async fn reconcile(self: &Arc<Self>, task: &Task) -> Outcome {
        match task {
            Task::ReplicaSet(key) => replicaset::reconcile_rs(self, key).await,
            Task::ReplicationController(key) => replicaset::reconcile_rc(self, key).await,
            Task::Deployment(key) => deployment::reconcile(self, key).await,
            Task::StatefulSet(key) => statefulset::reconcile(self, key).await,
            Task::DaemonSet(key) => daemonset::reconcile(self, key).await,
            Task::Job(key) => job::reconcile(self, key).await,
            Task::CronJob(key) => cron::reconcile(self, key).await,
            Task::Endpoints(key) => endpoints::reconcile(self, key).await,
            Task::RootCa(key) => rootca::reconcile(self, key).await,
            Task::Quota(key) => quota::reconcile(self, key).await,
            Task::Collect(item) => gc::reconcile(self, item).await,
        }
    }
}

/// Runs the controllers until `stop` resolves: the watches, then (once
/// every cache has its first listing) the workers.
pub async fn run_until(
    options: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let ctx = Ctx::new(options).map_err(|e| e.to_string())?;
    let mut tasks = tokio::task::JoinSet::new();
    watches::start(&ctx, &mut tasks);
    let workers = {
        let ctx = ctx.clone();
        let n = options.workers;
        let on_synced = options.on_synced.clone();
        async move {
            watches::synced(&ctx).await;
            if let Some(hook) = on_synced {
                hook();
            }
            tracing::info!(held = ctx.held(), "controllers' caches synced; reconciling");
            let work = {
                let ctx = ctx.clone();
                move |task| {
                    let ctx = ctx.clone();
                    async move { ctx.reconcile(&task).await }
                }
            };
            ctx.queue
                .clone()
                .serve_with(n, ctx.failures.clone(), work)
                .await;
        }
    };
    tasks.spawn(workers);
    stop.await;
    ctx.queue.close();
    tasks.abort_all();
    Ok(())
}

/// Runs the controllers while this process holds the leader Lease (see
/// `leader`), for as long as the process runs.
pub async fn run(options: Options) -> Result<(), String> {
    leader::run(options).await
}

mod watches;
