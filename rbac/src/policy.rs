//! One VC's RBAC policy, compiled from its Roles, ClusterRoles and
//! bindings (and the defaults): who may do what, answered from memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::request::Attributes;
use crate::rules::Rule;

/// The group every authenticated caller is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group whose members may do anything, unchecked.
pub const MASTERS: &str = "system:masters";

/// Who asks: a user name and its groups.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user name (`system:serviceaccount:<ns>:<name>` for a
    /// ServiceAccount).
    pub user: &'a str,
    /// Its groups (`system:authenticated` is implied).
    pub groups: &'a [String],
}

impl Subject<'_> {
    fn in_group(&self, group: &str) -> bool {
        group == AUTHENTICATED || self.groups.iter().any(|g| g == group)
    }

    /// Whether this subject is in `system:masters` (allowed everything, as
    /// kube-apiserver allows that group before asking RBAC).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }
}

/// A VC's RBAC objects, by key: what a policy is compiled from.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// ClusterRoles by name.
    pub cluster_roles: BTreeMap<String, Value>,
    /// ClusterRoleBindings by name.
    pub cluster_role_bindings: BTreeMap<String, Value>,
    /// Roles by (namespace, name).
    pub roles: BTreeMap<(String, String), Value>,
    /// RoleBindings by (namespace, name).
    pub role_bindings: BTreeMap<(String, String), Value>,
}

