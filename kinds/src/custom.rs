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
//! A VC's catalog is the shared built-in one plus its CRDs' rows, kept in
//! memory per VC (`registry::pervc`): a VC without CRDs shares the
//! built-in catalog; the rows share the CRD object they were read from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kplex_registry::error::ApiError;
use kplex_registry::pervc::{Derive, Objects, PerVc};
use kplex_registry::resource::{Column, Decoded, Strategy};
use kplex_registry::watchcache::WatchCache;
use kplex_registry::{Catalog, ResourceInfo};
use regex::Regex;
use serde_json::{json, Map, Value};

/// The CRDs' group.
pub const GROUP: &str = "apiextensions.k8s.io";
/// The CRDs' resource.
pub const PLURAL: &str = "customresourcedefinitions";
/// Versions one CRD may have.
pub const MAX_VERSIONS: usize = 64;
/// Field errors one refusal lists at most.
const MAX_ERRORS: usize = 100;
/// The compiled size one `pattern` may take.
const PATTERN_SIZE: usize = 1 << 20;
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
    versions
        .into_iter()
        .map(|(index, version)| {
            let subresources = &version["subresources"];
            let schema = &version["schema"]["openAPIV3Schema"];
            let mut patterns = HashMap::new();
            collect_patterns(schema, &mut patterns);
            let rules = crate::cel::compile_all(schema, "", &mut Vec::new());
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
                    compiled: Compiled { patterns, rules },
                    status: subresources["status"].is_object(),
                    scale: subresources["scale"].is_object(),
                }),
            }
        })
        .collect()
}

/// Compiles every `pattern` in `schema` once (bounded in size).
fn collect_patterns(schema: &Value, out: &mut HashMap<String, Regex>) {
    if let Some(pattern) = schema["pattern"].as_str() {
        if let Ok(re) = regex::RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE)
            .build()
        {
            out.insert(pattern.to_owned(), re);
        }
    }
    for child in children(schema) {
        collect_patterns(child, out);
    }
}

/// A schema's child schemas (properties, items, additionalProperties).
fn children(schema: &Value) -> impl Iterator<Item = &Value> {
    let properties = schema["properties"]
        .as_object()
        .into_iter()
        .flat_map(|p| p.values());
    let items = schema.get("items").filter(|s| s.is_object());
    let additional = schema.get("additionalProperties").filter(|s| s.is_object());
    properties.chain(items).chain(additional)
}

