//! The generic store: get, list, create, update, delete and watch for every
//! catalogued kind of one VC, on JSON objects. What differs per kind comes
//! from its [`ResourceInfo`] row; no handler is written per kind.
//!
//! Objects are stored without `metadata.resourceVersion`: it is the storage
//! revision (`mod_revision`) and is filled in on the way out.

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

/// Options of a delete (query parameters and the `DeleteOptions` body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `dryRun=All`: check, delete nothing.
    pub dry_run: bool,
    /// `preconditions.uid`: delete only the object with this UID.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`: delete only this version.
    pub resource_version: Option<String>,
    /// `propagationPolicy` (or the deprecated `orphanDependents`): what
    /// happens to the object's dependents; `None` for the kind's default.
    pub propagation: Option<Propagation>,
}

/// What a delete does to the object's dependents (the garbage collector
/// acts on it; see `kplex-controllers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; its dependents after it.
    Background,
    /// The object stays, marked with the `foregroundDeletion` finalizer,
    /// until its blocking dependents are gone.
    Foreground,
    /// The object stays, marked with the `orphan` finalizer, until its
    /// dependents no longer refer to it.
    Orphan,
}

impl Propagation {
    /// Parses a `propagationPolicy`.
    pub fn parse(value: &str) -> Option<Propagation> {
        match value {
            "Background" => Some(Propagation::Background),
            "Foreground" => Some(Propagation::Foreground),
            "Orphan" => Some(Propagation::Orphan),
            _ => None,
        }
    }

    /// The finalizer that holds the object for the garbage collector.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some("foregroundDeletion"),
            Propagation::Orphan => Some("orphan"),
        }
    }
}

/// Checks a delete's `propagationPolicy` and `gracePeriodSeconds` (there is
/// no graceful deletion: a valid grace period changes nothing).
pub fn check_delete_parameters(
    propagation: Option<&str>,
    grace_seconds: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(p) = propagation.filter(|p| !p.is_empty()) {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::field(
                "DeleteOptions.meta.k8s.io",
                "",
                "propagationPolicy",
                &format!("Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
            ));
        }
    }
    if let Some(g) = grace_seconds.filter(|g| g.parse::<i64>().is_err()) {
        return Err(ApiError::bad_request(format!(
            "gracePeriodSeconds: invalid value {g:?}: must be an integer"
        )));
    }
    Ok(())
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (if any) on top of the query's `dryRun`.
    pub fn from_body(body: Option<&Value>, dry_run: bool) -> Result<DeleteOptions, ApiError> {
        let mut opts = DeleteOptions {
            dry_run,
            ..Default::default()
        };
        let Some(body) = body else {
            return Ok(opts);
        };
        let bad =
            |field: &str| ApiError::bad_request(format!("DeleteOptions: {field} is malformed"));
        match &body["dryRun"] {
            Value::Null => {}
            Value::Array(modes) if modes.iter().all(|m| m == "All") => {
                opts.dry_run |= !modes.is_empty()
            }
            _ => return Err(bad("dryRun")),
        }
        let grace = match &body["gracePeriodSeconds"] {
            Value::Null => None,
            Value::Number(n) if n.is_i64() => None,
            other => Some(other.to_string()),
        };
        check_delete_parameters(body["propagationPolicy"].as_str(), grace.as_deref())?;
        if !body["propagationPolicy"].is_null() && !body["propagationPolicy"].is_string() {
            return Err(bad("propagationPolicy"));
        }
        let preconditions = &body["preconditions"];
        let text = |field: &str| match &preconditions[field] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(bad(&format!("preconditions.{field}"))),
        };
        opts.uid = text("uid")?;
        opts.resource_version = text("resourceVersion")?;
        opts.propagation = body["propagationPolicy"]
            .as_str()
            .and_then(Propagation::parse);
        if opts.propagation.is_none() {
            opts.propagation = match &body["orphanDependents"] {
                Value::Bool(true) => Some(Propagation::Orphan),
                Value::Bool(false) => Some(Propagation::Background),
                _ => None,
            };
        }
        Ok(opts)
    }

    /// Refuses (409) when the stored object is not the one the preconditions name.
    fn check(
        &self,
        resource: &str,
        name: &str,
        current: &kplex_storage::KeyValue,
        object: &Value,
    ) -> Result<(), ApiError> {
        let failed = |what: &str, wanted: &str, actual: &str| ApiError {
            code: http::StatusCode::CONFLICT,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": Precondition failed: \
                 {what} in precondition: {wanted}, {what} in object meta: {actual}"
            ),
            details: None,
        };
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default();
        if let Some(wanted) = self.uid.as_deref().filter(|w| *w != uid) {
            return Err(failed("UID", wanted, uid));
        }
        let version = current.mod_revision.to_string();
        if let Some(wanted) = self.resource_version.as_deref().filter(|w| *w != version) {
            return Err(failed("ResourceVersion", wanted, &version));
        }
        Ok(())
    }
}

