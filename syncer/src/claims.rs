//! PersistentVolumeClaims: a claim gets a copy on the host once a Pod
//! references it (volumes), and keeps it while the tenant's claim exists —
//! a claim holds data, so a copy never goes because no Pod uses it any
//! more, only with the tenant's claim (behind the finalizer). The host's
//! binding comes back: the claim's status (phase, capacity, access modes,
//! conditions).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod};
use kube::api::Api;

use kplex_api::mapping::{self, OBJECT_UID_ANNOTATION};
use kplex_controllers::cache::ObjectKey;
use kplex_controllers::client::{is_status, Vc};
use kplex_controllers::Error;

use crate::pods::{
    delete_owned, ensure_namespace, has_finalizer, hold, host_meta, post_params, references,
    release,
};
use crate::{Ctx, Outcome};

/// The host copy of tenant claim `claim`: what the host's provisioner
/// needs (no volume name: the host binds it).
pub fn host_claim(vc: &Vc, ns: &str, claim: &PersistentVolumeClaim) -> PersistentVolumeClaim {
    let spec = claim.spec.clone().unwrap_or_default();
    PersistentVolumeClaim {
        metadata: host_meta(vc, ns, &claim.metadata),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: spec.access_modes,
            resources: spec.resources,
            storage_class_name: spec.storage_class_name,
            volume_mode: spec.volume_mode,
            volume_attributes_class_name: spec.volume_attributes_class_name,
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether a live Pod of `key`'s namespace mounts the claim.
fn referenced(ctx: &Ctx, key: &ObjectKey) -> bool {
    ctx.pods
        .in_namespace(&key.vc, key.namespace.as_deref())
        .iter()
        .filter(|p: &&Arc<Pod>| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref())
        .any(|spec| references(spec).claims.contains(&key.name))
}

/// Syncs one tenant claim with its host copy.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let tenant = ctx.claims.get(key);
    let api = ctx
        .clients
        .vc::<PersistentVolumeClaim>(&key.vc, key.namespace.as_deref());
    let Ok(host) = ctx.hosts.placement(&key.vc) else {
        if let Some(claim) = tenant.filter(|c| c.metadata.deletion_timestamp.is_some()) {
            release(api, &ctx.claims, key, &*claim).await?;
        }
        return Ok(None);
    };
    let copy = host.claims.get(key);
    let host_api: Api<PersistentVolumeClaim> = Api::namespaced(
        host.client.clone(),
        &mapping::host_namespace(&key.vc.name, key.ns()),
    );
    let Some(claim) = tenant else {
        if let Some(copy) = copy {
            delete_owned(&host_api, &copy.metadata).await?;
        }
        return Ok(None);
    };
    if claim.metadata.deletion_timestamp.is_some() {
        if let Some(copy) = copy {
            delete_owned(&host_api, &copy.metadata).await?;
            return Ok(None);
        }
        return release(api, &ctx.claims, key, &*claim).await;
    }
    let uid = claim.metadata.uid.as_deref();
    let Some(copy) = copy else {
        if !referenced(ctx, key) {
            // No Pod needs it on the host yet.
            return Ok(None);
        }
        if !has_finalizer(&claim.metadata) {
            hold(api, &ctx.claims, key, &*claim).await?;
            return Ok(None);
        }
        ensure_namespace(ctx, &host, &key.vc, key.ns()).await?;
        return match host_api
            .create(&post_params(), &host_claim(&key.vc, key.ns(), &claim))
            .await
        {
            Ok(created) => {
                host.claims.upsert_host(created);
                Ok(None)
            }
            Err(e) if is_status(&e, 409) => {
                tracing::warn!(claim = %key, host = %host.name, "a host claim of that name was not placed by kplex (or is not seen yet); left alone");
                Ok(Some(std::time::Duration::from_secs(30)))
            }
            Err(e) => Err(Error::Api(e)),
        };
    };
    let from_tenant = copy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OBJECT_UID_ANNOTATION))
        .map(String::as_str)
        == uid;
    if !from_tenant {
        // An earlier claim's copy: it goes with the claim it copied.
        delete_owned(&host_api, &copy.metadata).await?;
        return Ok(None);
    }
    // The host's binding wins.
    if let Some(status) = copy.status.clone() {
        if claim.status.as_ref() != Some(&status) {
            let mut updated = (*claim).clone();
            updated.status = Some(status);
            ctx.claims
                .write_status(&api, &key.vc, &key.name, &updated)
                .await?;
        }
    }
    Ok(None)
}
