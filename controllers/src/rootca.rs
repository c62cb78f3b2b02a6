//! The root CA publisher: every namespace of every VC has the ConfigMap
//! `kube-root-ca.crt` with the CA bundle clients in Pods verify the API
//! with (`ca.crt`), put back when deleted or changed. It keeps nothing:
//! each namespace and each such ConfigMap is checked as its event comes.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::cache::ObjectKey;
use crate::{Ctx, Outcome};

/// The ConfigMap's name.
pub const NAME: &str = "kube-root-ca.crt";
const KEY: &str = "ca.crt";

/// Reconciles one namespace's root CA ConfigMap (`key.name` is the
/// namespace).
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let ns = key.name.as_str();
    let api = ctx.clients.vc::<ConfigMap>(&key.vc, Some(ns));
    let data: BTreeMap<String, String> = [(KEY.to_owned(), ctx.ca_pem.clone())].into();
    match api.get_opt(NAME).await? {
        Some(current) if current.data.as_ref() == Some(&data) => Ok(None),
        Some(mut current) => {
            current.data = Some(data);
            current.binary_data = None;
            api.replace(NAME, &current).await?;
            Ok(None)
        }
        None => {
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
                data: Some(data),
                ..Default::default()
            };
            match api.create(&config_map).await {
                Ok(_) => Ok(None),
                // The namespace went meanwhile, or is terminating: nothing to do.
                Err(e) if e.is_status(404) || e.is_status(403) || e.is_status(409) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }
}
