//! The resource catalog: one row per built-in kind, read off k8s-openapi's
//! types (group, version, kind, plural, scope) plus what the type does not
//! say (short names, categories). A new built-in kind is one row.

use k8s_openapi::api::{
    apps, authentication, authorization, batch, coordination, core, events, networking, policy,
};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};

/// Verbs every stored resource serves.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Namespaces' verbs: no deletecollection (as kube-apiserver).
pub const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The one verb of a review resource.
pub const REVIEW_VERBS: &[&str] = &["create"];

/// One resource kind as the API serves it.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group; `""` for core.
    pub group: &'static str,
    /// Version, e.g. `v1`.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name (the URL segment), e.g. `pods`.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Whether objects are stored; a review (`SelfSubjectAccessReview`…) is
    /// only created and answered (see `reviews`).
    pub stored: bool,
    /// Decodes an object into its k8s-openapi type and encodes it again, as
    /// kube-apiserver does with its Go types: the object without the fields
    /// the type does not know, and those fields' paths.
    pub decode: fn(&serde_json::Value) -> Decoded,
    /// Adds the kind's OpenAPI schema (and those it refers to) to the
    /// generator; returns the schema's name.
    pub schema: fn(&mut schemars::SchemaGenerator) -> String,
}

fn schema_of<T: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

/// An object round-tripped through its type, with the unknown fields'
/// paths; or the type error.
pub type Decoded = Result<(serde_json::Value, Vec<String>), String>;

/// Round-trips `object` through `T`, collecting the fields `T` ignores.
fn decode_as<T>(object: &serde_json::Value) -> Decoded
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let mut unknown = Vec::new();
    let typed: T = serde_ignored::deserialize(object, |path| unknown.push(field_path(&path)))
        .map_err(|e| e.to_string())?;
    let value = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    Ok((value, unknown))
}

/// A field's path as kube-apiserver prints it: `spec.rules[0].host`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

impl ResourceInfo {
    /// The verbs served.
    pub fn verbs(&self) -> &'static [&'static str] {
        if (self.group, self.plural) == ("", "namespaces") {
            NAMESPACE_VERBS
        } else if self.stored {
            VERBS
        } else {
            REVIEW_VERBS
        }
    }

    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind as kube-apiserver's errors name it: `ConfigMap`, `Deployment.apps`.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_owned()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The singular name (lowercased kind).
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// `plural` or `plural.group`, as error messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether the kind counts spec changes in `metadata.generation` (the
    /// workload and policy kinds do; ConfigMaps, Secrets, Namespaces… don't).
    pub fn tracks_generation(&self) -> bool {
        matches!(
            self.group,
            "apps" | "batch" | "networking.k8s.io" | "policy"
        )
    }

    /// Whether the kind has a `status` subresource.
    pub fn has_status(&self) -> bool {
        matches!(
            (self.group, self.plural),
            (
                "",
                "namespaces" | "pods" | "services" | "persistentvolumeclaims" | "resourcequotas"
            ) | ("apps", _)
                | ("batch", _)
                | ("networking.k8s.io", "ingresses")
                | ("policy", "poddisruptionbudgets")
        )
    }

    /// Whether the kind has a `scale` subresource.
    pub fn has_scale(&self) -> bool {
        matches!(
            (self.group, self.plural),
            ("apps", "deployments" | "statefulsets" | "replicasets")
        )
    }

    /// Whether object names must be DNS-1123 labels (else subdomains).
    pub fn name_is_label(&self) -> bool {
        matches!(
            (self.group, self.plural),
            ("", "namespaces") | ("", "services")
        )
    }
}

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

fn row<T>(short_names: &'static [&'static str], categories: &'static [&'static str]) -> ResourceInfo
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
    T::Scope: ScopeFlag,
{
    ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        plural: T::URL_PATH_SEGMENT,
        namespaced: <T::Scope as ScopeFlag>::NAMESPACED,
        short_names,
        categories,
        stored: true,
        decode: decode_as::<T>,
        schema: schema_of::<T>,
    }
}

/// A review kind: created, answered, never stored.
fn review<T>() -> ResourceInfo
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema,
    T::Scope: ScopeFlag,
{
    ResourceInfo {
        stored: false,
        ..row::<T>(&[], &[])
    }
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
        row::<apps::v1::Deployment>(&["deploy"], ALL),
        row::<apps::v1::StatefulSet>(&["sts"], ALL),
        row::<apps::v1::DaemonSet>(&["ds"], ALL),
        row::<apps::v1::ReplicaSet>(&["rs"], ALL),
        row::<batch::v1::Job>(&[], ALL),
        row::<batch::v1::CronJob>(&["cj"], ALL),
        row::<networking::v1::Ingress>(&["ing"], &[]),
        row::<networking::v1::NetworkPolicy>(&["netpol"], &[]),
        row::<events::v1::Event>(&["ev"], &[]),
        row::<coordination::v1::Lease>(&[], &[]),
        row::<policy::v1::PodDisruptionBudget>(&["pdb"], &[]),
        review::<authentication::v1::SelfSubjectReview>(),
        review::<authorization::v1::SelfSubjectAccessReview>(),
        review::<authorization::v1::SelfSubjectRulesReview>(),
    ]
}

/// The catalog of one VC (built-ins now; the VC's CRDs later).
#[derive(Debug, Clone)]
pub struct Catalog {
    resources: Vec<ResourceInfo>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            resources: builtin(),
        }
    }
}

impl Catalog {
    /// Every resource.
    pub fn all(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// The resource served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// The group/versions served, core first, in order of first appearance.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for r in &self.resources {
            if !out.contains(&(r.group, r.version)) {
                out.push((r.group, r.version));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_from_the_openapi_types() {
        let c = Catalog::default();
        let pods = c.find("", "v1", "pods").unwrap();
        assert!(pods.namespaced);
        assert_eq!(pods.kind, "Pod");
        let ns = c.find("", "v1", "namespaces").unwrap();
        assert!(!ns.namespaced);
        let deploy = c.find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.qualified(), "deployments.apps");
        assert!(c.find("apps", "v1", "pods").is_none());
        assert_eq!(c.group_versions()[0], ("", "v1"));
        assert_eq!(c.all().iter().filter(|r| r.stored).count(), 22);
        let reviews = c.find("authorization.k8s.io", "v1", "selfsubjectaccessreviews");
        assert_eq!(reviews.unwrap().verbs(), ["create"]);
        assert!(pods.verbs().contains(&"deletecollection"));
        assert!(!ns.verbs().contains(&"deletecollection"));
    }
}
