//! The generic store: get, list, create, update, delete and watch for every
//! catalogued kind of one VC, on JSON objects. What differs per kind comes
//! from its [`ResourceInfo`] row; no handler is written per kind.
//!
//! Objects are stored without `metadata.resourceVersion`: it is the storage
//! revision (`mod_revision`) and is filled in on the way out.
//!
//! Reads (get, list, continue tokens, watch events) are in `reads`;
//! deletion (propagation, finalizers, a namespace's termination) in
//! `deletion`; writes here.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use kplex_storage::{Key, KeyPrefix, RangeRequest, Revision, Store, StoreError, TenantKeyspace};
use rand::Rng;
use serde_json::{json, Map, Value};

use crate::error::{from_store, ApiError};
use crate::resource::{Catalog, ResourceInfo};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::watchcache::WatchCache;

mod deletion;
mod reads;

pub use deletion::{check_delete_parameters, DeleteOptions, Propagation};
pub use reads::{
    continue_after, continued_after, decode_watched, wait_for_revision, watch_event,
    watch_event_stored, ListOptions, ListPage, StoredPage,
};

/// How often a patch, apply or delete without a pinned resourceVersion
/// retries on a newer object when another write races it (kube-apiserver's
/// GuaranteedUpdate retries until it wins; a busy controller writing an
/// object's status can take several turns).
const RACE_RETRIES: usize = 64;

/// The namespaces every new VC has.
pub const DEFAULT_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: validate, store nothing.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub validation: FieldValidation,
    /// A write to the `status` subresource: only `status` changes. (Writes
    /// to the main resource keep the stored `status`.)
    pub status: bool,
    /// Who writes, for `managedFields`.
    pub manager: crate::managed::Manager,
}

/// The objects of one VC.
pub struct GenericStore {
    store: Arc<WatchCache>,
    keyspace: TenantKeyspace,
    catalog: Arc<Catalog>,
    allocations: Arc<crate::allocation::AllocationLocks>,
    watches: Arc<crate::quota::WatchLimits>,
    /// This VC's limit on open watches (`None`: the default).
    watch_limit: Option<usize>,
    /// Watches opened by kplex's own components: counted apart from the
    /// VC's (its limit is its tenants').
    system_watches: bool,
    admission: Option<Arc<dyn Admission>>,
}

/// A rule of the cluster a write must pass before it is stored (the VC's
/// isolation policy and quota, as kube-apiserver's validating admission):
/// given the store, the object as it is to be stored and, for an update,
/// the stored one. An error refuses the write and nothing is stored. Not
/// asked for status writes (they change no spec).
#[async_trait::async_trait]
pub trait Admission: Send + Sync {
    /// `Ok` to let the write through, with whatever must be held until
    /// the write is done (a quota's turn, so that two writes cannot both
    /// take its last unit).
    async fn admit(
        &self,
        store: &GenericStore,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<Admitted, ApiError>;
}

/// What an admission holds until the write it admitted is done.
pub type Admitted = Option<Box<dyn std::any::Any + Send>>;

/// The namespace a request addresses, if the resource is namespaced.
pub type Namespace<'a> = Option<&'a str>;

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting")
}

fn object_of(kv: &kplex_storage::KeyValue) -> Result<Value, ApiError> {
    crate::raw::decode(kv)
}

/// The object stored in `kv`, as `info`'s version serves it.
fn served(info: &ResourceInfo, kv: &kplex_storage::KeyValue) -> Result<Value, ApiError> {
    let mut object = object_of(kv)?;
    info.as_served(&mut object);
    Ok(object)
}

/// The bytes stored for `object` of `info`'s kind: [`encode`]'s, in the
/// kind's storage version.
fn encode_as(info: &ResourceInfo, object: &Value) -> Bytes {
    if !info.converts() {
        return encode(object);
    }
    let mut stored = object.clone();
    info.as_stored(&mut stored);
    encode(&stored)
}

