//! CRD validation rules (`x-kubernetes-validations`), in CEL (the `cel`
//! crate): compiled and costed when the CRD is written, evaluated on every
//! write of its objects.
//!
//! A rule sees the value at its schema node as `self` (and, for a
//! transition rule, the stored value as `oldSelf`; such a rule is
//! evaluated on updates only, as kube-apiserver does). Its cost is
//! estimated statically, as kube-apiserver estimates it: a comprehension
//! (`all`, `exists`, `map`, `filter`, …) costs its body times the most
//! items its list or map may hold (`maxItems`/`maxProperties`, else the
//! most a request could carry), and a rule runs once per value its node
//! may have (the lists above it). A rule over the per-rule budget, or a
//! schema whose rules together are over the per-CRD budget, is refused.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use serde_json::Value;

/// kube-apiserver's per-rule budget (`StaticEstimatedCostLimit`).
pub const RULE_BUDGET: u64 = 10_000_000;
/// kube-apiserver's budget for all of a schema's rules
/// (`StaticEstimatedCRDCostLimit`).
pub const CRD_BUDGET: u64 = 100_000_000;
/// The most items an unbounded list or map is assumed to hold: a 3 MiB
/// request of items of four bytes at least (`"",` and a separator).
const UNBOUNDED: u64 = 3 * 1024 * 1024 / 4;

/// One compiled rule.
pub struct Rule {
    /// Its source.
    pub source: String,
    program: cel::Program,
    message: Option<String>,
    field_path: Option<String>,
    /// Whether it reads `oldSelf` (evaluated on updates only).
    pub transition: bool,
}

/// A schema's rules, compiled, by their source.
pub type Rules = HashMap<String, Arc<Rule>>;

impl Rule {
    /// Compiles a rule object (`{rule, message, fieldPath}`).
    pub fn compile(rule: &Value) -> Result<Rule, String> {
        let source = rule["rule"].as_str().unwrap_or_default().to_owned();
        let program = cel::Program::compile(&source)
            .map_err(|e| format!("compilation failed: {}", e.to_string().replace('\n', "; ")))?;
        let transition = program.references().has_variable("oldSelf");
        Ok(Rule {
            source,
            program,
            message: rule["message"].as_str().map(str::to_owned),
            field_path: rule["fieldPath"].as_str().map(str::to_owned),
            transition,
        })
    }

    /// Whether `value` (and `old`, for a transition rule) passes; the
    /// refusal's field path suffix and message if not.
    pub fn check(&self, value: &Value, old: Option<&Value>) -> Result<(), (String, String)> {
        let mut context = cel::Context::default();
        context.add_variable_from_value("self", to_cel(value));
        if let Some(old) = old {
            context.add_variable_from_value("oldSelf", to_cel(old));
        }
        let field = self.field_path.clone().unwrap_or_default();
        let kind = crate::schema::type_name(value);
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(true)) => Ok(()),
            Ok(cel::Value::Bool(false)) => {
                let message = self
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("failed rule: {}", self.source));
                Err((field, format!("Invalid value: {kind:?}: {message}")))
            }
            Ok(other) => Err((
                field,
                format!(
                    "Invalid value: {kind:?}: rule {:?} did not evaluate to a bool: {other:?}",
                    self.source
                ),
            )),
            Err(e) => Err((
                field,
                format!(
                    "Invalid value: {kind:?}: rule {:?} failed: {e}",
                    self.source
                ),
            )),
        }
    }
}

/// A JSON value as CEL sees it (integers as `int`, as Kubernetes'
/// schemas type them).
pub fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => cel::Value::Map(cel::objects::Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

/// Compiles every rule in `schema`, noting each problem (compilation,
/// cost) at its path; the compiled rules.
pub fn compile_all(schema: &Value, path: &str, problems: &mut Vec<(String, String)>) -> Rules {
    let mut rules = Rules::new();
    let mut total = 0u64;
    walk(schema, path, 1, &mut |node, at, cardinality| {
        for (i, rule) in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("{at}.x-kubernetes-validations[{i}].rule");
            match Rule::compile(rule) {
                Err(e) => problems.push((field, format!("Invalid value: {:?}: {e}", text(rule)))),
                Ok(compiled) => {
                    let cost = cost(compiled.program.expression(), node, &HashMap::new());
                    if cost > RULE_BUDGET {
                        problems.push((field, format!(
                            "Forbidden: estimated rule cost exceeds budget by factor of {:.1}x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)",
                            cost as f64 / RULE_BUDGET as f64
                        )));
                        continue;
                    }
                    total = total.saturating_add(cost.saturating_mul(cardinality));
                    if total > CRD_BUDGET {
                        problems.push((field, "Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema".to_owned()));
                        continue;
                    }
                    rules.insert(compiled.source.clone(), Arc::new(compiled));
                }
            }
        }
    });
    rules
}

fn text(rule: &Value) -> &str {
    rule["rule"].as_str().unwrap_or_default()
}

/// Visits every schema node with its path and how many values it may
/// have in one object (the product of the lists and maps above it).
fn walk(schema: &Value, path: &str, cardinality: u64, visit: &mut dyn FnMut(&Value, &str, u64)) {
    visit(schema, path, cardinality);
    if let Some(properties) = schema["properties"].as_object() {
        for (key, child) in properties {
            walk(
                child,
                &format!("{path}.properties[{key}]"),
                cardinality,
                visit,
            );
        }
    }
    if let Some(items) = schema.get("items").filter(|s| s.is_object()) {
        let most = schema["maxItems"].as_u64().unwrap_or(UNBOUNDED);
        walk(
            items,
            &format!("{path}.items"),
            cardinality.saturating_mul(most),
            visit,
        );
    }
    if let Some(values) = schema.get("additionalProperties").filter(|s| s.is_object()) {
        let most = schema["maxProperties"].as_u64().unwrap_or(UNBOUNDED);
        walk(
            values,
            &format!("{path}.additionalProperties"),
            cardinality.saturating_mul(most),
            visit,
        );
    }
}

