//! Custom resources: the kinds a VC defines with CustomResourceDefinitions
//! (`apiextensions.k8s.io/v1`), each served in that VC only.
//!
//! A CRD is checked when it is written (names, scope, versions with one
//! storage version, a structural schema whose defaults fit it, what kplex
//! can enforce); once stored it is served at once (`NamesAccepted` and
//! `Established`, and the server answers the write only once its VC's
//! catalog has it). Each served version becomes a catalog row whose
//! strategy is [`Custom`]: objects are pruned of the fields their schema
//! does not declare (and of nulls it does not allow), defaulted, their
//! metadata decoded as ObjectMeta, and validated against the schema
//! (types, required, enum, pattern, bounds, lengths, items, properties,
//! multipleOf, nullable, `x-kubernetes-int-or-string`,
//! `-preserve-unknown-fields`, `-embedded-resource`,
//! `-list-type`/`-list-map-keys`), with the field's path in every refusal;
//! `status` and `scale` subresources and printer columns come from the
//! version. Versions differ only in their schemas (conversion `None`).
//!
//! The schema work is `crate::schema`'s, the rules' `crate::cel`'s.
//!
//! A VC's catalog is the shared built-in one plus its CRDs' rows, kept in
//! memory per VC (`registry::pervc`): a VC without CRDs shares the
//! built-in catalog; the rows share the CRD object they were read from.

use std::collections::HashSet;
use std::sync::Arc;

use kplex_registry::error::ApiError;
use kplex_registry::pervc::{Derive, Objects, PerVc};
use kplex_registry::resource::{Column, Decoded, Strategy};
use kplex_registry::watchcache::WatchCache;
use kplex_registry::{Catalog, ResourceInfo};
use serde_json::{json, Map, Value};

use crate::schema::{
    body, check, default, json_path, prune, push, strings, structural, text, transitions, Compiled,
};

/// The CRDs' group.
pub const GROUP: &str = "apiextensions.k8s.io";
/// The CRDs' resource.
pub const PLURAL: &str = "customresourcedefinitions";
/// Versions one CRD may have.
pub const MAX_VERSIONS: usize = 64;
/// The annotation that lets a CRD use a Kubernetes-owned group.
const API_APPROVED: &str = "api-approved.kubernetes.io";

/// Builds a VC's catalog from its CRDs.
pub struct Crds;

impl Derive for Crds {
    type Output = Arc<Catalog>;

    fn build(&self, objects: &Objects) -> Arc<Catalog> {
        let shared = crate::catalog::shared();
        if objects.is_empty() {
            return shared;
        }
        let custom: Vec<ResourceInfo> = objects.values().flat_map(served_rows).collect();
        Arc::new(shared.with(custom))
    }
}

/// Every VC's catalog (see [`start`]).
pub type Catalogs = PerVc<Crds>;

/// Every VC's catalog over `store`, its watch opened on a task of its own.
pub fn start(store: Arc<WatchCache>) -> Arc<Catalogs> {
    PerVc::start(store, "custom resources", &[(GROUP, PLURAL)], Crds)
}

/// Whether `group` is one the built-in catalog serves.
fn built_in_group(group: &str) -> bool {
    crate::catalog::shared()
        .all()
        .iter()
        .any(|r| r.group == group)
}

/// kube-apiserver's version priority: GA before beta before alpha, higher
/// numbers first, then other names alphabetically.
fn version_order(name: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, String) {
    let parse = |rest: &str| -> Option<(u8, u64, u64)> {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        let (stage, minor) = match tail {
            "" => (0, 0),
            t if t.starts_with("beta") => (1, t[4..].parse().ok()?),
            t if t.starts_with("alpha") => (2, t[5..].parse().ok()?),
            _ => return None,
        };
        Some((stage, major, minor))
    };
    match name.strip_prefix('v').and_then(parse) {
        Some((stage, major, minor)) => (
            stage,
            std::cmp::Reverse(major),
            std::cmp::Reverse(minor),
            String::new(),
        ),
        None => (
            3,
            std::cmp::Reverse(0),
            std::cmp::Reverse(0),
            name.to_owned(),
        ),
    }
}

