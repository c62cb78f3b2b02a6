//! The root CA publisher: every namespace of every VC has the ConfigMap
//! `kube-root-ca.crt` with the CA bundle clients in Pods verify the API
//! with (`ca.crt`), put back when deleted or changed. It keeps nothing per
//! namespace: a listing of the namespaces is joined once with one listing
//! of the ConfigMaps (only namespaces without theirs get a task), then each
//! new namespace and each changed ConfigMap is checked as its event comes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::cache::{take_vc, ObjectKey};
use crate::client::Vc;
use crate::{gc, Ctx, Outcome, Task};

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
const KEY: &str = "ca.crt";

/// Reconciles one namespace's root CA ConfigMap (`key.name` is the
/// namespace).
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let ns = key.name.as_str();
    let api = ctx.clients.vc::<ConfigMap>(&key.vc, Some(ns));
    let data: BTreeMap<String, String> = [(KEY.to_owned(), ctx.ca_pem.clone())].into();
    // Most tasks are for new namespaces: create first, read only if it exists.
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(ns.into()),
            annotations: Some(
                [(
                    "kubernetes.io/description".to_owned(),
                    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    match api.create(&config_map).await {
        Ok(_) => return Ok(None),
        // The namespace went meanwhile, or is terminating: nothing to do.
        Err(e) if e.is_status(404) || e.is_status(403) => return Ok(None),
        Err(e) if e.is_status(409) => {}
        Err(e) => return Err(e),
    }
    match api.get_opt(NAME).await? {
        Some(current) if current.data.as_ref() == Some(&data) && current.binary_data.is_none() => {
            Ok(None)
        }
        Some(mut current) => {
            current.data = Some(data);
            current.binary_data = None;
            api.replace(NAME, &current).await?;
            Ok(None)
        }
        // Deleted meanwhile: its deletion brings another task.
        None => Ok(None),
    }
}

/// The (VC UID, namespace) of every root CA ConfigMap, from one paged
/// cross-VC listing of their metadata.
async fn published(ctx: &Ctx) -> Result<HashSet<(Arc<str>, String)>, kube::Error> {
    let api: Api<ConfigMap> = Api::all(ctx.clients.across.clone());
    let mut found = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default()
            .fields(&format!("metadata.name={NAME}"))
            .limit(5000);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list_metadata(&params).await?;
        for mut item in page.items {
            if let Some(vc) = take_vc(&mut item) {
                found.insert((vc.uid, item.namespace().unwrap_or_default()));
            }
        }
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(found),
        }
    }
}

/// A namespace's metadata (what the watch reads: a terminating namespace
/// is one with a deletion timestamp).
type NamespaceMeta = PartialObjectMeta<Namespace>;

fn active(ns: &NamespaceMeta) -> bool {
    ns.metadata.deletion_timestamp.is_none()
}

/// Watches every VC's namespaces: a listing queues the namespaces that lack
/// their ConfigMap; a namespace created or changed later is checked as it
/// comes. The garbage collector is told of each namespace too.
pub async fn watch_namespaces(ctx: Arc<Ctx>) {
    use kube::runtime::WatchStreamExt;
    let api: Api<NamespaceMeta> = Api::all(ctx.clients.across.clone());
    let config = crate::cache::watch_config();
    let kind = gc::KindRef::of::<Namespace>();
    let mut listed: Vec<(Vc, String)> = Vec::new();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut turn = crate::cache::ListingTurn::default();
    while let Some(event) = events.next().await {
        turn.follow(&event).await;
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(mut ns)) => {
                if let Some(vc) = take_vc(&mut ns) {
                    ctx.graph.observe(&ctx, &vc, &kind, &ns.metadata);
                    if active(&ns) {
                        listed.push((vc, ns.name_any()));
                    }
                }
            }
            Ok(watcher::Event::InitDone) => {
                let namespaces = std::mem::take(&mut listed);
                match published(&ctx).await {
                    Ok(present) => {
                        for (vc, ns) in namespaces {
                            if !present.contains(&(vc.uid.clone(), ns.clone())) {
                                ctx.queue.add(Task::RootCa(ObjectKey::new(&vc, None, &ns)));
                            }
                        }
                    }
                    // Unknown: each namespace checks for itself.
                    Err(_) => {
                        for (vc, ns) in namespaces {
                            ctx.queue.add(Task::RootCa(ObjectKey::new(&vc, None, &ns)));
                        }
                    }
                }
            }
            Ok(watcher::Event::Apply(mut ns)) => {
                if let Some(vc) = take_vc(&mut ns) {
                    ctx.graph.observe(&ctx, &vc, &kind, &ns.metadata);
                    if active(&ns) {
                        ctx.queue
                            .add(Task::RootCa(ObjectKey::new(&vc, None, &ns.name_any())));
                    }
                }
            }
            Ok(watcher::Event::Delete(mut ns)) => {
                if let Some(vc) = take_vc(&mut ns) {
                    ctx.graph.forget(&ctx, &vc, &ns.metadata);
                }
            }
            Err(e) => tracing::warn!(error = %e, "namespace watch failed; retrying"),
        }
    }
}
