//! The VCs, the host clusters, and where each VC is placed: two watches of
//! the admin records that system components read in the system cluster
//! (`/system/apis/tenancy.kplex.dev/v1alpha1/{virtualclusters,hostclusters}`),
//! and for each host a connection (its kubeconfig's client) with one watch
//! per resource type — Pods, ConfigMaps, Secrets and namespaces that carry
//! kplex's labels, and every Node — for all the VCs placed there.
//!
//! The syncer reports each host's status (reachable, server version, node
//! count, last error) on its record.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use kplex_api::isolation::Isolation;
use kplex_api::mapping;
use kplex_controllers::cache::{self, Cache, Change, ObjectKey, Origin};
use kplex_controllers::client::Vc;
use kplex_controllers::Error;

use crate::{ConfigKind, Ctx, Outcome, Task};

use kplex_api::names::{ADMIN_GROUP as GROUP, ADMIN_VERSION as VERSION};

/// How often a host's status is checked.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A VC as the syncer knows it.
#[derive(Clone, Debug)]
struct VcRecord {
    vc: Vc,
    /// `spec.hostCluster`, if set.
    host: Option<String>,
    /// `spec.isolation` (the safe default if it does not parse).
    policy: Arc<Isolation>,
    /// `status.conditions`, as reported so far.
    conditions: Arc<Value>,
    /// Its cluster domain (`spec.dns.domain`).
    domain: Arc<str>,
}

/// A host cluster the syncer is connected to.
pub struct Host {
    /// Its name (the HostCluster's).
    pub name: String,
    /// Its client.
    pub client: kube::Client,
    /// kplex's Pods on it, keyed as their tenant Pods.
    pub pods: Arc<Cache<Pod>>,
    /// kplex's ConfigMaps on it, keyed as the tenant's.
    pub configmaps: Arc<Cache<ConfigMap>>,
    /// kplex's Secrets on it, keyed as the tenant's.
    pub secrets: Arc<Cache<Secret>>,
    /// kplex's Services on it, keyed as the tenant's.
    pub services: Arc<Cache<Service>>,
    /// kplex's Endpoints on it, keyed as the tenant's.
    pub endpoints: Arc<Cache<Endpoints>>,
    /// kplex's PersistentVolumeClaims on it, keyed as the tenant's.
    pub claims: Arc<Cache<PersistentVolumeClaim>>,
    /// kplex's Ingresses on it, keyed as the tenant's.
    pub ingresses: Arc<Cache<k8s_openapi::api::networking::v1::Ingress>>,
    /// kplex's PodDisruptionBudgets on it, keyed as the tenant's.
    pub budgets: Arc<Cache<k8s_openapi::api::policy::v1::PodDisruptionBudget>>,
    /// Its copies of the VCs' NetworkPolicies (and the walls, which no
    /// tenant object names).
    pub policies: Arc<Cache<k8s_openapi::api::networking::v1::NetworkPolicy>>,
    /// kplex's namespaces on it (cluster-scoped keys: the host name).
    pub namespaces: Arc<Cache<Namespace>>,
    /// Every Node of the host, by name.
    pub nodes: RwLock<HashMap<String, Arc<Node>>>,
    /// Whether the last check reached the host with kplex's credentials.
    pub reachable: std::sync::atomic::AtomicBool,
    /// kplex's host namespaces by name: whose, and which tenant namespace.
    pub namespace_owners: Arc<RwLock<HashMap<String, (Vc, String)>>>,
    /// The cluster IP of the host's shared DNS Service (`kplex dns`), once
    /// it has one.
    pub dns_server: RwLock<Option<String>>,
    /// Host Events about kplex's Pods, waiting to be copied to their VC.
    pub pending_events:
        std::sync::Mutex<HashMap<ObjectKey, Arc<k8s_openapi::api::core::v1::Event>>>,
    kubeconfig: String,
    tasks: tokio::task::JoinSet<()>,
}

impl Host {
    /// Whether every watch has its first listing.
    pub fn synced(&self) -> bool {
        self.pods.is_synced()
            && self.configmaps.is_synced()
            && self.secrets.is_synced()
            && self.services.is_synced()
            && self.endpoints.is_synced()
            && self.claims.is_synced()
            && self.ingresses.is_synced()
            && self.budgets.is_synced()
            && self.policies.is_synced()
            && self.namespaces.is_synced()
    }

    /// The host API of kind `K` in host namespace `ns`.
    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// A host Node by name.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.read().expect("nodes lock").get(name).cloned()
    }
}

