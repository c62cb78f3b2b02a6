//! Field ownership (`metadata.managedFields`) and server-side apply.
//!
//! Every write names a field manager (`fieldManager`, else the client's
//! User-Agent up to its first `/`). An ordinary write (create, update,
//! patch: operation `Update`) takes the fields it set or changed from
//! whoever owned them. An apply (`PATCH` with
//! `application/apply-patch+yaml`: operation `Apply`) declares the fields
//! its configuration holds:
//!
//! - a field another manager owns with a different value is a conflict
//!   (409 naming the managers and fields) unless the apply is forced, which
//!   takes the field over; the same value is shared ownership;
//! - the configuration is merged into the object (maps field by field,
//!   lists with a merge key item by item, other lists whole);
//! - a field this manager applied before, left out now and owned by no one
//!   else, is removed.
//!
//! A field set is a set of paths, written as kube-apiserver's `FieldsV1`:
//! `f:<field>` for a field, `k:{"name":"web"}` for the list item with that
//! merge key (with `.` for the item itself), `v:<json>` for a member of a
//! set-like list (finalizers). Label selectors and lists without a merge
//! key are owned whole. Status belongs to the `status` subresource's
//! entries. Names, UIDs and the other server-owned metadata are nobody's.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::status::ApiError;

/// Who writes, and how: what a write records in `managedFields`.
#[derive(Debug, Clone, Default)]
pub enum Manager {
    /// The server's own bookkeeping writes: ownership is left as it was.
    #[default]
    Server,
    /// An ordinary write by this manager.
    Update(String),
    /// A server-side apply by this manager, declaring these fields.
    Apply { name: String, fields: FieldSet },
}

/// Most bytes a field manager's name may have (as kube-apiserver).
const MANAGER_MAX: usize = 128;

impl Manager {
    /// The manager of an ordinary write: `fieldManager`, else the
    /// User-Agent's product name.
    pub fn of_request(
        field_manager: Option<&str>,
        user_agent: Option<&str>,
    ) -> Result<Manager, ApiError> {
        let name = match field_manager.filter(|m| !m.is_empty()) {
            Some(name) => name,
            None => user_agent
                .and_then(|ua| ua.split('/').next())
                .unwrap_or_default(),
        };
        let name: String = if field_manager.is_some() {
            if name.len() > MANAGER_MAX {
                return Err(ApiError::field(
                    "PatchOptions.meta.k8s.io",
                    "",
                    "fieldManager",
                    &format!("Too long: may not be more than {MANAGER_MAX} bytes"),
                ));
            }
            name.to_owned()
        } else {
            name.chars().take(MANAGER_MAX).collect()
        };
        Ok(Manager::Update(name))
    }
}

/// One step of a path into an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    /// A map's field.
    Field(String),
    /// The list item whose merge key has this value (its JSON object text).
    Key(String),
    /// The member of a set-like list with this value (its JSON text).
    Value(String),
    /// The list item itself (after a `Key`).
    Item,
}

type Path = Vec<Seg>;

/// The fields a manager owns, or a write sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Path>);

/// Metadata that names the object or that the server owns: nobody's.
const UNMANAGED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Maps owned whole: label selectors.
fn atomic_map(field: &str) -> bool {
    matches!(
        field,
        "selector" | "podSelector" | "namespaceSelector" | "labelSelector"
    )
}