/// The schema of what `expr` denotes, when it is `self`, a field of it, or
/// a comprehension's variable (`vars`).
fn schema_of<'a>(
    expr: &IdedExpr,
    node: &'a Value,
    vars: &HashMap<String, &'a Value>,
) -> Option<&'a Value> {
    match &expr.expr {
        Expr::Ident(name) if name == "self" => Some(node),
        Expr::Ident(name) => vars.get(name).copied(),
        Expr::Select(select) if !select.test => {
            let parent = schema_of(&select.operand, node, vars)?;
            parent["properties"]
                .get(&select.field)
                .or(parent.get("additionalProperties").filter(|s| s.is_object()))
        }
        _ => None,
    }
}

/// The most items a list or map `schema` may hold.
fn most_items(schema: Option<&Value>) -> u64 {
    match schema {
        Some(s) if s["type"] == "array" => s["maxItems"].as_u64().unwrap_or(UNBOUNDED),
        Some(s) if s["type"] == "object" => s["maxProperties"].as_u64().unwrap_or(UNBOUNDED),
        _ => UNBOUNDED,
    }
}

/// `expr`'s estimated cost, at schema node `node`.
fn cost<'a>(expr: &IdedExpr, node: &'a Value, vars: &HashMap<String, &'a Value>) -> u64 {
    let sum = |items: &mut dyn Iterator<Item = &IdedExpr>| {
        items.fold(1u64, |total, e| total.saturating_add(cost(e, node, vars)))
    };
    match &expr.expr {
        Expr::Comprehension(c) => {
            let range = schema_of(&c.iter_range, node, vars);
            let size = most_items(range);
            let mut inner = vars.clone();
            if let Some(range) = range {
                let element = if range["type"] == "array" {
                    range.get("items")
                } else {
                    range.get("additionalProperties").filter(|s| s.is_object())
                };
                if let Some(element) = element {
                    inner.insert(c.iter_var.clone(), element);
                }
            }
            let body = cost(&c.loop_cond, node, &inner)
                .saturating_add(cost(&c.loop_step, node, &inner))
                .saturating_add(1);
            cost(&c.iter_range, node, vars)
                .saturating_add(size.saturating_mul(body))
                .saturating_add(cost(&c.accu_init, node, vars))
                .saturating_add(cost(&c.result, node, vars))
        }
        Expr::Call(call) => sum(&mut call.target.iter().map(|t| &**t).chain(call.args.iter())),
        Expr::Select(select) => cost(&select.operand, node, vars).saturating_add(1),
        Expr::List(list) => sum(&mut list.elements.iter()),
        Expr::Map(map) => sum(&mut map.entries.iter().flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        })),
        Expr::Struct(s) => sum(&mut s.entries.iter().flat_map(|e| match &e.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        })),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_pass_fail_and_say_why() {
        let rule = Rule::compile(
            &json!({"rule": "self.min <= self.max", "message": "min must not exceed max"}),
        )
        .unwrap();
        assert!(rule.check(&json!({"min": 1, "max": 2}), None).is_ok());
        let (_, message) = rule.check(&json!({"min": 3, "max": 2}), None).unwrap_err();
        assert_eq!(
            message,
            "Invalid value: \"object\": min must not exceed max"
        );
        let plain = Rule::compile(&json!({"rule": "self.size() < 3"})).unwrap();
        assert!(plain
            .check(&json!(["a", "b", "c"]), None)
            .unwrap_err()
            .1
            .contains("failed rule: self.size() < 3"));
        let transition =
            Rule::compile(&json!({"rule": "self >= oldSelf", "fieldPath": ".replicas"})).unwrap();
        assert!(transition.transition);
        assert!(transition.check(&json!(5), Some(&json!(3))).is_ok());
        assert_eq!(
            transition.check(&json!(2), Some(&json!(3))).unwrap_err().0,
            ".replicas"
        );
        assert!(Rule::compile(&json!({"rule": "self.a >"})).is_err());
    }

    #[test]
    fn a_rule_costs_its_comprehensions_times_their_bounds() {
        let unbounded = json!({"type": "object", "properties": {
            "items": {"type": "array", "items": {"type": "string"}},
        }});
        let mut problems = Vec::new();
        compile_all(
            &json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.items.all(x, self.items.all(y, x == y || x != y))"}
        ], "properties": unbounded["properties"]}),
            "s",
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].1.contains("estimated rule cost exceeds budget"),
            "{problems:?}"
        );
        // The same rule over a bounded list is cheap enough.
        let mut problems = Vec::new();
        let rules = compile_all(
            &json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.items.all(x, self.items.all(y, x == y || x != y))"}
        ], "properties": {"items": {"type": "array", "maxItems": 100, "items": {"type": "string"}}}}),
            "s",
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(rules.len(), 1);
        // A single pass over an unbounded list is within the budget.
        let mut problems = Vec::new();
        compile_all(
            &json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.items.all(x, x.size() < 10)"}
        ], "properties": unbounded["properties"]}),
            "s",
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
    }
}
