//! One syncer for every virtual cluster and every host cluster.
//!
//! A client of kplex (the cross-VC watches, a system credential) and of
//! each host cluster (kube-rs, one watch per resource type per host, for
//! every VC placed there). It puts each VC's Pods on the VC's host — under
//! the host namespace `kplex-<vc>-<ns>`, names unchanged, labelled with the
//! VC (`kplex_api::mapping`) — with the ConfigMaps and Secrets they
//! reference, and brings back what the host makes of them: the Pod's
//! status, the Node it runs on (as a virtual Node in the VC).
//!
//! Each piece of work is a level-triggered reconcile of one object, keyed
//! by VC, namespace and name; the tenant's copy and the host's share the
//! key (the host's labels carry the VC and tenant namespace), so a change
//! on either side queues the same task. Work from every VC shares one
//! queue, served round-robin across VCs. The tenant's spec wins, the
//! host's status wins; a host object that is not labelled for the VC is
//! never changed or deleted. With several kplex processes, one runs the
//! syncer at a time (a Lease, as the controllers).

pub mod claims;
pub mod configs;
pub mod dns;
pub mod events;
pub mod hosts;
pub mod isolation;
pub mod mirror;
pub mod namespaces;
pub mod nodes;
pub mod pods;
pub mod services;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Node, PersistentVolumeClaim, Pod, Secret, Service,
};
use kplex_controllers::cache::{Cache, ObjectKey};
use kplex_controllers::client::{Clients, Vc};
use kplex_controllers::queue::{Work, WorkQueue};
use kplex_controllers::Error;

/// The syncer's Lease in the system cluster.
pub const LEASE: &str = "kplex-syncer";

/// The finalizer that holds a tenant object until its host copy is gone.
pub const FINALIZER: &str = "tenancy.kplex.dev/syncer";

/// The field manager of the syncer's writes.
pub const MANAGER: &str = "kplex-syncer";

/// How the syncer reaches kplex.
#[derive(Clone)]
pub struct Options {
    /// A system credential's configuration; the server is kplex's root URL.
    pub config: kube::Config,
    /// Workers reconciling at once, over all VCs.
    pub workers: usize,
    /// Items one VC may have in flight at once.
    pub per_vc: usize,
    /// Who this process is, in the Lease.
    pub identity: String,
    /// kplex's CA bundle (a Pod's `ca.crt`).
    pub ca_pem: String,
}

impl Options {
    /// Options from a system kubeconfig's text (`kplex serve
    /// --write-system-kubeconfig syncer=…` writes one).
    pub async fn from_kubeconfig_text(text: &str) -> Result<Options, String> {
        let base = kplex_controllers::Options::from_kubeconfig_text(text).await?;
        Ok(Options {
            config: base.config,
            workers: 32,
            per_vc: 4,
            identity: base.identity,
            ca_pem: base.ca_pem,
        })
    }
}

/// Which kind of referenced object a [`Task::Config`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

/// One unit of work.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    /// A tenant Pod and its host copy.
    Pod(ObjectKey),
    /// A ConfigMap or Secret a Pod may reference, and its host copy.
    Config(ConfigKind, ObjectKey),
    /// A tenant Service (with its Endpoints when it has no selector) and
    /// its host copy.
    Service(ObjectKey),
    /// A tenant PersistentVolumeClaim and its host copy.
    Claim(ObjectKey),
    /// A tenant Ingress, PodDisruptionBudget or NetworkPolicy and its host
    /// copy.
    Mirror(mirror::MirrorKind, ObjectKey),
    /// A tenant namespace's labels, copied onto its host namespace (the
    /// key: VC, no namespace, the tenant namespace's name).
    Namespace(ObjectKey),
    /// A host Event about a kplex Pod, to be copied to the Pod's VC (the
    /// key: VC, tenant namespace, the Event's name).
    Event(ObjectKey),
    /// The virtual Node (the key's name) of a VC.
    Node(ObjectKey),
    /// A VC's host namespaces (removed once the VC is gone).
    Vc(Vc),
}

impl Work for Task {
    fn vc(&self) -> &Vc {
        match self {
            Task::Pod(k)
            | Task::Config(_, k)
            | Task::Service(k)
            | Task::Claim(k)
            | Task::Mirror(_, k)
            | Task::Namespace(k)
            | Task::Event(k)
            | Task::Node(k) => &k.vc,
            Task::Vc(vc) => vc,
        }
    }
}