impl FieldSet {
    /// The fields `object` sets.
    pub fn of(object: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        for (field, value) in object.as_object().into_iter().flatten() {
            match field.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    for (name, v) in value.as_object().into_iter().flatten() {
                        if !UNMANAGED_METADATA.contains(&name.as_str()) {
                            let path = vec![Seg::Field(field.clone()), Seg::Field(name.clone())];
                            set.walk(path, name, v);
                        }
                    }
                }
                _ => set.walk(vec![Seg::Field(field.clone())], field, value),
            }
        }
        set
    }

    fn walk(&mut self, path: Path, field: &str, value: &Value) {
        match value {
            Value::Object(map) if !map.is_empty() && !atomic_map(field) => {
                self.walk_map(&path, map);
            }
            Value::Array(items) if !items.is_empty() => {
                let key = crate::patch::merge_key(field, items)
                    .filter(|k| items.iter().all(|i| i.get(k).is_some()));
                if let Some(key) = key {
                    for item in items {
                        let mut id = Map::new();
                        id.insert(key.to_owned(), item[key].clone());
                        let mut at = path.clone();
                        at.push(Seg::Key(Value::Object(id).to_string()));
                        let mut itself = at.clone();
                        itself.push(Seg::Item);
                        self.0.insert(itself);
                        if let Some(map) = item.as_object() {
                            self.walk_map(&at, map);
                        }
                    }
                } else if crate::patch::merges_as_set(field) {
                    for item in items {
                        let mut at = path.clone();
                        at.push(Seg::Value(item.to_string()));
                        self.0.insert(at);
                    }
                } else {
                    self.0.insert(path);
                }
            }
            _ => {
                self.0.insert(path);
            }
        }
    }

    fn walk_map(&mut self, path: &Path, map: &Map<String, Value>) {
        for (k, v) in map {
            let mut at = path.clone();
            at.push(Seg::Field(k.clone()));
            self.walk(at, k, v);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As `FieldsV1` JSON.
    pub fn to_json(&self) -> Value {
        let mut root = Map::new();
        for path in &self.0 {
            let mut node = &mut root;
            for seg in path {
                let name = match seg {
                    Seg::Field(f) => format!("f:{f}"),
                    Seg::Key(k) => format!("k:{k}"),
                    Seg::Value(v) => format!("v:{v}"),
                    Seg::Item => ".".to_owned(),
                };
                node = node
                    .entry(name)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("only objects are inserted");
            }
        }
        Value::Object(root)
    }

    /// From `FieldsV1` JSON (what cannot be read is left out).
    pub fn from_json(fields: &Value) -> FieldSet {
        fn read(node: &Map<String, Value>, path: &mut Path, set: &mut BTreeSet<Path>) {
            if node.is_empty() && !path.is_empty() {
                set.insert(path.clone());
                return;
            }
            for (name, child) in node {
                let seg = if name == "." {
                    Seg::Item
                } else if let Some(f) = name.strip_prefix("f:") {
                    Seg::Field(f.to_owned())
                } else if let Some(k) = name.strip_prefix("k:") {
                    Seg::Key(k.to_owned())
                } else if let Some(v) = name.strip_prefix("v:") {
                    Seg::Value(v.to_owned())
                } else {
                    continue;
                };
                if let Some(child) = child.as_object() {
                    path.push(seg);
                    read(child, path, set);
                    path.pop();
                }
            }
        }
        let mut set = BTreeSet::new();
        if let Some(root) = fields.as_object() {
            read(root, &mut Vec::new(), &mut set);
        }
        FieldSet(set)
    }

    fn without(&mut self, other: &FieldSet) {
        self.0.retain(|p| !other.0.contains(p));
    }
}

/// The value a path leads to in `object`.
fn value_at<'a>(object: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut v = object;
    for seg in path {
        v = step(v, seg)?;
    }
    Some(v)
}

fn step<'a>(v: &'a Value, seg: &Seg) -> Option<&'a Value> {
    match seg {
        Seg::Field(f) => v.get(f),
        Seg::Key(k) => {
            let id: Map<String, Value> = serde_json::from_str(k).ok()?;
            v.as_array()?
                .iter()
                .find(|item| id.iter().all(|(f, want)| item.get(f) == Some(want)))
        }
        Seg::Value(x) => {
            let x: Value = serde_json::from_str(x).ok()?;
            v.as_array()?.iter().find(|item| **item == x)
        }
        Seg::Item => Some(v),
    }
}

/// Removes what a path leads to: a field, a list item, a set member.
fn remove_at(object: &mut Value, path: &[Seg]) {
    let (target, parent) = match path {
        [parent @ .., Seg::Key(_), Seg::Item] => (&path[parent.len()], parent),
        [parent @ .., last] => (last, parent),
        [] => return,
    };
    let mut v = &mut *object;
    for seg in parent {
        let Some(next) = step_mut(v, seg) else { return };
        v = next;
    }
    match target {
        Seg::Field(f) => {
            if let Some(map) = v.as_object_mut() {
                map.remove(f);
            }
        }
        Seg::Key(_) | Seg::Value(_) => {
            let Some(found) = step(v, target).cloned() else {
                return;
            };
            if let Some(items) = v.as_array_mut() {
                items.retain(|item| *item != found);
            }
        }
        Seg::Item => {}
    }
}

fn step_mut<'a>(v: &'a mut Value, seg: &Seg) -> Option<&'a mut Value> {
    let found = step(v, seg)?.clone();
    match seg {
        Seg::Field(f) => v.get_mut(f),
        Seg::Item => Some(v),
        Seg::Key(_) | Seg::Value(_) => v.as_array_mut()?.iter_mut().find(|i| **i == found),
    }
}

