//! The cross-VC watches and what each change sets in motion: the tasks of
//! the objects it concerns (an object's own controller, its owner's, the
//! Services selecting a Pod, the quotas of its namespace) and the garbage
//! collector's graph.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::cache::{self, controller_of, Cache, Change, ObjectKey};
use crate::client::Vc;
use crate::{gc, pods, Ctx, Task};

/// The task of the controller that owns an object of this kind.
fn owner_task(kind: &str, key: ObjectKey) -> Option<Task> {
    Some(match kind {
        "ReplicaSet" => Task::ReplicaSet(key),
        "ReplicationController" => Task::ReplicationController(key),
        "Deployment" => Task::Deployment(key),
        "StatefulSet" => Task::StatefulSet(key),
        "DaemonSet" => Task::DaemonSet(key),
        "Job" => Task::Job(key),
        "CronJob" => Task::CronJob(key),
        _ => return None,
    })
}

/// Queues the task of the controller of `meta` (old and new owners alike).
fn queue_controller(ctx: &Ctx, key: &ObjectKey, metas: &[Option<&ObjectMeta>]) {
    for meta in metas.iter().flatten() {
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        if let Some(owner) = owner {
            let owner_key = ObjectKey::new(&key.vc, key.namespace.as_deref(), &owner.name);
            if let Some(task) = owner_task(&owner.kind, owner_key) {
                ctx.queue.add(task);
            }
        }
    }
}

/// Queues the usage recount of the quotas of `key`'s namespace.
fn queue_quotas(ctx: &Ctx, key: &ObjectKey) {
    if key.namespace.is_none() {
        return;
    }
    for quota in ctx.quotas.in_namespace(&key.vc, key.namespace.as_deref()) {
        ctx.queue.add(Task::Quota(ObjectKey::new(
            &key.vc,
            key.namespace.as_deref(),
            &quota.name_any(),
        )));
    }
}

fn metas<K: Resource>(change: &Change<K>) -> [Option<&ObjectMeta>; 2] {
    [
        change.old.as_deref().map(Resource::meta),
        change.new.as_deref().map(Resource::meta),
    ]
}

/// Tells the garbage collector about a change of a watched kind.
fn observe<K: Resource<DynamicType = ()>>(ctx: &Ctx, change: &Change<K>)
where
    K::Scope: 'static,
{
    let kind = gc::KindRef::of::<K>();
    match &change.new {
        Some(object) => ctx.graph.observe(ctx, &change.key.vc, &kind, object.meta()),
        None => {
            if let Some(old) = &change.old {
                ctx.graph.forget(ctx, &change.key.vc, old.meta());
            }
        }
    }
}

fn spawn<K, F>(
    ctx: &Arc<Ctx>,
    tasks: &mut tokio::task::JoinSet<()>,
    cache: Arc<Cache<K>>,
    config: watcher::Config,
    on_change: F,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(&Arc<Ctx>, Change<K>) + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(ctx.clients.across.clone());
    let ctx = ctx.clone();
    tasks.spawn(cache::run(api, config, cache, move |change| {
        on_change(&ctx, change)
    }));
}

/// The VC of a VC record (from the system cluster).
fn vc_of(record: &kube::api::DynamicObject) -> Option<Vc> {
    Some(Vc {
        uid: record.metadata.uid.as_deref()?.into(),
        name: record.metadata.name.as_deref()?.into(),
    })
}

