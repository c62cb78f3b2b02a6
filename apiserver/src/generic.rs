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

use crate::catalog::{Catalog, ResourceInfo};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{from_store, ApiError};
use crate::watchcache::WatchCache;

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
}

/// Checks a delete's `propagationPolicy` and `gracePeriodSeconds` (there is
/// no garbage collector or graceful deletion yet: valid values are accepted
/// and change nothing).
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
            code: hyper::StatusCode::CONFLICT,
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

/// The objects of one VC.
pub struct GenericStore {
    store: Arc<WatchCache>,
    keyspace: TenantKeyspace,
    catalog: Arc<Catalog>,
    allocations: Arc<crate::services::AllocationLocks>,
    watches: Arc<crate::quota::WatchLimits>,
}

/// The namespace a request addresses, if the resource is namespaced.
pub type Namespace<'a> = Option<&'a str>;

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting")
}

/// Checks a name as Kubernetes does for the kind: DNS-1123 label for
/// namespaces and services, DNS-1123 subdomain otherwise.
pub fn validate_name(info: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    let (max, label) = if info.name_is_label() {
        (63, true)
    } else {
        (253, false)
    };
    let allowed =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (!label && b == b'.');
    let edges = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = !name.is_empty()
        && name.len() <= max
        && name.bytes().all(allowed)
        && edges(name.as_bytes().first())
        && edges(name.as_bytes().last())
        && !name.contains("..");
    if ok {
        return Ok(());
    }
    let rule = if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(ApiError::invalid(
        &info.qualified_kind(),
        name,
        "metadata.name",
        rule,
    ))
}

fn object_of(kv: &kplex_storage::KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(object)
}

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "services"
}

/// The bytes stored for an object: everything but `resourceVersion`, which
/// the store's revision supplies on every read.
fn encode(object: &Value) -> Bytes {
    if object["metadata"].get("resourceVersion").is_none() {
        // Creates: nothing to strip, no copy.
        return Bytes::from(crate::status::to_json(object));
    }
    let mut stored = object.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Bytes::from(crate::status::to_json(&stored))
}

impl GenericStore {
    /// The store of the VC with this keyspace.
    pub fn new(
        store: Arc<WatchCache>,
        keyspace: TenantKeyspace,
        catalog: Arc<Catalog>,
        allocations: Arc<crate::services::AllocationLocks>,
        watches: Arc<crate::quota::WatchLimits>,
    ) -> GenericStore {
        GenericStore {
            store,
            keyspace,
            catalog,
            allocations,
            watches,
        }
    }

    /// A slot for one more open watch of this VC (429 at its limit).
    pub fn watch_permit(&self) -> Result<crate::quota::WatchPermit, ApiError> {
        self.watches.acquire(self.keyspace.prefix().as_str())
    }

    /// This VC's turn to allocate service values (held until the write is
    /// stored, so what is taken cannot change in between).
    async fn allocation_turn(&self) -> crate::services::AllocationTurn {
        self.allocations.turn(self.keyspace.prefix().as_str()).await
    }

    fn key(&self, info: &ResourceInfo, ns: Namespace<'_>, name: &str) -> Result<Key, ApiError> {
        self.keyspace
            .object_key(info.group, info.plural, ns, name)
            .map_err(from_store)
    }

    fn prefix(&self, info: &ResourceInfo, ns: Namespace<'_>) -> Result<KeyPrefix, ApiError> {
        match ns {
            Some(ns) => self.keyspace.namespace_prefix(info.group, info.plural, ns),
            None => self.keyspace.resource_prefix(info.group, info.plural),
        }
        .map_err(from_store)
    }

