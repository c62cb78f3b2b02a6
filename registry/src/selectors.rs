//! Label and field selectors, parsed as kube-apiserver parses them.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    /// `key>N`: the label is an integer above N.
    GreaterThan(i64),
    /// `key<N`.
    LessThan(i64),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<(String, Op)>);

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn bad(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {selector:?}: {why}"))
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),!h,i`.
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top_level(s) {
            let part = part.trim();
            let (key, op) = if let Some(k) = part.strip_prefix('!') {
                (k.trim(), Op::DoesNotExist)
            } else if let Some((k, v)) = part.split_once("!=") {
                (k.trim(), Op::NotEquals(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once("==") {
                (k.trim(), Op::Equals(v.trim().to_owned()))
            } else if let Some((k, v)) = part.split_once('=') {
                (k.trim(), Op::Equals(v.trim().to_owned()))
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                (k.trim(), Op::NotIn(set(part, rest)?))
            } else if let Some((k, rest)) = part.split_once(" in ") {
                (k.trim(), Op::In(set(part, rest)?))
            } else if let Some((k, n)) = part.split_once('>') {
                (k.trim(), Op::GreaterThan(integer(part, n)?))
            } else if let Some((k, n)) = part.split_once('<') {
                (k.trim(), Op::LessThan(integer(part, n)?))
            } else {
                (part, Op::Exists)
            };
            if !valid_key(key) {
                return Err(bad(part, "invalid label key"));
            }
            let values_ok = match &op {
                Op::Equals(v) | Op::NotEquals(v) => valid_value(v),
                Op::In(vs) | Op::NotIn(vs) => vs.iter().all(|v| valid_value(v)),
                _ => true,
            };
            if !values_ok {
                return Err(bad(part, "invalid label value"));
            }
            reqs.push((key.to_owned(), op));
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object with these labels matches.
    pub fn matches(&self, labels: &Value) -> bool {
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key).and_then(Value::as_str);
            match op {
                Op::Equals(v) => value == Some(v.as_str()),
                Op::NotEquals(v) => value != Some(v.as_str()),
                Op::In(vs) => value.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::NotIn(vs) => !value.is_some_and(|x| vs.iter().any(|v| v == x)),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
                Op::GreaterThan(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::LessThan(n) => value
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }
}

fn set(part: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(part, "expected a parenthesised set"))?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(bad(
            part,
            "for 'in', 'notin' operators, values set can't be empty",
        ));
    }
    Ok(values)
}

fn integer(part: &str, n: &str) -> Result<i64, ApiError> {
    n.trim().parse().map_err(|_| {
        bad(
            part,
            "for 'Gt', 'Lt' operators, the value must be an integer",
        )
    })
}

/// A parsed field selector over the fields every kind supports.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=x,status.phase!=Running`. Fields the kind
    /// cannot be selected by are a 400, as kube-apiserver answers.
    pub fn parse(s: &str, kind: &str, allowed: &[&str]) -> Result<FieldSelector, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in s.split(',') {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {part:?}"
                )));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace") && !allowed.contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field} (for {kind})"
                )));
            }
            reqs.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object matches. A missing field compares as `""`; numbers
    /// and booleans compare by their text, as Kubernetes' field sets do.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = field.split('.').fold(object, |v, segment| &v[segment]);
            let actual = match actual {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                // `source` on core events is an object; Kubernetes selects on its component.
                Value::Object(m) => m
                    .get("component")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                other => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

/// Whether a `metav1.LabelSelector` takes an object with `labels`: all of
/// `matchLabels` and `matchExpressions` hold. An empty selector takes
/// every object, a missing one none (policy/v1's reading for budgets).
pub fn takes(selector: &Value, labels: &Value) -> bool {
    if !selector.is_object() {
        return false;
    }
    let label = |key: &str| labels.get(key).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let by_expressions = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|l| values.contains(&l)),
                Some("NotIn") => label(key).is_none_or(|l| !values.contains(&l)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        })
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_match_as_kubernetes_does() {
        let labels = json!({"app": "web", "tier": "front", "replicas": "3"});
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=web,tier=back", false),
            ("app in (web),tier notin (back)", true),
            ("replicas>2", true),
            ("replicas<3", false),
            ("app>1", false),
            ("missing<9", false),
        ];
        for (selector, want) in cases {
            let parsed = LabelSelector::parse(selector).unwrap();
            assert_eq!(parsed.matches(&labels), want, "{selector}");
        }
        for bad in [
            "app=we b",
            "a b c",
            "app in web",
            "=x",
            "app in (a b)",
            "app in ()",
            "app notin ( )",
            "replicas>x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn field_selectors_know_each_kinds_fields() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
        let none: &[&str] = &[];
        assert!(FieldSelector::parse("metadata.name=a", "Pod", none)
            .unwrap()
            .matches(&obj));
        assert!(!FieldSelector::parse("metadata.namespace!=ns", "Pod", none)
            .unwrap()
            .matches(&obj));
        assert!(FieldSelector::parse("spec.bogus=x", "Pod", none).is_err());
        assert!(FieldSelector::parse("nonsense", "Pod", none).is_err());
        let pods: &[&str] = &[
            "spec.nodeName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
        ];
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "hostNetwork": true}, "status": {"phase": "Running"}});
        assert!(
            FieldSelector::parse("status.phase=Running,spec.nodeName=n1", "Pod", pods)
                .unwrap()
                .matches(&pod)
        );
        assert!(FieldSelector::parse("spec.hostNetwork=true", "Pod", pods)
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("status.podIP=", "Pod", pods)
            .unwrap()
            .matches(&pod));
        assert!(!FieldSelector::parse("status.phase!=Running", "Pod", pods)
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("type=Opaque", "ConfigMap", none).is_err());
    }
}
