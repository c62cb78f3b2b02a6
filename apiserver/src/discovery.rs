//! Discovery documents of a VC, generated from its catalog: legacy
//! (`/api`, `/apis`, `/apis/<g>`, `/api/v1`, `/apis/<g>/<v>`, with the
//! `status` and `scale` subresources) and aggregated
//! (`APIGroupDiscoveryList` v2/v2beta1, when the `Accept` header asks, as
//! kubectl does: two requests fill its cache).

use bytes::Bytes;
use hyper::Response;
use kplex_registry::{Catalog, ResourceInfo};
use serde_json::{json, Value};

use crate::handler::Request;
use crate::response::Body;

/// The `APIGroupList` of `/apis`.
pub fn group_list(catalog: &Catalog) -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for (group, version) in catalog.group_versions() {
        if group.is_empty() {
            continue;
        }
        let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
        match groups.iter_mut().find(|g| g["name"] == group) {
            Some(g) => g["versions"].as_array_mut().expect("array").push(gv),
            None => groups
                .push(json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})),
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Verbs of the `status` and `scale` subresources.
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// Verbs of the subresources clients post to.
const CREATE: &[&str] = &["create"];
/// Verbs of the streamed Pod subresources (exec, attach, port-forward).
const STREAM_VERBS: &[&str] = &["create", "get"];