/// Options of a list (and of a watch's initial state).
#[derive(Debug, Default)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size; 0 for all.
    pub limit: usize,
    /// Continue token from the previous page.
    pub continue_token: Option<String>,
    /// `resourceVersionMatch=Exact`: read at this revision.
    pub exact_revision: Option<Revision>,
    /// `resourceVersion=N` (not `0`): the list must be at least this new.
    pub not_older_than: Option<Revision>,
    /// `resourceVersion=0`: any revision will do (served from the watch cache).
    pub any_revision: bool,
}

/// One page of a list.
pub struct ListPage {
    /// The objects.
    pub items: Vec<Value>,
    /// The revision the list is consistent at.
    pub revision: Revision,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

/// Keys read from storage at once for a list without a limit.
const LIST_PAGE: usize = 500;

/// One page of a list, as stored.
pub struct StoredPage {
    /// The objects, as stored (see [`crate::raw`]).
    pub items: Vec<kplex_storage::KeyValue>,
    /// The revision the list is consistent at.
    pub revision: Revision,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

/// A page of the objects the selectors matched, each with its decoded form
/// where matching needed it.
struct Matched {
    items: Vec<(kplex_storage::KeyValue, Option<Value>)>,
    revision: Revision,
    continue_token: Option<String>,
}

/// `kv` if the selectors match it (decoded if they had to look).
fn matching(
    kv: kplex_storage::KeyValue,
    opts: &ListOptions,
) -> Result<Option<(kplex_storage::KeyValue, Option<Value>)>, ApiError> {
    if opts.labels.is_empty() && opts.fields.is_empty() {
        return Ok(Some((kv, None)));
    }
    let object = object_of(&kv)?;
    Ok(
        (opts.labels.matches(&object["metadata"]["labels"]) && opts.fields.matches(&object))
            .then_some((kv, Some(object))),
    )
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
            admission: None,
        }
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

    /// One object.
    pub async fn get(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
    ) -> Result<Value, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        match self
            .store
            .get(&self.key(info, ns, name)?)
            .await
            .map_err(from_store)?
        {
            Some(kv) => served(info, &kv),
            None => Err(Self::not_found(info, name)),
        }
    }

