//! Custom resources: the kinds a VC defines with CustomResourceDefinitions
//! (`apiextensions.k8s.io/v1`), each served in that VC only.
//!
//! A CRD is checked when it is written (names, scope, versions with one
//! storage version, a structural schema); once stored it is served at
//! once (`NamesAccepted` and `Established`). Each served version becomes a
//! catalog row whose strategy is [`Custom`]: objects are pruned of the
//! fields their schema does not declare, defaulted, and validated against
//! it (types, required, enum, pattern, bounds, lengths, nullable,
//! `x-kubernetes-int-or-string`, `-preserve-unknown-fields`,
//! `-embedded-resource`, `-list-type`/`-list-map-keys`), with the field's
//! path in every refusal; `status` and `scale` subresources and printer
//! columns come from the version. Objects are stored as the storage
//! version's; versions differ only in their schemas (conversion `None`).
//!
//! A VC's catalog is the shared built-in one plus its CRDs' rows, kept in
//! memory per VC (`registry::pervc`): a VC without CRDs shares the
//! built-in catalog.

use std::collections::HashSet;
use std::sync::Arc;

use kplex_registry::error::ApiError;
use kplex_registry::pervc::{Derive, Objects, PerVc};
use kplex_registry::resource::{Column, Decoded, Strategy};
use kplex_registry::watchcache::WatchCache;
use kplex_registry::{Catalog, ResourceInfo};
use serde_json::{json, Map, Value};

/// The CRDs' group.
pub const GROUP: &str = "apiextensions.k8s.io";
/// The CRDs' resource.
pub const PLURAL: &str = "customresourcedefinitions";

/// Builds a VC's catalog from its CRDs.
pub struct Crds;

impl Derive for Crds {
    type Output = Arc<Catalog>;

    fn build(&self, objects: &Objects) -> Arc<Catalog> {
        let shared = crate::catalog::shared();
        if objects.is_empty() {
            return shared;
        }
        let mut rows: Vec<ResourceInfo> = shared.all().iter().map(|r| (**r).clone()).collect();
        for crd in objects.values() {
            rows.extend(served_rows(crd));
        }
        Arc::new(Catalog::new(rows))
    }
}

/// Every VC's catalog (see [`start`]).
pub type Catalogs = PerVc<Crds>;

/// Every VC's catalog over `store`, its watch opened on a task of its own.
pub fn start(store: Arc<WatchCache>) -> Arc<Catalogs> {
    PerVc::start(store, "custom resources", &[(GROUP, PLURAL)], Crds)
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_default()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The catalog rows of a stored CRD: one per served version.
pub fn served_rows(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = text(spec, "group");
    let kind = text(names, "kind");
    let plural = text(names, "plural");
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Vec::new();
    }
    let namespaced = text(spec, "scope") != "Cluster";
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"] != false)
        .map(|version| {
            let subresources = &version["subresources"];
            let scale = subresources["scale"].as_object().map(|s| Scale {
                spec: text(&Value::Object(s.clone()), "specReplicasPath").to_owned(),
                status: text(&Value::Object(s.clone()), "statusReplicasPath").to_owned(),
            });
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
                    schema: version["schema"]["openAPIV3Schema"].clone(),
                    status: subresources["status"].is_object(),
                    scale,
                    columns: version["additionalPrinterColumns"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                }),
            }
        })
        .collect()
}

/// Where a custom resource's `scale` subresource reads its replicas.
#[derive(Debug, Clone)]
struct Scale {
    spec: String,
    #[allow(dead_code)]
    status: String,
}

/// The strategy of one version of a custom resource.
pub struct Custom {
    group: String,
    version: String,
    kind: String,
    schema: Value,
    status: bool,
    scale: Option<Scale>,
    columns: Vec<Value>,
}