/// Why a VC's objects cannot go to a host now.
#[derive(Debug, Clone)]
pub enum Unplaced {
    /// No host is named and there is no default host.
    NoHost,
    /// The named host is not registered.
    UnknownHost(String),
    /// The host's watches have not listed yet (or cannot reach it).
    NotReady(String),
    /// The VC's isolation policy refuses the Pod (it got past the VC's
    /// admission some other way): why.
    Refused(String),
    /// The host refused the copy (its own admission, its quota): what it
    /// said.
    HostRefused(String),
}

impl Unplaced {
    /// What a tenant's Pod condition says.
    pub fn message(&self) -> String {
        match self {
            Unplaced::NoHost => "the virtual cluster is placed on no host cluster (spec.hostCluster is unset and there is no default host)".into(),
            Unplaced::UnknownHost(h) => format!("the virtual cluster's host cluster \"{h}\" is not registered"),
            Unplaced::NotReady(h) => format!("the host cluster \"{h}\" is not reachable yet"),
            Unplaced::Refused(why) => format!("not placed on a host: {why}"),
            Unplaced::HostRefused(why) => format!("the host cluster refused the Pod: {why}"),
        }
    }

    /// The reason of the tenant Pod's condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Unplaced::Refused(_) => "PolicyViolation",
            Unplaced::HostRefused(_) => "HostRefused",
            _ => "Unschedulable",
        }
    }
}

/// The VCs and the hosts.
pub struct Hosts {
    system: kube::Client,
    vcs: RwLock<HashMap<Arc<str>, VcRecord>>,
    hosts: RwLock<HashMap<String, Arc<Host>>>,
    default_host: RwLock<Option<String>>,
    vcs_synced: tokio::sync::watch::Sender<bool>,
    hosts_synced: tokio::sync::watch::Sender<bool>,
}

impl Hosts {
    /// Empty; `start` fills it.
    pub fn new(config: &kube::Config) -> Result<Hosts, String> {
        let mut system = config.clone();
        let base = config.cluster_url.to_string();
        system.cluster_url = format!(
            "{}{}",
            base.trim_end_matches('/'),
            kplex_api::names::SYSTEM_CLUSTER_PATH
        )
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        Ok(Hosts {
            system: kube::Client::try_from(system).map_err(|e| e.to_string())?,
            vcs: Default::default(),
            hosts: Default::default(),
            default_host: Default::default(),
            vcs_synced: tokio::sync::watch::channel(false).0,
            hosts_synced: tokio::sync::watch::channel(false).0,
        })
    }

    /// Returns once the VCs and the hosts have been listed.
    pub async fn wait_synced(&self) {
        let _ = self.vcs_synced.subscribe().wait_for(|s| *s).await;
        let _ = self.hosts_synced.subscribe().wait_for(|s| *s).await;
    }

    /// Counts, for logs.
    pub fn held(&self) -> String {
        format!(
            "vcs={} hosts={}",
            self.vcs.read().expect("vcs lock").len(),
            self.hosts.read().expect("hosts lock").len()
        )
    }

    /// The isolation policy of `vc` (the safe default if it is unknown).
    pub fn policy(&self, vc: &Vc) -> Arc<Isolation> {
        self.vcs
            .read()
            .expect("vcs lock")
            .get(&vc.uid)
            .map(|r| r.policy.clone())
            .unwrap_or_default()
    }

    /// The cluster domain of `vc`.
    pub fn domain(&self, vc: &Vc) -> Arc<str> {
        self.vcs
            .read()
            .expect("vcs lock")
            .get(&vc.uid)
            .map(|r| r.domain.clone())
            .unwrap_or_else(|| kplex_api::mapping::DEFAULT_DNS_DOMAIN.into())
    }

    /// The VC with `uid`, if it exists.
    pub fn vc(&self, uid: &str) -> Option<Vc> {
        self.vcs
            .read()
            .expect("vcs lock")
            .get(uid)
            .map(|r| r.vc.clone())
    }

    /// The name of the host `vc` is placed on, reachable or not.
    pub fn intended(&self, vc: &Vc) -> Option<String> {
        let named = self
            .vcs
            .read()
            .expect("vcs lock")
            .get(&vc.uid)
            .and_then(|r| r.host.clone());
        named.or_else(|| self.default_host.read().expect("default lock").clone())
    }