/// The bytes stored for an object: everything but `resourceVersion`, which
/// the store's revision supplies on every read.
fn encode(object: &Value) -> Bytes {
    if object["metadata"].get("resourceVersion").is_none() {
        // Creates: nothing to strip, no copy.
        return Bytes::from(crate::error::to_json(object));
    }
    let mut stored = object.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Bytes::from(crate::error::to_json(&stored))
}

impl GenericStore {
    /// The store of the VC with this keyspace.
    pub fn new(
        store: Arc<WatchCache>,
        keyspace: TenantKeyspace,
        catalog: Arc<Catalog>,
        allocations: Arc<crate::allocation::AllocationLocks>,
        watches: Arc<crate::quota::WatchLimits>,
    ) -> GenericStore {
        GenericStore {
            store,
            keyspace,
            catalog,
            allocations,
            watches,
            watch_limit: None,
            system_watches: false,
            admission: None,
        }
    }

    /// This store's watches are kplex's own components' (the collector's,
    /// the syncer's): they take none of the VC's watch limit.
    pub fn with_system_watches(mut self) -> GenericStore {
        self.system_watches = true;
        self
    }

    /// This store, with the VC's own limit on open watches.
    pub fn with_watch_limit(mut self, max: usize) -> GenericStore {
        self.watch_limit = Some(max);
        self
    }

    /// This store, with `admission` asked before every create and update.
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> GenericStore {
        self.admission = Some(admission);
        self
    }

    async fn admit(
        &self,
        info: &ResourceInfo,
        old: Option<&Value>,
        object: &Value,
    ) -> Result<Admitted, ApiError> {
        match &self.admission {
            Some(admission) => admission.admit(self, info, old, object).await,
            None => Ok(None),
        }
    }

    /// The VC's turn to charge its quota (one write at a time per VC
    /// while one is counted; a lock apart from the allocators').
    pub async fn quota_turn(&self) -> crate::allocation::AllocationTurn {
        let key = format!("{}#quota", self.keyspace.prefix().as_str());
        self.allocations.turn(&key).await
    }

    /// A slot for one more open watch of this VC (429 at its limit).
    pub fn watch_permit(&self) -> Result<crate::quota::WatchPermit, ApiError> {
        let vc = self.keyspace.prefix().as_str();
        if self.system_watches {
            return self
                .watches
                .acquire_within(&format!("{vc}(system)"), usize::MAX);
        }
        match self.watch_limit {
            Some(max) => self.watches.acquire_within(vc, max),
            None => self.watches.acquire(vc),
        }
    }

    /// This VC's turn to allocate service values (held until the write is
    /// stored, so what is taken cannot change in between).
    async fn allocation_turn(&self) -> crate::allocation::AllocationTurn {
        self.allocations.turn(self.keyspace.prefix().as_str()).await
    }

    fn key(&self, info: &ResourceInfo, ns: Namespace<'_>, name: &str) -> Result<Key, ApiError> {
        self.keyspace
            .object_key(&info.group, &info.plural, ns, name)
            .map_err(from_store)
    }

    fn prefix(&self, info: &ResourceInfo, ns: Namespace<'_>) -> Result<KeyPrefix, ApiError> {
        match ns {
            Some(ns) => self
                .keyspace
                .namespace_prefix(&info.group, &info.plural, ns),
            None => self.keyspace.resource_prefix(&info.group, &info.plural),
        }
        .map_err(from_store)
    }

    fn not_found(info: &ResourceInfo, name: &str) -> ApiError {
        ApiError {
            code: http::StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", info.qualified()),
            details: None,
        }
    }