impl Objects {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.cluster_roles.is_empty()
            && self.cluster_role_bindings.is_empty()
            && self.roles.is_empty()
            && self.role_bindings.is_empty()
    }

    /// Sets (`Some`) or removes (`None`) one object of `resource`.
    pub fn set(
        &mut self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        object: Option<Value>,
    ) {
        let scoped = || (namespace.unwrap_or_default().to_owned(), name.to_owned());
        match (resource, object) {
            ("clusterroles", Some(o)) => drop(self.cluster_roles.insert(name.to_owned(), o)),
            ("clusterroles", None) => drop(self.cluster_roles.remove(name)),
            ("clusterrolebindings", Some(o)) => {
                drop(self.cluster_role_bindings.insert(name.to_owned(), o))
            }
            ("clusterrolebindings", None) => drop(self.cluster_role_bindings.remove(name)),
            ("roles", Some(o)) => drop(self.roles.insert(scoped(), o)),
            ("roles", None) => drop(self.roles.remove(&scoped())),
            ("rolebindings", Some(o)) => drop(self.role_bindings.insert(scoped(), o)),
            ("rolebindings", None) => drop(self.role_bindings.remove(&scoped())),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    User(String),
    Group(String),
    ServiceAccount(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleRef {
    Role(String),
    ClusterRole(String),
}

/// A subject's key: a hash of what it is (`u` user, `g` group) and its
/// name, compared before the name (a binding's keys sit inline with it,
/// so a check of a binding that does not apply reads no string).
fn key(kind: u8, name: &str) -> u64 {
    // FNV-1a.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(kind).chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The keys a subject matches by: its user's and each of its groups'.
struct Keys(Vec<u64>);

impl Keys {
    fn of(subject: &Subject<'_>) -> Keys {
        let mut keys = Vec::with_capacity(subject.groups.len() + 2);
        keys.push(key(b'u', subject.user));
        keys.push(key(b'g', AUTHENTICATED));
        keys.extend(subject.groups.iter().map(|g| key(b'g', g)));
        Keys(keys)
    }
}

#[derive(Debug)]
struct Binding {
    /// Its subjects' keys, in the order of `subjects`.
    keys: Box<[u64]>,
    subjects: Vec<Who>,
    role: RoleRef,
    /// The role's rules, resolved when the policy is built (`None`: the
    /// role does not exist, and the binding grants nothing).
    rules: Option<Arc<[Rule]>>,
}

impl Binding {
    /// A binding object in `namespace` (`""` for a ClusterRoleBinding).
    fn read(object: &Value, namespace: &str) -> Option<Binding> {
        let role_ref = &object["roleRef"];
        let name = role_ref["name"].as_str()?.to_owned();
        let role = match role_ref["kind"].as_str()? {
            "Role" if !namespace.is_empty() => RoleRef::Role(name),
            "ClusterRole" => RoleRef::ClusterRole(name),
            _ => return None,
        };
        let subjects: Vec<Who> = object["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = s["name"].as_str()?.to_owned();
                Some(match s["kind"].as_str()? {
                    "User" => Who::User(name),
                    "Group" => Who::Group(name),
                    "ServiceAccount" => {
                        let ns = s["namespace"]
                            .as_str()
                            .filter(|ns| !ns.is_empty())
                            .unwrap_or(namespace);
                        Who::ServiceAccount(format!("system:serviceaccount:{ns}:{name}"))
                    }
                    _ => return None,
                })
            })
            .collect();
        let keys = subjects
            .iter()
            .map(|who| match who {
                Who::User(name) | Who::ServiceAccount(name) => key(b'u', name.as_str()),
                Who::Group(name) => key(b'g', name.as_str()),
            })
            .collect();
        Some(Binding {
            keys,
            subjects,
            role,
            rules: None,
        })
    }

    /// This binding with its role's rules, from `cluster_roles` and the
    /// `roles` of its namespace.
    fn resolved(
        mut self,
        cluster_roles: &HashMap<String, Arc<[Rule]>>,
        roles: Option<&HashMap<String, Arc<[Rule]>>>,
    ) -> Binding {
        self.rules = match &self.role {
            RoleRef::ClusterRole(name) => cluster_roles.get(name).cloned(),
            RoleRef::Role(name) => roles.and_then(|r| r.get(name)).cloned(),
        };
        self
    }

    /// Whether one of this binding's subjects is `subject` (keys compared
    /// first, names to rule out a collision).
    fn applies_to(&self, subject: &Subject<'_>, keys: &Keys) -> bool {
        self.keys
            .iter()
            .zip(&self.subjects)
            .filter(|(k, _)| keys.0.contains(k))
            .any(|(_, who)| match who {
                Who::User(name) | Who::ServiceAccount(name) => name == subject.user,
                Who::Group(group) => subject.in_group(group),
            })
    }
}

/// Bindings of one scope, indexed by their subjects' keys: a check reads
/// one small sorted array and then only the bindings that name one of the
/// caller's keys, not every binding of the scope (memory another VC's
/// requests have made cold).
#[derive(Debug)]
struct Indexed<B> {
    /// (subject key, index in `bindings`), sorted.
    by_key: Box<[(u64, u32)]>,
    bindings: Vec<B>,
}

impl<B> Default for Indexed<B> {
    fn default() -> Indexed<B> {
        Indexed {
            by_key: Box::new([]),
            bindings: Vec::new(),
        }
    }
}

impl<B: std::ops::Deref<Target = Binding>> Indexed<B> {
    fn new(bindings: Vec<B>) -> Indexed<B> {
        let mut by_key: Vec<(u64, u32)> = bindings
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.keys.iter().map(move |k| (*k, i as u32)))
            .collect();
        by_key.sort_unstable();
        by_key.dedup();
        Indexed {
            by_key: by_key.into_boxed_slice(),
            bindings,
        }
    }

    /// The bindings naming `subject` (one may come once per key it
    /// matches), with their indices (the bindings' order).
    fn naming<'a>(
        &'a self,
        subject: &'a Subject<'a>,
        keys: &'a Keys,
    ) -> impl Iterator<Item = (u32, &'a Binding)> + 'a {
        keys.0.iter().flat_map(move |key| {
            let start = self.by_key.partition_point(|(k, _)| k < key);
            self.by_key[start..]
                .iter()
                .take_while(move |(k, _)| k == key)
                .map(|(_, i)| (*i, &*self.bindings[*i as usize]))
                .filter(move |(_, b)| b.applies_to(subject, keys))
        })
    }
}

/// A VC's policy. Built whole from its objects on each change (RBAC
/// objects change rarely); read by every request of the VC.
#[derive(Debug, Default)]
pub struct Policy {
    /// Each ClusterRole's rules, aggregation applied.
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    /// Roles by namespace, then name.
    roles: HashMap<String, HashMap<String, Arc<[Rule]>>>,
    cluster_bindings: Indexed<Arc<Binding>>,
    bindings: HashMap<String, Indexed<Box<Binding>>>,
}

/// What every VC's policy shares of the defaults (one copy per process,
/// so that a request's check reads memory other VCs' requests keep warm):
/// the default ClusterRoles' rules as the defaults alone aggregate them,
/// and the default bindings.
struct Shared {
    cluster_roles: HashMap<String, Arc<[Rule]>>,
    cluster_bindings: HashMap<String, Arc<Binding>>,
}

fn shared() -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let named = |r: &'static Value| (r["metadata"]["name"].as_str().unwrap_or_default(), r);
        let roles: BTreeMap<&str, &Value> =
            crate::defaults::cluster_roles().iter().map(named).collect();
        let shared_roles = aggregate(&roles);
        Shared {
            cluster_bindings: crate::defaults::cluster_role_bindings()
                .iter()
                .map(named)
                .filter_map(|(name, b)| Some((name.to_owned(), Binding::read(b, "")?)))
                .map(|(name, b)| (name, Arc::new(b.resolved(&shared_roles, None))))
                .collect(),
            cluster_roles: shared_roles,
        }
    })
}

