//! The built-in catalog: one row per built-in kind, read off k8s-openapi's
//! types (group, version, kind, plural, scope) plus what the type does not
//! say (short names, categories). A new built-in kind is one row; what it
//! does beyond being stored is its [`Builtin`] strategy.

use std::sync::{Arc, OnceLock};

use k8s_openapi::api::{
    admissionregistration, apps, authentication, authorization, autoscaling, batch, certificates,
    coordination, core, discovery, events, flowcontrol, networking, node, policy, rbac, resource,
    scheduling, storage,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use kplex_registry::{Catalog, ResourceInfo};

use crate::strategy::Builtin;

/// Marks k8s-openapi's scope types with whether they are namespaced.
trait ScopeFlag {
    const NAMESPACED: bool;
}
impl ScopeFlag for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}
impl ScopeFlag for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn row<T>(short_names: &[&str], categories: &[&str]) -> ResourceInfo
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
    T::Scope: ScopeFlag,
{
    ResourceInfo {
        group: T::GROUP.to_owned(),
        version: T::VERSION.to_owned(),
        kind: T::KIND.to_owned(),
        plural: T::URL_PATH_SEGMENT.to_owned(),
        namespaced: <T::Scope as ScopeFlag>::NAMESPACED,
        short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
        categories: categories.iter().map(|s| (*s).to_owned()).collect(),
        stored: true,
        strategy: Arc::new(Builtin::<T>::new()),
    }
}

/// A kind the server answers without storing it: a review (created,
/// answered), a top-level `Binding` (created: it binds its Pod), or
/// `ComponentStatus` (read: what the server reports of its parts).
fn unstored<T>(short_names: &[&str]) -> ResourceInfo
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
    T::Scope: ScopeFlag,
{
    ResourceInfo {
        stored: false,
        ..row::<T>(short_names, &[])
    }
}

/// A review kind: created, answered, never stored.
fn review<T>() -> ResourceInfo
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
    T::Scope: ScopeFlag,
{
    unstored::<T>(&[])
}

const ALL: &[&str] = &["all"];

