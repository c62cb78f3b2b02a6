//! OpenAPI v3 schemas as a CRD states them, applied to custom objects:
//! pruning, defaulting, validation (with the CRD's CEL rules), the
//! structural-schema rules a CRD is checked against when written, and
//! printer columns' JSONPaths.

use std::collections::{HashMap, HashSet};

use regex::Regex;
use serde_json::Value;

/// Field errors one refusal lists at most.
pub(crate) const MAX_ERRORS: usize = 100;
/// The compiled size one `pattern` may take.
const PATTERN_SIZE: usize = 1 << 20;
pub(crate) fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_default()
}

pub(crate) fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Compiles every `pattern` in `schema` once (bounded in size).
pub(crate) fn collect_patterns(schema: &Value, out: &mut HashMap<String, Regex>) {
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

impl Compiled {
    /// `schema`'s patterns and rules, compiled (what does not compile is
    /// left out: the CRD's checks refused it when it was written).
    pub(crate) fn of(schema: &Value) -> Compiled {
        let mut patterns = HashMap::new();
        collect_patterns(schema, &mut patterns);
        Compiled {
            patterns,
            rules: crate::cel::compile_all(schema, "", &mut Vec::new()),
        }
    }

    /// Whether any rule reads `oldSelf` (asked on updates).
    pub(crate) fn has_transitions(&self) -> bool {
        self.rules.values().any(|r| r.transition)
    }
}

/// An object's body as its schema describes it: without `apiVersion`,
/// `kind` and `metadata`.
pub(crate) fn body(object: &Value) -> Value {
    let mut rest = object.clone();
    if let Some(fields) = rest.as_object_mut() {
        fields.remove("apiVersion");
        fields.remove("kind");
        fields.remove("metadata");
    }
    rest
}

/// A printer column's JSONPath (`.spec.size`, `.items[0].name`,
/// `.status.conditions[?(@.type=="Ready")].status`): the value there.
pub(crate) fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
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

pub(crate) fn preserves(schema: &Value) -> bool {
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
pub(crate) fn join(path: &str, key: &str) -> String {
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
pub(crate) fn prune(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
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
pub(crate) fn default(schema: &Value, value: &mut Value) {
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

pub(crate) fn type_name(value: &Value) -> &'static str {
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
pub(crate) fn check(
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
pub(crate) fn transitions(
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

/// Notes one problem with a field.
pub(crate) fn push(
    out: &mut Vec<(String, String)>,
    field: impl Into<String>,
    detail: impl Into<String>,
) {
    out.push((field.into(), detail.into()));
}

/// How deep a schema may nest.
const MAX_DEPTH: usize = 64;

/// The structural-schema rules: every node states its type (unless it is
/// int-or-string or keeps unknown fields), `properties` and
/// `additionalProperties` are not both set, patterns compile (bounded),
/// defaults fit their schema, `uniqueItems` is not set (quadratic), a
/// `map` list names its keys; nesting is bounded.
pub(crate) fn structural(
    schema: &Value,
    path: &str,
    depth: usize,
    out: &mut Vec<(String, String)>,
) {
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
    use serde_json::json;

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
}