/// The catalog rows of a stored CRD: one per served version, in
/// kube-apiserver's version priority (the first is the preferred one).
/// None for a CRD of a built-in group (it cannot take a built-in kind's
/// place).
pub fn served_rows(crd: &Arc<Value>) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = text(spec, "group");
    let kind = text(names, "kind");
    let plural = text(names, "plural");
    if group.is_empty() || kind.is_empty() || plural.is_empty() || built_in_group(group) {
        return Vec::new();
    }
    let namespaced = text(spec, "scope") != "Cluster";
    let mut versions: Vec<(usize, &Value)> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, v)| v["served"] != false)
        .take(MAX_VERSIONS)
        .collect();
    versions.sort_by_key(|(_, v)| version_order(text(v, "name")));
    let storage = converting_storage(crd);
    versions
        .into_iter()
        .map(|(index, version)| {
            let subresources = &version["subresources"];
            let schema = &version["schema"]["openAPIV3Schema"];
            ResourceInfo {
                group: group.to_owned(),
                version: text(version, "name").to_owned(),
                kind: kind.to_owned(),
                plural: plural.to_owned(),
                namespaced,
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                stored: true,
                strategy: Arc::new(Custom {
                    group: group.to_owned(),
                    version: text(version, "name").to_owned(),
                    kind: kind.to_owned(),
                    crd: crd.clone(),
                    index,
                    compiled: Compiled::of(schema),
                    status: subresources["status"].is_object(),
                    scale: subresources["scale"].is_object(),
                    storage: storage.clone(),
                }),
            }
        })
        .collect()
}

/// The strategy of one version of a custom resource.
pub struct Custom {
    group: String,
    version: String,
    kind: String,
    /// The CRD it was read from (shared with the VC's index).
    crd: Arc<Value>,
    /// Which of the CRD's versions.
    index: usize,
    /// The schema's patterns and rules, compiled.
    compiled: Compiled,
    status: bool,
    scale: bool,
    /// The storage version, if objects may be stored in a version other
    /// than one served (see [`converting_storage`]).
    storage: Option<String>,
}

