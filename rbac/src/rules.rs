//! Policy rules: whether one allows a request (kube-apiserver's
//! `RuleAllows`), and whether a set of rules covers another (the
//! escalation check: nobody grants what they do not hold).

use serde_json::Value;

use crate::request::Attributes;

/// One `PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    /// Verbs (`*`: all).
    pub verbs: Vec<String>,
    /// API groups (`""` core, `*` all).
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*/subresource` or `*`.
    pub resources: Vec<String>,
    /// Names (empty: every name).
    pub resource_names: Vec<String>,
    /// Non-resource paths (`*` or a prefix ending in `*`).
    pub non_resource_urls: Vec<String>,
}

/// All of anything.
const ALL: &str = "*";

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

impl Rule {
    /// A rule read from a `PolicyRule` object (fields it lacks are empty).
    pub fn from_json(rule: &Value) -> Rule {
        Rule {
            verbs: strings(&rule["verbs"]),
            api_groups: strings(&rule["apiGroups"]),
            resources: strings(&rule["resources"]),
            resource_names: strings(&rule["resourceNames"]),
            non_resource_urls: strings(&rule["nonResourceURLs"]),
        }
    }

    /// The rules of a Role or ClusterRole object.
    pub fn all_from(role: &Value) -> Vec<Rule> {
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Rule::from_json)
            .collect()
    }

    /// This rule as a `PolicyRule` object (empty lists left out).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (field, values) in [
            ("verbs", &self.verbs),
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !values.is_empty() || field == "verbs" {
                out.insert(field.to_owned(), Value::from(values.clone()));
            }
        }
        Value::Object(out)
    }

    /// Whether this rule allows the request `attributes` describe.
    pub fn allows(&self, attributes: &Attributes) -> bool {
        if !has_or_all(&self.verbs, &attributes.verb) {
            return false;
        }
        if !attributes.resource_request {
            return self
                .non_resource_urls
                .iter()
                .any(|url| path_matches(url, &attributes.path));
        }
        has_or_all(&self.api_groups, &attributes.api_group)
            && resource_matches(
                &self.resources,
                &attributes.resource,
                &attributes.subresource,
            )
            && (self.resource_names.is_empty()
                || self.resource_names.iter().any(|n| *n == attributes.name))
    }

    /// Whether this rule grants everything `other` grants.
    fn covers(&self, other: &Rule) -> bool {
        if !other.verbs.iter().all(|v| has_or_all(&self.verbs, v)) {
            return false;
        }
        if !other.non_resource_urls.is_empty() {
            return other.non_resource_urls.iter().all(|url| {
                self.non_resource_urls
                    .iter()
                    .any(|mine| path_matches(mine, url))
            });
        }
        other
            .api_groups
            .iter()
            .all(|g| has_or_all(&self.api_groups, g))
            && resources_cover(&self.resources, &other.resources)
            && (self.resource_names.is_empty()
                || (!other.resource_names.is_empty()
                    && other
                        .resource_names
                        .iter()
                        .all(|n| self.resource_names.contains(n))))
    }

    /// This rule split into rules of one verb, group, resource and name
    /// (or one verb and path) each: what covering is checked on.
    fn atoms(&self) -> Vec<Rule> {
        let one = |s: &String| vec![s.clone()];
        let mut out = Vec::new();
        for verb in &self.verbs {
            for url in &self.non_resource_urls {
                out.push(Rule {
                    verbs: one(verb),
                    non_resource_urls: one(url),
                    ..Rule::default()
                });
            }
            for group in &self.api_groups {
                for resource in &self.resources {
                    let base = Rule {
                        verbs: one(verb),
                        api_groups: one(group),
                        resources: one(resource),
                        ..Rule::default()
                    };
                    if self.resource_names.is_empty() {
                        out.push(base);
                    } else {
                        for name in &self.resource_names {
                            out.push(Rule {
                                resource_names: one(name),
                                ..base.clone()
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

fn has_or_all(set: &[String], wanted: &str) -> bool {
    set.iter().any(|s| s == ALL || s == wanted)
}

/// `*` every path, `/prefix/*` every path under the prefix, else exactly.
fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern == ALL || pattern == path {
        return true;
    }
    pattern
        .strip_suffix('*')
        .is_some_and(|prefix| path.starts_with(prefix))
}

fn resource_matches(rule: &[String], resource: &str, subresource: &str) -> bool {
    let combined;
    let wanted = if subresource.is_empty() {
        resource
    } else {
        combined = format!("{resource}/{subresource}");
        &combined
    };
    rule.iter().any(|r| {
        r == ALL
            || r == wanted
            || (!subresource.is_empty() && r.strip_prefix("*/") == Some(subresource))
    })
}