    async fn require_namespace(&self, ns: &str) -> Result<(), ApiError> {
        /// The one field read (every create checks it: no full parse).
        #[derive(serde::Deserialize)]
        struct Namespace {
            #[serde(default)]
            status: NamespaceStatus,
        }
        #[derive(serde::Deserialize, Default)]
        struct NamespaceStatus {
            phase: Option<String>,
        }
        let info = self.namespaces();
        let kv = self
            .store
            .get(&self.key(info, None, ns)?)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Self::not_found(info, ns))?;
        let namespace: Namespace = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::internal(format!("corrupt namespace {ns}: {e}")))?;
        if namespace.status.phase.as_deref() == Some("Terminating") {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// Creates an object from a client's body.
    pub async fn create(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        mut object: Value,
        write: WriteOptions,
    ) -> Result<Value, ApiError> {
        let dry_run = write.dry_run;
        crate::meta::check_type(info, &mut object)?;
        validate(info, &mut object, write.validation)?;
        let meta = object["metadata"].as_object_mut().expect("checked");
        if let Some(ns) = ns {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(ns));
                }
                Some(other) if other != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                Some(_) => {}
            }
        } else {
            meta.remove("namespace");
        }
        let explicit = meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .map(str::to_owned);
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(field);
        }
        let now = now_rfc3339();
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now));
        if info.tracks_generation() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if info.has_status() {
            // Status is the controllers' to write, through /status.
            set_or_remove(&mut object, "status", None);
        }
        info.strategy.prepare_for_create(&mut object);
        let _admitted = self.admit(info, None, &object).await?;
        crate::managed::track(
            None,
            &mut object,
            &write.manager,
            &info.api_version(),
            None,
            &now,
        );
        if let Some(ns) = ns {
            self.require_namespace(ns).await?;
        }
        let _turn = match info.strategy.allocator() {
            Some(allocator) => {
                let turn = self.allocation_turn().await;
                object["metadata"]["name"] = json!(explicit.clone().unwrap_or_default());
                allocator.on_create(&mut object, &self.others(info, None).await?)?;
                Some(turn)
            }
            None => None,
        };
        // generateName: five random characters, retried on collision.
        let attempts = if explicit.is_some() { 1 } else { 8 };
        for _ in 0..attempts {
            let name = match (&explicit, &generate) {
                (Some(name), _) => name.clone(),
                (None, Some(prefix)) => format!("{prefix}{}", random_suffix()),
                (None, None) => {
                    return Err(ApiError::field(
                        &info.qualified_kind(),
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ))
                }
            };
            crate::meta::validate_name(info, &name)?;
            object["metadata"]["name"] = json!(name);
            let key = self.key(info, ns, &name)?;
            if dry_run {
                if self.store.get(&key).await.map_err(from_store)?.is_some() {
                    return Err(ApiError::already_exists(&info.qualified(), &name));
                }
                return Ok(object);
            }
            match self.store.create(&key, encode_as(info, &object)).await {
                Ok(kv) => {
                    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                    self.create_companions(info, &object).await?;
                    return Ok(object);
                }
                Err(StoreError::AlreadyExists { .. }) if explicit.is_none() => continue,
                Err(StoreError::AlreadyExists { .. }) => {
                    return Err(ApiError::already_exists(&info.qualified(), &name))
                }
                Err(e) => return Err(from_store(e)),
            }
        }
        Err(ApiError::already_exists(
            &info.qualified(),
            "generated name",
        ))
    }

    /// Replaces an object (PUT). A `resourceVersion` in the body must match
    /// (409 otherwise); without one the update is unconditional.
    pub async fn update(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        mut object: Value,
        write: WriteOptions,
    ) -> Result<Value, ApiError> {
        crate::meta::check_type(info, &mut object)?;
        validate(info, &mut object, write.validation)?;
        if object["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let key = self.key(info, ns, name)?;
        let current = self.current(info, &key, name).await?;
        let expected = match object["metadata"]["resourceVersion"].as_str() {
            Some(rv) => Revision::new(
                rv.parse()
                    .map_err(|_| ApiError::bad_request("invalid resourceVersion"))?,
            ),
            None => current.mod_revision,
        };
        if expected != current.mod_revision {
            return Err(ApiError::conflict(&info.qualified(), name));
        }
        self.write_update(info, name, &key, &current, object, &write)
            .await
    }

    /// A change the server makes itself on a subresource's behalf (a
    /// Pod's binding to a Node): `change` edits the stored object, which is
    /// written back without the kind's update rules (they bind clients, not
    /// the server). A write that races another is tried again on the newer
    /// object. Returns the object written.
    pub async fn server_update(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        change: impl Fn(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let key = self.key(info, ns, name)?;
        for _ in 0..RACE_RETRIES {
            let current = self.current(info, &key, name).await?;
            let mut object = served(info, &current)?;
            change(&mut object)?;
            match self
                .store
                .update_from(&current, encode_as(info, &object))
                .await
            {
                Ok(kv) => {
                    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                    return Ok(object);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => return Err(Self::not_found(info, name)),
                Err(e) => return Err(from_store(e)),
            }
        }
        Err(ApiError::conflict(&info.qualified(), name))
    }

    /// Applies a patch to the stored object. Without a `resourceVersion`
    /// in the patch, a write that races another is retried on the newer
    /// object, as kube-apiserver does.
    pub async fn patch(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        kind: crate::patch::PatchType,
        body: &[u8],
        write: WriteOptions,
    ) -> Result<Value, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let key = self.key(info, ns, name)?;
        // Only a patch that names a resourceVersion pins one: the current
        // object's, which every patched object carries, is no precondition.
        let pinned = crate::patch::pins_resource_version(kind, body);
        for _ in 0..RACE_RETRIES {
            let current = self.current(info, &key, name).await?;
            let old = served(info, &current)?;
            let mut patched = crate::patch::apply(&old, kind, body)?;
            crate::meta::check_type(info, &mut patched)?;
            validate(info, &mut patched, write.validation)?;
            if patched["metadata"]["name"].as_str() != Some(name) {
                return Err(ApiError::invalid(
                    &info.qualified_kind(),
                    name,
                    "metadata.name",
                    "field is immutable",
                ));
            }
            let precondition = patched["metadata"]["resourceVersion"]
                .as_str()
                .filter(|_| pinned)
                .map(str::to_owned);
            if let Some(rv) = &precondition {
                if *rv != current.mod_revision.to_string() {
                    return Err(ApiError::conflict(&info.qualified(), name));
                }
            }
            match self
                .write_update(info, name, &key, &current, patched, &write)
                .await
            {
                Err(e) if e.reason == "Conflict" && precondition.is_none() => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(&info.qualified(), name))
    }

    /// Server-side apply of `body` (the configuration, YAML or JSON) by
    /// `manager`: creates the object if it is missing, else merges the
    /// configuration under field ownership (see `managed`). Returns the
    /// object and whether it was created.
    pub async fn apply(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        body: &[u8],
        force: bool,
        write: WriteOptions,
    ) -> Result<(Value, bool), ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let crate::managed::Manager::Update(manager) = &write.manager else {
            return Err(ApiError::internal("an apply needs its field manager"));
        };
        if manager.is_empty() {
            return Err(ApiError::field(
                "PatchOptions.meta.k8s.io",
                "",
                "fieldManager",
                "Required value: is required for apply patch",
            ));
        }
        let mut config = crate::yaml::parse_object(body)?;
        crate::duplicates::check(body, write.validation)?;
        crate::meta::check_type(info, &mut config)?;
        if let Some(directive) = patch_directive(&config) {
            return Err(ApiError::bad_request(format!(
                "an apply configuration is not a patch: {directive:?} is not a field"
            )));
        }
        let subresource = write.status.then_some("status");
        if info.has_status() {
            // An apply to /status declares status only; one to the object
            // never status (kube-apiserver resets what each may not write).
            match config.as_object_mut() {
                Some(fields) if write.status => fields.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                }),
                Some(fields) => drop(fields.remove("status")),
                None => {}
            }
        }
        let meta = config["metadata"].as_object_mut().expect("checked");
        if meta.contains_key("managedFields") {
            return Err(ApiError::bad_request(
                "metadata.managedFields must be nil in an apply configuration",
            ));
        }
        let precondition = |field: &str| {
            meta.get(field)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let (want_rv, want_uid) = (precondition("resourceVersion"), precondition("uid"));
        match meta.get("name").and_then(Value::as_str) {
            Some(given) if given != name => {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ))
            }
            Some(_) => {}
            None => {
                meta.insert("name".into(), json!(name));
            }
        }
        let key = self.key(info, ns, name)?;
        for _ in 0..RACE_RETRIES {
            let current = match self.store.get(&key).await.map_err(from_store)? {
                Some(current) => current,
                None if write.status || want_rv.is_some() => {
                    return Err(Self::not_found(info, name));
                }
                None => {
                    let fields = crate::managed::FieldSet::of(&config);
                    let write = WriteOptions {
                        manager: crate::managed::Manager::Apply {
                            name: manager.clone(),
                            fields,
                        },
                        ..write.clone()
                    };
                    match self.create(info, ns, config.clone(), write).await {
                        Err(e) if e.reason == "AlreadyExists" => continue,
                        other => return other.map(|o| (o, true)),
                    }
                }
            };
            let live = served(info, &current)?;
            if want_rv
                .as_ref()
                .is_some_and(|rv| *rv != current.mod_revision.to_string())
                || want_uid
                    .as_ref()
                    .is_some_and(|uid| Some(uid.as_str()) != live["metadata"]["uid"].as_str())
            {
                return Err(ApiError::conflict(&info.qualified(), name));
            }
            let (mut merged, fields) =
                crate::managed::apply(&live, &config, manager, force, subresource)?;
            crate::meta::check_type(info, &mut merged)?;
            validate(info, &mut merged, write.validation)?;
            let write = WriteOptions {
                manager: crate::managed::Manager::Apply {
                    name: manager.clone(),
                    fields,
                },
                ..write.clone()
            };
            match self
                .write_update(info, name, &key, &current, merged, &write)
                .await
            {
                Err(e) if e.reason == "Conflict" && e.details.is_none() => continue,
                other => return other.map(|o| (o, false)),
            }
        }
        Err(ApiError::conflict(&info.qualified(), name))
    }

    /// Writes `object` over `current`, keeping server-owned metadata and
    /// counting spec changes in `generation`.
    async fn write_update(
        &self,
        info: &ResourceInfo,
        name: &str,
        key: &Key,
        current: &kplex_storage::KeyValue,
        mut object: Value,
        write: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let dry_run = write.dry_run;
        let mut old = object_of(current)?;
        // Stored in an earlier storage version: written back even unchanged
        // (how a storage migration moves objects to the current version).
        let migrates = info.stored_elsewhere(&old);
        info.as_served(&mut old);
        // A body naming another object (its UID) or another namespace is
        // refused, as kube-apiserver does, not silently overwritten.
        let given = |field: &str| object["metadata"][field].as_str().filter(|v| !v.is_empty());
        if let Some(uid) = given("uid") {
            let stored = old["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != stored {
                return Err(ApiError {
                    code: http::StatusCode::CONFLICT,
                    reason: "Conflict",
                    message: format!(
                        "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {stored}",
                        info.qualified()
                    ),
                    details: None,
                });
            }
        }
        if let (Some(ns), Some(stored)) =
            (given("namespace"), old["metadata"]["namespace"].as_str())
        {
            if ns != stored {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the object ({ns}) does not match the namespace on the request ({stored})"
                )));
            }
        }
        if info.has_status() {
            if write.status {
                let status = object.get("status").cloned();
                // An apply brings the ownership it prepared along.
                let applied = matches!(write.manager, crate::managed::Manager::Apply { .. })
                    .then(|| object["metadata"].get("managedFields").cloned())
                    .flatten();
                object = old.clone();
                set_or_remove(&mut object, "status", status);
                if let Some(managed) = applied {
                    object["metadata"]["managedFields"] = managed;
                }
            } else {
                set_or_remove(&mut object, "status", old.get("status").cloned());
            }
        }
        let meta = object["metadata"].as_object_mut().expect("checked");
        // Server-owned metadata is kept from the stored object.
        for field in ["uid", "creationTimestamp", "namespace", "deletionTimestamp"] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        info.strategy.prepare_for_update(&old, &mut object);
        crate::managed::track(
            Some(&old),
            &mut object,
            &write.manager,
            &info.api_version(),
            write.status.then_some("status"),
            &now_rfc3339(),
        );
        // Admission before the allocators' turn, as on create (one order
        // of the two locks).
        let _admitted = if write.status {
            None
        } else {
            self.admit(info, Some(&old), &object).await?
        };
        let _turn = match info.strategy.allocator().filter(|_| !write.status) {
            Some(allocator) => {
                let turn = self.allocation_turn().await;
                let ns = old["metadata"]["namespace"].as_str();
                let others = self.others(info, ns.zip(Some(name))).await?;
                allocator.on_update(&mut object, &old, &others)?;
                Some(turn)
            }
            None => None,
        };
        if info.tracks_generation() {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let spec_changed = object.get("spec") != old.get("spec");
            object["metadata"]["generation"] = json!(if spec_changed {
                generation + 1
            } else {
                generation
            });
        } else if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("generation");
        }
        info.strategy.validate_update(info, name, &old, &object)?;
        if same_object(&object, &old) && !migrates {
            // Nothing changed: no write, no new revision, no MODIFIED event
            // (controllers that write back what they read must not loop).
            return Ok(old);
        }
        if dry_run {
            return Ok(object);
        }
        match self
            .store
            .update_from(current, encode_as(info, &object))
            .await
        {
            Ok(kv) => {
                object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                // The last finalizer of a deleted object is gone: so is the object.
                if object["metadata"]["deletionTimestamp"].is_string() && !has_finalizers(&object) {
                    match self.store.delete(key, kv.mod_revision).await {
                        Ok(_) | Err(StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(from_store(e)),
                    }
                    let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
                    self.after_delete(ns.as_deref()).await?;
                }
                Ok(object)
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(&info.qualified(), name)),
            Err(StoreError::NotFound { .. }) => Err(Self::not_found(info, name)),
            Err(e) => Err(from_store(e)),
        }
    }

    /// Creates the objects the kind makes along with `created` (a
    /// namespace's `default` ServiceAccount); one that exists is left alone.
    async fn create_companions(
        &self,
        info: &ResourceInfo,
        created: &Value,
    ) -> Result<(), ApiError> {
        for companion in info.strategy.companions(created) {
            let Some(row) = self
                .catalog
                .find_resource(companion.group, companion.plural)
            else {
                continue;
            };
            let mut object = companion.object;
            let meta = &mut object["metadata"];
            meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
            meta["creationTimestamp"] = json!(now_rfc3339());
            let (ns, name) = (
                meta["namespace"].as_str().map(str::to_owned),
                meta["name"].as_str().unwrap_or_default().to_owned(),
            );
            let key = self.key(row, ns.as_deref(), &name)?;
            match self.store.create(&key, encode(&object)).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(from_store(e)),
            }
        }
        Ok(())
    }

    /// The VC's objects of `info`'s kind but for `except` (namespace, name),
    /// the one being written.
    async fn others(
        &self,
        info: &ResourceInfo,
        except: Option<(&str, &str)>,
    ) -> Result<Vec<Value>, ApiError> {
        let range = self
            .store
            .range(RangeRequest::prefix(self.prefix(info, None)?))
            .await
            .map_err(from_store)?;
        let mut others = Vec::with_capacity(range.kvs.len());
        for kv in &range.kvs {
            let object = object_of(kv)?;
            let meta = &object["metadata"];
            let this = (meta["namespace"].as_str(), meta["name"].as_str());
            if except.is_none_or(|(ns, name)| this != (Some(ns), Some(name))) {
                others.push(object);
            }
        }
        Ok(others)
    }

    /// The stored object at `key`, or 404 naming it.
    async fn current(
        &self,
        info: &ResourceInfo,
        key: &Key,
        name: &str,
    ) -> Result<kplex_storage::KeyValue, ApiError> {
        self.store
            .get(key)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Self::not_found(info, name))
    }

    /// The backend (through the watch cache).
    pub fn store(&self) -> &Arc<WatchCache> {
        &self.store
    }
}