/// A resource's subresources: name, the group, version and kind they
/// answer with, and their verbs. (kubectl drain looks for `pods/eviction`
/// before it evicts instead of deleting.)
fn subresources(r: &ResourceInfo) -> Vec<(&'static str, [&str; 3], &'static [&'static str])> {
    let mut out = Vec::new();
    if r.has_status() {
        out.push((
            "status",
            [r.group.as_str(), &r.version, &r.kind],
            SUBRESOURCE_VERBS,
        ));
    }
    if r.has_scale() {
        out.push(("scale", ["autoscaling", "v1", "Scale"], SUBRESOURCE_VERBS));
    }
    match (r.group.as_str(), r.kind.as_str()) {
        ("", "Pod") => out.extend([
            ("binding", ["", "v1", "Binding"], CREATE),
            ("eviction", ["policy", "v1", "Eviction"], CREATE),
            ("log", ["", "v1", "Pod"], &["get"][..]),
            ("exec", ["", "v1", "PodExecOptions"], STREAM_VERBS),
            ("attach", ["", "v1", "PodAttachOptions"], STREAM_VERBS),
            (
                "portforward",
                ["", "v1", "PodPortForwardOptions"],
                STREAM_VERBS,
            ),
        ]),
        ("", "ServiceAccount") => out.push((
            "token",
            ["authentication.k8s.io", "v1", "TokenRequest"],
            CREATE,
        )),
        _ => {}
    }
    out
}

pub fn resource_list(catalog: &Catalog, group: &str, version: &str) -> Value {
    let mut resources: Vec<Value> = Vec::new();
    for r in catalog
        .all()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for (sub, [g, v, kind], verbs) in subresources(r) {
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if g != r.group {
                entry["group"] = json!(g);
                entry["version"] = json!(v);
            }
            resources.push(entry);
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The aggregated discovery version (`v2` or `v2beta1`) the client accepts,
/// if it asks for `APIGroupDiscoveryList` (kubectl does: one request for
/// every group instead of one per group/version).
pub fn aggregated_version(req: &Request) -> Option<&'static str> {
    let accept = req.headers.get(hyper::header::ACCEPT)?.to_str().ok()?;
    let offered = |version: &str| {
        accept.split(',').any(|media| {
            let params: Vec<&str> = media.split(';').map(str::trim).collect();
            params.contains(&"g=apidiscovery.k8s.io")
                && params.contains(&"as=APIGroupDiscoveryList")
                && params.contains(&format!("v={version}").as_str())
        })
    };
    ["v2", "v2beta1"].into_iter().find(|v| offered(v))
}

/// The aggregated discovery response of `/api` (`core`) or `/apis`.
pub fn aggregated(
    catalog: &Catalog,
    core: bool,
    version: &'static str,
    request: &hyper::HeaderMap,
) -> Response<Body> {
    let mut body = group_document(catalog, core);
    body["apiVersion"] = json!(format!("apidiscovery.k8s.io/{version}"));
    let mut response =
        crate::response::cacheable(request, "application/json", Bytes::from(body.to_string()));
    let content_type =
        format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("valid header"),
    );
    headers.insert(
        hyper::header::VARY,
        hyper::header::HeaderValue::from_static("Accept"),
    );
    response
}

/// The `APIGroupDiscoveryList` of the core group or of the named groups.
pub fn group_document(catalog: &Catalog, core: bool) -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for (group, gv) in catalog.group_versions() {
        if group.is_empty() != core {
            continue;
        }
        let resources: Vec<Value> = catalog
            .all()
            .iter()
            .filter(|r| r.group == group && r.version == gv)
            .map(|r| {
                let subresources: Vec<Value> = subresources(r)
                    .into_iter()
                    .map(|(sub, [g, v, kind], verbs)| {
                        json!({
                            "subresource": sub,
                            "responseKind": {"group": g, "version": v, "kind": kind},
                            "verbs": verbs,
                        })
                    })
                    .collect();
                json!({
                    "resource": r.plural,
                    "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular(),
                    "verbs": r.verbs(),
                    "shortNames": r.short_names,
                    "categories": r.categories,
                    "subresources": subresources,
                })
            })
            .collect();
        let entry = json!({"version": gv, "resources": resources, "freshness": "Current"});
        match groups.iter_mut().find(|g| g["metadata"]["name"] == group) {
            Some(g) => g["versions"].as_array_mut().expect("array").push(entry),
            None => {
                let mut metadata = json!({"creationTimestamp": null});
                if !group.is_empty() {
                    metadata["name"] = json!(group);
                }
                groups.push(json!({"metadata": metadata, "versions": [entry]}));
            }
        }
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(accept: &str) -> Request {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::ACCEPT, accept.parse().unwrap());
        Request {
            method: hyper::Method::GET,
            path: "/apis".into(),
            query: String::new(),
            headers,
            body: Bytes::new(),
            upgrade: Default::default(),
        }
    }

    #[test]
    fn aggregated_discovery_is_served_to_clients_that_ask_for_it() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(&request(kubectl)), Some("v2"));
        assert_eq!(
            aggregated_version(&request(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            )),
            Some("v2beta1")
        );
        assert_eq!(aggregated_version(&request("application/json")), None);
        assert_eq!(
            aggregated_version(&request(
                "application/json;g=apidiscovery.k8s.io;v=v9;as=APIGroupDiscoveryList"
            )),
            None
        );

        let catalog = kplex_kinds::catalog::shared();
        let response = aggregated(&catalog, false, "v2", &Default::default());
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
        let apps = &group_document(&catalog, false)["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .cloned()
            .unwrap();
        let deployments = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deployments["scope"], "Namespaced");
        assert_eq!(deployments["shortNames"], json!(["deploy"]));
        let scale = deployments["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subresource"] == "scale")
            .unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        let core = group_document(&catalog, true);
        let items = core["items"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert!(items[0]["metadata"].get("name").is_none());
        let namespaces = items[0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "namespaces")
            .unwrap();
        assert_eq!(namespaces["scope"], "Cluster");
    }

    #[test]
    fn legacy_discovery_lists_status_and_scale_subresources() {
        let list = resource_list(&kplex_kinds::catalog::shared(), "apps", "v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/status"), "{names:?}");
        assert!(names.contains(&"deployments/scale"), "{names:?}");
        assert!(!names.contains(&"daemonsets/scale"), "{names:?}");
    }
}