    /// One object as stored (see [`crate::raw`]).
    pub async fn get_stored(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
    ) -> Result<kplex_storage::KeyValue, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        self.store
            .get(&self.key(info, ns, name)?)
            .await
            .map_err(from_store)?
            .ok_or_else(|| Self::not_found(info, name))
    }

    /// A page of objects (`ns` None: across namespaces).
    pub async fn list(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let page = self.list_matching(info, ns, opts).await?;
        Ok(ListPage {
            items: page
                .items
                .into_iter()
                .map(|(kv, object)| match object {
                    Some(mut object) => {
                        info.as_served(&mut object);
                        Ok(object)
                    }
                    None => served(info, &kv),
                })
                .collect::<Result<_, _>>()?,
            revision: page.revision,
            continue_token: page.continue_token,
        })
    }

    /// A page of objects as stored (see [`crate::raw`]): what a list
    /// answers without decoding them (only selectors decode).
    pub async fn list_stored(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<StoredPage, ApiError> {
        let page = self.list_matching(info, ns, opts).await?;
        Ok(StoredPage {
            items: page.items.into_iter().map(|(kv, _)| kv).collect(),
            revision: page.revision,
            continue_token: page.continue_token,
        })
    }

    /// The objects the selectors match, each with its decoded form if the
    /// match needed one.
    async fn list_matching(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<Matched, ApiError> {
        let prefix = self.prefix(info, ns)?;
        let (mut after, mut revision) = (None, opts.exact_revision);
        if let Some(min) = opts.not_older_than {
            // As for a watch: a revision the cache has not reached yet is
            // waited for a moment before the 504.
            wait_for_revision(&self.store, min).await?;
        }
        if let Some(token) = &opts.continue_token {
            let (rev, key) = self.decode_continue(info, token)?;
            after = Some(key);
            revision = Some(rev);
        } else if revision.is_none() && (opts.any_revision || opts.not_older_than.is_some()) {
            if let Some((kvs, revision)) = self.store.list(&prefix, opts.not_older_than).await {
                return self.page_from_cache(kvs, revision, opts);
            }
        }
        let mut items = Vec::new();
        loop {
            // Selectors filter after the read, so read in pages until the
            // caller's page is full or the range ends.
            let want = if opts.limit == 0 {
                // In pages: a small list is one page read like a GET; a
                // large one reads on at the first page's revision.
                Some(LIST_PAGE)
            } else {
                Some(opts.limit - items.len())
            };
            let page = self
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit: want,
                    revision,
                })
                .await
                .map_err(|e| match e {
                    StoreError::Compacted { .. } if opts.continue_token.is_some() => ApiError {
                        code: http::StatusCode::GONE,
                        reason: "Expired",
                        message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                        details: None,
                    },
                    StoreError::Compacted { requested } => ApiError {
                        code: http::StatusCode::GONE,
                        reason: "Expired",
                        message: format!("too old resource version: {requested}"),
                        details: None,
                    },
                    StoreError::FutureRevision { requested } => {
                        ApiError::too_large_resource_version(requested, None)
                    }
                    e => from_store(e),
                })?;
            revision = Some(page.revision);
            after = page.kvs.last().map(|kv| kv.key.clone());
            for kv in page.kvs {
                if let Some(object) = matching(kv, opts)? {
                    items.push(object);
                }
            }
            let full = opts.limit != 0 && items.len() >= opts.limit;
            if !page.more || full {
                let revision = page.revision;
                let continue_token = match (&after, page.more) {
                    (Some(last), true) => Some(self.encode_continue(revision, last)),
                    _ => None,
                };
                return Ok(Matched {
                    items,
                    revision,
                    continue_token,
                });
            }
        }
    }

    fn encode_continue(&self, revision: Revision, last: &Key) -> String {
        let parts = TenantKeyspace::parse(last);
        continue_after(
            revision,
            parts.as_ref().and_then(|p| p.namespace),
            parts.as_ref().map_or("", |p| p.name),
        )
    }

    /// A continue token names a position by namespace and name only; the key
    /// is rebuilt through this VC's keyspace, so a forged token can never
    /// point outside it.
    fn decode_continue(
        &self,
        info: &ResourceInfo,
        token: &str,
    ) -> Result<(Revision, Key), ApiError> {
        let bad = || ApiError::bad_request("continue key is not valid");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        let rev = value["rv"].as_u64().ok_or_else(bad)?;
        let name = value["name"].as_str().ok_or_else(bad)?;
        let ns = value["ns"].as_str();
        if ns.is_some() != info.namespaced {
            return Err(bad());
        }
        let key = self
            .keyspace
            .object_key(&info.group, &info.plural, ns, name)
            .map_err(|_| bad())?;
        Ok((Revision::new(rev), key))
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

    /// Deletes an object and returns it. An object with finalizers is only
    /// marked (`deletionTimestamp`); it goes when its last finalizer is
    /// removed. A namespace turns Terminating, its contents are deleted
    /// (honouring their finalizers), and it goes once it is empty.
    pub async fn delete(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        // A write racing the delete (a controller's status, say) is no
        // reason to refuse it, unless the client pinned a version; a failed
        // precondition is final.
        for _ in 0..RACE_RETRIES {
            match self.try_delete(info, ns, name, opts).await {
                Err(e)
                    if e.reason == "Conflict"
                        && !e.message.contains("Precondition failed")
                        && opts.resource_version.is_none() =>
                {
                    continue
                }
                done => return done,
            }
        }
        Err(ApiError::conflict(&info.qualified(), name))
    }

    async fn try_delete(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        crate::meta::validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let key = self.key(info, ns, name)?;
        let current = self.current(info, &key, name).await?;
        let object = served(info, &current)?;
        // What follows writes at `current`'s revision: a precondition
        // checked here holds for the write, or the write is a 409.
        opts.check(&info.qualified(), name, &current, &object)?;
        if info.is_namespaces() && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if opts.dry_run || object["metadata"]["deletionTimestamp"].is_string() {
            return Ok(object);
        }
        if info.is_namespaces() {
            return self.terminate_namespace(name, &current, object).await;
        }
        let propagation = opts
            .propagation
            .unwrap_or_else(|| info.strategy.default_propagation());
        if let Some(finalizer) = propagation.finalizer() {
            // The garbage collector finishes the deletion.
            let mut object = object;
            let finalizers = object["metadata"]["finalizers"].as_array_mut();
            match finalizers {
                Some(list) if list.iter().any(|f| f == finalizer) => {}
                Some(list) => list.push(json!(finalizer)),
                None => object["metadata"]["finalizers"] = json!([finalizer]),
            }
            return self.mark_deleted(info, name, &current, object).await;
        }
        if has_finalizers(&object) {
            return self.mark_deleted(info, name, &current, object).await;
        }
        match self.store.delete(&key, current.mod_revision).await {
            Ok(_) => {
                self.after_delete(ns).await?;
                Ok(object)
            }
            Err(StoreError::NotFound { .. }) => Err(Self::not_found(info, name)),
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(&info.qualified(), name)),
            Err(e) => Err(from_store(e)),
        }
    }

    /// Sets `deletionTimestamp` on an object that has finalizers.
    async fn mark_deleted(
        &self,
        info: &ResourceInfo,
        name: &str,
        current: &kplex_storage::KeyValue,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
        object["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        // Outside the VC's limits: a VC at them must still be able to
        // delete (marking adds a few bytes).
        match self
            .store
            .update_unlimited(&current.key, encode_as(info, &object), current.mod_revision)
            .await
        {
            Ok(kv) => {
                object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                Ok(object)
            }
            Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(&info.qualified(), name)),
            Err(StoreError::NotFound { .. }) => Err(Self::not_found(info, name)),
            Err(e) => Err(from_store(e)),
        }
    }

    async fn terminate_namespace(
        &self,
        name: &str,
        current: &kplex_storage::KeyValue,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let info = self.namespaces();
        object["status"]["phase"] = json!("Terminating");
        let object = self.mark_deleted(info, name, current, object).await?;
        for inner in self.catalog.all().iter().filter(|r| r.namespaced) {
            let range = self
                .store
                .range(RangeRequest::prefix(self.prefix(inner, Some(name))?))
                .await
                .map_err(from_store)?;
            for kv in &range.kvs {
                let item = object_of(kv)?;
                let result = if !has_finalizers(&item) {
                    self.store
                        .delete(&kv.key, kv.mod_revision)
                        .await
                        .map(|_| ())
                } else if item["metadata"]["deletionTimestamp"].is_null() {
                    let mut marked = item.clone();
                    marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                    self.store
                        .update_unlimited(&kv.key, encode(&marked), kv.mod_revision)
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                };
                match result {
                    // Someone else changed or removed it meanwhile; the last
                    // writer's removal finalizes the namespace.
                    Ok(()) | Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(from_store(e)),
                }
            }
        }
        self.finalize_namespace(name).await?;
        Ok(object)
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

    fn namespaces(&self) -> &ResourceInfo {
        self.catalog
            .find("", "v1", "namespaces")
            .expect("namespaces are catalogued")
    }

    /// After an object in `ns` is gone: a Terminating namespace that is now
    /// empty goes too.
    async fn after_delete(&self, ns: Namespace<'_>) -> Result<(), ApiError> {
        match ns {
            Some(ns) => self.finalize_namespace(ns).await,
            None => Ok(()),
        }
    }

    async fn finalize_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let key = self.key(self.namespaces(), None, ns)?;
        let Some(current) = self.store.get(&key).await.map_err(from_store)? else {
            return Ok(());
        };
        if object_of(&current)?["status"]["phase"] != "Terminating" {
            return Ok(());
        }
        for inner in self.catalog.all().iter().filter(|r| r.namespaced) {
            if self
                .store
                .count(&self.prefix(inner, Some(ns))?)
                .await
                .map_err(from_store)?
                > 0
            {
                return Ok(());
            }
        }
        match self.store.delete(&key, current.mod_revision).await {
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(from_store(e)),
        }
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

    /// One page of a list served by the watch cache; later pages (if
    /// `limit` cuts it) continue from storage at the same revision.
    fn page_from_cache(
        &self,
        kvs: Vec<kplex_storage::KeyValue>,
        revision: Revision,
        opts: &ListOptions,
    ) -> Result<Matched, ApiError> {
        let mut items = Vec::new();
        let mut continue_token = None;
        let total = kvs.len();
        for (i, kv) in kvs.into_iter().enumerate() {
            let key = kv.key.clone();
            if let Some(object) = matching(kv, opts)? {
                items.push(object);
            }
            if opts.limit != 0 && items.len() >= opts.limit {
                if i + 1 < total {
                    continue_token = Some(self.encode_continue(revision, &key));
                }
                break;
            }
        }
        Ok(Matched {
            items,
            revision,
            continue_token,
        })
    }

    /// The prefix a watch of `info` in `ns` covers.
    pub fn watch_prefix(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
    ) -> Result<KeyPrefix, ApiError> {
        self.prefix(info, ns)
    }

    /// The backend (through the watch cache).
    pub fn store(&self) -> &Arc<WatchCache> {
        &self.store
    }
}