/// How to treat fields the kind's type does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them, with a `Warning` header for each (kube-apiserver's default).
    #[default]
    Warn,
    /// Refuse the request (kubectl's default).
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter.
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn, Strict (got {other:?})"
            ))),
        }
    }
}

/// Decodes the object into its k8s-openapi type and back, as kube-apiserver
/// decodes into its Go type: a malformed object is a 400; unknown fields are
/// a 400 under `Strict`, dropped with a warning under `Warn`, dropped under
/// `Ignore`. Then the kind's defaults are filled in, as kube-apiserver does
/// on decode.
pub fn validate(
    info: &ResourceInfo,
    object: &mut Value,
    mode: FieldValidation,
) -> Result<(), ApiError> {
    let (decoded, unknown) = info.strategy.decode(object).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = info.kind,
            version = info.version
        ))
    })?;
    let fields = unknown.iter().map(|f| format!("unknown field \"{f}\""));
    match mode {
        FieldValidation::Strict if !unknown.is_empty() => {
            let fields: Vec<String> = fields.collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                fields.join(", ")
            )));
        }
        FieldValidation::Warn => fields.for_each(crate::warnings::add),
        _ => {}
    }
    *object = decoded;
    // What the server adds on the way out is never stored: no object can
    // claim another VC by carrying it.
    if let Some(annotations) = object["metadata"]
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        for key in kplex_api::names::OUTPUT_ONLY_ANNOTATIONS {
            annotations.remove(*key);
        }
    }
    crate::meta::validate_metadata(info, object)?;
    info.strategy.validate(info, object)?;
    info.strategy.default(object);
    Ok(())
}