impl Strategy for Custom {
    /// Prunes what the schema does not declare (those fields' paths are
    /// the unknown ones) and applies its defaults, as kube-apiserver does
    /// while decoding a custom resource.
    fn decode(&self, object: &Value) -> Decoded {
        let mut object = object.clone();
        let mut unknown = Vec::new();
        if let Some(fields) = object.as_object_mut() {
            let properties = self.schema["properties"].as_object();
            let keep_all = preserves(&self.schema);
            for (key, value) in fields.iter_mut() {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(schema) = properties.and_then(|p| p.get(key)) {
                    prune(schema, value, key, &mut unknown);
                    default(schema, value);
                }
            }
            if !keep_all {
                fields.retain(|key, _| {
                    let kept = matches!(key.as_str(), "apiVersion" | "kind" | "metadata")
                        || properties.is_some_and(|p| p.contains_key(key));
                    if !kept {
                        unknown.push(key.clone());
                    }
                    kept
                });
            }
            if let Some(properties) = properties {
                for (key, schema) in properties {
                    if !fields.contains_key(key) {
                        if let Some(value) = schema.get("default") {
                            fields.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
        }
        Ok((object, unknown))
    }

    fn validate(&self, info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        if let Some(properties) = self.schema["properties"].as_object() {
            for (key, schema) in properties {
                if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                match object.get(key) {
                    Some(value) => check(schema, value, key, &mut errors),
                    None if required(&self.schema).contains(key.as_str()) => {
                        errors.push((key.clone(), "Required value".to_owned()))
                    }
                    None => {}
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let name = text(&object["metadata"], "name");
        Err(ApiError::fields(&info.qualified_kind(), name, &errors))
    }

    fn has_status(&self) -> bool {
        self.status
    }

    fn has_scale(&self) -> bool {
        self.scale
            .as_ref()
            .is_some_and(|s| s.spec == ".spec.replicas")
    }

    fn tracks_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        self.columns
            .iter()
            .filter(|c| text(c, "jsonPath") != ".metadata.creationTimestamp")
            .map(|c| {
                let path = text(c, "jsonPath").to_owned();
                let priority = c["priority"].as_u64().unwrap_or(0).min(1) as u8;
                Column::new(text(c, "name"), priority, move |object| {
                    match json_path(object, &path) {
                        Some(Value::String(s)) => json!(s),
                        Some(Value::Null) | None => json!("<none>"),
                        Some(other) => json!(other.to_string()),
                    }
                })
            })
            .collect()
    }

    fn openapi_schema(&self, schemas: &mut Map<String, Value>) -> Option<String> {
        let reversed: Vec<&str> = self.group.split('.').rev().collect();
        let name = format!("{}.{}.{}", reversed.join("."), self.version, self.kind);
        let meta = crate::strategy::meta_schemas(schemas);
        let mut schema = self.schema.clone();
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

/// A simple JSONPath (`.spec.size`, `.status.items[0].name`): the value
/// there, if any.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = object;
    for part in path.trim_start_matches('.').split('.') {
        let (field, index) = match part.split_once('[') {
            Some((field, rest)) => (
                field,
                Some(rest.trim_end_matches(']').parse::<usize>().ok()?),
            ),
            None => (part, None),
        };
        if !field.is_empty() {
            at = at.get(field)?;
        }
        if let Some(i) = index {
            at = at.get(i)?;
        }
    }
    Some(at)
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == true
}

fn required(schema: &Value) -> HashSet<&str> {
    schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Drops from `value` what `schema` does not declare (unless it keeps
/// unknown fields or is an embedded resource's metadata), noting each
/// dropped field's path.
fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if let Some(items) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for (key, item) in fields.iter_mut() {
                    prune(items, item, &format!("{path}.{key}"), unknown);
                }
                return;
            }
            let properties = schema["properties"].as_object();
            let embedded = schema["x-kubernetes-embedded-resource"] == true;
            if !preserves(schema) {
                fields.retain(|key, _| {
                    let kept = properties.is_some_and(|p| p.contains_key(key))
                        || (embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"));
                    if !kept {
                        unknown.push(format!("{path}.{key}"));
                    }
                    kept
                });
            }
            if let Some(properties) = properties {
                for (key, item) in fields.iter_mut() {
                    if let Some(schema) = properties.get(key) {
                        prune(schema, item, &format!("{path}.{key}"), unknown);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(schema, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Fills in `schema`'s defaults inside `value` (a field's default where
/// the field is missing, in objects that are present).
fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (key, item_schema) in properties {
                    match fields.get_mut(key) {
                        Some(item) => default(item_schema, item),
                        None => {
                            if let Some(d) = item_schema.get("default") {
                                fields.insert(key.clone(), d.clone());
                            }
                        }
                    }
                }
            }
            if let Some(items) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for item in fields.values_mut() {
                    default(items, item);
                }
            }
        }
        Value::Array(items) => {
            if let Some(schema) = schema.get("items") {
                for item in items {
                    default(schema, item);
                }
            }
        }
        _ => {}
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `value` at `path` against `schema`, adding each violation as
/// kube-apiserver words it.
fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<(String, String)>) {
    let mut fail = |detail: String| errors.push((path.to_owned(), detail));
    let shown = |v: &Value| match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    if value.is_null() {
        if schema["nullable"] != true {
            fail(format!(
                "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                text(schema, "type")
            ));
        }
        return;
    }
    let actual = type_name(value);
    if schema["x-kubernetes-int-or-string"] == true {
        if !matches!(actual, "integer" | "string") {
            fail(format!(
                "Invalid value: {}: {path} in body must be of type integer or string: {actual:?}",
                shown(value)
            ));
            return;
        }
    } else if let Some(wanted) = schema["type"].as_str() {
        let fits = wanted == actual || (wanted == "number" && actual == "integer");
        if !fits {
            fail(format!(
                "Invalid value: {:?}: {path} in body must be of type {wanted}: {actual:?}",
                actual
            ));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            let listed: Vec<String> = options.iter().map(shown).collect();
            fail(format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                listed.join(", ")
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        let bound = |key: &str| schema[key].as_f64();
        let exclusive = |key: &str| schema[key] == true;
        if let Some(min) = bound("minimum") {
            if n < min || (exclusive("exclusiveMinimum") && n == min) {
                let relation = if exclusive("exclusiveMinimum") {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                fail(format!(
                    "Invalid value: {}: {path} in body should be {relation} {}",
                    shown(value),
                    schema["minimum"]
                ));
            }
        }
        if let Some(max) = bound("maximum") {
            if n > max || (exclusive("exclusiveMaximum") && n == max) {
                let relation = if exclusive("exclusiveMaximum") {
                    "less than"
                } else {
                    "less than or equal to"
                };
                fail(format!(
                    "Invalid value: {}: {path} in body should be {relation} {}",
                    shown(value),
                    schema["maximum"]
                ));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let length = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min) {
            fail(format!(
                "Invalid value: {}: {path} in body should be at least {} chars long",
                shown(value),
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
            fail(format!(
                "Too long: may not be longer than {}",
                schema["maxLength"]
            ));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(s) => fail(format!(
                    "Invalid value: {}: {path} in body should match '{pattern}'",
                    shown(value)
                )),
                _ => {}
            }
        }
    }
    match value {
        Value::Object(fields) => {
            for key in required(schema) {
                if !fields.contains_key(key) {
                    errors.push((format!("{path}.{key}"), "Required value".to_owned()));
                }
            }
            if schema["x-kubernetes-embedded-resource"] == true {
                for key in ["apiVersion", "kind"] {
                    if fields
                        .get(key)
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        errors.push((
                            format!("{path}.{key}"),
                            "Required value: must not be empty".to_owned(),
                        ));
                    }
                }
            }
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            for (key, item) in fields {
                let item_schema = properties.and_then(|p| p.get(key)).or(additional);
                if let Some(item_schema) = item_schema {
                    check(item_schema, item, &format!("{path}.{key}"), errors);
                }
            }
        }
        Value::Array(items) => {
            if schema["minItems"]
                .as_u64()
                .is_some_and(|min| (items.len() as u64) < min)
            {
                errors.push((
                    path.to_owned(),
                    format!(
                        "Invalid value: {}: {path} in body should have at least {} items",
                        items.len(),
                        schema["minItems"]
                    ),
                ));
            }
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|max| items.len() as u64 > max)
            {
                errors.push((
                    path.to_owned(),
                    format!(
                        "Too many: {}: must have at most {} items",
                        items.len(),
                        schema["maxItems"]
                    ),
                ));
            }
            match text(schema, "x-kubernetes-list-type") {
                "set" => {
                    for (i, item) in items.iter().enumerate() {
                        if items[..i].contains(item) {
                            errors.push((
                                format!("{path}[{i}]"),
                                format!("Duplicate value: {}", shown(item)),
                            ));
                        }
                    }
                }
                "map" => {
                    let keys = strings(&schema["x-kubernetes-list-map-keys"]);
                    let key_of = |item: &Value| -> Vec<Value> {
                        keys.iter()
                            .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
                            .collect()
                    };
                    for (i, item) in items.iter().enumerate() {
                        let key = key_of(item);
                        if items[..i].iter().any(|other| key_of(other) == key) {
                            let listed: Vec<String> = keys
                                .iter()
                                .zip(&key)
                                .map(|(k, v)| format!("{k:?}:{v}"))
                                .collect();
                            errors.push((
                                format!("{path}[{i}]"),
                                format!(
                                    "Duplicate value: map[string]interface {{}}{{{}}}",
                                    listed.join(", ")
                                ),
                            ));
                        }
                    }
                }
                _ => {}
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
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

/// What is wrong with a CRD, as kube-apiserver's validation words it.
pub fn problems(crd: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = text(spec, "group");
    let plural = text(names, "plural");
    if group.is_empty() {
        push(&mut out, "spec.group", "Required value");
    } else if !group.contains('.') {
        push(
            &mut out,
            "spec.group",
            format!("Invalid value: {group:?}: should be a domain with at least one dot"),
        );
    } else if crate::catalog::shared()
        .all()
        .iter()
        .any(|r| r.group == group)
        || group.ends_with(".k8s.io")
        || group.ends_with(".kubernetes.io")
    {
        push(
            &mut out,
            "spec.group",
            format!("Invalid value: {group:?}: is a group of the built-in API"),
        );
    }
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    if plural.is_empty() {
        push(&mut out, "spec.names.plural", "Required value");
    } else if !dns_label(plural) {
        push(&mut out, "spec.names.plural", format!("Invalid value: {plural:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"));
    }
    if text(names, "kind").is_empty() {
        push(&mut out, "spec.names.kind", "Required value");
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
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        push(
            &mut out,
            "spec.versions",
            "Invalid value: null: must have exactly one version marked as storage version",
        );
    } else if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        push(
            &mut out,
            "spec.versions",
            "Invalid value: ...: must have exactly one version marked as storage version",
        );
    }
    let mut seen = HashSet::new();
    for (i, version) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = text(version, "name");
        if !dns_label(vname) {
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
        structural(schema, &format!("{at}.schema.openAPIV3Schema"), &mut out);
        if let Some(scale) = version["subresources"]["scale"].as_object() {
            if scale
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .is_none_or(|p| !p.starts_with(".spec."))
            {
                push(
                    &mut out,
                    format!("{at}.subresources.scale.specReplicasPath"),
                    "Invalid value: should be a json path under .spec",
                );
            }
        }
    }
    out
}

/// Notes one problem with a field.
fn push(out: &mut Vec<(String, String)>, field: impl Into<String>, detail: impl Into<String>) {
    out.push((field.into(), detail.into()));
}

/// The structural-schema rules: every node states its type (unless it is
/// int-or-string or keeps unknown fields), and `properties` and
/// `additionalProperties` are not both set.
fn structural(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let typed = !text(schema, "type").is_empty()
        || schema["x-kubernetes-int-or-string"] == true
        || preserves(schema);
    if !typed {
        push(
            out,
            format!("{path}.type"),
            "Required value: must not be empty for specified object fields",
        );
    }
    if schema["properties"].is_object() && schema["additionalProperties"].is_object() {
        push(
            out,
            format!("{path}.additionalProperties"),
            "Forbidden: additionalProperties and properties are mutual exclusive",
        );
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        if regex::Regex::new(pattern).is_err() {
            push(
                out,
                format!("{path}.pattern"),
                format!("Invalid value: {pattern:?}: must be a valid regular expression"),
            );
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (key, item) in properties {
            structural(item, &format!("{path}.properties[{key}]"), out);
        }
    }
    if let Some(items) = schema.get("items").filter(|s| s.is_object()) {
        structural(items, &format!("{path}.items"), out);
    }
    if let Some(items) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        structural(items, &format!("{path}.additionalProperties"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        served_rows(&crd(schema())).remove(0)
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
        assert_eq!(unknown, ["spec.extra", "spec.nested.gone", "top"]);
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
    fn a_catalog_adds_a_vcs_crds_to_the_built_in_kinds() {
        let mut objects = Objects::new();
        let at = kplex_registry::pervc::ObjectRef {
            group: GROUP.into(),
            resource: PLURAL.into(),
            namespace: None,
            name: "things.example.com".into(),
        };
        objects.insert(at, crd(schema()));
        let catalog = Crds.build(&objects);
        assert!(catalog.find("example.com", "v1", "things").is_some());
        assert!(catalog.find("", "v1", "pods").is_some());
        assert!(Crds
            .build(&Objects::new())
            .find("example.com", "v1", "things")
            .is_none());
    }
}
