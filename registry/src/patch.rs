//! The three patch types kubectl sends: JSON patch (RFC 6902), JSON merge
//! patch (RFC 7386), and strategic merge patch with the patch merge keys of
//! the built-in types.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The media type of a server-side apply (see `managed`).
pub const APPLY_MEDIA_TYPE: &str = "application/apply-patch+yaml";

/// Which patch a request carries, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
}

impl PatchType {
    /// The patch type of a media type; 415 for the rest. (A server-side
    /// apply is routed before it gets here.)
    pub fn from_media_type(media: &str) -> Result<PatchType, ApiError> {
        match media {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            other => Err(ApiError {
                code: http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, \
                     application/apply-patch+yaml, application/strategic-merge-patch+json (got {other})"
                ),
                details: None,
            }),
        }
    }
}

/// Whether a patch sets `metadata.resourceVersion` (a precondition the
/// write must meet, not retry past).
pub fn pins_resource_version(kind: PatchType, patch: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(patch) else {
        return false;
    };
    match kind {
        PatchType::Json => value
            .as_array()
            .into_iter()
            .flatten()
            .any(|op| op["path"] == "/metadata/resourceVersion" || op["path"] == "/metadata"),
        PatchType::Merge | PatchType::Strategic => value["metadata"]["resourceVersion"].is_string(),
    }
}

/// Applies `patch` (the raw body) to `object`.
pub fn apply(object: &Value, kind: PatchType, patch: &[u8]) -> Result<Value, ApiError> {
    let parsed: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let mut out = object.clone();
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(parsed)
                .map_err(|e| ApiError::bad_request(format!("the JSON patch is malformed: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| ApiError {
                code: http::StatusCode::UNPROCESSABLE_ENTITY,
                reason: "Invalid",
                message: format!("the JSON patch could not be applied: {e}"),
                details: None,
            })?;
        }
        PatchType::Merge => {
            if !parsed.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut out, &parsed);
        }
        PatchType::Strategic => {
            let Value::Object(p) = &parsed else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            strategic_merge_map(&mut out, p, "")?;
        }
    }
    Ok(out)
}

/// The patch merge key of a list field, as the built-in types declare it
/// (`patchMergeKey` in their Go definitions). Lists not named here are
/// replaced whole, as Kubernetes does for lists without a merge strategy.
pub(crate) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        // Container ports merge on containerPort; Service ports on port.
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists that merge as sets instead of being replaced.
pub(crate) fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge_map(
    target: &mut Value,
    patch: &Map<String, Value>,
    field: &str,
) -> Result<(), ApiError> {
    match patch.get("$patch") {
        None => {}
        Some(Value::String(d)) if matches!(d.as_str(), "replace" | "delete" | "merge") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type: {other} in map: {}",
                Value::Object(patch.clone())
            )))
        }
    }
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *target = Value::Object(replacement);
        return Ok(());
    }
    if patch.get("$patch").and_then(Value::as_str) == Some("delete") {
        *target = Value::Null;
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(Value::Array(keep)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        if let Some(map) = target.as_object_mut() {
            map.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    let _ = field;
    let mut orders = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(list_field) = key.strip_prefix("$setElementOrder/") {
            orders.push((list_field.to_owned(), value.clone()));
            continue;
        }
        if let Some(list_field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<&Value> = value
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(Value::Array(items)) = target.get_mut(list_field) {
                items.retain(|i| !remove.contains(&i));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive {key:?}"
            )));
        }
        let map = target.as_object_mut().expect("made an object");
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(p) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge_map(slot, p, key)?;
                if slot.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let slot = map.entry(key.clone()).or_insert(Value::Array(Vec::new()));
                merge_list(slot, items, key)?;
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
    for (list_field, order) in orders {
        if let (Some(Value::Array(items)), Value::Array(order)) =
            (target.get_mut(&list_field), &order)
        {
            reorder(items, order, &list_field);
        }
    }
    Ok(())
}

