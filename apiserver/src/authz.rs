//! Authorization inside a VC: every tenant request is asked of the VC's
//! RBAC policy (`kplex_rbac`), kept in memory, before it is served; writes
//! of roles and bindings may not grant more than their author holds; the
//! default roles read as objects of the VC without being stored in it.
//!
//! As kube-apiserver: `system:masters` may do anything, unchecked (a VC's
//! first kubeconfig is in it); a refusal is a 403 naming the user, verb,
//! resource and scope; a binding to a missing role is stored and grants
//! nothing. kplex's own components (system credentials) are not tenants
//! and are not asked about.

use std::sync::Arc;

use hyper::{Method, Response, StatusCode};
use kplex_certs::Identity;
use kplex_rbac::{defaults, Attributes, Policy, Rule, Subject};
use kplex_registry::generic::{Admission, Admitted, GenericStore, ListOptions};
use kplex_registry::{ApiError, ResourceInfo};
use serde_json::{json, Value};

use crate::handler::Request;
use crate::response::Body;

/// The RBAC group.
const GROUP: &str = kplex_rbac::index::GROUP;

/// The subject a credential is.
pub fn subject(caller: &Identity) -> Subject<'_> {
    Subject {
        user: &caller.user,
        groups: &caller.groups,
    }
}

/// Refuses `caller`'s request (`method` on `path?query`, relative to the
/// VC) unless the VC's `policy` allows it.
pub fn authorize(
    policy: &Policy,
    caller: &Identity,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<(), ApiError> {
    let who = subject(caller);
    if who.is_master() {
        return Ok(());
    }
    let attributes = Attributes::of_request(method.as_str(), path, query);
    if !policy.allows(&who, &attributes) {
        return Err(forbidden(&caller.user, &attributes));
    }
    // A stream into a Pod opened by a GET (a WebSocket) takes `create`
    // too, as kube-apiserver asks since 1.30.
    if attributes.verb == "get"
        && attributes.resource == "pods"
        && matches!(&*attributes.subresource, "exec" | "attach" | "portforward")
    {
        let create = Attributes {
            verb: "create".into(),
            ..attributes
        };
        if !policy.allows(&who, &create) {
            return Err(forbidden(&caller.user, &create));
        }
    }
    Ok(())
}

/// The identity `caller` acts as when its request carries
/// `Impersonate-User` (and `Impersonate-Group`) headers, once RBAC allows
/// it to impersonate each (`impersonate` on `users`, `groups`, or the
/// ServiceAccount); `None` without them.
pub fn impersonate(
    policy: &Policy,
    caller: &Identity,
    headers: &hyper::HeaderMap,
) -> Result<Option<Identity>, ApiError> {
    let values = |name: &str| -> Result<Vec<String>, ApiError> {
        headers
            .get_all(name)
            .iter()
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| ApiError::bad_request(format!("{name} is not text")))
            })
            .collect()
    };
    let users = values("impersonate-user")?;
    let groups = values("impersonate-group")?;
    let extras = headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-extra-") || k == "impersonate-uid");
    let Some(user) = users.first() else {
        if groups.is_empty() && !extras {
            return Ok(None);
        }
        return Err(ApiError::bad_request(
            "impersonating groups or extra fields requires impersonating a user",
        ));
    };
    if users.len() > 1 || user.is_empty() {
        return Err(ApiError::bad_request(
            "exactly one user may be impersonated",
        ));
    }
    let who = subject(caller);
    let may = |resource: &str, namespace: &str, name: &str| {
        who.is_master()
            || policy.allows(
                &who,
                &Attributes {
                    verb: "impersonate".into(),
                    resource_request: true,
                    resource: resource.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                    ..Attributes::default()
                },
            )
    };
    let refuse = |resource: &str, name: &str| {
        let mut error = ApiError::forbidden(format!(
            "{resource} {name:?} is forbidden: User {:?} cannot impersonate resource {resource:?} in API group \"\" at the cluster scope",
            caller.user
        ));
        error.details = Some(Box::new(json!({"name": name, "kind": resource})));
        error
    };
    let mut as_groups = groups.clone();
    match user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((namespace, account)) => {
            if !may("serviceaccounts", namespace, account) {
                return Err(refuse("serviceaccounts", account));
            }
            for group in [
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
            ] {
                if !as_groups.contains(&group) {
                    as_groups.push(group);
                }
            }
        }
        None if !may("users", "", user) => return Err(refuse("users", user)),
        None => {}
    }
    for group in &groups {
        if !may("groups", "", group) {
            return Err(refuse("groups", group));
        }
    }
    if extras {
        return Err(ApiError::bad_request(
            "impersonating extra fields or a UID is not supported",
        ));
    }
    Ok(Some(Identity {
        user: user.clone(),
        groups: as_groups,
        scope: caller.scope.clone(),
    }))
}