impl Policy {
    /// The policy of a VC holding `objects`, with the defaults.
    pub fn build(objects: &Objects) -> Policy {
        // The defaults win over stored objects of their names: a VC cannot
        // replace them (its writes of those names are refused).
        let named = |r: &'static Value| (r["metadata"]["name"].as_str().unwrap_or_default(), r);
        let mut cluster_roles: BTreeMap<&str, &Value> = objects
            .cluster_roles
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        cluster_roles.extend(crate::defaults::cluster_roles().iter().map(named));
        let mut cluster_role_bindings: BTreeMap<&str, &Value> = objects
            .cluster_role_bindings
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        cluster_role_bindings.extend(crate::defaults::cluster_role_bindings().iter().map(named));
        let mut roles: HashMap<String, HashMap<String, Arc<[Rule]>>> = HashMap::new();
        for ((ns, name), role) in &objects.roles {
            roles
                .entry(ns.clone())
                .or_default()
                .insert(name.clone(), Arc::from(Rule::all_from(role)));
        }
        let mut aggregated = aggregate(&cluster_roles);
        let shared = shared();
        // Rules equal to the shared defaults' are the shared ones (a VC's
        // own aggregated roles may differ; they are its own).
        for (name, rules) in aggregated.iter_mut() {
            if let Some(common) = shared.cluster_roles.get(name).filter(|c| **c == *rules) {
                *rules = common.clone();
            }
        }
        let mut bindings: HashMap<String, Vec<Box<Binding>>> = HashMap::new();
        for ((ns, _), object) in &objects.role_bindings {
            if let Some(binding) = Binding::read(object, ns) {
                let binding = binding.resolved(&aggregated, roles.get(ns));
                bindings
                    .entry(ns.clone())
                    .or_default()
                    .push(Box::new(binding));
            }
        }
        let bindings = bindings
            .into_iter()
            .map(|(ns, b)| (ns, Indexed::new(b)))
            .collect();
        // The default bindings are the shared ones (their roles are
        // defaults, which a VC cannot change).
        let cluster_bindings = cluster_role_bindings
            .iter()
            .filter_map(|(name, b)| match shared.cluster_bindings.get(*name) {
                Some(common) => Some(common.clone()),
                None => Binding::read(b, "").map(|b| Arc::new(b.resolved(&aggregated, None))),
            })
            .collect();
        Policy {
            cluster_roles: aggregated,
            roles,
            cluster_bindings: Indexed::new(cluster_bindings),
            bindings,
        }
    }

    /// The rules a binding's role reference grants in `namespace`; `None`
    /// when the role does not exist (a binding to it grants nothing).
    fn rules_of(&self, role: &RoleRef, namespace: &str) -> Option<&Arc<[Rule]>> {
        match role {
            RoleRef::ClusterRole(name) => self.cluster_roles.get(name),
            RoleRef::Role(name) => self.roles.get(namespace).and_then(|roles| roles.get(name)),
        }
    }