/// kube-apiserver's rendering of a path in conflict messages:
/// `.spec.containers[name="web"].image`.
fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Seg::Key(k) => {
                let id: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = id.iter().map(|(f, v)| format!("{f}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Seg::Value(v) => out.push_str(&format!("[={v}]")),
            Seg::Item => {}
        }
    }
    out
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: &'static str,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_json(),
        });
        if let Some(sub) = &self.subresource {
            entry["subresource"] = json!(sub);
        }
        entry
    }
}

fn entries_of(object: &Value) -> Vec<Entry> {
    let list = object["metadata"]["managedFields"].as_array();
    list.into_iter()
        .flatten()
        .filter_map(|e| {
            Some(Entry {
                manager: e["manager"].as_str()?.to_owned(),
                operation: match e["operation"].as_str()? {
                    "Apply" => "Apply",
                    _ => "Update",
                },
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                time: e["time"].as_str().unwrap_or_default().to_owned(),
                subresource: e["subresource"].as_str().map(str::to_owned),
                fields: FieldSet::from_json(&e["fieldsV1"]),
            })
        })
        .collect()
}

fn set_entries(object: &mut Value, entries: Vec<Entry>) {
    let Some(meta) = object["metadata"].as_object_mut() else {
        return;
    };
    let entries: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Records a write's ownership in `new`'s `managedFields`. `old` is the
/// stored object (`None` for a create); for an apply, `new` already holds
/// the entries [`apply`] prepared.
pub fn track(
    old: Option<&Value>,
    new: &mut Value,
    manager: &Manager,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    let mut entries = match (manager, old) {
        (Manager::Apply { .. }, _) => entries_of(new),
        (_, Some(old)) => entries_of(old),
        (_, None) => Vec::new(),
    };
    let now_set = FieldSet::of(new);
    let (changed, removed) = match old {
        Some(old) => {
            let before = FieldSet::of(old);
            let changed = now_set
                .0
                .iter()
                .filter(|p| match p.last() {
                    Some(Seg::Item) => value_at(old, p).is_none(),
                    _ => value_at(old, p) != value_at(new, p),
                })
                .cloned()
                .collect();
            let removed = before.0.difference(&now_set.0).cloned().collect();
            (FieldSet(changed), FieldSet(removed))
        }
        None => (now_set, FieldSet::default()),
    };
    for e in &mut entries {
        e.fields.without(&removed);
    }
    match manager {
        Manager::Server => {}
        Manager::Update(name) => {
            if !changed.is_empty() {
                for e in entries.iter_mut() {
                    if !e.is(name, "Update", subresource) {
                        e.fields.without(&changed);
                    }
                }
                let mut mine = entries
                    .iter()
                    .find(|e| e.is(name, "Update", subresource))
                    .map(|e| e.fields.clone())
                    .unwrap_or_default();
                mine.0.extend(changed.0);
                own(
                    &mut entries,
                    name,
                    "Update",
                    mine,
                    subresource,
                    api_version,
                    now,
                );
            }
        }
        Manager::Apply { name, fields } => {
            let mut fields = fields.clone();
            fields.without(&removed);
            own(
                &mut entries,
                name,
                "Apply",
                fields,
                subresource,
                api_version,
                now,
            );
        }
    }
    set_entries(new, entries);
}

/// Sets a manager's entry to `fields`; its time and API version change
/// only when its fields do.
fn own(
    entries: &mut Vec<Entry>,
    name: &str,
    operation: &'static str,
    fields: FieldSet,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    match entries
        .iter_mut()
        .find(|e| e.is(name, operation, subresource))
    {
        Some(e) if e.fields == fields => {}
        Some(e) => {
            e.fields = fields;
            e.time = now.to_owned();
            e.api_version = api_version.to_owned();
        }
        None => entries.push(Entry {
            manager: name.to_owned(),
            operation,
            api_version: api_version.to_owned(),
            time: now.to_owned(),
            subresource: subresource.map(str::to_owned),
            fields,
        }),
    }
}

/// What a server-side apply of `config` by `manager` makes of `live`: the
/// merged object (other managers' entries adjusted if forced) and the fields
/// the apply declares. A conflict with another manager is a 409 unless
/// `force`.
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
) -> Result<(Value, FieldSet), ApiError> {
    let applied = FieldSet::of(config);
    let mut entries = entries_of(live);
    let mine = |e: &Entry| e.is(manager, "Apply", None);
    let mut conflicts: Vec<(String, String, Path)> = Vec::new();
    for e in entries
        .iter()
        .filter(|e| !mine(e) && e.subresource.is_none())
    {
        for path in e.fields.0.intersection(&applied.0) {
            if path.last() != Some(&Seg::Item) && value_at(live, path) != value_at(config, path) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&conflicts));
        }
        let taken = FieldSet(conflicts.into_iter().map(|(_, _, p)| p).collect());
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            e.fields.without(&taken);
        }
    }
    let body = serde_json::to_vec(config).expect("a Value always serializes");
    let mut object = crate::patch::apply(live, crate::patch::PatchType::Strategic, &body)?;
    // What this manager applied before and no longer does goes, unless
    // someone else owns it (or something under it).
    let before = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let owned_elsewhere = |prefix: &[Seg]| {
        entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.0.iter().any(|p| p.starts_with(prefix)))
            || applied.0.iter().any(|p| p.starts_with(prefix))
    };
    let (items, fields): (Vec<&Path>, Vec<&Path>) = before
        .0
        .difference(&applied.0)
        .partition(|p| p.last() == Some(&Seg::Item));
    // Whole list items first: they are found by their keys, which the
    // removal of their fields would take away.
    for path in items.into_iter().chain(fields) {
        let prefix = match path.split_last() {
            Some((Seg::Item, rest)) => rest,
            _ => &path[..],
        };
        if owned_elsewhere(prefix) {
            continue;
        }
        remove_at(&mut object, path);
        // A map or list left empty by the removal goes too, unless it is
        // itself applied.
        let container = &prefix[..prefix.len() - 1];
        let emptied = value_at(&object, container).is_some_and(|v| {
            v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
        });
        if emptied && !container.is_empty() && !applied.0.contains(container) {
            remove_at(&mut object, container);
        }
    }
    set_entries(&mut object, entries);
    Ok((object, applied))
}

