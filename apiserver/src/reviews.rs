//! The review resources: objects a client creates to ask a question and
//! never stored — who am I (`SelfSubjectReview`, `kubectl auth whoami`),
//! may I (`SelfSubjectAccessReview`, `kubectl auth can-i`), what may I
//! (`SelfSubjectRulesReview`, `kubectl auth can-i --list`), may they
//! (`SubjectAccessReview`, and `LocalSubjectAccessReview` within one
//! namespace). `TokenReview` is answered by `crate::tokens::review`.
//!
//! The answers come from the VC's RBAC policy (`kplex_rbac`), as
//! kube-apiserver's come from its authorizer. kplex's own components
//! (system credentials) are not subject to a VC's RBAC: asked about
//! themselves, they may do anything.

use kplex_certs::{Identity, Scope};
use kplex_rbac::{Attributes, Policy, Rule, Subject};
use serde_json::{json, Value};

use kplex_registry::ApiError;
use kplex_registry::ResourceInfo;

/// The answer to a review `object` (already decoded and validated as its
/// kind) from `caller`, in `namespace` (for a namespaced review), by the
/// VC's `policy` (`None`: the system cluster, which has none).
pub fn answer(
    info: &ResourceInfo,
    caller: &Identity,
    policy: Option<&Policy>,
    namespace: Option<&str>,
    object: Value,
) -> Result<Value, ApiError> {
    let invalid =
        |field: &str, detail: &str| ApiError::field(&info.qualified_kind(), "", field, detail);
    let unchecked = policy.is_none() || matches!(caller.scope, Scope::System { .. });
    let spec = &object["spec"];
    let status = match info.kind.as_str() {
        "SelfSubjectReview" => {
            json!({"userInfo": {"username": caller.user, "groups": groups(&caller.groups)}})
        }
        "SelfSubjectAccessReview" => {
            let attributes = attributes_of(spec, &invalid)?;
            decide(policy, unchecked, &subject(caller), &attributes)
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let user = spec["user"].as_str().unwrap_or_default();
            let asked_groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .collect();
            if user.is_empty() && asked_groups.is_empty() {
                return Err(invalid(
                    "spec.user",
                    "Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            let attributes = attributes_of(spec, &invalid)?;
            if let Some(namespace) = namespace {
                if !attributes.resource_request {
                    return Err(invalid(
                        "spec.nonResourceAttributes",
                        "Invalid value: \"null\": disallowed on this kind of request",
                    ));
                }
                if attributes.namespace != namespace {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must match namespace: {namespace}"
                    )));
                }
            }
            let who = Subject {
                user,
                groups: &asked_groups,
            };
            // Whom a tenant asks about is one of its VC's users: the
            // answer is the VC's policy's, whoever asks.
            decide(policy, policy.is_none(), &who, &attributes)
        }
        "SelfSubjectRulesReview" => {
            let namespace = spec["namespace"].as_str().unwrap_or_default();
            let rules: Vec<Rule> = match policy {
                Some(policy) if !unchecked => policy.rules_for(&subject(caller), namespace),
                _ => vec![
                    Rule::from_json(
                        &json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                    ),
                    Rule::from_json(&json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
                ],
            };
            let (paths, resources): (Vec<&Rule>, Vec<&Rule>) =
                rules.iter().partition(|r| !r.non_resource_urls.is_empty());
            json!({
                "resourceRules": resources.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
                "nonResourceRules": paths.iter().map(|r| json!({
                    "verbs": r.verbs, "nonResourceURLs": r.non_resource_urls,
                })).collect::<Vec<_>>(),
                "incomplete": false,
            })
        }
        other => return Err(ApiError::internal(format!("{other} is not a review kind"))),
    };
    Ok(answered(object, namespace, status))
}

/// A review `object` answered with `status`, as it is sent back (never
/// stored: its metadata is only its namespace).
pub fn answered(mut object: Value, namespace: Option<&str>, status: Value) -> Value {
    object["metadata"] = match namespace {
        Some(ns) => json!({"creationTimestamp": null, "namespace": ns}),
        None => json!({"creationTimestamp": null}),
    };
    object["status"] = status;
    object
}

fn subject(caller: &Identity) -> Subject<'_> {
    Subject {
        user: &caller.user,
        groups: &caller.groups,
    }
}

/// `allowed`, and `denied` too when RBAC said no, as kube-apiserver's
/// RBAC answers (no reason: nothing was found that allows it).
fn decide(
    policy: Option<&Policy>,
    unchecked: bool,
    who: &Subject<'_>,
    attributes: &Attributes,
) -> Value {
    match policy {
        Some(policy) if !unchecked => {
            if policy.allows(who, attributes) {
                json!({"allowed": true})
            } else {
                json!({"allowed": false})
            }
        }
        _ => json!({"allowed": true}),
    }
}