    /// The rule sets that apply to `subject` in `namespace` (`""`: cluster
    /// scope only), each with where its binding stands (cluster-wide ones
    /// first, then in the bindings' order); a set may come more than once.
    fn applicable<'a>(
        &'a self,
        subject: &'a Subject<'a>,
        keys: &'a Keys,
        namespace: &'a str,
    ) -> impl Iterator<Item = ((bool, u32), &'a Arc<[Rule]>)> + 'a {
        let cluster = self
            .cluster_bindings
            .naming(subject, keys)
            .filter_map(|(i, b)| Some(((false, i), b.rules.as_ref()?)));
        let local = self
            .bindings
            .get(namespace)
            .filter(|_| !namespace.is_empty())
            .into_iter()
            .flat_map(move |bindings| bindings.naming(subject, keys))
            .filter_map(|(i, b)| Some(((true, i), b.rules.as_ref()?)));
        cluster.chain(local)
    }

    /// Whether `subject` may do what `attributes` ask.
    pub fn allows(&self, subject: &Subject<'_>, attributes: &Attributes) -> bool {
        subject.is_master()
            || self
                .applicable(subject, &Keys::of(subject), &attributes.namespace)
                .any(|(_, rules)| rules.iter().any(|r| r.allows(attributes)))
    }

    /// Every rule `subject` holds in `namespace` (cluster-wide ones
    /// included; `""`: cluster-wide ones only).
    pub fn rules_for(&self, subject: &Subject<'_>, namespace: &str) -> Vec<Rule> {
        if subject.is_master() {
            return self
                .cluster_roles
                .get("cluster-admin")
                .map_or_else(Vec::new, |rules| rules.to_vec());
        }
        let mut seen = HashSet::new();
        let keys = Keys::of(subject);
        let mut sets: Vec<_> = self.applicable(subject, &keys, namespace).collect();
        sets.sort_by_key(|(at, _)| *at);
        sets.into_iter()
            .flat_map(|(_, rules)| rules.iter())
            .filter(|r| seen.insert((*r).clone()))
            .cloned()
            .collect()
    }

    /// The rules of the role a `roleRef` object names, for a binding in
    /// `namespace` (`""` for a ClusterRoleBinding); `None` when that role
    /// does not exist.
    pub fn role_ref_rules(&self, role_ref: &Value, namespace: &str) -> Option<Vec<Rule>> {
        let name = role_ref["name"].as_str()?.to_owned();
        let role = match role_ref["kind"].as_str()? {
            "Role" => RoleRef::Role(name),
            "ClusterRole" => RoleRef::ClusterRole(name),
            _ => return None,
        };
        self.rules_of(&role, namespace).map(|r| r.to_vec())
    }

    /// A ClusterRole's rules, aggregation applied (`None`: no such role).
    pub fn cluster_role_rules(&self, name: &str) -> Option<&[Rule]> {
        self.cluster_roles.get(name).map(|r| &r[..])
    }
}

