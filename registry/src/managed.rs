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

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{json, Map, Value};

use crate::error::ApiError;

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
        let name: String = if field_manager.is_some_and(|m| !m.is_empty()) {
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
        diff(None, object).0
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

/// The fields `new` sets, and those of them whose value `old` does not
/// have (all of them without an `old`). One walk over both objects: lists
/// are matched item by item through an index of the old list, never by
/// searching it per item.
fn diff(old: Option<&Value>, new: &Value) -> (FieldSet, FieldSet) {
    let mut walk = Walk {
        all: BTreeSet::new(),
        changed: BTreeSet::new(),
    };
    let mut path = Vec::new();
    for (field, value) in new.as_object().into_iter().flatten() {
        let before = old.map(|o| o.get(field));
        match field.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => {
                path.push(Seg::Field(field.clone()));
                for (name, v) in value.as_object().into_iter().flatten() {
                    if !UNMANAGED_METADATA.contains(&name.as_str()) {
                        path.push(Seg::Field(name.clone()));
                        let was = before.map(|m| m.and_then(|m| m.get(name)));
                        walk.value(&mut path, name, v, was);
                        path.pop();
                    }
                }
                path.pop();
            }
            _ => {
                path.push(Seg::Field(field.clone()));
                walk.value(&mut path, field, value, before);
                path.pop();
            }
        }
    }
    (FieldSet(walk.all), FieldSet(walk.changed))
}

/// The state of one [`diff`].
struct Walk {
    all: BTreeSet<Path>,
    changed: BTreeSet<Path>,
}

impl Walk {
    /// Notes `path` as set, and as changed if it is.
    fn leaf(&mut self, path: &Path, changed: bool) {
        self.all.insert(path.clone());
        if changed {
            self.changed.insert(path.clone());
        }
    }

    /// Walks `value`, the value of `field` at `path`. `was` is `None`
    /// without an old object to compare with, `Some(None)` where the old
    /// object has nothing there.
    fn value(&mut self, path: &mut Path, field: &str, value: &Value, was: Option<Option<&Value>>) {
        match value {
            Value::Object(map) if !map.is_empty() && !atomic_map(field) => {
                self.map(path, map, was);
            }
            Value::Array(items) if !items.is_empty() => {
                let old_items = was.map(|w| w.and_then(Value::as_array));
                if let Some(key) = list_key(field, items) {
                    let index: HashMap<String, &Value> = old_items
                        .flatten()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| Some((item_id(key, i)?, i)))
                        .collect();
                    for item in items {
                        let id = item_id(key, item).expect("every item has the key");
                        let before = old_items.map(|_| index.get(&id).copied());
                        path.push(Seg::Key(id));
                        path.push(Seg::Item);
                        self.leaf(path, before.is_none_or(|b| b.is_none()));
                        path.pop();
                        if let Some(map) = item.as_object() {
                            self.map(path, map, before);
                        }
                        path.pop();
                    }
                } else if crate::patch::merges_as_set(field) {
                    let before: Option<HashSet<String>> =
                        old_items.map(|o| o.into_iter().flatten().map(Value::to_string).collect());
                    for item in items {
                        let member = item.to_string();
                        let changed = before.as_ref().is_none_or(|b| !b.contains(&member));
                        path.push(Seg::Value(member));
                        self.leaf(path, changed);
                        path.pop();
                    }
                } else {
                    self.leaf(path, was.is_none_or(|w| w != Some(value)));
                }
            }
            _ => self.leaf(path, was.is_none_or(|w| w != Some(value))),
        }
    }

    fn map(&mut self, path: &mut Path, map: &Map<String, Value>, was: Option<Option<&Value>>) {
        for (k, v) in map {
            path.push(Seg::Field(k.clone()));
            let before = was.map(|w| w.and_then(|w| w.get(k)));
            self.value(path, k, v, before);
            path.pop();
        }
    }
}

/// The merge key of a list whose items all carry it.
fn list_key(field: &str, items: &[Value]) -> Option<&'static str> {
    crate::patch::merge_key(field, items).filter(|k| items.iter().all(|i| i.get(k).is_some()))
}

/// A list item's identity: its merge key and value, as JSON object text.
fn item_id(key: &str, item: &Value) -> Option<String> {
    let mut id = Map::new();
    id.insert(key.to_owned(), item.get(key)?.clone());
    Some(Value::Object(id).to_string())
}

/// Whether a path under `prefix` (or `prefix` itself) is in `set`.
fn holds_under(set: &BTreeSet<Path>, prefix: &[Seg]) -> bool {
    set.range(prefix.to_vec()..)
        .next()
        .is_some_and(|p| p.starts_with(prefix))
}