/// kube-apiserver's 409 for apply conflicts: grouped by manager, with a
/// `FieldManagerConflict` cause per field.
fn conflict_error(conflicts: &[(String, String, Path)]) -> ApiError {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut causes = Vec::new();
    for (manager, api_version, path) in conflicts {
        let who = if api_version.is_empty() {
            format!("{manager:?}")
        } else {
            format!("{manager:?} using {api_version}")
        };
        let field = render(path);
        causes.push(json!({
            "reason": "FieldManagerConflict",
            "message": format!("conflict with {who}"),
            "field": field,
        }));
        match groups.iter_mut().find(|(w, _)| *w == who) {
            Some((_, fields)) => fields.push(field),
            None => groups.push((who, vec![field])),
        }
    }
    let described: Vec<String> = groups
        .iter()
        .map(|(who, fields)| match fields.as_slice() {
            [one] => format!("conflict with {who}: {one}"),
            many => format!("conflicts with {who}:\n- {}", many.join("\n- ")),
        })
        .collect();
    let n = conflicts.len();
    ApiError {
        code: hyper::StatusCode::CONFLICT,
        reason: "Conflict",
        message: format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            described.join("\n")
        ),
        details: Some(Box::new(json!({"causes": causes}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-11-27T00:00:00Z";

    fn deployment(image: &str, replicas: u64) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "labels": {"app": "web"}, "finalizers": ["a/b"]},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": image, "args": ["-v"]}]}},
            },
        })
    }

    fn managers(object: &Value) -> Vec<(String, String)> {
        entries_of(object)
            .into_iter()
            .map(|e| (e.manager, e.operation.to_owned()))
            .collect()
    }

    #[test]
    fn field_sets_read_and_write_kube_apiservers_fields_v1() {
        let set = FieldSet::of(&deployment("nginx", 1));
        let v1 = set.to_json();
        assert_eq!(
            v1,
            json!({
                "f:metadata": {
                    "f:finalizers": {"v:\"a/b\"": {}},
                    "f:labels": {"f:app": {}},
                },
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                        ".": {}, "f:args": {}, "f:image": {}, "f:name": {},
                    }}}},
                },
            })
        );
        assert_eq!(FieldSet::from_json(&v1), set);
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_from_their_owners() {
        let old = deployment("nginx", 1);
        let mut created = old.clone();
        track(
            None,
            &mut created,
            &Manager::Update("creator".into()),
            "apps/v1",
            None,
            NOW,
        );
        let mut scaled = deployment("nginx", 3);
        scaled["metadata"]["managedFields"] = created["metadata"]["managedFields"].clone();
        track(
            Some(&created),
            &mut scaled,
            &Manager::Update("scaler".into()),
            "apps/v1",
            None,
            "later",
        );
        let entries = entries_of(&scaled);
        let replicas = vec![Seg::Field("spec".into()), Seg::Field("replicas".into())];
        assert!(!entries[0].fields.0.contains(&replicas));
        assert_eq!(entries[1].manager, "scaler");
        assert_eq!(entries[1].fields.0, BTreeSet::from([replicas]));
        assert_eq!(entries[1].time, "later");
        assert_eq!(
            entries[0].time, NOW,
            "an entry keeps its time unless its fields change"
        );
        // Writing the same again changes no entry.
        let mut again = scaled.clone();
        track(
            Some(&scaled),
            &mut again,
            &Manager::Update("scaler".into()),
            "apps/v1",
            None,
            "latest",
        );
        assert_eq!(again, scaled);
        // The server's own writes leave ownership as it was.
        let mut server = deployment("nginx", 3);
        track(
            Some(&scaled),
            &mut server,
            &Manager::Server,
            "apps/v1",
            None,
            NOW,
        );
        assert_eq!(
            server["metadata"]["managedFields"],
            scaled["metadata"]["managedFields"]
        );
    }

    #[test]
    fn an_apply_conflicts_shares_forces_and_removes_what_it_no_longer_sets() {
        let mut live = deployment("nginx", 1);
        let fields = FieldSet::of(&live);
        track(
            None,
            &mut live,
            &Manager::Apply {
                name: "me".into(),
                fields,
            },
            "apps/v1",
            None,
            NOW,
        );
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        track(
            Some(&live),
            &mut scaled,
            &Manager::Update("hpa".into()),
            "apps/v1",
            None,
            NOW,
        );

        let err = apply(&scaled, &deployment("nginx", 1), "me", false).unwrap_err();
        assert_eq!(err.code, hyper::StatusCode::CONFLICT);
        assert_eq!(
            err.message,
            r#"Apply failed with 1 conflict: conflict with "hpa" using apps/v1: .spec.replicas"#
        );
        // The same value: shared, no conflict.
        let (shared, _) = apply(&scaled, &deployment("nginx", 5), "me", false).unwrap();
        assert_eq!(
            managers(&shared),
            [
                ("me".into(), "Apply".into()),
                ("hpa".into(), "Update".into())
            ]
        );
        // Forced: the field changes hands.
        let (forced, _) = apply(&scaled, &deployment("nginx", 1), "me", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        assert_eq!(managers(&forced), [("me".into(), "Apply".into())]);

        // Leaving out a container and a finalizer removes them.
        let mut fewer = deployment("nginx", 1);
        fewer["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("finalizers");
        fewer["spec"]["template"]["spec"]["containers"] = json!([]);
        let (trimmed, applied) = apply(&forced, &fewer, "me", false).unwrap();
        assert!(trimmed["metadata"].get("finalizers").is_none(), "{trimmed}");
        assert_eq!(trimmed["spec"]["template"]["spec"]["containers"], json!([]));
        assert!(!applied.0.iter().any(|p| p.contains(&Seg::Item)));
    }

    #[test]
    fn conflicts_with_several_fields_are_listed_per_manager() {
        let path = |f: &str| vec![Seg::Field("data".into()), Seg::Field(f.into())];
        let err = conflict_error(&[
            ("a".into(), "v1".into(), path("x")),
            ("a".into(), "v1".into(), path("y")),
            ("b".into(), "v1".into(), path("z")),
        ]);
        assert_eq!(
            err.message,
            "Apply failed with 3 conflicts: conflicts with \"a\" using v1:\n- .data.x\n- .data.y\nconflict with \"b\" using v1: .data.z"
        );
        let keyed = vec![
            Seg::Field("containers".into()),
            Seg::Key(r#"{"name":"web"}"#.into()),
            Seg::Field("image".into()),
        ];
        assert_eq!(render(&keyed), r#".containers[name="web"].image"#);
    }

    #[test]
    fn the_manager_is_the_field_manager_else_the_user_agents_product() {
        let name = |m: Manager| match m {
            Manager::Update(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            name(Manager::of_request(Some("helm"), Some("kubectl/v1.33")).unwrap()),
            "helm"
        );
        assert_eq!(
            name(Manager::of_request(None, Some("kubectl/v1.33 (linux)")).unwrap()),
            "kubectl"
        );
        assert_eq!(name(Manager::of_request(None, None).unwrap()), "");
        let long = "m".repeat(MANAGER_MAX + 1);
        assert_eq!(
            Manager::of_request(Some(&long), None).unwrap_err().code,
            hyper::StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