/// Each ClusterRole's rules: its own, or for one with an aggregation rule,
/// the rules of every ClusterRole its selectors take (aggregated ones
/// through theirs), without repeats.
fn aggregate(roles: &BTreeMap<&str, &Value>) -> HashMap<String, Arc<[Rule]>> {
    fn resolve(
        name: &str,
        roles: &BTreeMap<&str, &Value>,
        visiting: &mut HashSet<String>,
        done: &mut HashMap<String, Arc<[Rule]>>,
    ) -> Arc<[Rule]> {
        if let Some(rules) = done.get(name) {
            return rules.clone();
        }
        let role = roles[name];
        let selectors = role["aggregationRule"]["clusterRoleSelectors"].as_array();
        let Some(selectors) = selectors else {
            let rules: Arc<[Rule]> = Arc::from(Rule::all_from(role));
            done.insert(name.to_owned(), rules.clone());
            return rules;
        };
        visiting.insert(name.to_owned());
        let mut rules: Vec<Rule> = Vec::new();
        for (other, object) in roles {
            let taken = selectors
                .iter()
                .any(|s| kplex_registry::selectors::takes(s, &object["metadata"]["labels"]));
            if *other == name || !taken || visiting.contains(*other) {
                continue;
            }
            for rule in resolve(other, roles, visiting, done).iter() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
        visiting.remove(name);
        let rules: Arc<[Rule]> = Arc::from(rules);
        done.insert(name.to_owned(), rules.clone());
        rules
    }
    let mut done = HashMap::new();
    for name in roles.keys() {
        resolve(name, roles, &mut HashSet::new(), &mut done);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn groups(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ask<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        namespace: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            resource_request: true,
            ..Attributes::default()
        }
    }

    #[test]
    fn bindings_grant_their_roles_rules_in_their_scope() {
        let mut objects = Objects::default();
        objects.set("roles", Some("dev"), "reader", Some(json!({
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"]}]
        })));
        objects.set("rolebindings", Some("dev"), "bob-reads", Some(json!({
            "roleRef": {"kind": "Role", "name": "reader", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "bob"}]
        })));
        objects.set("rolebindings", Some("dev"), "team-edits", Some(json!({
            "roleRef": {"kind": "ClusterRole", "name": "edit", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "Group", "name": "team"}, {"kind": "ServiceAccount", "name": "ci"}]
        })));
        objects.set("rolebindings", Some("dev"), "dangling", Some(json!({
            "roleRef": {"kind": "Role", "name": "missing", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "carol"}]
        })));
        let policy = Policy::build(&objects);
        let none: Vec<String> = Vec::new();
        let bob = Subject {
            user: "bob",
            groups: &none,
        };
        assert!(policy.allows(&bob, &ask("list", "", "configmaps", "dev")));
        assert!(!policy.allows(&bob, &ask("list", "", "configmaps", "prod")));
        assert!(!policy.allows(&bob, &ask("list", "", "configmaps", "")));
        assert!(!policy.allows(&bob, &ask("delete", "", "configmaps", "dev")));
        let team = groups(&["team"]);
        let member = Subject {
            user: "dana",
            groups: &team,
        };
        // `edit` is aggregated from the defaults: view's rules and edit's.
        assert!(policy.allows(&member, &ask("create", "apps", "deployments", "dev")));
        assert!(policy.allows(&member, &ask("watch", "", "pods", "dev")));
        assert!(!policy.allows(
            &member,
            &ask("create", "rbac.authorization.k8s.io", "roles", "dev")
        ));
        let ci = Subject {
            user: "system:serviceaccount:dev:ci",
            groups: &none,
        };
        assert!(policy.allows(&ci, &ask("update", "", "secrets", "dev")));
        let carol = Subject {
            user: "carol",
            groups: &none,
        };
        assert!(policy
            .rules_for(&carol, "dev")
            .iter()
            .all(|r| r.non_resource_urls.len() + r.resources.len() > 0));
        assert!(!policy.allows(&carol, &ask("get", "", "anything", "dev")));
        // Every authenticated caller may discover and ask about itself.
        let discovery = Attributes {
            verb: "get".into(),
            path: "/apis/apps/v1".into(),
            ..Attributes::default()
        };
        assert!(policy.allows(&carol, &discovery));
        assert!(policy.allows(
            &carol,
            &ask(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                ""
            )
        ));
        let masters = groups(&[MASTERS]);
        let admin = Subject {
            user: "root",
            groups: &masters,
        };
        assert!(policy.allows(&admin, &ask("delete", "x.example", "things", "")));
    }

    #[test]
    fn aggregation_follows_labels_through_aggregated_roles() {
        let mut objects = Objects::default();
        objects.set("clusterroles", None, "widgets-view", Some(json!({
            "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
            "rules": [{"verbs": ["get"], "apiGroups": ["example.com"], "resources": ["widgets"]}]
        })));
        objects.set(
            "clusterroles",
            None,
            "loop-a",
            Some(json!({
                "metadata": {"name": "loop-a", "labels": {"x": "a"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "b"}}]}
            })),
        );
        objects.set(
            "clusterroles",
            None,
            "loop-b",
            Some(json!({
                "metadata": {"name": "loop-b", "labels": {"x": "b"}},
                "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "a"}}]}
            })),
        );
        let policy = Policy::build(&objects);
        let widgets = ask("get", "example.com", "widgets", "");
        for role in ["view", "edit", "admin"] {
            let rules = policy.cluster_role_rules(role).unwrap();
            assert!(rules.iter().any(|r| r.allows(&widgets)), "{role}");
        }
        assert!(policy.cluster_role_rules("loop-a").unwrap().is_empty());
        let admin = policy.cluster_role_rules("admin").unwrap();
        assert!(admin.iter().any(|r| r.allows(&ask(
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            "x"
        ))));
        assert!(!policy
            .cluster_role_rules("view")
            .unwrap()
            .iter()
            .any(|r| r.allows(&ask("get", "", "secrets", "x"))));
    }
}