/// Follows the VC records: a deleted VC's objects are dropped from every
/// cache at once. (The server sends the deletion of a deleted VC's objects
/// to no watch across VCs: one event per object would cost every watcher
/// as much as the VC held.)
async fn follow_vcs(ctx: Arc<Ctx>) {
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let gvk = kube::api::GroupVersionKind::gvk(
        kplex_api::names::ADMIN_GROUP,
        kplex_api::names::ADMIN_VERSION,
        "VirtualCluster",
    );
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "virtualclusters");
    let api: Api<kube::api::DynamicObject> =
        Api::all_with(ctx.clients.system_cluster.clone(), &resource);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut known: std::collections::HashMap<Arc<str>, Vc> = Default::default();
    let mut listing = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(std::collections::HashMap::new()),
            Ok(watcher::Event::InitApply(record)) => {
                if let (Some(listing), Some(vc)) = (listing.as_mut(), vc_of(&record)) {
                    listing.insert(vc.uid.clone(), vc);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                // Known before and missing now: deleted meanwhile.
                for (uid, vc) in &known {
                    if !listed.contains_key(uid) {
                        ctx.forget_vc(vc);
                    }
                }
                known = listed;
            }
            Ok(watcher::Event::Apply(record)) => {
                if let Some(vc) = vc_of(&record) {
                    known.insert(vc.uid.clone(), vc);
                }
            }
            Ok(watcher::Event::Delete(record)) => {
                if let Some(vc) = vc_of(&record) {
                    known.remove(&vc.uid);
                    ctx.forget_vc(&vc);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching virtual clusters failed; retrying"),
        }
    }
}

/// Starts every watch on `tasks`.
pub fn start(ctx: &Arc<Ctx>, tasks: &mut tokio::task::JoinSet<()>) {
    tasks.spawn(follow_vcs(ctx.clone()));
    let any = crate::cache::watch_config();
    spawn(
        ctx,
        tasks,
        ctx.pods.clone(),
        any.clone(),
        |ctx, change: Change<Pod>| {
            observe(ctx, &change);
            let [old, new] = metas(&change);
            queue_controller(ctx, &change.key, &[old, new]);
            // An orphan may be adopted by a controller whose selector takes it.
            if let Some(pod) = change
                .new
                .as_deref()
                .filter(|p| controller_of(*p).is_none())
            {
                for task in pods::would_adopt(ctx, &change.key, pod) {
                    ctx.queue.add(task);
                }
            }
            for service in ctx
                .services
                .in_namespace(&change.key.vc, change.key.namespace.as_deref())
            {
                let selects = |meta: Option<&ObjectMeta>| {
                    meta.is_some_and(|m| pods::service_selects(&service, m.labels.as_ref()))
                };
                if selects(old) || selects(new) {
                    ctx.queue.add(Task::Endpoints(ObjectKey::new(
                        &change.key.vc,
                        change.key.namespace.as_deref(),
                        &service.name_any(),
                    )));
                }
            }
            queue_quotas(ctx, &change.key);
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.replicasets.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            queue_controller(ctx, &change.key, &metas(&change));
            ctx.queue.add(Task::ReplicaSet(change.key));
        },
    );
    spawn(ctx, tasks, ctx.rcs.clone(), any.clone(), |ctx, change| {
        observe(ctx, &change);
        queue_quotas(ctx, &change.key);
        ctx.queue.add(Task::ReplicationController(change.key));
    });
    spawn(
        ctx,
        tasks,
        ctx.deployments.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            ctx.queue.add(Task::Deployment(change.key));
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.statefulsets.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            ctx.queue.add(Task::StatefulSet(change.key));
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.daemonsets.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            ctx.queue.add(Task::DaemonSet(change.key));
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.revisions.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            queue_controller(ctx, &change.key, &metas(&change));
        },
    );
    spawn(ctx, tasks, ctx.jobs.clone(), any.clone(), |ctx, change| {
        observe(ctx, &change);
        queue_controller(ctx, &change.key, &metas(&change));
        ctx.queue.add(Task::Job(change.key));
    });
    spawn(
        ctx,
        tasks,
        ctx.cronjobs.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            ctx.queue.add(Task::CronJob(change.key));
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.services.clone(),
        any.clone(),
        |ctx, change: Change<Service>| {
            observe(ctx, &change);
            queue_quotas(ctx, &change.key);
            ctx.queue.add(Task::Endpoints(change.key));
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.slices.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            // A slice changed by someone else is put back.
            for meta in metas(&change).into_iter().flatten() {
                if let Some(service) = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::endpoints::SERVICE_NAME_LABEL))
                {
                    ctx.queue.add(Task::Endpoints(ObjectKey::new(
                        &change.key.vc,
                        change.key.namespace.as_deref(),
                        service,
                    )));
                }
            }
        },
    );
    spawn(ctx, tasks, ctx.nodes.clone(), any.clone(), |ctx, change| {
        observe(ctx, &change);
        for ds in ctx.daemonsets.in_vc(&change.key.vc) {
            ctx.queue.add(Task::DaemonSet(ObjectKey::new(
                &change.key.vc,
                ds.namespace().as_deref(),
                &ds.name_any(),
            )));
        }
    });
    spawn(
        ctx,
        tasks,
        ctx.claims.clone(),
        any.clone(),
        |ctx, change| {
            observe(ctx, &change);
            queue_quotas(ctx, &change.key);
        },
    );
    spawn(
        ctx,
        tasks,
        ctx.quotas.clone(),
        any.clone(),
        |ctx, change| {
            ctx.queue.add(Task::Quota(change.key));
        },
    );
    // Namespaces and the root CA ConfigMaps: nothing kept past a listing.
    tasks.spawn(crate::rootca::watch_namespaces(ctx.clone()));
    {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            // Metadata only: a listed one exists; a changed or deleted one
            // is read and put right by its task.
            let api: Api<kube::api::PartialObjectMeta<ConfigMap>> =
                Api::all(ctx.clients.across.clone());
            let config = crate::cache::watch_config()
                .any_semantic()
                .fields(&format!("metadata.name={}", crate::rootca::NAME));
            each_event(api, config, |event, vc, cm| {
                if event != Seen::Listed {
                    ctx.queue.add(Task::RootCa(ObjectKey::new(
                        &vc,
                        None,
                        cm.namespace().as_deref().unwrap_or_default(),
                    )));
                }
            })
            .await;
        });
    }
    gc::start_metadata_watches(ctx, tasks);
    gc::start_custom_watches(ctx, tasks);
}