    /// The host `vc` is placed on, connected and listed.
    pub fn placement(&self, vc: &Vc) -> Result<Arc<Host>, Unplaced> {
        let named = self
            .vcs
            .read()
            .expect("vcs lock")
            .get(&vc.uid)
            .and_then(|r| r.host.clone());
        let name = match named {
            Some(name) => name,
            None => self
                .default_host
                .read()
                .expect("default lock")
                .clone()
                .ok_or(Unplaced::NoHost)?,
        };
        let host = self
            .hosts
            .read()
            .expect("hosts lock")
            .get(&name)
            .cloned()
            .ok_or_else(|| Unplaced::UnknownHost(name.clone()))?;
        if !host.synced() || !host.reachable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Unplaced::NotReady(name));
        }
        Ok(host)
    }

    /// Every VC placed on host `name`.
    pub fn vcs_on(&self, name: &str) -> Vec<Vc> {
        let default = self.default_host.read().expect("default lock").clone();
        self.vcs
            .read()
            .expect("vcs lock")
            .values()
            .filter(|r| r.host.as_deref().or(default.as_deref()) == Some(name))
            .map(|r| r.vc.clone())
            .collect()
    }

    /// Every connected host.
    pub fn all(&self) -> Vec<Arc<Host>> {
        self.hosts
            .read()
            .expect("hosts lock")
            .values()
            .cloned()
            .collect()
    }

    fn api(&self, kind: &str, plural: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, kind);
        Api::all_with(
            self.system.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    }

    /// Sets the condition `type_` of `vc` (`(status, reason, message)`),
    /// or takes it away (`None`), unless it already says that.
    async fn condition(
        &self,
        vc: &Vc,
        type_: &str,
        condition: Option<(&str, &str, String)>,
    ) -> Result<(), Error> {
        let current = self
            .vcs
            .read()
            .expect("vcs lock")
            .get(&vc.uid)
            .map(|r| r.conditions.clone())
            .unwrap_or_default();
        let mut conditions: Vec<Value> = current.as_array().cloned().unwrap_or_default();
        let old = conditions.iter().position(|c| c["type"] == type_);
        let same = match (&condition, old.map(|i| &conditions[i])) {
            (None, None) => true,
            (Some((status, reason, message)), Some(c)) => {
                c["status"] == *status && c["reason"] == *reason && c["message"] == *message
            }
            _ => false,
        };
        if same {
            return Ok(());
        }
        let since = old
            .map(|i| conditions[i].clone())
            .filter(|c| {
                condition
                    .as_ref()
                    .is_some_and(|(s, _, _)| c["status"] == *s)
            })
            .map(|c| c["lastTransitionTime"].clone());
        conditions.retain(|c| c["type"] != type_);
        if let Some((status, reason, message)) = condition {
            let now = jiff::Timestamp::now()
                .round(jiff::Unit::Second)
                .map(|t| t.to_string())
                .unwrap_or_default();
            conditions.push(json!({
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastTransitionTime": since.unwrap_or_else(|| json!(now)),
            }));
        }
        let status = json!({"conditions": conditions});
        self.patch_status("virtualclusters", &vc.name, &status)
            .await?;
        if let Some(record) = self.vcs.write().expect("vcs lock").get_mut(&vc.uid) {
            record.conditions = Arc::new(status["conditions"].clone());
        }
        Ok(())
    }

    /// Reports `host`'s status on its record.
    async fn report(&self, name: &str, status: Value) -> Result<(), Error> {
        self.patch_status("hostclusters", name, &status).await
    }

    /// Merges `status` into the admin record `plural`/`name`.
    async fn patch_status(&self, plural: &str, name: &str, status: &Value) -> Result<(), Error> {
        let path = format!("/apis/{GROUP}/{VERSION}/{plural}/{name}/status");
        let request = http::Request::patch(path)
            .header("content-type", "application/merge-patch+json")
            .body(
                serde_json::to_vec(&json!({"status": status}))
                    .map_err(|e| Error::Request(e.to_string()))?,
            )
            .map_err(|e| Error::Request(e.to_string()))?;
        self.system
            .request_text(request)
            .await
            .map(|_| ())
            .map_err(Error::Api)
    }
}

/// Starts the watches of VCs and hosts on `tasks`.
pub fn start(ctx: &Arc<Ctx>, tasks: &mut tokio::task::JoinSet<()>) {
    tasks.spawn(watch_vcs(ctx.clone()));
    tasks.spawn(watch_hosts(ctx.clone()));
}