/// kube-apiserver's 403 for a request RBAC does not allow.
pub fn forbidden(user: &str, a: &Attributes) -> ApiError {
    if !a.resource_request {
        return ApiError::forbidden(format!(
            "forbidden: User {user:?} cannot {} path {:?}",
            a.verb, a.path
        ));
    }
    let resource = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let qualified = if a.api_group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.api_group)
    };
    let object = if a.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", a.name)
    };
    let mut error = ApiError::forbidden(format!(
        "{object} is forbidden: User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        a.verb, a.api_group
    ));
    error.details = Some(Box::new(
        json!({"name": a.name, "group": a.api_group, "kind": a.resource}),
    ));
    error
}

/// What a VC's tenant may grant: RBAC writes checked against what the
/// author holds (kube-apiserver's escalation prevention), then the VC's
/// other admission.
pub struct Escalation {
    /// The VC's RBAC.
    pub authorizer: Arc<kplex_rbac::Authorizer>,
    /// The VC's UID.
    pub vc: String,
    /// The author.
    pub caller: Identity,
    /// The admission after this one.
    pub then: Arc<dyn Admission>,
}

#[async_trait::async_trait]
impl Admission for Escalation {
    async fn admit(
        &self,
        store: &GenericStore,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<Admitted, ApiError> {
        if info.group == GROUP && !subject(&self.caller).is_master() {
            let policy = self
                .authorizer
                .get(&self.vc)
                .await
                .map_err(kplex_registry::error::from_store)?;
            self.check(&policy, info, old, object)?;
        }
        self.then.admit(store, info, old, object).await
    }
}

impl Escalation {
    fn check(
        &self,
        policy: &Policy,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<(), ApiError> {
        let who = subject(&self.caller);
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        // Only what the garbage collector changes (owners, finalizers) is
        // let through unchecked, as kube-apiserver lets it.
        if old.is_some_and(|old| only_gc_fields_differ(old, object)) {
            return Ok(());
        }
        // `escalate` and `bind` are asked of the object's name on an
        // update, of no name on a create (whose name is not the request's).
        let asked_name = if old.is_some() { name } else { "" };
        let allowed = |verb: &str, resource: &str, name: &str| {
            policy.allows(
                &who,
                &Attributes {
                    verb: verb.into(),
                    resource_request: true,
                    api_group: GROUP.into(),
                    resource: resource.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                    ..Attributes::default()
                },
            )
        };
        let refuse = |why: String| {
            let mut error = ApiError::forbidden(format!(
                "{}.{GROUP} {name:?} is forbidden: {why}",
                info.plural
            ));
            error.details = Some(Box::new(
                json!({"name": name, "group": GROUP, "kind": info.plural}),
            ));
            error
        };
        let wanted = match info.plural.as_str() {
            "roles" | "clusterroles" => {
                if allowed("escalate", &info.plural, asked_name) {
                    return Ok(());
                }
                let aggregates = object["aggregationRule"].is_object()
                    || old.is_some_and(|old| old["aggregationRule"].is_object());
                if aggregates {
                    let everything = [
                        Rule::from_json(
                            &json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                        ),
                        Rule::from_json(&json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
                    ];
                    let held = policy.rules_for(&who, namespace);
                    if !kplex_rbac::rules::uncovered(&held, &everything).is_empty() {
                        return Err(refuse(
                            "must have cluster-admin privileges to use the aggregationRule".into(),
                        ));
                    }
                }
                Rule::all_from(object)
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_ref = &object["roleRef"];
                let resource = match role_ref["kind"].as_str() {
                    Some("Role") => "roles",
                    _ => "clusterroles",
                };
                let role = role_ref["name"].as_str().unwrap_or_default();
                if allowed("bind", resource, role) {
                    return Ok(());
                }
                match policy.role_ref_rules(role_ref, namespace) {
                    Some(rules) => rules,
                    None => return Err(refuse(format!("{resource}.{GROUP} {role:?} not found"))),
                }
            }
            _ => return Ok(()),
        };
        let missing = kplex_rbac::rules::uncovered(&policy.rules_for(&who, namespace), &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let mut groups: Vec<String> = self
            .caller
            .groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect();
        groups.push(format!("{:?}", kplex_rbac::AUTHENTICATED));
        Err(refuse(format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            self.caller.user,
            groups.join(" "),
            kplex_rbac::rules::describe(&missing)
        )))
    }
}

/// Whether `new` differs from `old` only in what the garbage collector
/// writes (owner references, finalizers) or the server keeps (revision,
/// managed fields, generation).
fn only_gc_fields_differ(old: &Value, new: &Value) -> bool {
    let strip = |object: &Value| {
        let mut object = object.clone();
        if let Some(meta) = object["metadata"].as_object_mut() {
            for field in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
                "generation",
            ] {
                meta.remove(field);
            }
        }
        object
    };
    strip(old) == strip(new)
}

/// A default object as the VC shows it: an aggregated ClusterRole carries
/// the rules the policy gives it.
fn shown(policy: &Policy, mut object: Value) -> Value {
    if object["aggregationRule"].is_object() {
        if let Some(rules) = object["metadata"]["name"]
            .as_str()
            .and_then(|n| policy.cluster_role_rules(n))
        {
            object["rules"] = rules.iter().map(Rule::to_json).collect();
        }
    }
    object
}

/// Whether [`defaults_overlay`] may answer a request for `path`.
pub fn is_default_path(path: &str) -> bool {
    default_path(path).is_some()
}

/// `/apis/rbac.authorization.k8s.io/v1/<clusterroles|clusterrolebindings>[/<name>]`:
/// the resource and name.
fn default_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/apis/rbac.authorization.k8s.io/v1/")?;
    let mut parts = rest.split('/');
    let resource = parts.next()?;
    let name = parts.next().filter(|n| !n.is_empty());
    if parts.next().is_some() || defaults::of(resource).is_empty() {
        return None;
    }
    Some((resource, name))
}

/// Serves the requests the default roles and bindings change: reads of
/// them (and lists, which include them), and the refusal of writes to
/// them. `None` for every other request (watches included: a watch sees
/// stored objects only).
pub async fn defaults_overlay(
    catalog: &kplex_registry::Catalog,
    store: &GenericStore,
    policy: &Policy,
    path: &str,
    req: &Request,
    stopping: &tokio::sync::watch::Sender<bool>,
) -> Option<Result<Response<Body>, ApiError>> {
    let (resource, name) = default_path(path)?;
    let info = catalog.find(GROUP, "v1", resource)?;
    let refuse_change = |name: &str| {
        Err(ApiError::forbidden(format!(
            "{resource}.{GROUP} {name:?} is forbidden: it is a default of the virtual cluster \
             and cannot be changed or deleted (extend admin, edit and view with aggregation labels)"
        )))
    };
    match (&req.method, name) {
        (&Method::GET, Some(name)) => {
            let object = match defaults::find(resource, name) {
                Some(default) => default.clone(),
                None if resource == "clusterroles" => match store.get(info, None, name).await {
                    Ok(object) if object["aggregationRule"].is_object() => object,
                    _ => return None,
                },
                None => return None,
            };
            let object = shown(policy, object);
            let body = if req.wants_table() {
                kplex_registry::table::render(info, &[object])
            } else if req.wants_metadata() {
                crate::tenant::partial(object)
            } else {
                object
            };
            Some(Ok(crate::response::json_response(StatusCode::OK, &body)))
        }
        (&Method::GET, None) => {
            let params = req.params();
            let request = match crate::tenant::collection_request(info, req, &params) {
                Ok(request) => request,
                Err(e) => return Some(Err(e)),
            };
            if let Some(flags) = request.watch {
                // The defaults are among the current objects a watch
                // starts with; they never change, so no event follows.
                let defaults = matching_defaults(policy, resource, &request.opts).collect();
                let watch = crate::tenant::watch(
                    store,
                    info,
                    None,
                    request.opts,
                    stopping.subscribe(),
                    flags,
                    defaults,
                );
                return Some(watch.await);
            }
            Some(list(store, info, policy, resource, request.opts, req).await)
        }
        (&Method::PUT | &Method::PATCH | &Method::DELETE, Some(name))
            if defaults::find(resource, name).is_some() =>
        {
            Some(refuse_change(name))
        }
        (&Method::POST, None) => {
            let body = req.json_body().ok()?;
            let name = body["metadata"]["name"].as_str()?;
            defaults::find(resource, name)?;
            Some(Err(ApiError {
                code: StatusCode::CONFLICT,
                reason: "AlreadyExists",
                message: format!("{resource}.{GROUP} {name:?} already exists"),
                details: Some(Box::new(
                    json!({"name": name, "group": GROUP, "kind": resource}),
                )),
            }))
        }
        _ => None,
    }
}

/// The defaults of `resource` the selectors of `opts` match, as `policy`
/// shows them.
fn matching_defaults<'a>(
    policy: &'a Policy,
    resource: &str,
    opts: &'a ListOptions,
) -> impl Iterator<Item = Value> + 'a {
    defaults::of(resource)
        .iter()
        .filter(|d| opts.labels.matches(&d["metadata"]["labels"]) && opts.fields.matches(d))
        .map(|d| shown(policy, d.clone()))
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// A list of stored objects with the defaults among them, sorted by name
/// as stored lists are. Pages hold at most `limit` objects: each holds the
/// defaults whose names fall in its span of the stored names, and a page
/// cut short by them continues after its last object.
async fn list(
    store: &GenericStore,
    info: &ResourceInfo,
    policy: &Policy,
    resource: &str,
    opts: ListOptions,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let after = match &opts.continue_token {
        Some(token) => Some(
            kplex_registry::generic::continued_after(token)
                .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?,
        ),
        None => None,
    };
    let page = store.list(info, None, &opts).await?;
    // Where the stored page stops (none: the stored list ends in it).
    let until = page
        .continue_token
        .as_ref()
        .and_then(|_| page.items.last())
        .map(|last| name_of(last).to_owned());
    // A stored object of a default's name (written before the name was
    // reserved) is not the VC's: the default is.
    let mut items: Vec<Value> = page
        .items
        .into_iter()
        .filter(|item| defaults::find(resource, name_of(item)).is_none())
        .map(|item| shown(policy, item))
        .collect();
    items.extend(matching_defaults(policy, resource, &opts).filter(|d| {
        after.as_deref().is_none_or(|a| name_of(d) > a)
            && until.as_deref().is_none_or(|u| name_of(d) <= u)
    }));
    items.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    let mut continue_token = page.continue_token;
    if opts.limit > 0 && items.len() > opts.limit {
        items.truncate(opts.limit);
        let last = items.last().map(name_of).unwrap_or_default();
        continue_token = Some(kplex_registry::generic::continue_after(
            page.revision,
            None,
            last,
        ));
    }
    let metadata = crate::tenant::list_metadata(page.revision, continue_token);
    Ok(crate::tenant::list_response(info, req, metadata, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kplex_certs::Scope;
    use kplex_rbac::Objects;

    fn bob() -> Identity {
        Identity {
            user: "bob".into(),
            groups: vec!["dev".into()],
            scope: Scope::VirtualCluster { uid: "u".into() },
        }
    }

    fn policy_granting(rules: Value) -> Policy {
        let mut objects = Objects::default();
        objects.set("roles", Some("dev"), "r", Some(json!({"rules": rules})));
        objects.set(
            "rolebindings",
            Some("dev"),
            "b",
            Some(json!({
                "roleRef": {"kind": "Role", "name": "r", "apiGroup": GROUP},
                "subjects": [{"kind": "User", "name": "bob", "apiGroup": GROUP}]
            })),
        );
        Policy::build(&objects)
    }

    #[test]
    fn a_stream_into_a_pod_opened_by_a_get_takes_create_too() {
        let exec = "/api/v1/namespaces/dev/pods/web/exec";
        let read_only = policy_granting(json!([
            {"apiGroups": [""], "resources": ["pods", "pods/exec", "pods/log"], "verbs": ["get"]}
        ]));
        let refused = authorize(&read_only, &bob(), &Method::GET, exec, "command=sh").unwrap_err();
        assert_eq!(refused.code, StatusCode::FORBIDDEN);
        assert!(
            refused
                .message
                .contains("cannot create resource \"pods/exec\""),
            "{}",
            refused.message
        );
        // A log is a plain read.
        authorize(
            &read_only,
            &bob(),
            &Method::GET,
            "/api/v1/namespaces/dev/pods/web/log",
            "",
        )
        .unwrap();
        let both = policy_granting(json!([
            {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get", "create"]}
        ]));
        authorize(&both, &bob(), &Method::GET, exec, "command=sh").unwrap();
        authorize(&both, &bob(), &Method::POST, exec, "command=sh").unwrap();
    }

    #[test]
    fn refusals_name_the_user_verb_resource_and_scope() {
        let none = Policy::build(&Objects::default());
        let err = authorize(
            &none,
            &bob(),
            &Method::DELETE,
            "/apis/apps/v1/namespaces/dev/deployments/web",
            "",
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "deployments.apps \"web\" is forbidden: User \"bob\" cannot delete resource \"deployments\" in API group \"apps\" in the namespace \"dev\""
        );
        let err = authorize(&none, &bob(), &Method::GET, "/metrics", "").unwrap_err();
        assert_eq!(
            err.message,
            "forbidden: User \"bob\" cannot get path \"/metrics\""
        );
        // A first `watch` that says no is a list, whatever follows.
        let lists = policy_granting(
            json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["watch"]}]),
        );
        let err = authorize(
            &lists,
            &bob(),
            &Method::GET,
            "/api/v1/namespaces/dev/configmaps",
            "watch=false&watch=true",
        )
        .unwrap_err();
        assert!(err.message.contains("cannot list"), "{}", err.message);
    }

    #[test]
    fn impersonation_takes_the_impersonate_verb_on_each_identity() {
        let policy = policy_granting(json!([]));
        let mut headers = hyper::HeaderMap::new();
        assert!(impersonate(&policy, &bob(), &headers).unwrap().is_none());
        headers.insert("impersonate-user", "alice".parse().unwrap());
        let err = impersonate(&policy, &bob(), &headers).unwrap_err();
        assert!(
            err.message
                .contains("cannot impersonate resource \"users\""),
            "{}",
            err.message
        );
        let admin = Identity {
            groups: vec![kplex_rbac::MASTERS.into()],
            ..bob()
        };
        headers.insert(
            "impersonate-user",
            "system:serviceaccount:dev:ci".parse().unwrap(),
        );
        let ci = impersonate(&policy, &admin, &headers).unwrap().unwrap();
        assert_eq!(ci.user, "system:serviceaccount:dev:ci");
        assert!(ci.groups.contains(&"system:serviceaccounts:dev".to_owned()));
        let mut groups_only = hyper::HeaderMap::new();
        groups_only.insert("impersonate-group", "x".parse().unwrap());
        assert_eq!(
            impersonate(&policy, &admin, &groups_only).unwrap_err().code,
            StatusCode::BAD_REQUEST
        );
    }
}