fn merge_list(target: &mut Value, patch: &[Value], field: &str) -> Result<(), ApiError> {
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = Value::Array(
            patch
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
        return Ok(());
    }
    let Value::Array(items) = target else {
        *target = Value::Array(patch.to_vec());
        return Ok(());
    };
    if merges_as_set(field) {
        for p in patch {
            if !items.contains(p) {
                items.push(p.clone());
            }
        }
        return Ok(());
    }
    let Some(key) = merge_key(field, patch).or_else(|| merge_key(field, items)) else {
        *items = patch.to_vec();
        return Ok(());
    };
    for p in patch {
        let Some(id) = p.get(key) else {
            return Err(ApiError::bad_request(format!(
                "an element of {field} in the patch has no merge key {key:?}"
            )));
        };
        let position = items.iter().position(|i| i.get(key) == Some(id));
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(at), true) => {
                items.remove(at);
            }
            (None, true) => {}
            (Some(at), false) => {
                let Value::Object(pm) = p else { continue };
                strategic_merge_map(&mut items[at], pm, field)?;
            }
            (None, false) => {
                let mut fresh = Value::Object(Map::new());
                if let Value::Object(pm) = p {
                    strategic_merge_map(&mut fresh, pm, field)?;
                }
                items.push(fresh);
            }
        }
    }
    Ok(())
}

/// Orders a merged list as `$setElementOrder` says; items it does not name
/// keep their relative order after the named ones.
fn reorder(items: &mut Vec<Value>, order: &[Value], field: &str) {
    let key = merge_key(field, items);
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let mut sorted = Vec::with_capacity(items.len());
    for wanted in order {
        let wanted_id = match key {
            Some(k) => wanted.get(k).cloned(),
            None => Some(wanted.clone()),
        };
        if let Some(at) = items.iter().position(|i| id(i) == wanted_id) {
            sorted.push(items.remove(at));
        }
    }
    sorted.append(items);
    *items = sorted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(object: Value, patch: Value) -> Value {
        apply(&object, PatchType::Strategic, patch.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn an_unknown_patch_directive_is_a_bad_request() {
        for directive in [json!("bogus"), json!(7)] {
            let patch = json!({"metadata": {"$patch": directive}});
            let err = apply(
                &json!({"metadata": {}}),
                PatchType::Strategic,
                patch.to_string().as_bytes(),
            )
            .unwrap_err();
            assert_eq!(err.code, http::StatusCode::BAD_REQUEST);
            assert!(
                err.message.contains("unknown patch type"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let deploy = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "busybox"},
        ]}}}});
        let out = smp(
            deploy,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]},
            ]}}}}),
        );
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2);
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(containers[1]["image"], "busybox");
    }

    #[test]
    fn strategic_merge_directives() {
        let pod = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "k"}]}});
        let out = smp(
            pod,
            json!({
                "metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["y"]},
                "spec": {
                    "containers": [{"name": "a", "$patch": "delete"}, {"name": "c"}],
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}],
                    "tolerations": [{"key": "other"}],
                },
            }),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "b"}])
        );
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "other"}]),
            "lists without a merge key are replaced"
        );
        let replaced = smp(
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$patch": "replace", "c": 3}}),
        );
        assert_eq!(replaced["spec"], json!({"c": 3}));
        let retained = smp(
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$retainKeys": ["b", "c"], "c": 3}}),
        );
        assert_eq!(retained["spec"], json!({"b": 2, "c": 3}));
    }

    #[test]
    fn json_and_merge_patches_follow_their_rfcs() {
        let cm = json!({"data": {"a": "1", "b": "2"}});
        let merged = apply(&cm, PatchType::Merge, br#"{"data": {"a": null, "c": "3"}}"#).unwrap();
        assert_eq!(merged["data"], json!({"b": "2", "c": "3"}));
        let patched = apply(
            &cm,
            PatchType::Json,
            br#"[{"op": "replace", "path": "/data/a", "value": "9"}]"#,
        )
        .unwrap();
        assert_eq!(patched["data"]["a"], "9");
        let failed = apply(
            &cm,
            PatchType::Json,
            br#"[{"op": "test", "path": "/data/a", "value": "no"}]"#,
        );
        assert_eq!(
            failed.unwrap_err().code,
            http::StatusCode::UNPROCESSABLE_ENTITY
        );
        assert!(apply(&cm, PatchType::Json, br#"{"op": "add"}"#).is_err());
        assert!(apply(&cm, PatchType::Merge, b"[1]").is_err());
        assert!(apply(&cm, PatchType::Strategic, b"not json").is_err());
        assert!(PatchType::from_media_type("application/apply-patch+yaml").is_err());
    }
}
