//! What the generic store knows of a kind: its row ([`ResourceInfo`]: group,
//! version, kind, plural, scope, names) and its [`Strategy`] (decoding,
//! defaults, validation, immutability, subresources, printing, selectable
//! fields, allocation). kube-apiserver splits its registry the same way: one
//! generic store, one small strategy per kind. Built-in rows are made by the
//! `kplex-kinds` crate; a CRD's row is made at run time from its definition.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Verbs every stored resource serves.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Namespaces' verbs: no deletecollection (as kube-apiserver).
pub const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// The one verb of a review resource.
pub const REVIEW_VERBS: &[&str] = &["create"];

/// An object round-tripped through its kind's type, with the paths of the
/// fields the type does not know; or why it could not be decoded.
pub type Decoded = Result<(Value, Vec<String>), String>;

/// One table column: header, priority (1 = only with `-o wide`), and its
/// cell for one object.
#[derive(Clone)]
pub struct Column {
    /// Header as kubectl prints it (upper-cased by kubectl).
    pub name: String,
    /// 0: always shown; 1: `-o wide`.
    pub priority: u8,
    /// The cell for one object.
    pub cell: Arc<dyn Fn(&Value) -> Value + Send + Sync>,
    /// Shown after AGE (a node's VERSION is), not before.
    pub after_age: bool,
}

impl Column {
    /// A column whose cell is computed by `cell`.
    pub fn new(
        name: impl Into<String>,
        priority: u8,
        cell: impl Fn(&Value) -> Value + Send + Sync + 'static,
    ) -> Column {
        Column {
            name: name.into(),
            priority,
            cell: Arc::new(cell),
            after_age: false,
        }
    }

    /// This column, shown after AGE.
    pub fn after_age(self) -> Column {
        Column {
            after_age: true,
            ..self
        }
    }
}

impl std::fmt::Debug for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Column({:?}, {})", self.name, self.priority)
    }
}