/// What every reconcile can reach.
pub struct Ctx {
    /// kplex's clients.
    pub clients: Clients,
    /// The one work queue.
    pub queue: Arc<WorkQueue<Task>>,
    /// Pods of every VC.
    pub pods: Arc<Cache<Pod>>,
    /// ConfigMaps of every VC.
    pub configmaps: Arc<Cache<ConfigMap>>,
    /// Secrets of every VC.
    pub secrets: Arc<Cache<Secret>>,
    /// Services of every VC.
    pub services: Arc<Cache<Service>>,
    /// Endpoints of every VC.
    pub endpoints: Arc<Cache<Endpoints>>,
    /// PersistentVolumeClaims of every VC.
    pub claims: Arc<Cache<PersistentVolumeClaim>>,
    /// Ingresses of every VC.
    pub ingresses: Arc<Cache<k8s_openapi::api::networking::v1::Ingress>>,
    /// PodDisruptionBudgets of every VC.
    pub budgets: Arc<Cache<k8s_openapi::api::policy::v1::PodDisruptionBudget>>,
    /// NetworkPolicies of every VC.
    pub policies: Arc<Cache<k8s_openapi::api::networking::v1::NetworkPolicy>>,
    /// The labels of every VC's namespaces that have some (they go onto
    /// host namespaces).
    pub namespace_labels: Arc<namespaces::NamespaceLabels>,
    /// Nodes of every VC (the virtual ones the syncer keeps, and any a
    /// tenant made).
    pub nodes: Arc<Cache<Node>>,
    /// The VCs, the host clusters, and which VC is placed where.
    pub hosts: hosts::Hosts,
    /// How Pods on hosts reach their VC.
    pub access: token::Access,
    /// Consecutive failures per task, while it fails.
    failures: Arc<kplex_controllers::queue::Backoff<Task>>,
    /// Events about tenant objects.
    pub events: kplex_controllers::events::Recorder,
    /// Placed Pods a policy change now refuses, by UID, with why (each is
    /// reported once).
    violators: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Per VC with a quota, while one of its Pods is being placed: the
    /// turn that makes its quota check and its host create one step (two
    /// Pods checked at once would both fit).
    placing: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

impl Ctx {
    /// Drops every tenant object held of `vc`, which was deleted (see
    /// [`kplex_controllers::cache::Cache::forget_vc`]); its host side is
    /// the VC's own task's to clear.
    pub fn forget_vc(&self, vc: &Vc) {
        let dropped = self.pods.forget_vc(vc)
            + self.configmaps.forget_vc(vc)
            + self.secrets.forget_vc(vc)
            + self.services.forget_vc(vc)
            + self.endpoints.forget_vc(vc)
            + self.claims.forget_vc(vc)
            + self.ingresses.forget_vc(vc)
            + self.budgets.forget_vc(vc)
            + self.policies.forget_vc(vc)
            + self.nodes.forget_vc(vc);
        self.namespace_labels.forget_vc(vc);
        tracing::info!(vc = %vc.name, dropped, "virtual cluster deleted; its objects forgotten");
    }
}

/// A VC's turn to place a Pod ([`Ctx::placement_turn`]); the VC's entry
/// goes when no one else waits for it.
pub struct PlacementTurn<'a> {
    ctx: &'a Ctx,
    vc: Arc<str>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for PlacementTurn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut placing = self.ctx.placing.lock().expect("placing lock");
        if placing
            .get(&self.vc)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            placing.remove(&self.vc);
        }
    }
}

/// What a reconcile asks for next: nothing, or another look after a while.
pub type Outcome = Result<Option<Duration>, Error>;

impl Ctx {
    fn new(options: &Options) -> Result<Arc<Ctx>, String> {
        let clients = Clients::new(&options.config).map_err(|e| e.to_string())?;
        Ok(Arc::new(Ctx {
            events: kplex_controllers::events::Recorder::of(clients.clone(), MANAGER),
            violators: Default::default(),
            placing: Default::default(),
            hosts: hosts::Hosts::new(&options.config)?,
            access: token::Access::new(&options.config, &options.ca_pem)?,
            clients,
            queue: WorkQueue::new(options.per_vc),
            pods: Default::default(),
            configmaps: Default::default(),
            secrets: Default::default(),
            services: Default::default(),
            endpoints: Default::default(),
            claims: Default::default(),
            ingresses: Default::default(),
            budgets: Default::default(),
            policies: Default::default(),
            namespace_labels: Default::default(),
            nodes: Default::default(),
            failures: Default::default(),
        }))
    }