    fn not_found(info: &ResourceInfo, name: &str) -> ApiError {
        ApiError {
            code: hyper::StatusCode::NOT_FOUND,
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
        validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        match self
            .store
            .get(&self.key(info, ns, name)?)
            .await
            .map_err(from_store)?
        {
            Some(kv) => object_of(&kv),
            None => Err(Self::not_found(info, name)),
        }
    }

    /// A page of objects (`ns` None: across namespaces).
    pub async fn list(
        &self,
        info: &ResourceInfo,
        ns: Namespace<'_>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let prefix = self.prefix(info, ns)?;
        let (mut after, mut revision) = (None, opts.exact_revision);
        if let Some(min) = opts.not_older_than {
            // As for a watch: a revision the cache has not reached yet is
            // waited for a moment before the 504.
            crate::tenant::wait_for_revision(&self.store, min).await?;
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
                None
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
                        code: hyper::StatusCode::GONE,
                        reason: "Expired",
                        message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                        details: None,
                    },
                    StoreError::Compacted { requested } => ApiError {
                        code: hyper::StatusCode::GONE,
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
            for kv in &page.kvs {
                let object = object_of(kv)?;
                if opts.labels.matches(&object["metadata"]["labels"])
                    && opts.fields.matches(&object)
                {
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
                return Ok(ListPage {
                    items,
                    revision,
                    continue_token,
                });
            }
        }
    }

    fn encode_continue(&self, revision: Revision, last: &Key) -> String {
        let parts = TenantKeyspace::parse(last);
        let token = json!({
            "rv": revision.get(),
            "ns": parts.as_ref().and_then(|p| p.namespace),
            "name": parts.as_ref().map(|p| p.name),
        });
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
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
            .object_key(info.group, info.plural, ns, name)
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
        check_type(info, &mut object)?;
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
        if info.plural == "namespaces" && info.group.is_empty() {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
            object["status"] = json!({"phase": "Active"});
        } else if info.has_status() {
            // Status is the controllers' to write, through /status.
            set_or_remove(&mut object, "status", None);
        }
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
        let _turn = if is_service(info) {
            let turn = self.allocation_turn().await;
            object["metadata"]["name"] = json!(explicit.clone().unwrap_or_default());
            crate::services::on_create(&mut object, &self.services_taken(info, None).await?)?;
            Some(turn)
        } else {
            None
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
            validate_name(info, &name)?;
            object["metadata"]["name"] = json!(name);
            let key = self.key(info, ns, &name)?;
            if dry_run {
                if self.store.get(&key).await.map_err(from_store)?.is_some() {
                    return Err(ApiError::already_exists(&info.qualified(), &name));
                }
                return Ok(object);
            }
            match self.store.create(&key, encode(&object)).await {
                Ok(kv) => {
                    object["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
                    if is_namespace(info) {
                        self.create_default_service_account(&name).await?;
                    }
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
        check_type(info, &mut object)?;
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
        validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let key = self.key(info, ns, name)?;
        for _ in 0..8 {
            let current = self.current(info, &key, name).await?;
            let old = object_of(&current)?;
            let mut patched = crate::patch::apply(&old, kind, body)?;
            check_type(info, &mut patched)?;
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
        validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
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
        let mut config = crate::handler::parse_object(body)?;
        crate::duplicates::check(body, write.validation)?;
        check_type(info, &mut config)?;
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
        for _ in 0..8 {
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
            let live = object_of(&current)?;
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
            check_type(info, &mut merged)?;
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
        let old = object_of(current)?;
        // A body naming another object (its UID) or another namespace is
        // refused, as kube-apiserver does, not silently overwritten.
        let given = |field: &str| object["metadata"][field].as_str().filter(|v| !v.is_empty());
        if let Some(uid) = given("uid") {
            let stored = old["metadata"]["uid"].as_str().unwrap_or_default();
            if uid != stored {
                return Err(ApiError {
                    code: hyper::StatusCode::CONFLICT,
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
        crate::managed::track(
            Some(&old),
            &mut object,
            &write.manager,
            &info.api_version(),
            write.status.then_some("status"),
            &now_rfc3339(),
        );
        let _turn = if is_service(info) && !write.status {
            let turn = self.allocation_turn().await;
            let ns = old["metadata"]["namespace"].as_str();
            let taken = self.services_taken(info, ns.zip(Some(name))).await?;
            crate::services::on_update(&mut object, &old, &taken)?;
            Some(turn)
        } else {
            None
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
        crate::immutable::check(info, name, &old, &object)?;
        if same_object(&object, &old) {
            // Nothing changed: no write, no new revision, no MODIFIED event
            // (controllers that write back what they read must not loop).
            return Ok(old);
        }
        if dry_run {
            return Ok(object);
        }
        match self
            .store
            .update(key, encode(&object), current.mod_revision)
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
        validate_name(info, name).map_err(|_| Self::not_found(info, name))?;
        let key = self.key(info, ns, name)?;
        let current = self.current(info, &key, name).await?;
        let object = object_of(&current)?;
        // What follows writes at `current`'s revision: a precondition
        // checked here holds for the write, or the write is a 409.
        opts.check(&info.qualified(), name, &current, &object)?;
        if is_namespace(info) && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        if opts.dry_run || object["metadata"]["deletionTimestamp"].is_string() {
            return Ok(object);
        }
        if is_namespace(info) {
            return self.terminate_namespace(name, &current, object).await;
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
        match self
            .store
            .update(&current.key, encode(&object), current.mod_revision)
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
                        .update(&kv.key, encode(&marked), kv.mod_revision)
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

    /// Every namespace has a `default` ServiceAccount (kube's service
    /// account controller makes it within moments; kplex with the
    /// namespace).
    async fn create_default_service_account(&self, ns: &str) -> Result<(), ApiError> {
        let info = self
            .catalog
            .find("", "v1", "serviceaccounts")
            .expect("serviceaccounts are catalogued");
        let account = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": "default",
                "namespace": ns,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now_rfc3339(),
            },
        });
        match self
            .store
            .create(&self.key(info, Some(ns), "default")?, encode(&account))
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(from_store(e)),
        }
    }

    /// The cluster IPs and node ports the VC's services hold, but for the
    /// service `except` (namespace, name) being updated.
    async fn services_taken(
        &self,
        info: &ResourceInfo,
        except: Option<(&str, &str)>,
    ) -> Result<crate::services::Taken, ApiError> {
        let range = self
            .store
            .range(RangeRequest::prefix(self.prefix(info, None)?))
            .await
            .map_err(from_store)?;
        let mut taken = crate::services::Taken::default();
        for kv in &range.kvs {
            let service = object_of(kv)?;
            let meta = &service["metadata"];
            let this = (meta["namespace"].as_str(), meta["name"].as_str());
            if except.is_some_and(|(ns, name)| this == (Some(ns), Some(name))) {
                continue;
            }
            taken.add(&service);
        }
        Ok(taken)
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
    ) -> Result<ListPage, ApiError> {
        let mut items = Vec::new();
        let mut continue_token = None;
        let total = kvs.len();
        for (i, kv) in kvs.iter().enumerate() {
            let object = object_of(kv)?;
            if opts.labels.matches(&object["metadata"]["labels"]) && opts.fields.matches(&object) {
                items.push(object);
            }
            if opts.limit != 0 && items.len() >= opts.limit {
                if i + 1 < total {
                    continue_token = Some(self.encode_continue(revision, &kv.key));
                }
                break;
            }
        }
        Ok(ListPage {
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
    let (decoded, unknown) = (info.decode)(object).map_err(|e| {
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
    if let Some(bad) = bad_quantity(info, object) {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {bad:?}: \
             quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            kind = info.kind,
            version = info.version
        )));
    }
    validate_metadata(info, object)?;
    if info.group == "apps" {
        validate_workload(info, object)?;
    }
    if let Some((path, spec)) = pod_spec_of(info, object) {
        validate_pod_spec(info, object, &path, spec)?;
    }
    crate::defaults::apply(info, object);
    Ok(())
}

/// The syntax rules of a label value and of a qualified name's name part.
const NAME_PART_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// A qualified name's name part, or a non-empty label value.
fn name_part_ok(s: &str) -> bool {
    let alnum = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && alnum(s.as_bytes().first())
        && alnum(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a label or annotation key is not a qualified name (`[prefix/]name`).
fn qualified_name_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    if !name_part_ok(name) {
        return Some(format!("name part {NAME_PART_RULE}"));
    }
    let subdomain = |p: &str| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    };
    match prefix {
        Some(p) if !subdomain(p) => Some(
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into(),
        ),
        _ => None,
    }
}

/// Whether `s` is a Kubernetes quantity: a decimal number, then a binary
/// (`Ki`…`Ei`) or decimal (`n u m k M G T P E`) suffix or an exponent.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let digits = number.bytes().filter(u8::is_ascii_digit).count();
    let valid_number = digits > 0 && number.matches('.').count() <= 1;
    let valid_suffix = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exp => exp
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())),
    };
    valid_number && valid_suffix
}

/// The first malformed quantity among a kind's resource amounts (container
/// requests and limits, claim requests, quota limits).
fn bad_quantity(info: &ResourceInfo, object: &Value) -> Option<String> {
    let mut maps: Vec<&Value> = Vec::new();
    if let Some((_, spec)) = pod_spec_of(info, object) {
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array().into_iter().flatten() {
                maps.push(&c["resources"]["requests"]);
                maps.push(&c["resources"]["limits"]);
            }
        }
    }
    match (info.group, info.kind) {
        ("", "PersistentVolumeClaim") => maps.push(&object["spec"]["resources"]["requests"]),
        ("", "ResourceQuota") => maps.push(&object["spec"]["hard"]),
        _ => {}
    }
    maps.into_iter()
        .filter_map(Value::as_object)
        .flat_map(|m| m.values())
        .filter_map(Value::as_str)
        .find(|q| !is_quantity(q))
        .map(str::to_owned)
}

/// The pod spec a kind carries, and its path.
fn pod_spec_of<'a>(info: &ResourceInfo, object: &'a Value) -> Option<(String, &'a Value)> {
    let path = match (info.group, info.kind) {
        ("", "Pod") => "spec",
        ("apps", _) | ("batch", "Job") => "spec.template.spec",
        ("batch", "CronJob") => "spec.jobTemplate.spec.template.spec",
        _ => return None,
    };
    let spec = path.split('.').fold(object, |v, field| &v[field]);
    spec.is_object().then(|| (path.to_owned(), spec))
}

/// What kube-apiserver checks of every pod spec that users get wrong most:
/// containers present, named as DNS labels, uniquely, each with an image,
/// and a restart policy the kind allows.
fn validate_pod_spec(
    info: &ResourceInfo,
    object: &Value,
    path: &str,
    spec: &Value,
) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let kind = info.qualified_kind();
    let invalid = |field: String, detail: String| {
        ApiError::field(&kind, name, &format!("{path}.{field}"), &detail)
    };
    if spec["containers"].as_array().is_none_or(|c| c.is_empty()) {
        return Err(invalid("containers".into(), "Required value".into()));
    }
    let mut seen = std::collections::HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            let container = c["name"].as_str().unwrap_or_default();
            let label = |s: &str| {
                !s.is_empty()
                    && s.len() <= 63
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !s.starts_with('-')
                    && !s.ends_with('-')
            };
            if container.is_empty() {
                return Err(invalid(
                    format!("{list}[{i}].name"),
                    "Required value".into(),
                ));
            }
            if !label(container) {
                return Err(invalid(
                    format!("{list}[{i}].name"),
                    format!("Invalid value: {container:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
                ));
            }
            if !seen.insert(container.to_owned()) {
                return Err(invalid(
                    format!("{list}[{i}].name"),
                    format!("Duplicate value: {container:?}"),
                ));
            }
            if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
                return Err(invalid(
                    format!("{list}[{i}].image"),
                    "Required value".into(),
                ));
            }
        }
    }
    let allowed: &[&str] = if info.group == "batch" {
        &["OnFailure", "Never"]
    } else if info.group == "apps" {
        &["Always"]
    } else {
        &["Always", "OnFailure", "Never"]
    };
    if info.group == "batch" && spec["restartPolicy"].as_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "restartPolicy".into(),
            "Required value: valid values: \"OnFailure\", \"Never\"".into(),
        ));
    }
    if let Some(policy) = spec["restartPolicy"].as_str().filter(|p| !p.is_empty()) {
        if !allowed.contains(&policy) {
            let supported: Vec<String> = allowed.iter().map(|p| format!("{p:?}")).collect();
            return Err(invalid(
                "restartPolicy".into(),
                format!(
                    "Unsupported value: {policy:?}: supported values: {}",
                    supported.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a `LabelSelector` object selects these labels.
fn selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => label(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

/// What kube-apiserver checks of every apps/v1 workload: a replica count
/// that is not negative, and a non-empty selector its pod template matches.
fn validate_workload(info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    let spec = &object["spec"];
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let invalid = |field: &str, value: String, why: &str| {
        ApiError::field(
            &info.qualified_kind(),
            name,
            field,
            &format!("Invalid value: {value}: {why}"),
        )
    };
    if let Some(replicas) = spec["replicas"].as_i64().filter(|r| *r < 0) {
        return Err(invalid(
            "spec.replicas",
            replicas.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let selector = &spec["selector"];
    let empty = |f: &str| {
        selector[f].as_object().is_none_or(|m| m.is_empty())
            && selector[f].as_array().is_none_or(|a| a.is_empty())
    };
    if empty("matchLabels") && empty("matchExpressions") {
        return Err(invalid(
            "spec.selector",
            selector.to_string(),
            &format!("empty selector is invalid for {}", info.singular()),
        ));
    }
    let labels = &spec["template"]["metadata"]["labels"];
    if !selector_matches(selector, labels) {
        return Err(invalid(
            "spec.template.metadata.labels",
            labels.to_string(),
            "`selector` does not match template `labels`",
        ));
    }
    Ok(())
}

/// Most bytes all of an object's annotations may take (kube's 256 KiB).
const ANNOTATIONS_MAX: usize = 256 * 1024;

/// Label keys and values and annotation keys as kube-apiserver checks them
/// (selectors and tools rely on their syntax).
fn validate_metadata(info: &ResourceInfo, object: &Value) -> Result<(), ApiError> {
    let meta = &object["metadata"];
    let name = meta["name"]
        .as_str()
        .or(meta["generateName"].as_str())
        .unwrap_or_default();
    let invalid = |field: &str, value: &str, why: &str| {
        ApiError::field(
            &info.qualified_kind(),
            name,
            field,
            &format!("Invalid value: {value:?}: {why}"),
        )
    };
    for (key, value) in meta["labels"].as_object().into_iter().flatten() {
        if let Some(why) = qualified_name_error(key) {
            return Err(invalid("metadata.labels", key, &why));
        }
        let value = value.as_str().unwrap_or_default();
        if value.len() > 63 {
            return Err(invalid(
                "metadata.labels",
                value,
                "must be no more than 63 characters",
            ));
        }
        if !value.is_empty() && !name_part_ok(value) {
            return Err(invalid(
                "metadata.labels",
                value,
                &format!("a valid label {NAME_PART_RULE}"),
            ));
        }
    }
    let mut size = 0;
    for (key, value) in meta["annotations"].as_object().into_iter().flatten() {
        if let Some(why) = qualified_name_error(&key.to_lowercase()) {
            return Err(invalid("metadata.annotations", key, &why));
        }
        size += key.len() + value.as_str().map_or(0, str::len);
    }
    if size > ANNOTATIONS_MAX {
        return Err(ApiError::field(
            &info.qualified_kind(),
            name,
            "metadata.annotations",
            &format!("Too long: must have at most {ANNOTATIONS_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Checks `apiVersion`/`kind` (filling them in when absent) and that
/// `metadata` is an object.
pub fn check_type(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let api_version = info.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None => {
            map.insert("kind".into(), json!(info.kind));
        }
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                info.kind
            )))
        }
    }
    match map.get("metadata") {
        None => {
            map.insert("metadata".into(), Value::Object(Map::new()));
        }
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
    }
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

fn is_namespace(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "namespaces"
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
    fn pod_specs_need_named_containers_with_images_and_a_known_restart_policy() {
        let catalog = crate::catalog::Catalog::default();
        let pod = catalog.find("", "v1", "pods").unwrap();
        let job = catalog.find("batch", "v1", "jobs").unwrap();
        let check_pod = |spec: Value| {
            let object = json!({"metadata": {"name": "p"}, "spec": spec});
            let (path, spec) = pod_spec_of(pod, &object).unwrap();
            validate_pod_spec(pod, &object, &path, spec)
        };
        check_pod(
            json!({"containers": [{"name": "web", "image": "nginx"}], "restartPolicy": "Never"}),
        )
        .unwrap();
        for (spec, message) in [
            (json!({"containers": []}), "spec.containers: Required value"),
            (
                json!({"containers": [{"name": "web"}]}),
                "spec.containers[0].image: Required value",
            ),
            (
                json!({"containers": [{"name": "Web", "image": "x"}]}),
                "spec.containers[0].name: Invalid value: \"Web\"",
            ),
            (
                json!({"initContainers": [{"name": "a", "image": "x"}], "containers": [{"name": "a", "image": "x"}]}),
                "spec.containers[0].name: Duplicate value: \"a\"",
            ),
            (
                json!({"containers": [{"name": "a", "image": "x"}], "restartPolicy": "Sometimes"}),
                "spec.restartPolicy: Unsupported value: \"Sometimes\"",
            ),
        ] {
            let err = check_pod(spec.clone()).unwrap_err();
            assert_eq!(err.code, hyper::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains(message), "{spec}: {}", err.message);
        }
        // A job's pods may not restart Always.
        let object = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "x"}], "restartPolicy": "Always"}}}});
        let (path, spec) = pod_spec_of(job, &object).unwrap();
        let err = validate_pod_spec(job, &object, &path, spec).unwrap_err();
        assert!(
            err.message
                .starts_with("Job.batch \"j\" is invalid: spec.template.spec.restartPolicy"),
            "{}",
            err.message
        );
    }

    #[test]
    fn quantities_are_numbers_with_a_known_suffix() {
        for good in [
            "1", "500m", "0.5", ".5", "1.5Gi", "128Mi", "2e3", "1E-2", "+1k", "100n",
        ] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in [
            "abc", "", "1.2.3", "500mi", "1Gb", "e3", "1e", "--1", "1 Gi",
        ] {
            assert!(!is_quantity(bad), "{bad}");
        }
        let catalog = crate::catalog::Catalog::default();
        let pod = catalog.find("", "v1", "pods").unwrap();
        let with = |cpu: &str| {
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x",
                "resources": {"limits": {"cpu": cpu, "memory": "64Mi"}}}]}})
        };
        assert_eq!(bad_quantity(pod, &with("250m")), None);
        assert_eq!(bad_quantity(pod, &with("abc")).as_deref(), Some("abc"));
    }

