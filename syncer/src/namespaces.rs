//! The tenant namespaces' labels, which the syncer copies onto their host
//! namespaces (under kplex's prefix) for the VCs' NetworkPolicies to
//! select. Only a namespace with labels of its own is kept — beyond the
//! `kubernetes.io/metadata.name` every namespace carries, which is its
//! name and needs no keeping — so an idle VC costs nothing here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::watcher;
use kube::ResourceExt;

use kplex_controllers::cache::{take_vc, ObjectKey};
use kplex_controllers::client::Vc;

use crate::{Ctx, Task};

/// The label every namespace carries: its name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

type Labels = BTreeMap<String, String>;

/// The labels of every tenant namespace that has some of its own.
#[derive(Default)]
pub struct NamespaceLabels {
    labels: RwLock<HashMap<ObjectKey, Labels>>,
    synced: RwLock<bool>,
    listed: tokio::sync::Notify,
}

impl NamespaceLabels {
    /// The labels of namespace `ns` of `vc` (its name label included).
    pub fn get(&self, vc: &Vc, ns: &str) -> Labels {
        let mut labels = self
            .labels
            .read()
            .expect("namespace labels lock")
            .get(&ObjectKey::new(vc, None, ns))
            .cloned()
            .unwrap_or_default();
        labels.insert(NAME_LABEL.to_owned(), ns.to_owned());
        labels
    }

    /// Returns once the first listing is in.
    pub async fn wait_synced(&self) {
        loop {
            let listed = self.listed.notified();
            tokio::pin!(listed);
            listed.as_mut().enable();
            if *self.synced.read().expect("namespace labels lock") {
                return;
            }
            listed.await;
        }
    }

    /// Sets (or, with none of its own, forgets) the labels at `key`;
    /// whether that changed anything.
    fn set(&self, key: ObjectKey, own: Labels) -> bool {
        let mut labels = self.labels.write().expect("namespace labels lock");
        let changed = labels
            .get(&key)
            .map_or(!own.is_empty(), |have| *have != own);
        if own.is_empty() {
            labels.remove(&key);
        } else {
            labels.insert(key, own);
        }
        changed
    }

    /// Forgets the namespaces of `vc`, which was deleted.
    pub fn forget_vc(&self, vc: &Vc) {
        self.labels
            .write()
            .expect("namespace labels lock")
            .retain(|key, _| key.vc != *vc);
    }

    /// How many namespaces are kept (for logs).
    pub fn len(&self) -> usize {
        self.labels.read().expect("namespace labels lock").len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key and own labels of a namespace from the cross-VC watch.
fn own_labels(mut namespace: Namespace) -> Option<(ObjectKey, Labels)> {
    let vc = take_vc(&mut namespace)?;
    let name = namespace.name_any();
    let mut labels = namespace.metadata.labels.take().unwrap_or_default();
    labels.remove(NAME_LABEL);
    Some((ObjectKey::new(&vc, None, &name), labels))
}

/// Follows every VC's namespaces for as long as the process runs, queueing
/// the relabelling of a host namespace when its tenant namespace's labels
/// change.
pub async fn run(ctx: Arc<Ctx>, api: Api<Namespace>, config: watcher::Config) {
    use kube::runtime::WatchStreamExt;
    let store = ctx.namespace_labels.clone();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut listing: Option<HashMap<ObjectKey, Labels>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(namespace)) => {
                if let (Some(listing), Some((key, own))) = (listing.as_mut(), own_labels(namespace))
                {
                    if !own.is_empty() {
                        listing.insert(key, own);
                    }
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let before: Vec<ObjectKey> = store
                    .labels
                    .read()
                    .expect("namespace labels lock")
                    .keys()
                    .cloned()
                    .collect();
                for key in before.into_iter().filter(|k| !listed.contains_key(k)) {
                    if store.set(key.clone(), Labels::new()) {
                        ctx.queue.add(Task::Namespace(key));
                    }
                }
                for (key, own) in listed {
                    if store.set(key.clone(), own) {
                        ctx.queue.add(Task::Namespace(key));
                    }
                }
                *store.synced.write().expect("namespace labels lock") = true;
                store.listed.notify_waiters();
            }
            Ok(watcher::Event::Apply(namespace)) => {
                if let Some((key, own)) = own_labels(namespace) {
                    if store.set(key.clone(), own) {
                        ctx.queue.add(Task::Namespace(key));
                    }
                }
            }
            Ok(watcher::Event::Delete(namespace)) => {
                if let Some((key, _)) = own_labels(namespace) {
                    store.set(key, Labels::new());
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching namespaces failed; retrying"),
        }
    }
}
