//! The checks every kind's object gets: its name, labels, annotations,
//! `apiVersion`, `kind` and `metadata`, as kube-apiserver words them.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::resource::ResourceInfo;

/// Checks a name as Kubernetes does for the kind: DNS-1123 label for
/// namespaces and services, DNS-1123 subdomain otherwise.
pub fn validate_name(info: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    let (max, label) = if info.name_is_label() {
        (63, true)
    } else {
        (253, false)
    };
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (!label && b == b'.');
    let edges = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = !name.is_empty()
        && name.len() <= max
        && name.bytes().all(allowed)
        && edges(name.as_bytes().first())
        && edges(name.as_bytes().last())
        && !name.contains("..");
    if ok {
        return Ok(());
    }
    let rule = if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(ApiError::invalid(
        &info.qualified_kind(),
        name,
        "metadata.name",
        rule,
    ))
}

/// The syntax rules of a label value and of a qualified name's name part.
const NAME_PART_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// A qualified name's name part, or a non-empty label value.
fn name_part_ok(s: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && alnum(s.as_bytes().first())
        && alnum(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a label or annotation key is not a qualified name (`[prefix/]name`).
fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !name_part_ok(name) {
        return Some(format!("name part {NAME_PART_RULE}"));
    }
    let subdomain = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    match prefix {
        Some(p) if !subdomain(p) => Some(
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into(),
        ),
        _ => None,
    }
}

/// Most bytes all of an object's annotations may take (kube's 256 KiB).
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// Label keys and values and annotation keys as kube-apiserver checks them
/// (selectors and tools rely on their syntax).
pub fn validate_metadata(info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    let meta = &object["metadata"];
    let name = meta["name"]
        .as_str()
        .or(meta["generateName"].as_str())
        .unwrap_or_default();
    let invalid = |field: &str, value: &str, why: &str| {
        ApiError::field(
            &info.qualified_kind(),
            name,
            field,
            &format!("Invalid value: {value:?}: {why}"),
        )
    };
    for (key, value) in meta["labels"].as_object().into_iter().flatten() {
        if let Some(why) = qualified_name_error(key) {
            return Err(invalid("metadata.labels", key, &why));
        }
        let value = value.as_str().unwrap_or_default();
        if value.len() > 63 {
            return Err(invalid(
                "metadata.labels",
                value,
                "must be no more than 63 characters",
            ));
        }
        if !value.is_empty() && !name_part_ok(value) {
            return Err(invalid(
                "metadata.labels",
                value,
                &format!("a valid label {NAME_PART_RULE}"),
            ));
        }
    }
    let mut size = 0;
    for (key, value) in meta["annotations"].as_object().into_iter().flatten() {
        if let Some(why) = qualified_name_error(&key.to_lowercase()) {
            return Err(invalid("metadata.annotations", key, &why));
        }
        size += key.len() + value.as_str().map_or(0, str::len);
    }
    if size > ANNOTATIONS_MAX {
        return Err(ApiError::field(
            &info.qualified_kind(),
            name,
            "metadata.annotations",
            &format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Checks `apiVersion`/`kind` (filling them in when absent) and that
/// `metadata` is an object.
pub fn check_type(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let api_version = info.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None => {
            map.insert("kind".into(), json!(info.kind));
        }
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )))
        }
    }
    match map.get("metadata") {
        None => {
            map.insert("metadata".into(), Value::Object(Map::new()));
        }
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_annotations_follow_kubes_syntax() {
        let cm = crate::resource::plain("", "v1", "ConfigMap", "configmaps", true);
        let check = |meta: Value| validate_metadata(&cm, &json!({"metadata": meta}));
        for good in [
            json!({"name": "x", "labels": {"app": "web", "example.com/tier": "front-end_1", "empty": ""}}),
            json!({"name": "x", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "Note": "any text at all"}}),
        ] {
            check(good.clone()).unwrap_or_else(|e| panic!("{good}: {}", e.message));
        }
        for (bad, field) in [
            (json!({"labels": {"a b": "x"}}), "metadata.labels"),
            (json!({"labels": {"": "y"}}), "metadata.labels"),
            (json!({"labels": {"Bad_Prefix/x": "y"}}), "metadata.labels"),
            (json!({"labels": {"app": "../x"}}), "metadata.labels"),
            (
                json!({"labels": {"app": "x".repeat(64)}}),
                "metadata.labels",
            ),
            (
                json!({"annotations": {"a b/c/d": "x"}}),
                "metadata.annotations",
            ),
            (
                json!({"annotations": {"big": "x".repeat(ANNOTATIONS_MAX)}}),
                "metadata.annotations",
            ),
        ] {
            let err = check(bad.clone()).unwrap_err();
            assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert!(err.message.contains(field), "{bad}: {}", err.message);
        }
    }
}