fn record_of(object: &DynamicObject) -> Option<VcRecord> {
    let uid = object.metadata.uid.clone()?;
    let host = object.data["spec"]["hostCluster"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned);
    let policy = Isolation::from_spec(&object.data["spec"]).unwrap_or_default();
    Some(VcRecord {
        vc: Vc {
            uid: uid.into(),
            name: object.name_any().into(),
        },
        host,
        policy: Arc::new(policy),
        conditions: Arc::new(object.data["status"]["conditions"].clone()),
        domain: crate::dns::wiring::domain_of(&object.data["spec"]).into(),
    })
}

async fn watch_vcs(ctx: Arc<Ctx>) {
    use kube::runtime::WatchStreamExt;
    let api = ctx.hosts.api("VirtualCluster", "virtualclusters");
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: Option<HashMap<Arc<str>, VcRecord>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(object)) => {
                if let (Some(listing), Some(record)) = (listing.as_mut(), record_of(&object)) {
                    listing.insert(record.vc.uid.clone(), record);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let before = std::mem::replace(
                    &mut *ctx.hosts.vcs.write().expect("vcs lock"),
                    listed.clone(),
                );
                for (uid, old) in &before {
                    match listed.get(uid) {
                        None => {
                            ctx.forget_vc(&old.vc);
                            ctx.queue.add(Task::Vc(old.vc.clone()))
                        }
                        Some(new) if new.host != old.host || new.policy != old.policy => {
                            requeue_vc(&ctx, &new.vc)
                        }
                        Some(_) => {}
                    }
                }
                ctx.hosts.vcs_synced.send_replace(true);
            }
            Ok(watcher::Event::Apply(object)) => {
                let Some(record) = record_of(&object) else {
                    continue;
                };
                let old = ctx
                    .hosts
                    .vcs
                    .write()
                    .expect("vcs lock")
                    .insert(record.vc.uid.clone(), record.clone());
                if old.is_none_or(|o| o.host != record.host || o.policy != record.policy) {
                    requeue_vc(&ctx, &record.vc);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                if let Some(record) = record_of(&object) {
                    ctx.hosts
                        .vcs
                        .write()
                        .expect("vcs lock")
                        .remove(&record.vc.uid);
                    ctx.forget_vc(&record.vc);
                    ctx.queue.add(Task::Vc(record.vc));
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching virtual clusters failed; retrying"),
        }
    }
}

/// Queues every Pod, Service and claim of `vc` (its placement changed),
/// and the sweep of the host it left.
fn requeue_vc(ctx: &Ctx, vc: &Vc) {
    ctx.queue.add(Task::Vc(vc.clone()));
    for pod in ctx.pods.in_vc(vc) {
        ctx.queue.add(Task::Pod(ObjectKey::new(
            vc,
            pod.metadata.namespace.as_deref(),
            &pod.name_any(),
        )));
    }
    for service in ctx.services.in_vc(vc) {
        ctx.queue.add(Task::Service(ObjectKey::new(
            vc,
            service.metadata.namespace.as_deref(),
            &service.name_any(),
        )));
    }
    for ingress in ctx.ingresses.in_vc(vc) {
        ctx.queue.add(Task::Mirror(
            crate::mirror::MirrorKind::Ingress,
            ObjectKey::new(
                vc,
                ingress.metadata.namespace.as_deref(),
                &ingress.name_any(),
            ),
        ));
    }
    for budget in ctx.budgets.in_vc(vc) {
        ctx.queue.add(Task::Mirror(
            crate::mirror::MirrorKind::Budget,
            ObjectKey::new(vc, budget.metadata.namespace.as_deref(), &budget.name_any()),
        ));
    }
    for policy in ctx.policies.in_vc(vc) {
        ctx.queue.add(Task::Mirror(
            crate::mirror::MirrorKind::NetworkPolicy,
            ObjectKey::new(vc, policy.metadata.namespace.as_deref(), &policy.name_any()),
        ));
    }
    for claim in ctx.claims.in_vc(vc) {
        ctx.queue.add(Task::Claim(ObjectKey::new(
            vc,
            claim.metadata.namespace.as_deref(),
            &claim.name_any(),
        )));
    }
}

/// Queues every Pod of every VC (a host came or went).
fn requeue_all(ctx: &Ctx) {
    let vcs: Vec<Vc> = ctx
        .hosts
        .vcs
        .read()
        .expect("vcs lock")
        .values()
        .map(|r| r.vc.clone())
        .collect();
    for vc in vcs {
        requeue_vc(ctx, &vc);
    }
}

async fn watch_hosts(ctx: Arc<Ctx>) {
    use kube::runtime::WatchStreamExt;
    let api = ctx.hosts.api("HostCluster", "hostclusters");
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut listing: Option<Vec<DynamicObject>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(object)) => {
                if let Some(listing) = listing.as_mut() {
                    listing.push(object);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let names: Vec<String> = listed.iter().map(ResourceExt::name_any).collect();
                let gone: Vec<String> = ctx
                    .hosts
                    .hosts
                    .read()
                    .expect("hosts lock")
                    .keys()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect();
                for name in gone {
                    disconnect(&ctx, &name);
                }
                for object in &listed {
                    host_changed(&ctx, object).await;
                }
                ctx.hosts.hosts_synced.send_replace(true);
                requeue_all(&ctx);
            }
            Ok(watcher::Event::Apply(object)) => {
                host_changed(&ctx, &object).await;
            }
            Ok(watcher::Event::Delete(object)) => {
                disconnect(&ctx, &object.name_any());
                requeue_all(&ctx);
            }
            Err(e) => tracing::warn!(error = %e, "watching host clusters failed; retrying"),
        }
    }
}