/// How long a watch or list from a revision the server has not reached
/// yet waits for it (kube-apiserver's watch cache waits 3 s, then answers
/// 504).
const FUTURE_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Returns once the watch cache has reached `revision`, or 504 if it does not
/// within [`FUTURE_REVISION_WAIT`].
pub async fn wait_for_revision(cache: &WatchCache, revision: Revision) -> Result<(), ApiError> {
    let current = cache.current_revision().await.map_err(from_store)?;
    if revision <= current
        || tokio::time::timeout(FUTURE_REVISION_WAIT, cache.caught_up(revision))
            .await
            .is_ok()
    {
        return Ok(());
    }
    Err(ApiError::too_large_resource_version(
        revision,
        Some(current.get()),
    ))
}

/// A storage event as a watch with these selectors sends it (type and
/// object), or `None` if the selectors exclude it. An object that stops
/// matching is reported as DELETED.
pub fn watch_event(
    event: &kplex_storage::Event,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, Value)> {
    let matches = |o: &Value| labels.matches(&o["metadata"]["labels"]) && fields.matches(o);
    match event {
        kplex_storage::Event::Put { kv, prev } => {
            let object = object_of(kv).ok()?;
            let before = prev.as_ref().and_then(|p| object_of(p).ok());
            let was = before.as_ref().is_some_and(matches);
            match (was, matches(&object)) {
                (_, true) if before.is_none() || !was => Some(("ADDED", object)),
                (true, true) => Some(("MODIFIED", object)),
                (true, false) => Some(("DELETED", object)),
                _ => None,
            }
        }
        kplex_storage::Event::Delete { prev, revision } => {
            let mut object = object_of(prev).ok()?;
            if !matches(&object) {
                return None;
            }
            object["metadata"]["resourceVersion"] = json!(revision.to_string());
            Some(("DELETED", object))
        }
    }
}