/// What a kind does beyond being stored. Every method but `decode` has a
/// default that suits a plain kind (a ConfigMap-like object).
pub trait Strategy: Send + Sync + 'static {
    /// Decodes an object into the kind's type and encodes it again, as
    /// kube-apiserver does with its Go types: the object without the fields
    /// the type does not know, and those fields' paths.
    fn decode(&self, object: &Value) -> Decoded;

    /// Checks a decoded object before defaults (a 400 for malformed values
    /// the type cannot hold, a 422 naming the field otherwise).
    fn validate(&self, _info: &ResourceInfo, _object: &Value) -> Result<(), ApiError> {
        Ok(())
    }

    /// Fills in the kind's defaults (after `validate`, on every write).
    fn default(&self, _object: &mut Value) {}

    /// What a create sets whatever the client sent (a namespace's
    /// finalizer and phase).
    fn prepare_for_create(&self, _object: &mut Value) {}

    /// What an update of `old` sets whatever the client sent, once the
    /// stored status and server-owned metadata are back in `new` (a CRD's
    /// stored versions).
    fn prepare_for_update(&self, _old: &Value, _new: &mut Value) {}

    /// The verbs served, for a kind that is neither stored nor a review
    /// (`componentstatuses`: get and list of what the server reports);
    /// `None`: as the row says (see [`ResourceInfo::verbs`]).
    fn verbs(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The version objects are stored as, for a kind served in several
    /// versions over one storage (a CRD's versions, conversion `None`):
    /// written as it, read back as the version asked for (only
    /// `apiVersion` differs). `None`: stored as served, nothing converts.
    fn storage_version(&self) -> Option<&str> {
        None
    }

    /// Refuses an update of `old` to `new` that changes what the kind keeps
    /// (both decoded and defaulted).
    fn validate_update(
        &self,
        _info: &ResourceInfo,
        _name: &str,
        _old: &Value,
        _new: &Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Whether the kind has a `status` subresource (writes to the object
    /// keep the stored status; writes to `/status` change only status).
    fn has_status(&self) -> bool {
        false
    }

    /// Whether the kind has a `scale` subresource.
    fn has_scale(&self) -> bool {
        false
    }

    /// Whether spec changes count in `metadata.generation`.
    fn tracks_generation(&self) -> bool {
        false
    }

    /// Whether names must be DNS-1123 labels (else subdomains).
    fn name_is_label(&self) -> bool {
        false
    }

    /// The fields a list may select by beyond `metadata.name` and
    /// `metadata.namespace`.
    fn field_labels(&self) -> &[&'static str] {
        &[]
    }

    /// The table columns between NAME and AGE (priority 0) and after it
    /// (the `-o wide` ones).
    fn columns(&self) -> Vec<Column> {
        Vec::new()
    }

    /// Values the kind allocates among the VC's objects of the kind (a
    /// Service's ClusterIP and NodePorts), if any.
    fn allocator(&self) -> Option<&dyn Allocator> {
        None
    }

    /// Objects created along with a new object of this kind (a namespace's
    /// `default` ServiceAccount), as (group, version, plural, object).
    fn companions(&self, _created: &Value) -> Vec<Companion> {
        Vec::new()
    }

    /// What deleting an object does to its dependents when the client does
    /// not say (kube keeps orphaning for kinds that always did).
    fn default_propagation(&self) -> crate::generic::Propagation {
        crate::generic::Propagation::Background
    }

    /// Whether `columns` are the whole table (no NAME first and AGE added),
    /// as for Events: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE.
    fn whole_table(&self) -> bool {
        false
    }

    /// Adds the kind's OpenAPI v3 schema, and those it refers to, to
    /// `schemas`; returns its name there.
    fn openapi_schema(&self, _schemas: &mut Map<String, Value>) -> Option<String> {
        None
    }
}

/// An object created with another (see [`Strategy::companions`]).
#[derive(Debug, Clone)]
pub struct Companion {
    /// Its resource's group.
    pub group: &'static str,
    /// Its resource's plural.
    pub plural: &'static str,
    /// The object, with its namespace and name set.
    pub object: Value,
}

/// Allocates values unique among the VC's objects of one kind. The generic
/// store gives the VC's writes of the kind turns (within this process) from
/// reading the others to storing the write, so two objects never get the
/// same value.
pub trait Allocator: Send + Sync {
    /// Fills in `object`'s values on create; `others` are the VC's other
    /// objects of the kind.
    fn on_create(&self, object: &mut Value, others: &[Value]) -> Result<(), ApiError>;
    /// Keeps or checks `object`'s values on update of `old`.
    fn on_update(&self, object: &mut Value, old: &Value, others: &[Value]) -> Result<(), ApiError>;
}

/// One resource kind as the API serves it.
#[derive(Clone)]
pub struct ResourceInfo {
    /// API group; `""` for core.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Plural resource name (the URL segment), e.g. `pods`.
    pub plural: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Whether objects are stored; a review (`SelfSubjectAccessReview`…) is
    /// only created and answered.
    pub stored: bool,
    /// What the kind does beyond being stored.
    pub strategy: Arc<dyn Strategy>,
}

impl std::fmt::Debug for ResourceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResourceInfo({}/{})", self.api_version(), self.plural)
    }
}