/// The first strategic-merge directive (`$patch`, `$retainKeys`, …) in an
/// object, if any: an apply configuration is an object, not a patch.
fn patch_directive(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.starts_with('$') {
                Some(k.clone())
            } else {
                patch_directive(v)
            }
        }),
        Value::Array(items) => items.iter().find_map(patch_directive),
        _ => None,
    }
}

/// Whether two versions of an object are the same but for `resourceVersion`.
fn same_object(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let meta = |m: &Map<String, Value>| {
        m.get("metadata")
            .and_then(Value::as_object)
            .map(|meta| meta.iter().filter(|(k, _)| *k != "resourceVersion").count())
    };
    a.len() == b.len()
        && meta(a) == meta(b)
        && a.iter().all(|(k, v)| match (k.as_str(), b.get(k)) {
            ("metadata", Some(other)) => v
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(f, _)| *f != "resourceVersion")
                .all(|(f, x)| other.get(f) == Some(x)),
            (_, Some(other)) => v == other,
            (_, None) => false,
        })
}

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn set_or_remove(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(map) = object.as_object_mut() {
        match value {
            Some(v) => map.insert(field.to_owned(), v),
            None => map.remove(field),
        };
    }
}

fn random_suffix() -> String {
    // The alphabet kube-apiserver uses: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_differing_only_in_resource_version_are_the_same() {
        let a = json!({"kind": "ConfigMap", "metadata": {"name": "x", "resourceVersion": "5"}, "data": {"k": "v"}});
        let b = json!({"data": {"k": "v"}, "metadata": {"resourceVersion": "9", "name": "x"}, "kind": "ConfigMap"});
        let no_rv = json!({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}});
        assert!(same_object(&a, &b) && same_object(&a, &no_rv) && same_object(&no_rv, &a));
        let changed = json!({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "w"}});
        let labelled = json!({"kind": "ConfigMap", "metadata": {"name": "x", "labels": {}}, "data": {"k": "v"}});
        let extra = json!({"kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"k": "v"}, "immutable": true});
        for other in [changed, labelled, extra] {
            assert!(
                !same_object(&a, &other) && !same_object(&other, &a),
                "{other}"
            );
        }
    }
}