    /// Whether the placed Pod `uid`'s violation `why` is news (true once
    /// per Pod and reason; forgotten when the Pod is).
    pub fn reported(&self, uid: &str, why: &str) -> bool {
        let mut violators = self.violators.lock().expect("violators lock");
        violators.insert(uid.to_owned(), why.to_owned()).as_deref() != Some(why)
    }

    /// Waits for `vc`'s turn to place a Pod.
    pub async fn placement_turn(&self, vc: &Vc) -> PlacementTurn<'_> {
        let turn = self
            .placing
            .lock()
            .expect("placing lock")
            .entry(vc.uid.clone())
            .or_default()
            .clone();
        PlacementTurn {
            ctx: self,
            vc: vc.uid.clone(),
            guard: Some(turn.lock_owned().await),
        }
    }

    /// Forgets the Pod `uid` (gone).
    pub fn forget(&self, uid: &str) {
        self.violators.lock().expect("violators lock").remove(uid);
    }

    /// What the syncer holds, for logs.
    pub fn held(&self) -> String {
        let q = self.queue.stats();
        format!(
            "pods={} configmaps={} secrets={} services={} endpoints={} nodes={} {} queued={} active={}",
            self.pods.len(),
            self.configmaps.len(),
            self.secrets.len(),
            self.services.len(),
            self.endpoints.len(),
            self.nodes.len(),
            self.hosts.held(),
            q.queued,
            q.active
        )
    }

    async fn reconcile(self: &Arc<Self>, task: &Task) -> Outcome {
        match task {
            Task::Pod(key) => pods::reconcile(self, key).await,
            Task::Config(kind, key) => configs::reconcile(self, *kind, key).await,
            Task::Service(key) => services::reconcile(self, key).await,
            Task::Claim(key) => claims::reconcile(self, key).await,
            Task::Mirror(kind, key) => mirror::reconcile(self, *kind, key).await,
            Task::Namespace(key) => pods::namespace_changed(self, key).await,
            Task::Event(key) => events::reconcile(self, key).await,
            Task::Node(key) => nodes::reconcile(self, key).await,
            Task::Vc(vc) => hosts::reconcile_vc(self, vc).await,
        }
    }
}

/// Watches kind `K` through `client` (across VCs, or on a host) into
/// `cache`, queueing `task` of each changed key.
pub(crate) fn follow<K>(
    tasks: &mut tokio::task::JoinSet<()>,
    client: &kube::Client,
    config: &kube::runtime::watcher::Config,
    cache: &Arc<Cache<K>>,
    ctx: &Ctx,
    task: fn(ObjectKey) -> Task,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let queue = ctx.queue.clone();
    tasks.spawn(kplex_controllers::cache::run(
        kube::Api::<K>::all(client.clone()),
        config.clone(),
        cache.clone(),
        move |change: kplex_controllers::cache::Change<K>| queue.add(task(change.key)),
    ));
}

/// Runs the syncer until `stop` resolves.
pub async fn run_until(
    options: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let ctx = Ctx::new(options)?;
    let mut tasks = tokio::task::JoinSet::new();
    hosts::start(&ctx, &mut tasks);
    pods::watch(&ctx, &mut tasks);
    let workers = {
        let ctx = ctx.clone();
        let n = options.workers;
        async move {
            ctx.pods.wait_synced().await;
            ctx.configmaps.wait_synced().await;
            ctx.secrets.wait_synced().await;
            ctx.services.wait_synced().await;
            ctx.endpoints.wait_synced().await;
            ctx.claims.wait_synced().await;
            ctx.ingresses.wait_synced().await;
            ctx.budgets.wait_synced().await;
            ctx.policies.wait_synced().await;
            ctx.namespace_labels.wait_synced().await;
            ctx.nodes.wait_synced().await;
            ctx.hosts.wait_synced().await;
            tracing::info!(held = ctx.held(), "syncer's caches synced; syncing");
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

/// Runs the syncer while this process holds its Lease, for as long as the
/// process runs.
pub async fn run(options: Options) -> Result<(), String> {
    kplex_controllers::leader::lead(&options.config, &options.identity, LEASE, |lost| {
        run_until(&options, lost)
    })
    .await
}

/// Gives up the Lease if this process holds it (on shutdown).
pub async fn release(options: &Options) {
    kplex_controllers::leader::release_lease(&options.config, &options.identity, LEASE).await
}