/// [`watch_event`], leaving the object as stored where no selector needs
/// to look into it.
pub fn watch_event_stored(
    event: &kplex_storage::Event,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, crate::raw::Object)> {
    use crate::raw::Object;
    if !labels.is_empty() || !fields.is_empty() {
        return watch_event(event, labels, fields).map(|(kind, o)| (kind, Object::Decoded(o)));
    }
    match event {
        kplex_storage::Event::Put { kv, prev } => Some((
            if prev.is_some() { "MODIFIED" } else { "ADDED" },
            Object::Stored(kv.clone()),
        )),
        // A deletion carries the revision of the delete.
        kplex_storage::Event::Delete { prev, revision } => Some((
            "DELETED",
            Object::Stored(kplex_storage::KeyValue {
                mod_revision: *revision,
                ..prev.clone()
            }),
        )),
    }
}

/// A continue token for a list read at `revision` that goes on after the
/// object `name` (in `ns`), stored or not: a page that ends on an object
/// the server adds to a list (a VC's default roles) continues after it.
pub fn continue_after(revision: Revision, ns: Option<&str>, name: &str) -> String {
    let token = json!({"rv": revision.get(), "ns": ns, "name": name});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The name a continue token goes on after (`None`: not a token this
/// server made; the list refuses it).
pub fn continued_after(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let value: Value = serde_json::from_slice(&raw).ok()?;
    value["name"].as_str().map(str::to_owned)
}

/// Decodes a stored value as the watch sends it.
pub fn decode_watched(kv: &kplex_storage::KeyValue) -> Result<Value, ApiError> {
    object_of(kv)
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

/// Namespaces kube-apiserver refuses to delete (NamespaceLifecycle).
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

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

    #[test]
    fn delete_options_come_from_the_query_and_the_body() {
        let none = DeleteOptions::from_body(None, true).unwrap();
        assert!(none.dry_run && none.uid.is_none() && none.resource_version.is_none());
        let body = json!({"kind": "DeleteOptions", "dryRun": ["All"],
            "preconditions": {"uid": "u-1", "resourceVersion": "7"}});
        let opts = DeleteOptions::from_body(Some(&body), false).unwrap();
        assert!(opts.dry_run);
        assert_eq!(opts.uid.as_deref(), Some("u-1"));
        assert_eq!(opts.resource_version.as_deref(), Some("7"));
        for bad in [
            json!({"dryRun": "All"}),
            json!({"dryRun": ["Everything"]}),
            json!({"preconditions": {"uid": 7}}),
            json!({"gracePeriodSeconds": "soon"}),
        ] {
            let err = DeleteOptions::from_body(Some(&bad), false).unwrap_err();
            assert_eq!(err.code, http::StatusCode::BAD_REQUEST, "{bad}");
        }
        let sideways = json!({"propagationPolicy": "Sideways"});
        let err = DeleteOptions::from_body(Some(&sideways), false).unwrap_err();
        assert_eq!(err.code, http::StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.message.contains("Unsupported value: \"Sideways\""),
            "{}",
            err.message
        );
        let kubectls = json!({"propagationPolicy": "Background", "gracePeriodSeconds": 0});
        DeleteOptions::from_body(Some(&kubectls), false).unwrap();
        check_delete_parameters(Some("Foreground"), Some("30")).unwrap();
        assert!(check_delete_parameters(None, Some("abc")).is_err());
    }
}