fn disconnect(ctx: &Ctx, name: &str) {
    if ctx
        .hosts
        .hosts
        .write()
        .expect("hosts lock")
        .remove(name)
        .is_some()
    {
        tracing::info!(host = name, "host cluster removed; disconnected");
    }
    let mut default = ctx.hosts.default_host.write().expect("default lock");
    if default.as_deref() == Some(name) {
        *default = None;
    }
}

/// A host's record was listed or changed: (re)connect if its kubeconfig
/// is new, and note whether it is the default.
async fn host_changed(ctx: &Arc<Ctx>, object: &DynamicObject) {
    let name = object.name_any();
    {
        let mut default = ctx.hosts.default_host.write().expect("default lock");
        if object.data["spec"]["default"].as_bool() == Some(true) {
            if default.as_deref() != Some(name.as_str()) {
                *default = Some(name.clone());
                drop(default);
                requeue_all(ctx);
            }
        } else if default.as_deref() == Some(name.as_str()) {
            *default = None;
        }
    }
    let kubeconfig = object.data["spec"]["kubeconfig"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let current = ctx
        .hosts
        .hosts
        .read()
        .expect("hosts lock")
        .get(&name)
        .cloned();
    if current.is_some_and(|h| h.kubeconfig == kubeconfig) {
        return;
    }
    match connect(ctx, &name, &kubeconfig).await {
        Ok(host) => {
            tracing::info!(host = %name, "connected to host cluster");
            ctx.hosts
                .hosts
                .write()
                .expect("hosts lock")
                .insert(name, host);
            requeue_all(ctx);
        }
        Err(e) => {
            tracing::warn!(host = %name, error = %e, "cannot use the host cluster's kubeconfig");
            let status = json!({"reachable": false, "lastError": e, "conditions": [
                condition(false, "InvalidKubeconfig", &e)]});
            let _ = ctx.hosts.report(&name, status).await;
        }
    }
}

fn condition(ok: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": "Reachable",
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastTransitionTime": jiff::Timestamp::now().round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default(),
    })
}