/// Removes the paths in `gone` from `object` in one walk. A list item's
/// merge key goes only with the item; a map or list the removal empties
/// goes too, unless something in `held` is at it.
fn prune(object: &mut Value, gone: &BTreeSet<Path>, held: &BTreeSet<Path>) {
    if let Some(map) = object.as_object_mut() {
        prune_map(map, &mut Vec::new(), gone, held, None);
    }
}

fn prune_map(
    map: &mut Map<String, Value>,
    path: &mut Path,
    gone: &BTreeSet<Path>,
    held: &BTreeSet<Path>,
    key: Option<&str>,
) {
    let fields: Vec<String> = map.keys().cloned().collect();
    for field in fields {
        if Some(field.as_str()) == key {
            continue;
        }
        path.push(Seg::Field(field.clone()));
        if gone.contains(path) {
            map.remove(&field);
        } else if let Some(child) = map.get_mut(&field) {
            let had = !is_empty_container(child);
            prune_value(child, path, &field, gone, held);
            if had && is_empty_container(child) && !holds_under(held, path) {
                map.remove(&field);
            }
        }
        path.pop();
    }
}

fn prune_value(
    value: &mut Value,
    path: &mut Path,
    field: &str,
    gone: &BTreeSet<Path>,
    held: &BTreeSet<Path>,
) {
    match value {
        Value::Object(map) if !atomic_map(field) => prune_map(map, path, gone, held, None),
        Value::Array(items) => {
            if let Some(key) = list_key(field, items) {
                items.retain_mut(|item| {
                    let id = item_id(key, item).expect("every item has the key");
                    path.push(Seg::Key(id));
                    path.push(Seg::Item);
                    let drop = gone.contains(path);
                    path.pop();
                    if !drop {
                        if let Some(map) = item.as_object_mut() {
                            prune_map(map, path, gone, held, Some(key));
                        }
                    }
                    path.pop();
                    !drop
                });
            } else if crate::patch::merges_as_set(field) {
                items.retain(|item| {
                    path.push(Seg::Value(item.to_string()));
                    let drop = gone.contains(path);
                    path.pop();
                    !drop
                });
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    v.as_object().is_some_and(Map::is_empty) || v.as_array().is_some_and(Vec::is_empty)
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
///
/// A client may rewrite `managedFields` itself, as kube-apiserver allows
/// (kubectl does when it moves fields from client-side to server-side
/// apply): a list that differs from the stored one is taken as it is, and
/// `[{}]` clears it.
pub fn track(
    old: Option<&Value>,
    new: &mut Value,
    manager: &Manager,
    api_version: &str,
    subresource: Option<&str>,
    now: &str,
) {
    if let (Manager::Update(_), Some(old)) = (manager, old) {
        let given = &new["metadata"]["managedFields"];
        let cleared = given
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0].as_object().is_some_and(Map::is_empty));
        if cleared {
            set_entries(new, Vec::new());
            return;
        }
        if given.as_array().is_some_and(|a| !a.is_empty())
            && *given != old["metadata"]["managedFields"]
        {
            let mut entries = entries_of(new);
            fold_ancient(&mut entries);
            set_entries(new, entries);
            return;
        }
    }
    let mut entries = match (manager, old) {
        (Manager::Apply { .. }, _) => entries_of(new),
        (_, Some(old)) => entries_of(old),
        (_, None) => Vec::new(),
    };
    let (now_set, changed) = diff(old, new);
    let removed = FieldSet(match old {
        Some(old) => FieldSet::of(old)
            .0
            .difference(&now_set.0)
            .cloned()
            .collect(),
        None => BTreeSet::new(),
    });
    for e in &mut entries {
        e.fields.without(&removed);
    }
    let touched = !changed.is_empty();
    match manager {
        Manager::Server => {}
        Manager::Update(name) => {
            if touched {
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
                let entry = Entry::new(name, "Update", mine, subresource, api_version, now);
                own(&mut entries, entry, true);
            }
        }
        Manager::Apply { name, fields } => {
            let mut fields = fields.clone();
            fields.without(&removed);
            let entry = Entry::new(name, "Apply", fields, subresource, api_version, now);
            own(&mut entries, entry, touched);
        }
    }
    fold_ancient(&mut entries);
    set_entries(new, entries);
}

/// Most `Update` entries an object keeps (as kube-apiserver): past it the
/// oldest are folded into one `ancient-changes` entry, so writers with ever
/// new names cannot grow an object until it no longer fits in storage.
const MOST_UPDATE_ENTRIES: usize = 10;

const ANCIENT: &str = "ancient-changes";

fn fold_ancient(entries: &mut Vec<Entry>) {
    let updates = entries.iter().filter(|e| e.operation == "Update").count();
    if updates <= MOST_UPDATE_ENTRIES {
        return;
    }
    // Oldest first (RFC 3339 times in UTC order as text); the folded
    // entry counts as one of the ten.
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == "Update" && entries[i].manager != ANCIENT)
        .collect();
    order.sort_by(|&a, &b| entries[a].time.cmp(&entries[b].time));
    let surplus = updates - MOST_UPDATE_ENTRIES
        + usize::from(
            !entries
                .iter()
                .any(|e| e.manager == ANCIENT && e.operation == "Update"),
        );
    let folded: HashSet<usize> = order.into_iter().take(surplus).collect();
    let mut fields = FieldSet::default();
    let mut time = String::new();
    for &i in &folded {
        fields.0.extend(entries[i].fields.0.iter().cloned());
        time = time.max(entries[i].time.clone());
    }
    let mut i = 0;
    entries.retain(|_| {
        i += 1;
        !folded.contains(&(i - 1))
    });
    match entries
        .iter_mut()
        .find(|e| e.manager == ANCIENT && e.operation == "Update")
    {
        Some(ancient) => ancient.fields.0.extend(fields.0),
        None => entries.push(Entry {
            manager: ANCIENT.to_owned(),
            operation: "Update",
            api_version: String::new(),
            time,
            subresource: None,
            fields,
        }),
    }
}

impl Entry {
    fn new(
        manager: &str,
        operation: &'static str,
        fields: FieldSet,
        subresource: Option<&str>,
        api_version: &str,
        time: &str,
    ) -> Entry {
        Entry {
            manager: manager.to_owned(),
            operation,
            api_version: api_version.to_owned(),
            time: time.to_owned(),
            subresource: subresource.map(str::to_owned),
            fields,
        }
    }
}

/// Puts `entry` in place of its manager's: the stored entry's time stays
/// unless the write changed the object (`touched`) or the entry's fields.
fn own(entries: &mut Vec<Entry>, entry: Entry, touched: bool) {
    let same = |e: &&mut Entry| {
        e.is(
            &entry.manager,
            entry.operation,
            entry.subresource.as_deref(),
        )
    };
    match entries.iter_mut().find(same) {
        Some(e) if e.fields == entry.fields && !touched => {}
        Some(e) => *e = entry,
        None => entries.push(entry),
    }
}

/// What a server-side apply of `config` by `manager` (to the main resource,
/// or to `subresource`) makes of `live`: the merged object (other managers'
/// entries adjusted if forced) and the fields the apply declares. A
/// conflict with another manager is a 409 unless `force`.
pub fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    subresource: Option<&str>,
) -> Result<(Value, FieldSet), ApiError> {
    let (applied, differing) = diff(Some(live), config);
    let mut entries = entries_of(live);
    let mine = |e: &Entry| e.is(manager, "Apply", subresource);
    let mut conflicts: Vec<(String, String, Path)> = Vec::new();
    for e in entries
        .iter()
        .filter(|e| !mine(e) && e.subresource.as_deref() == subresource)
    {
        for path in e.fields.0.intersection(&differing.0) {
            if path.last() != Some(&Seg::Item) {
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
    // someone else owns it (or something under it) or the configuration
    // still sets something under it.
    let mut held = applied.0.clone();
    for e in entries.iter().filter(|e| !mine(e)) {
        held.extend(e.fields.0.iter().cloned());
    }
    let gone: BTreeSet<Path> = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| {
            e.fields
                .0
                .difference(&applied.0)
                .cloned()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|path| {
            let prefix = match path.split_last() {
                Some((Seg::Item, rest)) => rest,
                _ => &path[..],
            };
            !holds_under(&held, prefix)
        })
        .collect();
    prune(&mut object, &gone, &held);
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
        code: http::StatusCode::CONFLICT,
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

    /// `object` as an apply of itself by `manager` creates it.
    fn applied_by(mut object: Value, manager: &str) -> Value {
        let fields = FieldSet::of(&object);
        let apply = Manager::Apply {
            name: manager.into(),
            fields,
        };
        track(None, &mut object, &apply, "apps/v1", None, NOW);
        object
    }

    /// `new` as an update by `manager` of `old` at `time` stores it.
    fn updated_by(old: &Value, mut new: Value, manager: &str, time: &str) -> Value {
        let update = Manager::Update(manager.into());
        track(Some(old), &mut new, &update, "apps/v1", None, time);
        new
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
        scaled = updated_by(&created, scaled, "scaler", "later");
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
        again = updated_by(&scaled, again, "scaler", "latest");
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
        let live = applied_by(deployment("nginx", 1), "me");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        scaled = updated_by(&live, scaled, "hpa", NOW);

        let err = apply(&scaled, &deployment("nginx", 1), "me", false, None).unwrap_err();
        assert_eq!(err.code, http::StatusCode::CONFLICT);
        assert_eq!(
            err.message,
            r#"Apply failed with 1 conflict: conflict with "hpa" using apps/v1: .spec.replicas"#
        );
        // The same value: shared, no conflict.
        let (shared, _) = apply(&scaled, &deployment("nginx", 5), "me", false, None).unwrap();
        assert_eq!(
            managers(&shared),
            [
                ("me".into(), "Apply".into()),
                ("hpa".into(), "Update".into())
            ]
        );
        // Forced: the field changes hands.
        let (forced, _) = apply(&scaled, &deployment("nginx", 1), "me", true, None).unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        assert_eq!(managers(&forced), [("me".into(), "Apply".into())]);

        // Leaving out a container and a finalizer removes them.
        let mut fewer = deployment("nginx", 1);
        fewer["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("finalizers");
        fewer["spec"]["template"]["spec"]["containers"] = json!([]);
        let (trimmed, applied) = apply(&forced, &fewer, "me", false, None).unwrap();
        assert!(trimmed["metadata"].get("finalizers").is_none(), "{trimmed}");
        assert_eq!(trimmed["spec"]["template"]["spec"]["containers"], json!([]));
        assert!(!applied.0.iter().any(|p| p.contains(&Seg::Item)));
    }

    #[test]
    fn an_item_kept_for_another_manager_keeps_its_key() {
        let two = |image: &str| {
            let mut d = deployment("nginx", 1);
            d["spec"]["template"]["spec"]["containers"] =
                json!([{"name": "web", "image": "nginx"}, {"name": "sidecar", "image": image}]);
            d
        };
        let live = applied_by(two("envoy:1"), "me");
        let mut reimaged = two("envoy:2");
        reimaged["metadata"]["managedFields"] = live["metadata"]["managedFields"].clone();
        reimaged = updated_by(&live, reimaged, "kubectl-set", NOW);
        // The sidecar is left out, but its image is someone else's: the
        // container stays, with its name.
        let (kept, _) = apply(&reimaged, &deployment("nginx", 1), "me", false, None).unwrap();
        assert_eq!(
            kept["spec"]["template"]["spec"]["containers"],
            json!([{"name": "web", "image": "nginx", "args": ["-v"]}, {"name": "sidecar", "image": "envoy:2"}])
        );
    }

    #[test]
    fn a_large_list_is_compared_and_pruned_item_by_item() {
        let env = |n: usize, value: &str| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"name": format!("V{i}"), "value": value}))
                .collect()
        };
        let with_env = |env: Vec<Value>| {
            let mut d = deployment("nginx", 1);
            d["spec"]["template"]["spec"]["containers"][0]["env"] = Value::Array(env);
            d
        };
        let n = 20_000;
        let live = applied_by(with_env(env(n, "a")), "me");
        let mut changed = with_env(env(n, "b"));
        changed["metadata"]["managedFields"] = live["metadata"]["managedFields"].clone();
        changed = updated_by(&live, changed, "other", NOW);
        let other = &entries_of(&changed)[1];
        assert_eq!(other.fields.0.len(), n, "every value changed hands");
        let (pruned, _) = apply(&changed, &with_env(Vec::new()), "me", true, None).unwrap();
        let left = pruned["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        assert_eq!(
            left.len(),
            n,
            "items whose values another manager owns stay"
        );
    }

    #[test]
    fn a_client_may_reset_or_rewrite_managed_fields() {
        let mut live = deployment("nginx", 1);
        track(
            None,
            &mut live,
            &Manager::Update("a".into()),
            "apps/v1",
            None,
            NOW,
        );
        let mut cleared = live.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        cleared = updated_by(&live, cleared, "b", NOW);
        assert!(cleared["metadata"].get("managedFields").is_none());
        let mut moved = live.clone();
        moved["metadata"]["managedFields"][0]["manager"] = json!("kubectl");
        moved = updated_by(&live, moved, "b", NOW);
        assert_eq!(managers(&moved), [("kubectl".into(), "Update".into())]);
    }

    #[test]
    fn more_than_ten_updaters_fold_into_ancient_changes() {
        let mut object = json!({"metadata": {"name": "x"}, "data": {}});
        for i in 0..25 {
            let old = object.clone();
            object["data"][format!("k{i}")] = json!("v");
            let time = format!("2026-11-27T00:00:{i:02}Z");
            track(
                Some(&old),
                &mut object,
                &Manager::Update(format!("writer-{i}")),
                "v1",
                None,
                &time,
            );
        }
        let entries = entries_of(&object);
        assert_eq!(entries.len(), MOST_UPDATE_ENTRIES);
        let ancient = entries.iter().find(|e| e.manager == ANCIENT).unwrap();
        // The 16 oldest writers' fields, kept in one entry.
        assert_eq!(ancient.fields.0.len(), 16);
        assert!(entries.iter().any(|e| e.manager == "writer-24"));
        assert!(!entries.iter().any(|e| e.manager == "writer-0"));
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
            http::StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