fn resources_cover(mine: &[String], theirs: &[String]) -> bool {
    if mine.iter().any(|r| r == ALL) {
        return true;
    }
    theirs.iter().all(|wanted| {
        mine.contains(wanted)
            || wanted
                .split_once('/')
                .is_some_and(|(_, sub)| mine.iter().any(|r| r.strip_prefix("*/") == Some(sub)))
    })
}

/// The parts of `wanted` that `held` does not cover (empty: no escalation),
/// each one verb of one resource, name or path.
pub fn uncovered(held: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    wanted
        .iter()
        .flat_map(Rule::atoms)
        .filter(|atom| !held.iter().any(|rule| rule.covers(atom)))
        .collect()
}

/// Rules as kube-apiserver lists them in an escalation refusal:
/// `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn describe(rules: &[Rule]) -> String {
    let quoted = |values: &[String]| {
        values
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    rules
        .iter()
        .map(|r| {
            let mut parts = Vec::new();
            if !r.non_resource_urls.is_empty() {
                parts.push(format!(
                    "NonResourceURLs:[{}]",
                    quoted(&r.non_resource_urls)
                ));
            } else {
                parts.push(format!("APIGroups:[{}]", quoted(&r.api_groups)));
                parts.push(format!("Resources:[{}]", quoted(&r.resources)));
                if !r.resource_names.is_empty() {
                    parts.push(format!("ResourceNames:[{}]", quoted(&r.resource_names)));
                }
            }
            parts.push(format!("Verbs:[{}]", quoted(&r.verbs)));
            format!("{{{}}}", parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v)
    }

    fn request<'a>(
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        sub: &'a str,
        name: &'a str,
    ) -> Attributes<'a> {
        Attributes {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: "default".into(),
            resource_request: true,
            path: "".into(),
        }
    }

    #[test]
    fn a_rule_allows_its_verbs_groups_resources_and_names_only() {
        let r = rule(
            json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}),
        );
        assert!(r.allows(&request("get", "", "pods", "", "web")));
        assert!(r.allows(&request("get", "", "pods", "log", "web")));
        assert!(!r.allows(&request("get", "", "pods", "exec", "web")));
        assert!(!r.allows(&request("delete", "", "pods", "", "web")));
        assert!(!r.allows(&request("get", "apps", "pods", "", "web")));
        let named = rule(
            json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["configmaps"], "resourceNames": ["a"]}),
        );
        assert!(named.allows(&request("update", "", "configmaps", "", "a")));
        assert!(!named.allows(&request("update", "", "configmaps", "", "b")));
        // A list has no name: a rule limited to names does not allow it.
        assert!(!named.allows(&request("list", "", "configmaps", "", "")));
        let status = rule(json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*/status"]}));
        assert!(status.allows(&request("get", "apps", "deployments", "status", "d")));
        assert!(!status.allows(&request("get", "apps", "deployments", "", "d")));
    }

    #[test]
    fn non_resource_rules_match_paths_and_prefixes() {
        let r = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
        let path = |p: &'static str| Attributes {
            verb: "get".into(),
            path: p.into(),
            ..Attributes::default()
        };
        assert!(r.allows(&path("/healthz")));
        assert!(r.allows(&path("/apis/apps/v1")));
        assert!(!r.allows(&path("/api")));
        // A resource rule grants no path.
        let pods = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(!pods.allows(&path("/healthz")));
    }

    #[test]
    fn covering_is_checked_per_verb_resource_and_name() {
        let held = vec![
            rule(
                json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "*/status"]}),
            ),
            rule(
                json!({"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a", "b"]}),
            ),
        ];
        let ok = |v: Value| uncovered(&held, &[rule(v)]).is_empty();
        assert!(ok(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]})
        ));
        assert!(ok(
            json!({"verbs": ["get"], "apiGroups": [""], "resources": ["services/status"]})
        ));
        assert!(ok(
            json!({"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]})
        ));
        assert!(!ok(
            json!({"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"]})
        ));
        assert!(!ok(
            json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods"]})
        ));
        assert!(!ok(
            json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]})
        ));
        assert!(!ok(
            json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["pods"]})
        ));
        assert!(!ok(
            json!({"verbs": ["get"], "nonResourceURLs": ["/metrics"]})
        ));
        let missing = uncovered(
            &held,
            &[rule(
                json!({"verbs": ["get", "delete"], "apiGroups": [""], "resources": ["pods", "secrets"]}),
            )],
        );
        assert_eq!(missing.len(), 3);
        assert_eq!(
            describe(&missing[..1]),
            r#"{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}"#
        );
        let everything = vec![
            rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})),
            rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]})),
        ];
        assert!(uncovered(&everything, &held).is_empty());
    }
}