/// A connection to host `name`: its client, caches and watches.
async fn connect(ctx: &Arc<Ctx>, name: &str, kubeconfig: &str) -> Result<Arc<Host>, String> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    let mut host = Host {
        name: name.to_owned(),
        client: client.clone(),
        pods: Arc::new(Cache::new(Origin::Host)),
        configmaps: Arc::new(Cache::new(Origin::Host)),
        secrets: Arc::new(Cache::new(Origin::Host)),
        services: Arc::new(Cache::new(Origin::Host)),
        endpoints: Arc::new(Cache::new(Origin::Host)),
        claims: Arc::new(Cache::new(Origin::Host)),
        ingresses: Arc::new(Cache::new(Origin::Host)),
        budgets: Arc::new(Cache::new(Origin::Host)),
        policies: Arc::new(Cache::new(Origin::Host)),
        namespaces: Arc::new(Cache::new(Origin::Host)),
        nodes: Default::default(),
        reachable: std::sync::atomic::AtomicBool::new(true),
        namespace_owners: Default::default(),
        dns_server: Default::default(),
        pending_events: Default::default(),
        kubeconfig: kubeconfig.to_owned(),
        tasks: tokio::task::JoinSet::new(),
    };
    let labelled = cache::watch_config().labels(&mapping::any_vc_selector());
    crate::follow::<Pod>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.pods,
        ctx,
        Task::Pod,
    );
    crate::follow::<ConfigMap>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.configmaps,
        ctx,
        |key| Task::Config(ConfigKind::ConfigMap, key),
    );
    crate::follow::<Secret>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.secrets,
        ctx,
        |key| Task::Config(ConfigKind::Secret, key),
    );
    crate::follow::<Service>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.services,
        ctx,
        Task::Service,
    );
    crate::follow::<Endpoints>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.endpoints,
        ctx,
        Task::Service,
    );
    crate::follow::<PersistentVolumeClaim>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.claims,
        ctx,
        Task::Claim,
    );
    crate::follow::<k8s_openapi::api::networking::v1::Ingress>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.ingresses,
        ctx,
        |key| Task::Mirror(crate::mirror::MirrorKind::Ingress, key),
    );
    crate::follow::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.budgets,
        ctx,
        |key| Task::Mirror(crate::mirror::MirrorKind::Budget, key),
    );
    crate::follow::<k8s_openapi::api::networking::v1::NetworkPolicy>(
        &mut host.tasks,
        &client,
        &labelled,
        &host.policies,
        ctx,
        |key| Task::Mirror(crate::mirror::MirrorKind::NetworkPolicy, key),
    );
    let queue = ctx.queue.clone();
    let owners = host.namespace_owners.clone();
    host.tasks.spawn(cache::run(
        Api::<Namespace>::all(client.clone()),
        labelled,
        host.namespaces.clone(),
        move |change: Change<Namespace>| {
            let mut owners = owners.write().expect("owners lock");
            match &change.new {
                Some(ns) => {
                    let tenant_ns = ns
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(mapping::NAMESPACE_LABEL))
                        .cloned();
                    if let Some(tenant_ns) = tenant_ns {
                        owners.insert(change.key.name.clone(), (change.key.vc.clone(), tenant_ns));
                    }
                }
                None => {
                    owners.remove(&change.key.name);
                }
            }
            queue.add(Task::Vc(change.key.vc))
        },
    ));
    let host = Arc::new(host);
    // The Node watch and the status reports hold the host weakly: both end
    // when it is disconnected (its tasks are aborted with it).
    let weak = Arc::downgrade(&host);
    let nodes_task = watch_nodes(ctx.clone(), weak.clone(), client.clone());
    let status_task = report_status(ctx.clone(), weak, name.to_owned(), client.clone());
    // (JoinSet is only mutable before the Arc; these two live in the
    // process's runtime and stop once the host is gone.)
    tokio::spawn(nodes_task);
    tokio::spawn(watch_dns(Arc::downgrade(&host), client.clone()));
    tokio::spawn(status_task);
    tokio::spawn(crate::events::watch(
        ctx.clone(),
        Arc::downgrade(&host),
        client.clone(),
    ));
    Ok(host)
}

async fn watch_nodes(ctx: Arc<Ctx>, host: std::sync::Weak<Host>, client: kube::Client) {
    use kube::runtime::WatchStreamExt;
    let mut events =
        std::pin::pin!(watcher(Api::<Node>::all(client), cache::watch_config()).default_backoff());
    let mut listing: Option<HashMap<String, Arc<Node>>> = None;
    while let Some(event) = events.next().await {
        let Some(host) = host.upgrade() else {
            return;
        };
        let mut changed = Vec::new();
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(node)) => {
                if let Some(listing) = listing.as_mut() {
                    listing.insert(node.name_any(), Arc::new(node));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let mut nodes = host.nodes.write().expect("nodes lock");
                changed.extend(nodes.keys().cloned());
                changed.extend(listed.keys().cloned());
                *nodes = listed;
            }
            Ok(watcher::Event::Apply(node)) => {
                changed.push(node.name_any());
                host.nodes
                    .write()
                    .expect("nodes lock")
                    .insert(node.name_any(), Arc::new(node));
            }
            Ok(watcher::Event::Delete(node)) => {
                changed.push(node.name_any());
                host.nodes
                    .write()
                    .expect("nodes lock")
                    .remove(&node.name_any());
            }
            Err(e) => tracing::debug!(host = %host.name, error = %e, "watching host nodes failed"),
        }
        for name in changed {
            crate::nodes::host_node_changed(&ctx, &host, &name);
        }
    }
}

