//! The strategy of every built-in kind: decoding through its k8s-openapi
//! type, then the kind's rules, each kept in the module of its concern
//! (`defaults`, `validation`, `immutable`, `printers`, `fields`,
//! `services`), keyed by the kind's group and name.

use std::marker::PhantomData;
use std::sync::OnceLock;

use k8s_openapi::Resource;
use kplex_registry::error::ApiError;
use kplex_registry::generic::Propagation;
use kplex_registry::resource::{Allocator, Column, Companion, Decoded, Strategy};
use kplex_registry::ResourceInfo;
use serde_json::{json, Map, Value};

/// The strategy of the built-in kind `T`.
pub struct Builtin<T> {
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    columns: OnceLock<Vec<Column>>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Resource> Builtin<T> {
    /// The strategy of `T`.
    pub fn new() -> Builtin<T> {
        Builtin {
            group: T::GROUP,
            kind: T::KIND,
            plural: T::URL_PATH_SEGMENT,
            columns: OnceLock::new(),
            _type: PhantomData,
        }
    }
}

impl<T: Resource> Default for Builtin<T> {
    fn default() -> Self {
        Builtin::new()
    }
}

/// Round-trips `object` through `T`, collecting the fields `T` ignores.
pub(crate) fn decode_as<T>(object: &Value) -> Decoded
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

impl<T> Strategy for Builtin<T>
where
    T: Resource + serde::de::DeserializeOwned + serde::Serialize + schemars::JsonSchema + 'static,
{
    fn decode(&self, object: &Value) -> Decoded {
        let (decoded, unknown) = decode_as::<T>(object)?;
        // A malformed quantity fails decoding in kube-apiserver (its Go type
        // parses it), so it is a 400 here too.
        if let Some(bad) = crate::validation::bad_quantity(self.group, self.kind, &decoded) {
            return Err(format!(
                "{bad:?}: quantities must match the regular expression \
                 '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            ));
        }
        Ok((decoded, unknown))
    }

    fn validate(&self, info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
        crate::validation::validate(info, object)
    }

    fn default(&self, object: &mut Value) {
        crate::defaults::apply(self.group, self.kind, object);
    }

    fn prepare_for_create(&self, object: &mut Value) {
        match (self.group, self.kind) {
            ("", "Namespace") => {
                object["spec"] = json!({"finalizers": ["kubernetes"]});
                object["status"] = json!({"phase": "Active"});
            }
            ("batch", "Job") => crate::defaults::job_selector(object),
            // A new Pod is Pending, with the QoS class its resources give
            // it (kube-apiserver's pod strategy).
            ("", "Pod") => {
                let qos = crate::defaults::qos_class(&object["spec"]);
                object["status"] = json!({"phase": "Pending", "qosClass": qos});
            }
            ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::custom::accept(object),
            _ => {}
        }
    }

    fn verbs(&self) -> Option<&'static [&'static str]> {
        ((self.group, self.kind) == ("", "ComponentStatus")).then_some(&["get", "list"][..])
    }

    fn prepare_for_update(&self, _old: &Value, new: &mut Value) {
        if (self.group, self.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition") {
            crate::custom::record_storage_version(new);
        }
    }

    fn validate_update(
        &self,
        info: &ResourceInfo,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        crate::immutable::check(info, name, old, new)
    }

    fn has_status(&self) -> bool {
        matches!(
            (self.group, self.plural),
            (
                "",
                "namespaces"
                    | "pods"
                    | "services"
                    | "persistentvolumeclaims"
                    | "resourcequotas"
                    | "nodes"
                    | "replicationcontrollers"
            ) | (
                "apps",
                "deployments" | "statefulsets" | "daemonsets" | "replicasets"
            ) | ("batch", _)
                | ("autoscaling", "horizontalpodautoscalers")
                | ("networking.k8s.io", "ingresses")
                | ("policy", "poddisruptionbudgets")
                | ("apiextensions.k8s.io", "customresourcedefinitions")
                | ("", "persistentvolumes")
                | ("certificates.k8s.io", "certificatesigningrequests")
                | ("flowcontrol.apiserver.k8s.io", _)
                | ("storage.k8s.io", "volumeattachments")
                | ("networking.k8s.io", "servicecidrs")
                | ("resource.k8s.io", "resourceclaims")
                | ("apiregistration.k8s.io", "apiservices")
                | (
                    "admissionregistration.k8s.io",
                    "validatingadmissionpolicies"
                )
        )
    }

    fn has_scale(&self) -> bool {
        matches!(
            (self.group, self.plural),
            ("apps", "deployments" | "statefulsets" | "replicasets")
                | ("", "replicationcontrollers")
        )
    }

    fn tracks_generation(&self) -> bool {
        matches!(
            self.group,
            "apps" | "batch" | "networking.k8s.io" | "policy" | "autoscaling" | "resource.k8s.io"
        ) || (self.group, self.plural) == ("", "replicationcontrollers")
    }

    fn name_is_label(&self) -> bool {
        matches!(
            (self.group, self.plural),
            ("", "namespaces") | ("", "services")
        )
    }

    fn field_labels(&self) -> &[&'static str] {
        crate::fields::field_labels(self.group, self.plural)
    }

    fn columns(&self) -> Vec<Column> {
        self.columns
            .get_or_init(|| crate::printers::columns(self.group, self.plural))
            .clone()
    }

    fn whole_table(&self) -> bool {
        self.plural == "events"
    }

    fn allocator(&self) -> Option<&dyn Allocator> {
        ((self.group, self.plural) == ("", "services"))
            .then_some(&crate::services::ServiceAllocator as &dyn Allocator)
    }

    fn companions(&self, created: &Value) -> Vec<Companion> {
        if (self.group, self.kind) != ("", "Namespace") {
            return Vec::new();
        }
        // Every namespace has a `default` ServiceAccount (kube's service
        // account controller makes it within moments; kplex with the
        // namespace).
        vec![Companion {
            group: "",
            plural: "serviceaccounts",
            object: json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": created["metadata"]["name"]},
            }),
        }]
    }

    fn default_propagation(&self) -> Propagation {
        // batch/v1 Jobs and v1 ReplicationControllers orphan their Pods
        // unless told otherwise, for compatibility (kubectl always says).
        match (self.group, self.kind) {
            ("batch", "Job") | ("", "ReplicationController") => Propagation::Orphan,
            _ => Propagation::Background,
        }
    }

    fn openapi_schema(&self, schemas: &mut Map<String, Value>) -> Option<String> {
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        generator.subschema_for::<T>();
        for (name, schema) in generator.take_definitions(true) {
            schemas.entry(name).or_insert(schema);
        }
        Some(T::schema_name().into_owned())
    }
}

/// Adds ObjectMeta's schema (and those it refers to) to `schemas`; its
/// name there.
pub fn meta_schemas(schemas: &mut Map<String, Value>) -> String {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use schemars::JsonSchema;
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<ObjectMeta>();
    for (name, schema) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    ObjectMeta::schema_name().into_owned()
}
