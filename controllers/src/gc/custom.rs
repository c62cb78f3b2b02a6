//! The collector's custom kinds. Every VC's CRDs are watched across VCs;
//! each CRD's objects are watched in its own VC (kplex serves a custom
//! resource in that VC only, so no cross-VC watch holds them), and their
//! events feed the graph as the built-in kinds' do. A VC without CRDs costs
//! nothing here.
//!
//! A CRD that goes takes its objects with it: its kind stays known (an
//! owner of it then reads as gone, and its dependents are collected), and
//! the dependents of its objects are looked at again.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;

use super::KindRef;
use crate::client::Vc;
use crate::watches::Seen;
use crate::Ctx;

/// One CRD of a VC as the collector follows it.
struct Followed {
    kind: Arc<KindRef>,
    /// The watch of its objects; `None` once the CRD is gone.
    watch: Option<tokio::task::AbortHandle>,
}

/// How long a deleted VC is remembered: a CRD event of it that arrives
/// after its deletion (the two come on separate watches) starts nothing.
const GONE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Each VC's custom kinds, by VC UID and CRD name.
#[derive(Default)]
pub(super) struct Custom {
    by_vc: HashMap<Arc<str>, HashMap<String, Followed>>,
    /// VCs deleted lately, by UID, and when.
    gone: HashMap<Arc<str>, std::time::Instant>,
}

impl Custom {
    /// The custom kind `kind` of `group` in `vc`: a served CRD's, else a
    /// deleted one's (its objects then read as gone).
    pub(super) fn kind(&self, vc: &Vc, group: &str, kind: &str) -> Option<Arc<KindRef>> {
        let crds = self.by_vc.get(&vc.uid)?;
        let named = |f: &&Followed| f.kind.group == group && f.kind.kind == kind;
        crds.values()
            .filter(named)
            .find(|f| f.watch.is_some())
            .or_else(|| crds.values().find(named))
            .map(|f| f.kind.clone())
    }

    /// `vc` was deleted: its watches end, its kinds are forgotten, and a
    /// late event of its CRDs is ignored.
    pub(super) fn forget_vc(&mut self, vc: &Vc) {
        for followed in self
            .by_vc
            .remove(&vc.uid)
            .into_iter()
            .flat_map(|m| m.into_values())
        {
            if let Some(watch) = followed.watch {
                watch.abort();
            }
        }
        let now = std::time::Instant::now();
        self.gone.retain(|_, at| now.duration_since(*at) < GONE_FOR);
        self.gone.insert(vc.uid.clone(), now);
    }
}

/// Watches every VC's CRDs, and through them their objects.
pub fn start_custom_watches(ctx: &Arc<Ctx>, tasks: &mut tokio::task::JoinSet<()>) {
    let ctx = ctx.clone();
    tasks.spawn(async move {
        let api: Api<CustomResourceDefinition> = Api::all(ctx.clients.across.clone());
        let kind = Arc::new(KindRef::of::<CustomResourceDefinition>());
        crate::watches::each_event(api, crate::cache::watch_config(), |seen, vc, crd| {
            // A CRD is an owner and a dependent like any object.
            match seen {
                Seen::Deleted => ctx.graph.forget(&ctx, &vc, crd.meta()),
                _ => ctx.graph.observe(&ctx, &vc, &kind, crd.meta()),
            }
            match seen {
                Seen::Deleted => unfollow(&ctx, &vc, crd),
                _ => follow(&ctx, &vc, crd),
            }
        })
        .await;
    });
}

/// The kind a CRD defines, addressed through its storage version if it is
/// served, else its first served one.
fn kind_of(crd: &CustomResourceDefinition) -> Option<KindRef> {
    let spec = &crd.spec;
    let version = spec
        .versions
        .iter()
        .find(|v| v.served && v.storage)
        .or_else(|| spec.versions.iter().find(|v| v.served))?;
    Some(KindRef {
        group: spec.group.clone(),
        version: version.name.clone(),
        kind: spec.names.kind.clone(),
        plural: spec.names.plural.clone(),
        namespaced: spec.scope == "Namespaced",
    })
}

/// A CRD of `vc` was listed, created or changed: its objects are watched
/// (again, if how they are addressed changed).
fn follow(ctx: &Arc<Ctx>, vc: &Vc, crd: &CustomResourceDefinition) {
    let name = crd.meta().name.clone().unwrap_or_default();
    let Some(kind) = kind_of(crd) else {
        return unfollow(ctx, vc, crd);
    };
    {
        let mut custom = ctx.graph.custom.lock().expect("custom lock");
        if custom.gone.contains_key(&vc.uid) {
            return;
        }
        let crds = custom.by_vc.entry(vc.uid.clone()).or_default();
        if crds
            .get(&name)
            .is_some_and(|f| f.watch.is_some() && *f.kind == kind)
        {
            return;
        }
        // A deleted CRD of the same kind is this one's now.
        crds.retain(|other, f| {
            *other == name
                || f.watch.is_some()
                || (f.kind.group.as_str(), f.kind.kind.as_str())
                    != (kind.group.as_str(), kind.kind.as_str())
        });
        let kind = Arc::new(kind.clone());
        let watch = tokio::spawn(watch_objects(ctx.clone(), vc.clone(), kind.clone()));
        let followed = Followed {
            kind,
            watch: Some(watch.abort_handle()),
        };
        if let Some(watch) = crds.insert(name, followed).and_then(|old| old.watch) {
            watch.abort();
        }
    }
    // Dependents kept while their owners' kind was unknown.
    ctx.graph.recheck_owned_by(ctx, vc, &kind.group, &kind.kind);
}

/// A CRD of `vc` was deleted, and its objects with it.
fn unfollow(ctx: &Arc<Ctx>, vc: &Vc, crd: &CustomResourceDefinition) {
    let name = crd.meta().name.clone().unwrap_or_default();
    {
        let mut custom = ctx.graph.custom.lock().expect("custom lock");
        let followed = custom
            .by_vc
            .get_mut(&vc.uid)
            .and_then(|crds| crds.get_mut(&name));
        if let Some(watch) = followed.and_then(|f| f.watch.take()) {
            watch.abort();
        }
    }
    // Its objects went with it (their deletions come on no watch now).
    ctx.graph
        .forget_kind(vc, &crd.spec.group, &crd.spec.names.kind);
    ctx.graph
        .recheck_owned_by(ctx, vc, &crd.spec.group, &crd.spec.names.kind);
}

/// Feeds the graph with the objects of one custom kind of `vc`.
async fn watch_objects(ctx: Arc<Ctx>, vc: Vc, kind: Arc<KindRef>) {
    let client = match ctx.clients.in_vc(&vc) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(vc = %vc.name, kind = %kind.kind, error = %e, "no client for a custom resource's VC");
            return;
        }
    };
    let resource = ApiResource {
        group: kind.group.clone(),
        version: kind.version.clone(),
        api_version: format!("{}/{}", kind.group, kind.version),
        kind: kind.kind.clone(),
        plural: kind.plural.clone(),
    };
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource);
    let mut events = std::pin::pin!(watcher(api, crate::cache::watch_config()).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object)) => {
                ctx.graph.observe(&ctx, &vc, &kind, &object.metadata)
            }
            Ok(watcher::Event::Delete(object)) => ctx.graph.forget(&ctx, &vc, &object.metadata),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(vc = %vc.name, kind = %kind.kind, error = %e, "watch of a custom resource failed; retrying")
            }
        }
    }
}