/// Follows the host's shared DNS Service (`kplex-system/kplex-dns`): its
/// cluster IP is what new host Pods are given as their nameserver.
async fn watch_dns(host: std::sync::Weak<Host>, client: kube::Client) {
    use kube::runtime::WatchStreamExt;
    let (ns, name) = crate::dns::wiring::DEFAULT_SERVICE;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let api = Api::<Service>::namespaced(client, ns);
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let address = |service: &Service| {
        service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
    };
    let mut listed = None;
    while let Some(event) = events.next().await {
        let Some(host) = host.upgrade() else {
            return;
        };
        let now = match event {
            Ok(watcher::Event::Init) => {
                listed = None;
                continue;
            }
            Ok(watcher::Event::InitApply(service)) => {
                listed = address(&service);
                continue;
            }
            Ok(watcher::Event::InitDone) => listed.take(),
            Ok(watcher::Event::Apply(service)) => address(&service),
            Ok(watcher::Event::Delete(_)) => None,
            Err(e) => {
                tracing::debug!(host = %host.name, error = %e, "watching the host's DNS Service failed");
                continue;
            }
        };
        let mut server = host.dns_server.write().expect("dns lock");
        if *server != now {
            tracing::info!(host = %host.name, dns = ?now, "the host's shared DNS server");
            *server = now;
        }
    }
}