impl ResourceInfo {
    /// The verbs served.
    pub fn verbs(&self) -> &'static [&'static str] {
        if let Some(verbs) = self.strategy.verbs() {
            verbs
        } else if self.is_namespaces() {
            NAMESPACE_VERBS
        } else if self.stored {
            VERBS
        } else {
            REVIEW_VERBS
        }
    }

    /// Whether this is the core `namespaces` resource (whose lifecycle the
    /// generic store keeps: every namespaced object lives in one).
    pub fn is_namespaces(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind as kube-apiserver's errors name it: `ConfigMap`, `Deployment.apps`.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The singular name (lowercased kind).
    pub fn singular(&self) -> String {
        self.kind.to_lowercase()
    }

    /// `plural` or `plural.group`, as error messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether objects of the kind may be stored in another version than
    /// this one (see [`Strategy::storage_version`]): what is read is
    /// converted, so the stored bytes are not answered as they are.
    pub fn converts(&self) -> bool {
        self.strategy.storage_version().is_some()
    }

    /// `object` as this version serves it (conversion `None`: its
    /// `apiVersion`).
    pub fn as_served(&self, object: &mut Value) {
        if self.converts() && object.is_object() {
            object["apiVersion"] = Value::String(self.api_version());
        }
    }

    /// Whether `stored` (as read from storage) is in another version than
    /// the kind's storage version.
    pub fn stored_elsewhere(&self, stored: &Value) -> bool {
        self.strategy.storage_version().is_some_and(|version| {
            stored["apiVersion"]
                .as_str()
                .and_then(|v| v.rsplit_once('/'))
                != Some((self.group.as_str(), version))
        })
    }

    /// `object` as it is stored (its `apiVersion` the storage version's).
    pub fn as_stored(&self, object: &mut Value) {
        if let Some(version) = self.strategy.storage_version() {
            if object.is_object() {
                object["apiVersion"] = Value::String(format!("{}/{version}", self.group));
            }
        }
    }

    /// Whether the kind counts spec changes in `metadata.generation`.
    pub fn tracks_generation(&self) -> bool {
        self.strategy.tracks_generation()
    }

    /// Whether the kind has a `status` subresource.
    pub fn has_status(&self) -> bool {
        self.strategy.has_status()
    }

    /// Whether the kind has a `scale` subresource.
    pub fn has_scale(&self) -> bool {
        self.strategy.has_scale()
    }

    /// Whether object names must be DNS-1123 labels (else subdomains).
    pub fn name_is_label(&self) -> bool {
        self.strategy.name_is_label()
    }
}

/// The resources one VC serves.
#[derive(Debug, Clone)]
pub struct Catalog {
    resources: Vec<Arc<ResourceInfo>>,
}

impl Catalog {
    /// A catalog of these rows.
    pub fn new(resources: Vec<ResourceInfo>) -> Catalog {
        Catalog {
            resources: resources.into_iter().map(Arc::new).collect(),
        }
    }

    /// This catalog's rows (shared, not copied) and `more`.
    pub fn with(&self, more: Vec<ResourceInfo>) -> Catalog {
        let mut resources = self.resources.clone();
        resources.extend(more.into_iter().map(Arc::new));
        Catalog { resources }
    }

    /// Every resource.
    pub fn all(&self) -> &[Arc<ResourceInfo>] {
        &self.resources
    }

    /// The resource served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceInfo>> {
        self.resources
            .iter()
            // The plural first: it tells most rows apart at once.
            .find(|r| r.plural == plural && r.group == group && r.version == version)
    }

    /// The resource of this group and plural, in whichever version is served.
    pub fn find_resource(&self, group: &str, plural: &str) -> Option<&Arc<ResourceInfo>> {
        self.resources
            .iter()
            .find(|r| r.plural == plural && r.group == group)
    }

    /// The group/versions served, core first, in order of first appearance.
    pub fn group_versions(&self) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = Vec::new();
        for r in &self.resources {
            let gv = (r.group.as_str(), r.version.as_str());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
        out
    }
}

/// The strategy of a kind that is stored as it comes: no type, no rules
/// (what a kind without a schema gets).
#[derive(Debug, Default)]
pub struct Plain;

impl Strategy for Plain {
    fn decode(&self, object: &Value) -> Decoded {
        Ok((object.clone(), Vec::new()))
    }
}

/// A row with the [`Plain`] strategy.
pub fn plain(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.to_owned(),
        version: version.to_owned(),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
        namespaced,
        short_names: Vec::new(),
        categories: Vec::new(),
        stored: true,
        strategy: Arc::new(Plain),
    }
}