/// The request an access review asks about: exactly one of
/// `resourceAttributes` and `nonResourceAttributes`.
fn attributes_of<'a>(
    spec: &'a Value,
    invalid: &dyn Fn(&str, &str) -> ApiError,
) -> Result<Attributes<'a>, ApiError> {
    let resource = spec.get("resourceAttributes").filter(|v| v.is_object());
    let path = spec.get("nonResourceAttributes").filter(|v| v.is_object());
    let text = |v: &'a Value, field: &str| v[field].as_str().unwrap_or_default().into();
    match (resource, path) {
        (Some(r), None) => Ok(Attributes {
            verb: text(r, "verb"),
            resource_request: true,
            api_group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
            path: "".into(),
        }),
        (None, Some(p)) => Ok(Attributes {
            verb: text(p, "verb"),
            path: text(p, "path"),
            ..Attributes::default()
        }),
        _ => Err(invalid(
            "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// A caller's groups, `system:authenticated` included once.
fn groups(groups: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = groups.iter().map(String::as_str).collect();
    if !out.contains(&kplex_rbac::AUTHENTICATED) {
        out.push(kplex_rbac::AUTHENTICATED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kplex_rbac::Objects;

    fn caller(groups: &[&str]) -> Identity {
        Identity {
            user: "alice".into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            scope: Scope::VirtualCluster { uid: "u".into() },
        }
    }

    fn policy() -> Policy {
        let mut objects = Objects::default();
        objects.set(
            "rolebindings",
            Some("dev"),
            "devs-edit",
            Some(json!({
                "roleRef": {"kind": "ClusterRole", "name": "edit", "apiGroup": "rbac.authorization.k8s.io"},
                "subjects": [{"kind": "Group", "name": "dev", "apiGroup": "rbac.authorization.k8s.io"}]
            })),
        );
        Policy::build(&objects)
    }

    fn review(
        plural: &str,
        who: &Identity,
        ns: Option<&str>,
        body: Value,
    ) -> Result<Value, ApiError> {
        let catalog = kplex_kinds::catalog::shared();
        let group = if plural == "selfsubjectreviews" {
            "authentication.k8s.io"
        } else {
            "authorization.k8s.io"
        };
        let info = catalog.find(group, "v1", plural).unwrap();
        answer(info, who, Some(&policy()), ns, body)
    }

    #[test]
    fn whoami_names_the_credentials_user_and_groups() {
        let out = review(
            "selfsubjectreviews",
            &caller(&["dev"]),
            None,
            json!({"metadata": {}}),
        )
        .unwrap();
        assert_eq!(out["status"]["userInfo"]["username"], "alice");
        assert_eq!(
            out["status"]["userInfo"]["groups"],
            json!(["dev", "system:authenticated"])
        );
    }

    #[test]
    fn access_reviews_answer_from_the_vcs_rbac() {
        let dev = caller(&["dev"]);
        let ask = |spec: Value| {
            review(
                "selfsubjectaccessreviews",
                &dev,
                None,
                json!({"spec": spec}),
            )
            .unwrap()["status"]["allowed"]
                .clone()
        };
        let pods = |verb: &str, ns: &str| json!({"resourceAttributes": {"verb": verb, "resource": "pods", "namespace": ns}});
        assert_eq!(ask(pods("delete", "dev")), true);
        assert_eq!(ask(pods("delete", "prod")), false);
        assert_eq!(
            ask(
                json!({"resourceAttributes": {"verb": "create", "group": "rbac.authorization.k8s.io", "resource": "roles", "namespace": "dev"}})
            ),
            false
        );
        assert_eq!(
            ask(json!({"nonResourceAttributes": {"verb": "get", "path": "/apis/apps"}})),
            true
        );
        assert_eq!(
            ask(json!({"nonResourceAttributes": {"verb": "get", "path": "/metrics"}})),
            false
        );
        // The first kubeconfig's group may do anything.
        let admin = caller(&["system:masters"]);
        let out = review(
            "selfsubjectaccessreviews",
            &admin,
            None,
            json!({"spec": pods("delete", "prod")}),
        )
        .unwrap();
        assert_eq!(out["status"]["allowed"], true);
        // Asked about someone else.
        let sar = |spec: Value| review("subjectaccessreviews", &admin, None, json!({"spec": spec}));
        let bob = sar(json!({"user": "bob", "groups": ["dev"], "resourceAttributes": {"verb": "list", "resource": "secrets", "namespace": "dev"}})).unwrap();
        assert_eq!(bob["status"]["allowed"], true);
        let carol = sar(json!({"user": "carol", "resourceAttributes": {"verb": "list", "resource": "secrets", "namespace": "dev"}})).unwrap();
        assert_eq!(carol["status"]["allowed"], false);
        let nobody = sar(json!({"resourceAttributes": {"verb": "list", "resource": "secrets"}}))
            .unwrap_err();
        assert_eq!(nobody.code, hyper::StatusCode::UNPROCESSABLE_ENTITY);
        let local = |ns: &str| {
            review(
                "localsubjectaccessreviews",
                &admin,
                Some("dev"),
                json!({"spec": {"user": "bob", "groups": ["dev"], "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": ns}}}),
            )
        };
        assert_eq!(local("dev").unwrap()["status"]["allowed"], true);
        assert_eq!(
            local("prod").unwrap_err().code,
            hyper::StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_rules_review_lists_what_the_caller_holds_in_the_namespace() {
        let dev = caller(&["dev"]);
        let rules = |ns: &str| {
            review(
                "selfsubjectrulesreviews",
                &dev,
                None,
                json!({"spec": {"namespace": ns}}),
            )
            .unwrap()["status"]
                .clone()
        };
        let in_dev = rules("dev");
        let in_prod = rules("prod");
        let grants = |status: &Value, resource: &str| {
            status["resourceRules"].as_array().unwrap().iter().any(|r| {
                r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == resource)
            })
        };
        assert!(grants(&in_dev, "deployments") && !grants(&in_prod, "deployments"));
        assert!(grants(&in_prod, "selfsubjectaccessreviews"));
        assert!(!in_prod["nonResourceRules"].as_array().unwrap().is_empty());
    }

    #[test]
    fn an_access_review_must_ask_exactly_one_thing() {
        for spec in [
            json!({}),
            json!({"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/api", "verb": "get"}}),
        ] {
            let err = review(
                "selfsubjectaccessreviews",
                &caller(&[]),
                None,
                json!({"spec": spec}),
            )
            .unwrap_err();
            assert_eq!(err.code, hyper::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains("exactly one of"), "{}", err.message);
        }
    }
}