/// Checks the host every few seconds and reports what changed.
async fn report_status(
    ctx: Arc<Ctx>,
    host: std::sync::Weak<Host>,
    name: String,
    client: kube::Client,
) {
    let mut last: Option<Value> = None;
    let mut reachable_since: Option<(bool, Value)> = None;
    let mut dns_since: Option<(Option<String>, Value)> = None;
    loop {
        if host.upgrade().is_none() {
            return;
        }
        // The version answers anyone; a list proves the credentials too.
        let checked = match client.apiserver_version().await {
            Ok(version) => Api::<Namespace>::all(client.clone())
                .list_metadata(&kube::api::ListParams::default().limit(1))
                .await
                .map(|_| version)
                .map_err(|e| match e {
                    kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                        format!("the host refuses kplex's credentials: {}", s.message)
                    }
                    other => other.to_string(),
                }),
            Err(e) => Err(e.to_string()),
        };
        if let Some(h) = host.upgrade() {
            h.reachable
                .store(checked.is_ok(), std::sync::atomic::Ordering::Relaxed);
        }
        let status = match checked {
            Ok(version) => {
                let nodes = host
                    .upgrade()
                    .map(|h| h.nodes.read().expect("nodes lock").len())
                    .unwrap_or(0);
                (
                    true,
                    json!({"reachable": true, "serverVersion": version.git_version,
                    "nodeCount": nodes, "lastError": ""}),
                    "Connected".to_owned(),
                    String::new(),
                )
            }
            Err(e) => (
                false,
                json!({"reachable": false, "lastError": e}),
                "Unreachable".to_owned(),
                e,
            ),
        };
        let (ok, mut value, reason, message) = status;
        // The transition time moves only when reachability flips.
        let cond = match &reachable_since {
            Some((was, c)) if *was == ok => c.clone(),
            _ => {
                let c = condition(ok, &reason, &message);
                reachable_since = Some((ok, c.clone()));
                c
            }
        };
        // Where new Pods find the VCs' names: the shared `kplex dns`, or
        // (not deployed) the host's own cluster DNS, which answers the
        // host's names to anyone.
        let dns = host
            .upgrade()
            .and_then(|h| h.dns_server.read().expect("dns lock").clone());
        let (svc_ns, svc_name) = crate::dns::wiring::DEFAULT_SERVICE;
        let dns_cond = match &dns_since {
            Some((was, c)) if *was == dns => c.clone(),
            _ => {
                let mut c = match &dns {
                    Some(ip) => condition(true, "Deployed", &format!("tenant Pods ask kplex dns at {ip} ({svc_ns}/{svc_name})")),
                    None => condition(false, "NotDeployed", &format!(
                        "no Service {svc_ns}/{svc_name} on the host: tenant Pods placed now use the host's cluster DNS, which also answers other VCs' names (deploy kplex dns: deploy/host/dns.yaml)")),
                };
                c["type"] = json!("DNSReady");
                dns_since = Some((dns.clone(), c.clone()));
                c
            }
        };
        value["dnsServer"] = json!(dns.unwrap_or_default());
        value["conditions"] = json!([cond, dns_cond]);
        if last.as_ref() != Some(&value) {
            match ctx.hosts.report(&name, value.clone()).await {
                Ok(()) => last = Some(value),
                Err(e) => tracing::debug!(host = %name, error = %e, "cannot report host status"),
            }
        }
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// A VC's host namespaces: once the VC is gone, every host namespace
/// labelled with its UID is deleted (its objects go with it); while it
/// exists, those on hosts other than its own.
pub async fn reconcile_vc(ctx: &Arc<Ctx>, vc: &Vc) -> Outcome {
    let mut after = None;
    // What fails where the VC stays is reported after the sweep of the
    // hosts it left (one does not hold up the other).
    let mut failed = None;
    // A VC that exists keeps its namespaces on its host only: those on a
    // host it left (a new default host, another `spec.hostCluster`) go.
    let keep = match ctx.hosts.vc(&vc.uid) {
        Some(_) => match ctx.hosts.intended(vc) {
            Some(host) => Some(host),
            // Placed nowhere: nothing is known to be stale.
            None => return Ok(None),
        },
        None => None,
    };
    for host in ctx.hosts.all() {
        if keep.as_deref() == Some(host.name.as_str()) {
            // Where it stays, its namespaces are guarded as its policy
            // says now, and its granted networks looked for.
            if let Err(e) = regard(ctx, &host, vc).await {
                failed = Some(e);
            }
            match check_networks(ctx, &host, vc).await {
                Ok(next) => after = next,
                Err(e) => failed = Some(e),
            }
            continue;
        }
        for ns in host.namespaces.in_vc(vc) {
            let name = ns.name_any();
            if !mapping::owned_by(ns.metadata.labels.as_ref(), &vc.uid) {
                continue;
            }
            if ns.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let api = Api::<Namespace>::all(host.client.clone());
            match api.delete(&name, &Default::default()).await {
                Ok(_) => {
                    tracing::info!(host = %host.name, namespace = %name, vc = %vc.name, "deleted a departed VC's host namespace")
                }
                Err(e) if kplex_controllers::client::is_status(&e, 404) => {}
                Err(e) => return Err(Error::Api(e)),
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(after),
    }
}

/// Puts the VC's current policy on each of its namespaces on `host`: the
/// host's PodSecurity level and the guards ([`crate::isolation::guard`]).
async fn regard(ctx: &Ctx, host: &Host, vc: &Vc) -> Result<(), Error> {
    let policy = ctx.hosts.policy(vc);
    let mut failed = None;
    for ns in host.namespaces.in_vc(vc) {
        if !mapping::owned_by(ns.metadata.labels.as_ref(), &vc.uid)
            || ns.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let Some(tenant_ns) = ns
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(mapping::NAMESPACE_LABEL))
            .cloned()
        else {
            continue;
        };
        // One namespace's failure does not leave the others unguarded.
        let done = async {
            crate::pods::relabel(ctx, host, vc, &tenant_ns, &ns).await?;
            crate::isolation::guard(host, vc, &tenant_ns, &policy).await
        };
        if let Err(e) = done.await {
            failed = Some(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether each host network granted to `vc` exists on its host (a
/// `NetworkAttachmentDefinition` of that namespace and name): the VC's
/// `NetworksReady` condition says so, and which are missing; looked for
/// again each minute while one is.
async fn check_networks(ctx: &Ctx, host: &Host, vc: &Vc) -> Outcome {
    const CONDITION: &str = "NetworksReady";
    let policy = ctx.hosts.policy(vc);
    if policy.networks.is_empty() {
        ctx.hosts.condition(vc, CONDITION, None).await?;
        return Ok(None);
    }
    let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions");
    let mut missing = Vec::new();
    for network in &policy.networks {
        let api: Api<DynamicObject> =
            Api::namespaced_with(host.client.clone(), &network.namespace, &resource);
        match api.get_opt(&network.name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(network),
            // The kind itself is not served: no Multus on the host.
            Err(e) if kplex_controllers::client::is_status(&e, 404) => missing.push(network),
            Err(e) => return Err(Error::Api(e)),
        }
    }
    let condition = if missing.is_empty() {
        (
            "True",
            "NetworksFound",
            format!(
                "every granted network exists on host cluster \"{}\"",
                host.name
            ),
        )
    } else {
        let named: Vec<String> = missing
            .iter()
            .map(|n| format!("{} ({}/{})", n.alias, n.namespace, n.name))
            .collect();
        (
            "False",
            "NetworkAttachmentMissing",
            format!(
                "granted networks with no NetworkAttachmentDefinition on host cluster \"{}\": {}",
                host.name,
                named.join(", ")
            ),
        )
    };
    ctx.hosts.condition(vc, CONDITION, Some(condition)).await?;
    Ok((!missing.is_empty()).then_some(Duration::from_secs(60)))
}
