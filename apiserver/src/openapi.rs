//! OpenAPI v3 documents generated from k8s-openapi's schemas (never copied):
//! the root index and one document per group/version, with the
//! `x-kubernetes-group-version-kind` markers and the PATCH operations (with
//! their `fieldValidation` parameter) that kubectl looks for. `kubectl
//! explain` reads these; kubectl's validation sees that the server validates
//! fields itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

use kplex_registry::Catalog;

/// Changes whenever the documents could: the built-in schemas are fixed per
/// build, so the crate version names them.
const HASH: &str = concat!("kplex-", env!("CARGO_PKG_VERSION"));

/// The `/openapi/v3` index. `base` is the URL path prefix of the cluster
/// (`/clusters/<vc>` for a tenant): kubectl fetches each document by its
/// server-relative URL as given.
pub fn root(catalog: &Catalog, base: &str) -> Value {
    let mut paths = Map::new();
    for (group, version) in catalog.group_versions() {
        let gv = gv_path(group, version);
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("{base}/openapi/v3/{gv}?hash={HASH}")}),
        );
    }
    json!({ "paths": paths })
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Built documents by (group, version).
type DocumentCache = HashMap<(String, String), Arc<Value>>;

/// The document of one group/version, built once per process.
pub fn document(catalog: &Catalog, group: &str, version: &str) -> Option<Arc<Value>> {
    static CACHE: OnceLock<Mutex<DocumentCache>> = OnceLock::new();
    if !catalog.group_versions().contains(&(group, version)) {
        return None;
    }
    // A custom resource's document is its VC's own: built each time.
    let builtin = kplex_kinds::catalog::shared()
        .group_versions()
        .contains(&(group, version));
    if !builtin {
        return Some(Arc::new(build(catalog, group, version)));
    }
    let cache = CACHE.get_or_init(Default::default);
    let key = (group.to_owned(), version.to_owned());
    if let Some(doc) = cache.lock().expect("openapi cache").get(&key) {
        return Some(doc.clone());
    }
    // A built-in group's document is every VC's: built from the built-in
    // catalog, never from a VC's own.
    let doc = Arc::new(build(&kplex_kinds::catalog::shared(), group, version));
    cache
        .lock()
        .expect("openapi cache")
        .insert(key, doc.clone());
    Some(doc)
}

fn build(catalog: &Catalog, group: &str, version: &str) -> Value {
    let mut schemas = Map::new();
    let rows: Vec<_> = catalog
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .filter_map(|r| Some((r, r.strategy.openapi_schema(&mut schemas)?)))
        .collect();
    let mut paths = Map::new();
    let prefix = format!("/{}", gv_path(group, version));
    for (info, name) in &rows {
        let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
        if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
        let item = if info.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural)
        } else {
            format!("{prefix}/{}/{{name}}", info.plural)
        };
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let operation = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", info.kind),
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
            })
        };
        paths.insert(
            item,
            json!({
                "get": {
                    "operationId": format!("read{}", info.kind),
                    "x-kubernetes-group-version-kind": gvk,
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
                },
                "put": operation("replace"),
                "patch": operation("patch"),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_schemas_with_their_group_version_kind() {
        let catalog = kplex_kinds::catalog::shared();
        let doc = document(&catalog, "apps", "v1").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        // A described reference is an allOf, as in kube-apiserver's own documents.
        let spec = &deployment["properties"]["spec"];
        let reference = spec["$ref"].as_str().or(spec["allOf"][0]["$ref"].as_str());
        assert_eq!(
            reference,
            Some("#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"),
            "{spec}"
        );
        assert!(spec["description"].as_str().is_some());
        assert!(schemas.contains_key("io.k8s.api.core.v1.PodTemplateSpec"));
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(document(&catalog, "apps", "v2").is_none());
        let index = root(&catalog, "/clusters/a");
        assert!(index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/clusters/a/openapi/v3/apis/apps/v1?hash="));
    }
}