/// How an object came by, for the watches that keep nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// In a listing.
    Listed,
    /// Created or changed.
    Changed,
    /// Deleted.
    Deleted,
}

/// Calls `f` for every object a cross-VC watch delivers, keeping nothing.
pub async fn each_event<K>(api: Api<K>, config: watcher::Config, f: impl Fn(Seen, Vc, &K))
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut turn = cache::ListingTurn::default();
    while let Some(event) = events.next().await {
        turn.follow(&event).await;
        let (seen, mut object) = match event {
            Ok(watcher::Event::InitApply(o)) => (Seen::Listed, o),
            Ok(watcher::Event::Apply(o)) => (Seen::Changed, o),
            Ok(watcher::Event::Delete(o)) => (Seen::Deleted, o),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watch failed; retrying");
                continue;
            }
        };
        if let Some(vc) = cache::take_vc(&mut object) {
            f(seen, vc, &object);
        }
    }
}

/// Returns once every cache has its first listing.
pub async fn synced(ctx: &Ctx) {
    ctx.pods.wait_synced().await;
    ctx.replicasets.wait_synced().await;
    ctx.rcs.wait_synced().await;
    ctx.deployments.wait_synced().await;
    ctx.statefulsets.wait_synced().await;
    ctx.daemonsets.wait_synced().await;
    ctx.revisions.wait_synced().await;
    ctx.jobs.wait_synced().await;
    ctx.cronjobs.wait_synced().await;
    ctx.services.wait_synced().await;
    ctx.slices.wait_synced().await;
    ctx.nodes.wait_synced().await;
    ctx.claims.wait_synced().await;
    ctx.quotas.wait_synced().await;
}