/// Every built-in resource a VC serves.
pub fn builtin() -> Vec<ResourceInfo> {
    vec![
        row::<core::v1::Namespace>(&["ns"], &[]),
        row::<core::v1::Pod>(&["po"], ALL),
        row::<core::v1::Service>(&["svc"], ALL),
        row::<core::v1::Endpoints>(&["ep"], &[]),
        row::<core::v1::ConfigMap>(&["cm"], &[]),
        row::<core::v1::Secret>(&[], &[]),
        row::<core::v1::ServiceAccount>(&["sa"], &[]),
        row::<core::v1::Event>(&["ev"], &[]),
        row::<core::v1::PersistentVolumeClaim>(&["pvc"], &[]),
        row::<core::v1::ResourceQuota>(&["quota"], &[]),
        row::<core::v1::LimitRange>(&["limits"], &[]),
        row::<core::v1::Node>(&["no"], &[]),
        row::<core::v1::ReplicationController>(&["rc"], ALL),
        row::<core::v1::PodTemplate>(&[], &[]),
        row::<apps::v1::Deployment>(&["deploy"], ALL),
        row::<apps::v1::StatefulSet>(&["sts"], ALL),
        row::<apps::v1::DaemonSet>(&["ds"], ALL),
        row::<apps::v1::ReplicaSet>(&["rs"], ALL),
        row::<apps::v1::ControllerRevision>(&[], &[]),
        row::<autoscaling::v2::HorizontalPodAutoscaler>(&["hpa"], ALL),
        row::<batch::v1::Job>(&[], ALL),
        row::<batch::v1::CronJob>(&["cj"], ALL),
        row::<networking::v1::Ingress>(&["ing"], &[]),
        row::<networking::v1::NetworkPolicy>(&["netpol"], &[]),
        row::<events::v1::Event>(&["ev"], &[]),
        row::<coordination::v1::Lease>(&[], &[]),
        row::<discovery::v1::EndpointSlice>(&[], &[]),
        row::<policy::v1::PodDisruptionBudget>(&["pdb"], &[]),
        row::<core::v1::PersistentVolume>(&["pv"], &[]),
        row::<admissionregistration::v1::MutatingWebhookConfiguration>(&[], &["api-extensions"]),
        row::<admissionregistration::v1::ValidatingWebhookConfiguration>(&[], &["api-extensions"]),
        row::<admissionregistration::v1::ValidatingAdmissionPolicy>(&[], &["api-extensions"]),
        row::<admissionregistration::v1::ValidatingAdmissionPolicyBinding>(
            &[],
            &["api-extensions"],
        ),
        row::<certificates::v1::CertificateSigningRequest>(&["csr"], &[]),
        row::<flowcontrol::v1::FlowSchema>(&[], &[]),
        row::<flowcontrol::v1::PriorityLevelConfiguration>(&[], &[]),
        row::<networking::v1::IngressClass>(&[], &[]),
        row::<node::v1::RuntimeClass>(&[], &[]),
        row::<scheduling::v1::PriorityClass>(&["pc"], &[]),
        row::<storage::v1::StorageClass>(&["sc"], &[]),
        row::<storage::v1::CSIDriver>(&[], &[]),
        row::<storage::v1::CSINode>(&[], &[]),
        row::<storage::v1::CSIStorageCapacity>(&[], &[]),
        row::<storage::v1::VolumeAttachment>(&[], &[]),
        row::<storage::v1::VolumeAttributesClass>(&["vac"], &[]),
        row::<networking::v1::IPAddress>(&["ip"], &[]),
        row::<networking::v1::ServiceCIDR>(&[], &[]),
        row::<resource::v1::DeviceClass>(&[], &[]),
        row::<resource::v1::ResourceClaim>(&[], &[]),
        row::<resource::v1::ResourceClaimTemplate>(&[], &[]),
        row::<resource::v1::ResourceSlice>(&[], &[]),
        row::<apiregistration::v1::APIService>(&[], &["api-extensions"]),
        row::<apiextensions::v1::CustomResourceDefinition>(&["crd", "crds"], &["api-extensions"]),
        row::<rbac::v1::ClusterRole>(&[], &[]),
        row::<rbac::v1::ClusterRoleBinding>(&[], &[]),
        row::<rbac::v1::Role>(&[], &[]),
        row::<rbac::v1::RoleBinding>(&[], &[]),
        unstored::<core::v1::Binding>(&[]),
        unstored::<core::v1::ComponentStatus>(&["cs"]),
        review::<authentication::v1::SelfSubjectReview>(),
        review::<authentication::v1::TokenReview>(),
        review::<authorization::v1::SelfSubjectAccessReview>(),
        review::<authorization::v1::SelfSubjectRulesReview>(),
        review::<authorization::v1::SubjectAccessReview>(),
        review::<authorization::v1::LocalSubjectAccessReview>(),
    ]
}

/// The built-in catalog, built once per process and shared by every VC.
pub fn shared() -> Arc<Catalog> {
    static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
    CATALOG
        .get_or_init(|| Arc::new(Catalog::new(builtin())))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_the_openapi_types() {
        let c = shared();
        let pods = c.find("", "v1", "pods").unwrap();
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        let ns = c.find("", "v1", "namespaces").unwrap();
        assert!(!ns.namespaced);
        let deploy = c.find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.qualified(), "deployments.apps");
        assert!(deploy.has_scale() && deploy.has_status() && deploy.tracks_generation());
        assert!(c.find("apps", "v1", "pods").is_none());
        assert_eq!(c.group_versions()[0], ("", "v1"));
        assert_eq!(c.all().iter().filter(|r| r.stored).count(), 57);
        let nodes = c.find("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced && nodes.has_status());
        let rc = c.find("", "v1", "replicationcontrollers").unwrap();
        assert!(rc.has_scale() && rc.tracks_generation());
        let reviews = c.find("authorization.k8s.io", "v1", "selfsubjectaccessreviews");
        assert_eq!(reviews.unwrap().verbs(), ["create"]);
        let statuses = c.find("", "v1", "componentstatuses").unwrap();
        assert_eq!(statuses.verbs(), ["get", "list"]);
        assert!(!statuses.namespaced && !statuses.stored);
        assert_eq!(c.find("", "v1", "bindings").unwrap().verbs(), ["create"]);
        assert!(pods.verbs().contains(&"deletecollection"));
        assert!(!ns.verbs().contains(&"deletecollection"));
    }
}
