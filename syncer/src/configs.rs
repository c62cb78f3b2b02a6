//! ConfigMaps and Secrets: a host gets a copy of exactly those a VC's Pods
//! reference (volumes, projections, env, envFrom, image pull secrets), in
//! the mapped namespace under the same name, so a Pod's references keep
//! working on the host. A copy follows the tenant's object and goes when
//! no Pod references it any more or the tenant's object is deleted; a
//! copy edited on the host is put back.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use kplex_api::mapping::{self, OBJECT_UID_ANNOTATION};
use kplex_controllers::cache::{Cache, ObjectKey};
use kplex_controllers::client::{is_status, Vc};
use kplex_controllers::Error;

use crate::hosts::Host;
use crate::pods::{ensure_namespace, host_meta, post_params, references};
use crate::{ConfigKind, Ctx, Outcome};

/// A kind the syncer copies as it is: metadata mapped, the rest kept.
trait Copied:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + PartialEq
{
    /// The host copy of `object` of `vc` in tenant namespace `ns`.
    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self;
    /// Whether two objects carry the same content (not metadata).
    fn same_content(a: &Self, b: &Self) -> bool;
}

impl Copied for ConfigMap {
    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self {
        ConfigMap {
            metadata: host_meta(vc, ns, &object.metadata),
            data: object.data.clone(),
            binary_data: object.binary_data.clone(),
            immutable: object.immutable,
        }
    }

    fn same_content(a: &Self, b: &Self) -> bool {
        a.data == b.data && a.binary_data == b.binary_data && a.immutable == b.immutable
    }
}

impl Copied for Secret {
    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self {
        Secret {
            metadata: host_meta(vc, ns, &object.metadata),
            data: object.data.clone(),
            string_data: None,
            type_: object.type_.clone(),
            immutable: object.immutable,
        }
    }

    fn same_content(a: &Self, b: &Self) -> bool {
        a.data == b.data && a.type_ == b.type_ && a.immutable == b.immutable
    }
}

/// Whether a Pod of `key`'s VC and namespace references `key`'s name (or,
/// for a Secret, an Ingress's TLS section does).
fn referenced(ctx: &Ctx, kind: ConfigKind, key: &ObjectKey) -> bool {
    if kind == ConfigKind::Secret
        && ctx
            .ingresses
            .in_namespace(&key.vc, key.namespace.as_deref())
            .iter()
            .any(|i| crate::pods::tls_secrets(i).contains(&key.name))
    {
        return true;
    }
    ctx.pods
        .in_namespace(&key.vc, key.namespace.as_deref())
        .iter()
        .filter(|p: &&Arc<Pod>| {
            p.metadata.deletion_timestamp.is_none() && !crate::pods::is_host_copy(&p.metadata)
        })
        .filter_map(|p| p.spec.as_ref())
        .any(|spec| {
            let refs = references(spec);
            match kind {
                ConfigKind::ConfigMap => refs.configmaps.contains(&key.name),
                ConfigKind::Secret => refs.secrets.contains(&key.name),
            }
        })
}

/// Syncs one referenced (or no longer referenced) object with its copy.
pub async fn reconcile(ctx: &Arc<Ctx>, kind: ConfigKind, key: &ObjectKey) -> Outcome {
    let Ok(host) = ctx.hosts.placement(&key.vc) else {
        return Ok(None);
    };
    let wanted = referenced(ctx, kind, key);
    match kind {
        ConfigKind::ConfigMap => {
            let tenant = ctx.configmaps.get(key).filter(|_| wanted);
            sync(ctx, &host, key, tenant, &host.configmaps).await
        }
        ConfigKind::Secret => {
            // A Pod's token Secret is the syncer's own (`token`).
            if host
                .secrets
                .get(key)
                .is_some_and(|s| crate::token::is_token(&s))
            {
                return Ok(None);
            }
            let tenant = ctx.secrets.get(key).filter(|_| wanted);
            sync(ctx, &host, key, tenant, &host.secrets).await
        }
    }
}

async fn sync<K: Copied>(
    ctx: &Ctx,
    host: &Host,
    key: &ObjectKey,
    tenant: Option<Arc<K>>,
    copies: &Cache<K>,
) -> Outcome {
    let current = copies.get(key);
    let ns = mapping::host_namespace(&key.vc.name, key.ns());
    let api: Api<K> = Api::namespaced(host.client.clone(), &ns);
    let Some(tenant) = tenant else {
        if let Some(copy) = current {
            crate::pods::delete_owned(&api, copy.meta()).await?;
        }
        return Ok(None);
    };
    let desired = K::copy_of(&key.vc, key.ns(), &tenant);
    let Some(copy) = current else {
        ensure_namespace(ctx, host, &key.vc, key.ns()).await?;
        return match api.create(&post_params(), &desired).await {
            Ok(created) => {
                copies.upsert_host(created);
                Ok(None)
            }
            Err(e) if is_status(&e, 409) => {
                let existing = api.get(&key.name).await.map_err(Error::Api)?;
                if mapping::owned_by(existing.meta().labels.as_ref(), &key.vc.uid) {
                    copies.upsert_host(existing);
                    Ok(None)
                } else {
                    tracing::warn!(object = %key, host = %host.name, "a host object of that name was not placed by kplex; left alone");
                    Ok(Some(std::time::Duration::from_secs(30)))
                }
            }
            Err(e) => Err(Error::Api(e)),
        };
    };
    let from_tenant = copy
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(OBJECT_UID_ANNOTATION))
        == tenant.meta().uid.as_ref();
    if !from_tenant {
        // A copy of an earlier object of this name: replaced after it goes.
        crate::pods::delete_owned(&api, copy.meta()).await?;
        return Ok(None);
    }
    let same = K::same_content(&desired, &copy)
        && desired.meta().labels == copy.meta().labels
        && desired.meta().annotations == copy.meta().annotations;
    if same {
        return Ok(None);
    }
    let mut fixed = desired;
    fixed.meta_mut().resource_version = copy.meta().resource_version.clone();
    match api.replace(&key.name, &post_params(), &fixed).await {
        Ok(written) => {
            copies.upsert_host(written);
            Ok(None)
        }
        Err(e) if is_status(&e, 404) => Ok(Some(std::time::Duration::ZERO)),
        Err(e) => Err(Error::Api(e)),
    }
}
