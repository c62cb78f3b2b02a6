//! The review resources: objects a client creates to ask a question and
//! never stored — who am I (`SelfSubjectReview`, `kubectl auth whoami`),
//! may I (`SelfSubjectAccessReview`, `kubectl auth can-i`), what may I
//! (`SelfSubjectRulesReview`, `kubectl auth can-i --list`).
//!
//! The answers describe the caller's credential within its VC. A VC has no
//! authorization layer yet: a tenant credential may do anything to any
//! resource of its own VC, as on a cluster run with
//! `--authorization-mode=AlwaysAllow`, so resource questions are answered
//! yes. Non-resource paths are answered by what a VC actually serves.

use kplex_certs::Identity;
use serde_json::{json, Value};

use kplex_registry::ApiError;
use kplex_registry::ResourceInfo;

/// Group every authenticated caller is in, as kube-apiserver adds it.
const AUTHENTICATED: &str = "system:authenticated";

/// The non-resource paths a VC serves to its tenants (`*` ends a prefix).
const SERVED_PATHS: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/openapi",
    "/openapi/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/version",
];

/// Verbs a VC answers on its non-resource paths.
const SERVED_PATH_VERBS: &[&str] = &["get"];

/// The answer to a review `object` (already decoded and validated as its
/// kind) from `caller`.
pub fn answer(
    info: &ResourceInfo,
    caller: &Identity,
    mut object: Value,
) -> Result<Value, ApiError> {
    let status = match info.kind.as_str() {
        "SelfSubjectReview" => {
            json!({"userInfo": {"username": caller.user, "groups": groups(caller)}})
        }
        "SelfSubjectAccessReview" => access(info, &object["spec"])?,
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": SERVED_PATH_VERBS, "nonResourceURLs": SERVED_PATHS}],
            "incomplete": false,
        }),
        other => return Err(ApiError::internal(format!("{other} is not a review kind"))),
    };
    object["metadata"] = json!({"creationTimestamp": null});
    object["status"] = status;
    Ok(object)
}

/// The caller's groups, `system:authenticated` included once.
fn groups(caller: &Identity) -> Vec<&str> {
    let mut groups: Vec<&str> = caller.groups.iter().map(String::as_str).collect();
    if !groups.contains(&AUTHENTICATED) {
        groups.push(AUTHENTICATED);
    }
    groups
}

fn access(info: &ResourceInfo, spec: &Value) -> Result<Value, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let path = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    match (resource, path) {
        (Some(_), None) => Ok(json!({"allowed": true})),
        (None, Some(attributes)) => {
            let path = attributes["path"].as_str().unwrap_or_default();
            let verb = attributes["verb"].as_str().unwrap_or_default();
            Ok(if serves(verb, path) {
                json!({"allowed": true})
            } else {
                json!({"allowed": false, "reason": format!("a virtual cluster does not serve {verb} on {path}")})
            })
        }
        _ => Err(ApiError::field(
            &info.qualified_kind(),
            "",
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// Whether a VC answers `verb` on `path`.
fn serves(verb: &str, path: &str) -> bool {
    let verb_ok = SERVED_PATH_VERBS.contains(&verb) || verb == "*";
    verb_ok
        && SERVED_PATHS.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == *p,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kplex_certs::Scope;

    fn caller() -> Identity {
        Identity {
            user: "alice".into(),
            groups: vec!["dev".into()],
            scope: Scope::VirtualCluster { uid: "u".into() },
        }
    }

    fn review(plural: &str, body: Value) -> Result<Value, ApiError> {
        let catalog = kplex_kinds::catalog::shared();
        let group = if plural == "selfsubjectreviews" {
            "authentication.k8s.io"
        } else {
            "authorization.k8s.io"
        };
        answer(catalog.find(group, "v1", plural).unwrap(), &caller(), body)
    }

    #[test]
    fn whoami_names_the_credentials_user_and_groups() {
        let out = review("selfsubjectreviews", json!({"metadata": {}})).unwrap();
        assert_eq!(out["status"]["userInfo"]["username"], "alice");
        assert_eq!(
            out["status"]["userInfo"]["groups"],
            json!(["dev", "system:authenticated"])
        );
    }

    #[test]
    fn access_is_allowed_for_resources_and_for_served_paths_only() {
        let ask = |spec: Value| review("selfsubjectaccessreviews", json!({"spec": spec}));
        let yes = ask(json!({"resourceAttributes": {"verb": "delete", "resource": "pods"}}));
        assert_eq!(yes.unwrap()["status"]["allowed"], true);
        let api = ask(json!({"nonResourceAttributes": {"verb": "get", "path": "/apis/apps"}}));
        assert_eq!(api.unwrap()["status"]["allowed"], true);
        let metrics = ask(json!({"nonResourceAttributes": {"verb": "get", "path": "/metrics"}}));
        let metrics = metrics.unwrap();
        assert_eq!(metrics["status"]["allowed"], false);
        assert!(metrics["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("/metrics"));
        let post = ask(json!({"nonResourceAttributes": {"verb": "post", "path": "/api"}}));
        assert_eq!(post.unwrap()["status"]["allowed"], false);
    }

    #[test]
    fn an_access_review_must_ask_exactly_one_thing() {
        for spec in [
            json!({}),
            json!({"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/api", "verb": "get"}}),
        ] {
            let err = review("selfsubjectaccessreviews", json!({"spec": spec})).unwrap_err();
            assert_eq!(err.code, hyper::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains("exactly one of"), "{}", err.message);
        }
    }
}