/// What a schema's checks need compiled: its patterns and rules.
#[derive(Default)]
pub struct Compiled {
    patterns: HashMap<String, Regex>,
    rules: crate::cel::Rules,
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
            let mut rest = object.clone();
            if let Some(fields) = rest.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
                fields.remove("metadata");
            }
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
        let mut rest = object.clone();
        if let Some(fields) = rest.as_object_mut() {
            fields.remove("apiVersion");
            fields.remove("kind");
            fields.remove("metadata");
        }
        let mut errors = Vec::new();
        check(self.schema(), &rest, "", &self.compiled, &mut errors);
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
        if self.compiled.rules.values().all(|r| !r.transition) {
            return Ok(());
        }
        let strip = |object: &Value| {
            let mut rest = object.clone();
            if let Some(fields) = rest.as_object_mut() {
                fields.remove("apiVersion");
                fields.remove("kind");
                fields.remove("metadata");
            }
            rest
        };
        let mut errors = Vec::new();
        transitions(
            self.schema(),
            &strip(new),
            &strip(old),
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

/// A printer column's JSONPath (`.spec.size`, `.items[0].name`,
/// `.status.conditions[?(@.type=="Ready")].status`): the value there.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = object;
    let mut rest = path.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end > 0 {
                at = at.get(&after[..end])?;
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix("[?(@.") {
            let end = after.find(")]")?;
            let (field, wanted) = after[..end].split_once("==")?;
            let wanted = wanted.trim().trim_matches(|c| c == '"' || c == '\'');
            at = at.as_array()?.iter().find(|item| {
                json_path(item, &format!(".{}", field.trim())).is_some_and(|v| same(v, wanted))
            })?;
            rest = &after[end + 2..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            at = at.get(after[..end].trim().parse::<usize>().ok()?)?;
            rest = &after[end + 1..];
        } else {
            return None;
        }
    }
    Some(at)
}

/// Whether a JSONPath filter's literal is this value.
fn same(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Bool(b) => wanted == if *b { "true" } else { "false" },
        Value::Number(n) => wanted.parse::<f64>().ok() == n.as_f64(),
        _ => false,
    }
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

/// `path.key`, or `key` at the root.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Drops from `value` what `schema` does not declare (unless it keeps
/// unknown fields, or is an embedded resource's apiVersion, kind and
/// metadata), and nulls where the schema does not allow them, noting each
/// dropped field's path.
fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|s| s.is_object());
            let embedded = schema["x-kubernetes-embedded-resource"] == true;
            let keep_unknown = preserves(schema) || additional.is_some();
            fields.retain(|key, item| {
                let item_schema = properties.and_then(|p| p.get(key)).or(additional);
                let declared = item_schema.is_some()
                    || (embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata"));
                if !declared && !keep_unknown {
                    unknown.push(join(path, key));
                    return false;
                }
                // A null a field does not allow is dropped (then defaulted).
                !(item.is_null() && item_schema.is_some_and(|s| s["nullable"] != true))
            });
            for (key, item) in fields.iter_mut() {
                if let Some(item_schema) = properties.and_then(|p| p.get(key)).or(additional) {
                    prune(item_schema, item, &join(path, key), unknown);
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

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Checks `value` at `path` against `schema`, adding each violation as
/// kube-apiserver words it (at most [`MAX_ERRORS`]); `patterns` are the
/// schema's, compiled.
fn check(
    schema: &Value,
    value: &Value,
    path: &str,
    compiled: &Compiled,
    errors: &mut Vec<(String, String)>,
) {
    if errors.len() >= MAX_ERRORS {
        return;
    }
    let shown_path = if path.is_empty() { "body" } else { path };
    let mut fail = |detail: String| errors.push((shown_path.to_owned(), detail));
    if value.is_null() {
        if schema["nullable"] != true {
            fail(format!(
                "Invalid value: \"null\": {shown_path} in body must be of type {}: \"null\"",
                text(schema, "type")
            ));
        }
        return;
    }
    let actual = type_name(value);
    if schema["x-kubernetes-int-or-string"] == true {
        if !matches!(actual, "integer" | "string") {
            fail(format!(
                "Invalid value: {}: {shown_path} in body must be of type integer or string: {actual:?}",
                shown(value)
            ));
            return;
        }
    } else if let Some(wanted) = schema["type"].as_str() {
        let fits = wanted == actual || (wanted == "number" && actual == "integer");
        if !fits {
            fail(format!(
                "Invalid value: {actual:?}: {shown_path} in body must be of type {wanted}: {actual:?}"
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
        let exclusive = |key: &str| schema[key] == true;
        if let Some(min) = schema["minimum"].as_f64() {
            if n < min || (exclusive("exclusiveMinimum") && n == min) {
                let relation = if exclusive("exclusiveMinimum") {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                fail(format!(
                    "Invalid value: {}: {shown_path} in body should be {relation} {}",
                    shown(value),
                    schema["minimum"]
                ));
            }
        }
        if let Some(max) = schema["maximum"].as_f64() {
            if n > max || (exclusive("exclusiveMaximum") && n == max) {
                let relation = if exclusive("exclusiveMaximum") {
                    "less than"
                } else {
                    "less than or equal to"
                };
                fail(format!(
                    "Invalid value: {}: {shown_path} in body should be {relation} {}",
                    shown(value),
                    schema["maximum"]
                ));
            }
        }
        if let Some(step) = schema["multipleOf"].as_f64().filter(|s| *s > 0.0) {
            if (n / step).fract() != 0.0 {
                fail(format!(
                    "Invalid value: {}: {shown_path} in body should be a multiple of {}",
                    shown(value),
                    schema["multipleOf"]
                ));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let length = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| length < min) {
            fail(format!(
                "Invalid value: {}: {shown_path} in body should be at least {} chars long",
                shown(value),
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
            fail(format!(
                "Too long: may not be more than {} bytes",
                schema["maxLength"]
            ));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            if compiled
                .patterns
                .get(pattern)
                .is_some_and(|re| !re.is_match(s))
            {
                fail(format!(
                    "Invalid value: {}: {shown_path} in body should match '{pattern}'",
                    shown(value)
                ));
            }
        }
    }
    rules_hold(schema, value, None, shown_path, compiled, errors);
    match value {
        Value::Object(fields) => {
            let count = fields.len() as u64;
            if schema["minProperties"]
                .as_u64()
                .is_some_and(|min| count < min)
            {
                errors.push((
                    shown_path.to_owned(),
                    format!("Invalid value: {count}: {shown_path} in body should have at least {} properties", schema["minProperties"]),
                ));
            }
            if schema["maxProperties"]
                .as_u64()
                .is_some_and(|max| count > max)
            {
                errors.push((
                    shown_path.to_owned(),
                    format!(
                        "Too many: {count}: must have at most {} items",
                        schema["maxProperties"]
                    ),
                ));
            }
            for key in required(schema) {
                if !fields.contains_key(key) {
                    errors.push((join(path, key), "Required value".to_owned()));
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
                            join(path, key),
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
                    check(item_schema, item, &join(path, key), compiled, errors);
                }
            }
        }
        Value::Array(items) => {
            let count = items.len() as u64;
            if schema["minItems"].as_u64().is_some_and(|min| count < min) {
                errors.push((
                    shown_path.to_owned(),
                    format!("Invalid value: {count}: {shown_path} in body should have at least {} items", schema["minItems"]),
                ));
            }
            if schema["maxItems"].as_u64().is_some_and(|max| count > max) {
                errors.push((
                    shown_path.to_owned(),
                    format!(
                        "Too many: {count}: must have at most {} items",
                        schema["maxItems"]
                    ),
                ));
            }
            duplicates(schema, items, path, errors);
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), compiled, errors);
                }
            }
        }
        _ => {}
    }
}

/// Evaluates the node's CEL rules on `value`: those that read `oldSelf`
/// only when `old` is given (an update), the others only when it is not.
fn rules_hold(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    compiled: &Compiled,
    errors: &mut Vec<(String, String)>,
) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(rule) = rule["rule"].as_str().and_then(|r| compiled.rules.get(r)) else {
            continue;
        };
        if rule.transition != old.is_some() || errors.len() >= MAX_ERRORS {
            continue;
        }
        if let Err((suffix, message)) = rule.check(value, old) {
            errors.push((format!("{path}{suffix}"), message));
        }
    }
}

/// The transition rules (`oldSelf`) of an update from `old` to `value`,
/// at every node both have.
fn transitions(
    schema: &Value,
    value: &Value,
    old: &Value,
    path: &str,
    compiled: &Compiled,
    errors: &mut Vec<(String, String)>,
) {
    let shown_path = if path.is_empty() { "body" } else { path };
    rules_hold(schema, value, Some(old), shown_path, compiled, errors);
    if let (Some(fields), Some(before)) = (value.as_object(), old.as_object()) {
        let properties = schema["properties"].as_object();
        let additional = schema.get("additionalProperties").filter(|s| s.is_object());
        for (key, item) in fields {
            let item_schema = properties.and_then(|p| p.get(key)).or(additional);
            if let (Some(item_schema), Some(was)) = (item_schema, before.get(key)) {
                transitions(item_schema, item, was, &join(path, key), compiled, errors);
            }
        }
    }
}

/// The duplicates a `set` or `map` list may not hold (one pass, hashed).
fn duplicates(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<(String, String)>) {
    let keys = strings(&schema["x-kubernetes-list-map-keys"]);
    let key_of = |item: &Value| -> String {
        match text(schema, "x-kubernetes-list-type") {
            "map" => keys
                .iter()
                .map(|k| item.get(k).map_or("null".to_owned(), Value::to_string))
                .collect::<Vec<_>>()
                .join("\u{0}"),
            _ => item.to_string(),
        }
    };
    if !matches!(text(schema, "x-kubernetes-list-type"), "set" | "map") {
        return;
    }
    let mut seen = HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if errors.len() >= MAX_ERRORS {
            return;
        }
        if !seen.insert(key_of(item)) {
            let detail = if keys.is_empty() {
                shown(item)
            } else {
                let listed: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{k:?}:{}", item.get(k).unwrap_or(&Value::Null)))
                    .collect();
                format!("map[string]interface {{}}{{{}}}", listed.join(", "))
            };
            errors.push((format!("{path}[{i}]"), format!("Duplicate value: {detail}")));
        }
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

/// Notes one problem with a field.
fn push(out: &mut Vec<(String, String)>, field: impl Into<String>, detail: impl Into<String>) {
    out.push((field.into(), detail.into()));
}

/// How deep a schema may nest.
const MAX_DEPTH: usize = 64;

/// The structural-schema rules: every node states its type (unless it is
/// int-or-string or keeps unknown fields), `properties` and
/// `additionalProperties` are not both set, patterns compile (bounded),
/// defaults fit their schema, `uniqueItems` is not set (quadratic), a
/// `map` list names its keys; nesting is bounded.
fn structural(schema: &Value, path: &str, depth: usize, out: &mut Vec<(String, String)>) {
    if depth > MAX_DEPTH {
        push(
            out,
            path,
            format!("Forbidden: schemas may nest at most {MAX_DEPTH} levels"),
        );
        return;
    }
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
    if schema["uniqueItems"] == true {
        push(out, format!("{path}.uniqueItems"), "Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic");
    }
    if text(schema, "x-kubernetes-list-type") == "map"
        && strings(&schema["x-kubernetes-list-map-keys"]).is_empty()
    {
        push(
            out,
            format!("{path}.x-kubernetes-list-map-keys"),
            "Required value: must not be empty if x-kubernetes-list-type is map",
        );
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        let compiled = regex::RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE)
            .build();
        if compiled.is_err() {
            push(out, format!("{path}.pattern"), format!("Invalid value: {pattern:?}: must be a valid regular expression, of bounded size"));
        }
    }
    if let Some(default) = schema.get("default") {
        let mut errors = Vec::new();
        let mut compiled = Compiled::default();
        collect_patterns(schema, &mut compiled.patterns);
        check(schema, default, "", &compiled, &mut errors);
        for (_, detail) in errors {
            push(
                out,
                format!("{path}.default"),
                format!("Invalid value: {default}: {detail}"),
            );
        }
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (key, item) in properties {
            structural(item, &format!("{path}.properties[{key}]"), depth + 1, out);
        }
    }
    if let Some(items) = schema.get("items").filter(|s| s.is_object()) {
        structural(items, &format!("{path}.items"), depth + 1, out);
    }
    if let Some(items) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        structural(
            items,
            &format!("{path}.additionalProperties"),
            depth + 1,
            out,
        );
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
    fn printer_columns_follow_paths_filters_and_dates() {
        let object = json!({"status": {"conditions": [
            {"type": "Synced", "status": "False"},
            {"type": "Ready", "status": "True"},
        ], "items": [{"n": 1}]}});
        let ready = json_path(&object, ".status.conditions[?(@.type==\"Ready\")].status");
        assert_eq!(ready, Some(&json!("True")));
        assert_eq!(json_path(&object, ".status.items[0].n"), Some(&json!(1)));
        assert_eq!(json_path(&object, ".status.missing"), None);
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
    fn duplicates_in_a_long_set_are_found_in_one_pass() {
        let schema =
            json!({"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}});
        let items: Vec<Value> = (0..200_000).map(|i| json!(i % 100_000)).collect();
        let mut errors = Vec::new();
        check(
            &schema,
            &Value::Array(items),
            "spec.tags",
            &Compiled::default(),
            &mut errors,
        );
        assert_eq!(errors.len(), MAX_ERRORS);
        assert_eq!(errors[0].0, "spec.tags[100000]");
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