/// The CRD's storage version, if its objects may be read through another
/// version: it has several, or objects written as an earlier storage
/// version may remain (`status.storedVersions`). A CRD of one version that
/// was always its storage needs no conversion.
fn converting_storage(crd: &Value) -> Option<String> {
    let versions = crd["spec"]["versions"].as_array()?;
    let storage = versions.iter().find(|v| v["storage"] == true)?;
    let storage = text(storage, "name");
    let earlier = crd["status"]["storedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v.as_str() != Some(storage));
    (versions.len() > 1 || earlier).then(|| storage.to_owned())
}

/// Adds the CRD's storage version to `status.storedVersions` (the versions
/// objects may be stored as), as kube-apiserver does when a CRD's storage
/// version changes.
pub fn record_storage_version(crd: &mut Value) {
    let Some(storage) = crd["spec"]["versions"]
        .as_array()
        .and_then(|versions| versions.iter().find(|v| v["storage"] == true))
        .map(|v| v["name"].clone())
    else {
        return;
    };
    if !crd["status"].is_object() {
        crd["status"] = json!({});
    }
    let stored = &mut crd["status"]["storedVersions"];
    match stored.as_array_mut() {
        Some(versions) if versions.contains(&storage) => {}
        Some(versions) => versions.push(storage),
        None => *stored = json!([storage]),
    }
}

/// The stored versions an update leaves without a place in
/// `spec.versions`: kube-apiserver refuses to drop a version objects may
/// still be stored as (`status.storedVersions` must be trimmed first, once
/// the objects are migrated).
pub fn orphaned_stored_versions(crd: &Value) -> Vec<(String, String)> {
    let declared: Vec<&str> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| text(v, "name"))
        .collect();
    crd["status"]["storedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, v)| !v.as_str().is_some_and(|v| declared.contains(&v)))
        .map(|(i, v)| {
            (
                format!("status.storedVersions[{i}]"),
                format!("Invalid value: {v}: must appear in spec.versions"),
            )
        })
        .collect()
}

impl Custom {
    fn definition(&self) -> &Value {
        &self.crd["spec"]["versions"][self.index]
    }

    fn schema(&self) -> &Value {
        &self.definition()["schema"]["openAPIV3Schema"]
    }
}

impl Strategy for Custom {
    /// Decodes `metadata` as ObjectMeta, prunes what the schema does not
    /// declare (those fields' paths are the unknown ones) and nulls it
    /// does not allow, and applies its defaults, as kube-apiserver does
    /// while decoding a custom resource.
    fn decode(&self, object: &Value) -> Decoded {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let mut object = object.clone();
        let mut unknown = Vec::new();
        if let Some(metadata) = object.get("metadata").filter(|m| !m.is_null()) {
            let (metadata, fields) = crate::strategy::decode_as::<ObjectMeta>(metadata)
                .map_err(|e| format!("metadata: {e}"))?;
            unknown.extend(fields.into_iter().map(|f| format!("metadata.{f}")));
            object["metadata"] = metadata;
        }
        let schema = self.schema();
        if object.is_object() {
            let mut rest = body(&object);
            prune(schema, &mut rest, "", &mut unknown);
            default(schema, &mut rest);
            if let (Some(fields), Some(rest)) = (object.as_object_mut(), rest.as_object()) {
                fields.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
                for (k, v) in rest {
                    fields.insert(k.clone(), v.clone());
                }
            }
        }
        Ok((object, unknown))
    }

    fn validate(&self, info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        check(
            self.schema(),
            &body(object),
            "",
            &self.compiled,
            &mut errors,
        );
        if errors.is_empty() {
            return Ok(());
        }
        let name = text(&object["metadata"], "name");
        Err(ApiError::fields(&info.qualified_kind(), name, &errors))
    }

    fn validate_update(
        &self,
        info: &ResourceInfo,
        name: &str,
        old: &Value,
        new: &Value,
    ) -> Result<(), ApiError> {
        if !self.compiled.has_transitions() {
            return Ok(());
        }
        let mut errors = Vec::new();
        transitions(
            self.schema(),
            &body(new),
            &body(old),
            "",
            &self.compiled,
            &mut errors,
        );
        if errors.is_empty() {
            return Ok(());
        }
        Err(ApiError::fields(&info.qualified_kind(), name, &errors))
    }

    fn has_status(&self) -> bool {
        self.status
    }

    fn storage_version(&self) -> Option<&str> {
        self.storage.as_deref()
    }

    fn has_scale(&self) -> bool {
        self.scale
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        self.definition()["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| text(c, "jsonPath") != ".metadata.creationTimestamp")
            .map(|c| {
                let path = text(c, "jsonPath").to_owned();
                let date = text(c, "type") == "date";
                let priority = c["priority"].as_u64().unwrap_or(0).min(1) as u8;
                Column::new(text(c, "name"), priority, move |object| {
                    match json_path(object, &path) {
                        Some(Value::String(s)) if date => {
                            json!(kplex_registry::table::age(s))
                        }
                        Some(Value::String(s)) => json!(s),
                        Some(Value::Null) | None => json!("<none>"),
                        Some(other) => other.clone(),
                    }
                })
            })
            .collect()
    }

    fn openapi_schema(&self, schemas: &mut Map<String, Value>) -> Option<String> {
        let reversed: Vec<&str> = self.group.split('.').rev().collect();
        let name = format!("{}.{}.{}", reversed.join("."), self.version, self.kind);
        let meta = crate::strategy::meta_schemas(schemas);
        let mut schema = self.schema().clone();
        if let Some(properties) = schema["properties"].as_object_mut() {
            properties.insert(
                "metadata".into(),
                json!({"$ref": format!("#/components/schemas/{meta}")}),
            );
            properties
                .entry("apiVersion")
                .or_insert_with(|| json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            properties
                .entry("kind")
                .or_insert_with(|| json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        }
        schemas.insert(name.clone(), schema);
        Some(name)
    }
}

/// Refuses a CRD whose kind or plural another CRD of its group in the VC
/// already uses (kube-apiserver would leave it unserved with
/// `NamesAccepted` false; refusing says so at once), then asks `then`.
pub struct NameConflicts {
    /// The admission after this one.
    pub then: Arc<dyn kplex_registry::generic::Admission>,
}

#[async_trait::async_trait]
impl kplex_registry::generic::Admission for NameConflicts {
    async fn admit(
        &self,
        store: &kplex_registry::generic::GenericStore,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<kplex_registry::generic::Admitted, ApiError> {
        if (info.group.as_str(), info.plural.as_str()) == (GROUP, PLURAL) {
            let crds = store
                .list(info, None, &kplex_registry::generic::ListOptions::default())
                .await?;
            let name = text(&object["metadata"], "name");
            let names = &object["spec"]["names"];
            let group = text(&object["spec"], "group");
            for other in &crds.items {
                let other_name = text(&other["metadata"], "name");
                if other_name == name || text(&other["spec"], "group") != group {
                    continue;
                }
                let theirs = &other["spec"]["names"];
                for field in ["kind", "plural"] {
                    let mine = text(names, field);
                    if !mine.is_empty() && mine == text(theirs, field) {
                        return Err(ApiError::field(
                            &info.qualified_kind(),
                            name,
                            &format!("spec.names.{field}"),
                            &format!(
                                "Invalid value: {mine:?}: is already in use by {other_name:?}"
                            ),
                        ));
                    }
                }
            }
        }
        self.then.admit(store, info, old, object).await
    }
}

/// A new CRD's status: its names accepted and it established, as
/// kube-apiserver reports a CRD it serves.
pub fn accept(crd: &mut Value) {
    let mut names = crd["spec"]["names"].clone();
    complete_names(&mut names);
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now});
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": storage,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
    });
}

/// A CRD's names with kube-apiserver's defaults: singular is the lowercase
/// kind, listKind the kind and `List`.
pub fn complete_names(names: &mut Value) {
    let kind = text(names, "kind").to_owned();
    if text(names, "singular").is_empty() && !kind.is_empty() {
        names["singular"] = json!(kind.to_lowercase());
    }
    if text(names, "listKind").is_empty() && !kind.is_empty() {
        names["listKind"] = json!(format!("{kind}List"));
    }
}

/// A DNS-1035 label (`kind`s are checked lowercased).
fn dns1035(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-')
}

/// Schema keywords kplex does not enforce (a CRD using them is stored, and
/// its author told).
const NOT_ENFORCED: &[&str] = &["allOf", "anyOf", "oneOf", "not", "format"];

/// What is wrong with a CRD, as kube-apiserver's validation words it;
/// and the keywords it uses that kplex does not enforce.
pub fn problems(crd: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = text(spec, "group");
    let plural = text(names, "plural");
    let approved = crd["metadata"]["annotations"][API_APPROVED].is_string();
    if group.is_empty() {
        push(&mut out, "spec.group", "Required value");
    } else if !group.contains('.') {
        push(
            &mut out,
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        );
    } else if built_in_group(group) {
        push(
            &mut out,
            "spec.group",
            format!("Invalid value: {group:?}: is a group of the built-in API"),
        );
    } else if (group.ends_with(".k8s.io") || group.ends_with(".kubernetes.io")) && !approved {
        push(&mut out, format!("metadata.annotations[{API_APPROVED}]"), format!("Required value: protected groups must have approval annotation {API_APPROVED:?}, see https://github.com/kubernetes/enhancements/pull/1111"));
    }
    if plural.is_empty() {
        push(&mut out, "spec.names.plural", "Required value");
    } else if !dns1035(plural) {
        push(&mut out, "spec.names.plural", format!("Invalid value: {plural:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"));
    }
    let kind = text(names, "kind");
    if kind.is_empty() {
        push(&mut out, "spec.names.kind", "Required value");
    } else if !dns1035(&kind.to_lowercase()) {
        push(&mut out, "spec.names.kind", format!("Invalid value: {kind:?}: may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?"));
    }
    for field in ["singular", "listKind"] {
        let value = text(names, field);
        if !value.is_empty() && !dns1035(&value.to_lowercase()) {
            push(
                &mut out,
                format!("spec.names.{field}"),
                format!("Invalid value: {value:?}: should match: [a-z]([-a-z0-9]*[a-z0-9])?"),
            );
        }
    }
    for field in ["shortNames", "categories"] {
        for (i, value) in strings(&names[field]).iter().enumerate() {
            if !dns1035(value) {
                push(
                    &mut out,
                    format!("spec.names.{field}[{i}]"),
                    format!("Invalid value: {value:?}: should match: [a-z]([-a-z0-9]*[a-z0-9])?"),
                );
            }
        }
    }
    let name = text(&crd["metadata"], "name");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        push(
            &mut out,
            "metadata.name",
            format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"),
        );
    }
    let scope = text(spec, "scope");
    if !matches!(scope, "Namespaced" | "Cluster") {
        push(
            &mut out,
            "spec.scope",
            format!("Unsupported value: {scope:?}: supported values: \"Cluster\", \"Namespaced\""),
        );
    }
    let strategy = text(&spec["conversion"], "strategy");
    if !strategy.is_empty() && strategy != "None" {
        push(&mut out, "spec.conversion.strategy", format!("Unsupported value: {strategy:?}: supported values: \"None\" (kplex does not call conversion webhooks)"));
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() || versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        push(
            &mut out,
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version",
        );
    }
    if versions.len() > MAX_VERSIONS {
        push(
            &mut out,
            "spec.versions",
            format!(
                "Too many: {}: must have at most {MAX_VERSIONS} items",
                versions.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    for (i, version) in versions.iter().enumerate().take(MAX_VERSIONS) {
        let at = format!("spec.versions[{i}]");
        let vname = text(version, "name");
        if !dns1035(vname) {
            push(
                &mut out,
                format!("{at}.name"),
                format!("Invalid value: {vname:?}: a DNS-1035 label is required"),
            );
        } else if !seen.insert(vname.to_owned()) {
            push(
                &mut out,
                format!("{at}.name"),
                format!("Duplicate value: {vname:?}"),
            );
        }
        let schema = &version["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            push(
                &mut out,
                format!("{at}.schema.openAPIV3Schema"),
                "Required value: schemas are required",
            );
            continue;
        }
        if text(schema, "type") != "object" {
            push(
                &mut out,
                format!("{at}.schema.openAPIV3Schema.type"),
                "Unsupported value: must be object at the root",
            );
        }
        structural(schema, &format!("{at}.schema.openAPIV3Schema"), 0, &mut out);
        crate::cel::compile_all(schema, &format!("{at}.schema.openAPIV3Schema"), &mut out);
        if let Some(scale) = version["subresources"]["scale"].as_object() {
            let spec_path = scale.get("specReplicasPath").and_then(Value::as_str);
            if spec_path != Some(".spec.replicas") {
                push(
                    &mut out,
                    format!("{at}.subresources.scale.specReplicasPath"),
                    format!(
                        "Unsupported value: {:?}: kplex serves scale at \".spec.replicas\" only",
                        spec_path.unwrap_or_default()
                    ),
                );
            }
        }
        for (c, column) in version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if !text(column, "jsonPath").starts_with('.') {
                push(
                    &mut out,
                    format!("{at}.additionalPrinterColumns[{c}].jsonPath"),
                    "Invalid value: must be a simple json path starting with .",
                );
            }
        }
    }
    out
}

/// The keywords of `crd`'s schemas kplex does not enforce.
pub fn not_enforced(crd: &Value) -> Vec<&'static str> {
    let text = crd["spec"]["versions"].to_string();
    NOT_ENFORCED
        .iter()
        .filter(|k| text.contains(&format!("\"{k}\":")))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_versions_grow_with_the_storage_version_and_are_kept_declared() {
        let mut two = json!({
            "spec": {"group": "example.com", "versions": [
                {"name": "v1", "storage": false}, {"name": "v2", "storage": true}]},
            "status": {"storedVersions": ["v1"]},
        });
        record_storage_version(&mut two);
        assert_eq!(two["status"]["storedVersions"], json!(["v1", "v2"]));
        record_storage_version(&mut two);
        assert_eq!(two["status"]["storedVersions"], json!(["v1", "v2"]));
        assert!(orphaned_stored_versions(&two).is_empty());
        assert_eq!(converting_storage(&two).as_deref(), Some("v2"));
        two["spec"]["versions"] = json!([{"name": "v2", "storage": true}]);
        assert_eq!(
            orphaned_stored_versions(&two),
            [(
                "status.storedVersions[0]".to_owned(),
                "Invalid value: \"v1\": must appear in spec.versions".to_owned()
            )]
        );
        // One version, always the storage: nothing to convert.
        assert_eq!(converting_storage(&two).as_deref(), Some("v2"));
        two["status"]["storedVersions"] = json!(["v2"]);
        assert_eq!(converting_storage(&two), None);
    }

    fn crd(schema: Value) -> Value {
        json!({
            "metadata": {"name": "things.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                              "subresources": {"status": {}},
                              "schema": {"openAPIV3Schema": schema}}],
            },
        })
    }

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "default": "fast"},
                "nested": {"type": "object", "properties": {"on": {"type": "boolean", "default": false}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "items": {"type": "array", "x-kubernetes-list-type": "map",
                          "x-kubernetes-list-map-keys": ["name"],
                          "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
            }},
        }})
    }

    fn row() -> ResourceInfo {
        served_rows(&Arc::new(crd(schema()))).remove(0)
    }

    #[test]
    fn objects_are_pruned_and_defaulted_as_their_schema_says() {
        let info = row();
        let (object, unknown) = info
            .strategy
            .decode(&json!({
                "apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"},
                "spec": {"size": 2, "extra": 1, "nested": {"gone": 1}, "free": {"kept": {"a": 1}}},
                "top": true,
            }))
            .unwrap();
        assert_eq!(unknown, ["top", "spec.extra", "spec.nested.gone"]);
        assert_eq!(
            object["spec"],
            json!({"size": 2, "mode": "fast", "nested": {"on": false}, "free": {"kept": {"a": 1}}})
        );
        assert!(info.strategy.has_status() && info.strategy.tracks_generation());
    }

    #[test]
    fn validation_names_every_bad_field() {
        let info = row();
        let err = info
            .strategy
            .validate(&info, &json!({"metadata": {"name": "t"}, "spec": {"size": 0, "items": [{"name": "a"}, {"name": "a"}]}}))
            .unwrap_err();
        assert_eq!(err.code, 422);
        assert!(err.message.contains("spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"), "{}", err.message);
        assert!(
            err.message.contains("spec.items[1]: Duplicate value"),
            "{}",
            err.message
        );
        let err = info
            .strategy
            .validate(&info, &json!({"metadata": {"name": "t"}, "spec": {}}))
            .unwrap_err();
        assert!(
            err.message.contains("spec.size: Required value"),
            "{}",
            err.message
        );
        info.strategy
            .validate(
                &info,
                &json!({"metadata": {"name": "t"}, "spec": {"size": 1}}),
            )
            .unwrap();
    }

    #[test]
    fn a_crd_must_be_structural_and_store_one_version() {
        assert!(problems(&crd(schema())).is_empty());
        let untyped = problems(&crd(
            json!({"type": "object", "properties": {"spec": {"properties": {}}}}),
        ));
        assert_eq!(
            untyped[0].0,
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].type"
        );
        let mut two = crd(schema());
        two["spec"]["versions"][0]["storage"] = json!(false);
        assert!(problems(&two)[0]
            .1
            .contains("exactly one version marked as storage version"));
        let mut accepted = crd(schema());
        accept(&mut accepted);
        assert_eq!(accepted["status"]["acceptedNames"]["singular"], "thing");
        assert_eq!(accepted["status"]["conditions"][1]["type"], "Established");
    }

    #[test]
    fn nulls_a_field_does_not_allow_are_dropped_then_defaulted() {
        let info = row();
        let (object, _) = info
            .strategy
            .decode(&json!({"metadata": {"name": "t"}, "spec": {"size": 1, "mode": null}}))
            .unwrap();
        assert_eq!(object["spec"]["mode"], "fast");
        // Metadata is ObjectMeta: a label that is not a string is refused.
        let bad = info
            .strategy
            .decode(&json!({"metadata": {"name": "t", "labels": {"a": 5}}}));
        assert!(bad.is_err());
    }

    #[test]
    fn what_kplex_cannot_enforce_or_kube_forbids_is_refused_at_the_crd() {
        let refused = |node: Value| {
            problems(&crd(
                json!({"type": "object", "properties": {"spec": node}}),
            ))
            .into_iter()
            .map(|(f, d)| format!("{f}: {d}"))
            .collect::<Vec<_>>()
            .join("; ")
        };
        assert!(refused(
            json!({"type": "array", "uniqueItems": true, "items": {"type": "string"}})
        )
        .contains("quadratic"));
        assert!(refused(
            json!({"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "object"}})
        )
        .contains("list-map-keys"));
        assert!(refused(json!({"type": "integer", "default": "abc"})).contains("default"));
        assert!(refused(json!({"type": "string", "pattern": "(a"})).contains("regular expression"));
        let mut webhook = crd(schema());
        webhook["spec"]["conversion"] = json!({"strategy": "Webhook"});
        assert!(problems(&webhook)[0].0.contains("conversion"));
        let mut protected = crd(schema());
        protected["spec"]["group"] = json!("gateway.networking.k8s.io");
        protected["metadata"]["name"] = json!("things.gateway.networking.k8s.io");
        assert!(problems(&protected)[0].0.contains("api-approved"));
        protected["metadata"]["annotations"] = json!({"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"});
        assert!(problems(&protected).is_empty());
        let mut cel = crd(schema());
        cel["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
            json!([{"rule": "true"}]);
        assert!(not_enforced(&cel).is_empty());
        cel["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
            json!([{"rule": "self.spec.size >"}]);
        assert!(
            problems(&cel)[0].1.contains("compilation failed"),
            "{:?}",
            problems(&cel)
        );
    }

    #[test]
    fn a_catalog_adds_a_vcs_crds_to_the_built_in_kinds() {
        let mut objects = Objects::new();
        let at = kplex_registry::pervc::ObjectRef {
            group: GROUP.into(),
            resource: PLURAL.into(),
            namespace: None,
            name: "things.example.com".into(),
        };
        objects.insert(at, Arc::new(crd(schema())));
        let catalog = Crds.build(&objects);
        assert!(catalog.find("example.com", "v1", "things").is_some());
        assert!(catalog.find("", "v1", "pods").is_some());
        assert!(Crds
            .build(&Objects::new())
            .find("example.com", "v1", "things")
            .is_none());
    }
}