    #[test]
    fn workloads_need_a_selector_their_template_matches() {
        let catalog = crate::catalog::Catalog::default();
        let deploy = catalog.find("apps", "v1", "deployments").unwrap();
        let with = |spec: Value| {
            validate_workload(deploy, &json!({"metadata": {"name": "web"}, "spec": spec}))
        };
        let template = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        with(json!({"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template})).unwrap();
        with(json!({"selector": {"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "legacy", "operator": "DoesNotExist"}]}, "template": template}))
        .unwrap();
        for (spec, why) in [
            (
                json!({"replicas": -5, "selector": {"matchLabels": {"app": "web"}}, "template": template}),
                "greater than or equal to 0",
            ),
            (
                json!({"selector": {}, "template": template}),
                "empty selector",
            ),
            (
                json!({"selector": {"matchLabels": {"app": "db"}}, "template": template}),
                "does not match template",
            ),
            (
                json!({"selector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, "template": template}),
                "does not match template",
            ),
        ] {
            let err = with(spec.clone()).unwrap_err();
            assert_eq!(err.code, hyper::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(err.message.contains(why), "{spec}: {}", err.message);
            assert!(
                err.message
                    .starts_with("Deployment.apps \"web\" is invalid"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn labels_and_annotations_follow_kubes_syntax() {
        let catalog = crate::catalog::Catalog::default();
        let cm = catalog.find("", "v1", "configmaps").unwrap();
        let check = |meta: Value| validate_metadata(cm, &json!({"metadata": meta}));
        for good in [
            json!({"name": "x", "labels": {"app": "web", "example.com/tier": "front-end_1", "empty": ""}}),
            json!({"name": "x", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "Note": "any text at all"}}),
        ] {
            check(good.clone()).unwrap_or_else(|e| panic!("{good}: {}", e.message));
        }
        for (bad, field) in [
            (json!({"labels": {"a b": "x"}}), "metadata.labels"),
            (json!({"labels": {"": "y"}}), "metadata.labels"),
            (json!({"labels": {"Bad_Prefix/x": "y"}}), "metadata.labels"),
            (json!({"labels": {"app": "../x"}}), "metadata.labels"),
            (
                json!({"labels": {"app": "x".repeat(64)}}),
                "metadata.labels",
            ),
            (
                json!({"annotations": {"a b/c/d": "x"}}),
                "metadata.annotations",
            ),
            (
                json!({"annotations": {"big": "x".repeat(ANNOTATIONS_MAX)}}),
                "metadata.annotations",
            ),
        ] {
            let err = check(bad.clone()).unwrap_err();
            assert_eq!(err.code, hyper::StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            assert!(err.message.contains(field), "{bad}: {}", err.message);
        }
    }

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
            assert_eq!(err.code, hyper::StatusCode::BAD_REQUEST, "{bad}");
        }
        let sideways = json!({"propagationPolicy": "Sideways"});
        let err = DeleteOptions::from_body(Some(&sideways), false).unwrap_err();
        assert_eq!(err.code, hyper::StatusCode::UNPROCESSABLE_ENTITY);
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
