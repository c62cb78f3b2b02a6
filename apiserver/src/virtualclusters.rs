//! The registry of virtual clusters: records under
//! `/kplex/system/virtualclusters/<name>`, each with the UID that names the
//! VC's keyspace. Deleting a VC removes its whole key range, then its record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kplex_storage::{
    Event, KeyPrefix, RangeRequest, Revision, Store, StoreError, SystemKeyspace, TenantKeyspace,
    WatchEvent,
};
use serde_json::{json, Value};

use kplex_registry::ApiError;

/// The admin API group and version.
pub const GROUP: &str = kplex_api::names::ADMIN_GROUP;
/// The admin API's resource.
pub const PLURAL: &str = "virtualclusters";
/// The served version.
pub const VERSION: &str = kplex_api::names::ADMIN_VERSION;
/// The kind.
pub const KIND: &str = "VirtualCluster";
const RECORDS: &str = "virtualclusters";

/// The VCs, backed by the system keyspace.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    /// Writes in flight per VC UID, so a delete can wait them out.
    writes: Arc<Writes>,
    /// Every record in memory, when a task keeps it (see [`Registry::indexed`]).
    index: Option<Arc<Index>>,
}

/// Every VC record by name, kept current by one task watching the records;
/// `None` while it (re)loads, when lookups go to storage.
struct Index {
    records: std::sync::RwLock<Option<Records>>,
    /// The revision the records are current at.
    applied: tokio::sync::watch::Sender<Revision>,
    /// Names of VCs deleted lately, by UID: the events of their objects'
    /// deletion come after the record's, and cross-VC watchers still need
    /// to be told which VC they belonged to.
    departed: std::sync::Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// The records, by name and by UID.
#[derive(Default)]
struct Records {
    by_name: HashMap<String, Arc<VirtualCluster>>,
    by_uid: HashMap<String, Arc<VirtualCluster>>,
}

impl Records {
    fn insert(&mut self, vc: VirtualCluster) {
        let vc = Arc::new(vc);
        if let Some(old) = self.by_name.insert(vc.name().to_owned(), vc.clone()) {
            self.by_uid.remove(old.uid());
        }
        self.by_uid.insert(vc.uid().to_owned(), vc);
    }

    fn remove(&mut self, name: &str) -> Option<Arc<VirtualCluster>> {
        let vc = self.by_name.remove(name)?;
        self.by_uid.remove(vc.uid());
        Some(vc)
    }
}

/// How long the name of a deleted VC is remembered for its objects' events.
const DEPARTED_FOR: Duration = Duration::from_secs(600);

/// Writes in flight per VC UID (an entry only while there are some).
#[derive(Default)]
struct Writes {
    counts: std::sync::Mutex<HashMap<String, usize>>,
    idle: tokio::sync::Notify,
}

/// A write to a VC in flight; the VC's deletion waits for it to drop.
pub struct WriteGuard {
    writes: Arc<Writes>,
    uid: String,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut counts = self.writes.counts.lock().expect("writes lock");
        if let Some(n) = counts.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.uid);
                self.writes.idle.notify_waiters();
            }
        }
    }
}

/// Longest a VC deletion waits for the VC's writes in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Times a VC update is tried when other writes keep coming between.
const WRITE_ATTEMPTS: usize = 8;

/// Longest a write through the registry waits for its index to show it.
const INDEX_WAIT: Duration = Duration::from_secs(5);

/// Keys deleted per write when a VC's objects go.
const DELETE_BATCH: usize = 1000;

/// A VC as stored: the object the admin API serves, plus its revision.
#[derive(Debug, Clone)]
pub struct VirtualCluster {
    /// The object (`apiVersion`, `kind`, `metadata`, `spec`, `status`) as
    /// JSON: a few hundred bytes, where its decoded tree would take several
    /// KiB of every idle VC's memory (see [`VirtualCluster::object`]).
    record: Box<[u8]>,
    uid: Box<str>,
    name: Box<str>,
    /// Its isolation policy, read once (the safe default if the record
    /// holds none or one that does not parse).
    pub policy: Arc<kplex_api::isolation::Isolation>,
    /// Its limits (`spec.limits`; unset fields are the server's defaults).
    pub limits: kplex_api::limits::Limits,
}

impl VirtualCluster {
    /// The VC's UID.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The VC's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object, decoded.
    pub fn object(&self) -> Value {
        serde_json::from_slice(&self.record).expect("encoded from a Value")
    }

    /// The VC's keyspace.
    pub fn keyspace(&self) -> Result<TenantKeyspace, ApiError> {
        TenantKeyspace::for_vc(self.uid()).map_err(store_error)
    }
}

/// The time now, as a creationTimestamp (RFC 3339, whole seconds).
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds is valid")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting")
}

/// Checks a VC name: a DNS-1123 label (it is a URL segment and part of host
/// namespace names).
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(
        KIND,
        name,
        "metadata.name",
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
         and must start and end with an alphanumeric character (at most 63 characters)",
    ))
}

impl Registry {
    /// A registry on `store`.
    pub fn new(store: Arc<dyn Store>) -> Registry {
        Registry {
            store,
            writes: Default::default(),
            index: None,
        }
    }

    /// A registry that keeps every record in memory (a few hundred bytes
    /// per VC), so authorizing a request reads no storage. One task keeps
    /// it: a list, then a watch from the list's revision (through the watch
    /// cache), again after any failure. Creates and deletes through this
    /// registry return once the index shows them, so a deleted VC's
    /// credentials stop working here when the delete returns.
    pub async fn indexed(store: Arc<dyn Store>) -> Registry {
        let index = Arc::new(Index {
            records: std::sync::RwLock::new(None),
            applied: tokio::sync::watch::channel(Revision::new(0)).0,
            departed: Default::default(),
        });
        let registry = Registry {
            store,
            writes: Default::default(),
            index: Some(index.clone()),
        };
        let mut loaded = index.applied.subscribe();
        tokio::spawn(maintain(registry.store.clone(), Arc::downgrade(&index)));
        // Serve from storage until the first load; wait for it briefly.
        let _ = tokio::time::timeout(INDEX_WAIT, loaded.changed()).await;
        registry
    }

    /// Marks a write to the VC with `uid` in flight. Taken before the VC is
    /// looked up: a VC's deletion removes the record, then waits for the
    /// writes already past the lookup before it deletes the key range, so
    /// none lands after it.
    pub fn begin_write(&self, uid: &str) -> WriteGuard {
        *self
            .writes
            .counts
            .lock()
            .expect("writes lock")
            .entry(uid.to_owned())
            .or_default() += 1;
        WriteGuard {
            writes: self.writes.clone(),
            uid: uid.to_owned(),
        }
    }

    /// Returns once no write to `uid` is in flight (bounded).
    async fn writes_drained(&self, uid: &str) {
        let drained = async {
            loop {
                let idle = self.writes.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if !self
                    .writes
                    .counts
                    .lock()
                    .expect("writes lock")
                    .contains_key(uid)
                {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(DRAIN_WAIT, drained).await.is_err() {
            tracing::warn!(
                uid,
                "writes to a deleted VC still in flight; deleting its keys anyway"
            );
        }
    }

    /// Waits (bounded) until the index has applied `revision`.
    async fn indexed_at(&self, revision: Revision) {
        if let Some(index) = &self.index {
            let mut applied = index.applied.subscribe();
            let wait = applied.wait_for(|r| *r >= revision);
            if tokio::time::timeout(INDEX_WAIT, wait).await.is_err() {
                tracing::warn!(%revision, "VC index is behind storage");
            }
        }
    }

    fn key(name: &str) -> Result<kplex_storage::Key, ApiError> {
        SystemKeyspace::key(&[RECORDS, name]).map_err(store_error)
    }

    /// The prefix of every VC record (for watches).
    pub fn prefix() -> Result<KeyPrefix, ApiError> {
        SystemKeyspace::prefix(&[RECORDS]).map_err(store_error)
    }

    /// Creates a VC named `name` with a fresh UID.
    pub async fn create(&self, name: &str, spec: Value) -> Result<VirtualCluster, ApiError> {
        validate_name(name)?;
        let created = now();
        let object = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": {
                "name": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": created,
            },
            "spec": spec,
        });
        let bytes = Bytes::from(object.to_string());
        match self.store.create(&Self::key(name)?, bytes).await {
            Ok(kv) => {
                self.indexed_at(kv.mod_revision).await;
                Ok(with_revision(object, kv.mod_revision))
            }
            Err(StoreError::AlreadyExists { .. }) => Err(ApiError::already_exists(
                &format!("{RECORDS}.{GROUP}"),
                name,
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    /// Changes the VC named `name` to what `change` makes of it (the
    /// record as stored, with its resourceVersion), guarded by the record's
    /// revision: retried when another write came between, unless the new
    /// object pins a resourceVersion, which must then be current (409
    /// otherwise, as kube-apiserver answers a stale update). Name, UID and
    /// creation time are the record's whatever `change` says, and so is
    /// the status (written only through [`Registry::update_status`]).
    pub async fn update<F>(&self, name: &str, change: F) -> Result<VirtualCluster, ApiError>
    where
        F: Fn(&Value) -> Result<Value, ApiError>,
    {
        self.write(name, false, change).await
    }

    /// The status the system components report on the VC named `name`
    /// (its conditions): only `status` of what `change` makes is kept.
    pub async fn update_status<F>(&self, name: &str, change: F) -> Result<VirtualCluster, ApiError>
    where
        F: Fn(&Value) -> Result<Value, ApiError>,
    {
        self.write(name, true, change).await
    }

    async fn write<F>(
        &self,
        name: &str,
        status: bool,
        change: F,
    ) -> Result<VirtualCluster, ApiError>
    where
        F: Fn(&Value) -> Result<Value, ApiError>,
    {
        let key = Self::key(name)?;
        for _ in 0..WRITE_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await.map_err(store_error)? else {
                return Err(ApiError::not_found_object(KIND, GROUP, name));
            };
            let current = decode(&kv)?.object();
            // `change` sees the record without its resourceVersion: one in
            // what it makes is the request's own precondition.
            let mut unversioned = current.clone();
            if let Some(meta) = unversioned["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            let mut next = change(&unversioned)?;
            if !next.is_object() || !next["metadata"].is_object() && !next["metadata"].is_null() {
                return Err(ApiError::bad_request(
                    "the object and its metadata must be JSON objects",
                ));
            }
            if status {
                let reported = next.get("status").cloned().unwrap_or(Value::Null);
                next = unversioned.clone();
                next["status"] = reported;
            }
            let pinned = next["metadata"]["resourceVersion"]
                .as_str()
                .filter(|rv| !rv.is_empty())
                .map(str::to_owned);
            if pinned
                .as_deref()
                .is_some_and(|rv| rv != current["metadata"]["resourceVersion"])
            {
                return Err(ApiError::conflict(&format!("{RECORDS}.{GROUP}"), name));
            }
            for field in ["name", "uid", "creationTimestamp"] {
                next["metadata"][field] = current["metadata"][field].clone();
            }
            next["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
            next["kind"] = json!(KIND);
            if let Some(meta) = next["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            if !status {
                next["status"] = current.get("status").cloned().unwrap_or(Value::Null);
            }
            if next["status"].is_null() {
                if let Some(object) = next.as_object_mut() {
                    object.remove("status");
                }
            }
            let bytes = Bytes::from(next.to_string());
            match self.store.update(&key, bytes, kv.mod_revision).await {
                Ok(written) => {
                    self.indexed_at(written.mod_revision).await;
                    return Ok(with_revision(next, written.mod_revision));
                }
                Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                Err(StoreError::Conflict { .. }) => {
                    return Err(ApiError::conflict(&format!("{RECORDS}.{GROUP}"), name))
                }
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found_object(KIND, GROUP, name))
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(ApiError::conflict(&format!("{RECORDS}.{GROUP}"), name))
    }

    /// The VC named `name`.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<VirtualCluster>>, ApiError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        if let Some(index) = &self.index {
            if let Some(records) = &*index.records.read().expect("VC index lock") {
                return Ok(records.by_name.get(name).cloned());
            }
        }
        let kv = self
            .store
            .get(&Self::key(name)?)
            .await
            .map_err(store_error)?;
        Ok(kv.map(|kv| decode(&kv)).transpose()?.map(Arc::new))
    }

    /// Every VC, from the index (or storage while it loads).
    pub async fn all(&self) -> Result<Vec<Arc<VirtualCluster>>, ApiError> {
        if let Some(index) = &self.index {
            if let Some(records) = &*index.records.read().expect("VC index lock") {
                return Ok(records.by_name.values().cloned().collect());
            }
        }
        Ok(self.list().await?.0.into_iter().map(Arc::new).collect())
    }

    /// The name of the VC with `uid`, also for a while after its deletion;
    /// `None` if unknown (or while the index loads).
    pub fn name_of(&self, uid: &str) -> Option<String> {
        let index = self.index.as_ref()?;
        if let Some(records) = &*index.records.read().expect("VC index lock") {
            if let Some(vc) = records.by_uid.get(uid) {
                return Some(vc.name().to_owned());
            }
        }
        let departed = index.departed.lock().expect("departed lock");
        departed.get(uid).map(|(name, _)| name.clone())
    }

    /// A function that reads a VC's own limits by UID from the index (for
    /// the watch cache's storage limits; it holds the index weakly).
    pub fn limits_source(&self) -> kplex_registry::usage::LimitsSource {
        let index = self.index.as_ref().map(Arc::downgrade);
        Box::new(move |uid: &str| {
            let index = index.as_ref()?.upgrade()?;
            let records = index.records.read().expect("VC index lock");
            Some(records.as_ref()?.by_uid.get(uid)?.limits)
        })
    }

    /// Every VC, in name order, with the revision of the read.
    pub async fn list(&self) -> Result<(Vec<VirtualCluster>, u64), ApiError> {
        let range = self
            .store
            .range(RangeRequest::prefix(Self::prefix()?))
            .await
            .map_err(store_error)?;
        let vcs = range.kvs.iter().map(decode).collect::<Result<_, _>>()?;
        Ok((vcs, range.revision.get()))
    }

    /// Changes to VC records after `after`; `None` if that is compacted.
    pub async fn watch(
        &self,
        after: kplex_storage::Revision,
    ) -> Result<Option<kplex_storage::WatchStream>, ApiError> {
        match self.store.watch(&Self::prefix()?, after).await {
            Ok(w) => Ok(Some(w)),
            Err(StoreError::Compacted { .. }) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    }

    /// How many VCs exist.
    pub async fn count(&self) -> Result<u64, ApiError> {
        self.store
            .count(&Self::prefix()?)
            .await
            .map_err(store_error)
    }

    /// How many objects the VC holds.
    pub async fn object_count(&self, vc: &VirtualCluster) -> Result<u64, ApiError> {
        self.store
            .count(vc.keyspace()?.prefix())
            .await
            .map_err(store_error)
    }

    /// Deletes the VC: its record, then its whole key range. Returns the
    /// record as it was.
    pub async fn delete(&self, name: &str) -> Result<VirtualCluster, ApiError> {
        self.delete_clearing(name, |_| async {}).await
    }

    /// [`Registry::delete`], running `clear` (the VC's objects elsewhere:
    /// its host namespaces) after the record is gone and before the key
    /// range goes.
    pub async fn delete_clearing<F, Fut>(
        &self,
        name: &str,
        clear: F,
    ) -> Result<VirtualCluster, ApiError>
    where
        F: FnOnce(VirtualCluster) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let key = Self::key(name)?;
        let Some(kv) = self.store.get(&key).await.map_err(store_error)? else {
            return Err(ApiError::not_found_object(KIND, GROUP, name));
        };
        let vc = decode(&kv)?;
        // The record goes first: from then on no request can be authorized
        // for this VC, so nothing new lands in the range deleted next.
        match self.store.delete(&key, kv.mod_revision).await {
            Ok(deleted) => self.indexed_at(deleted.revision).await,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found_object(KIND, GROUP, name))
            }
            Err(e) => return Err(store_error(e)),
        }
        clear(vc.clone()).await;
        // A write authorized just before the record went may still be on
        // its way to storage: let it land, then delete it with the rest.
        self.writes_drained(vc.uid()).await;
        // In batches: each write, and the events it sends every watcher,
        // holds a bounded number of values however large the VC. On a
        // task of its own, so a caller that goes away does not stop it
        // halfway (the record is gone: nothing would come back for the rest).
        let prefix = vc.keyspace()?.prefix().clone();
        let store = self.store.clone();
        let deleting = tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match store.delete_batch(&prefix, DELETE_BATCH).await {
                    Ok(batch) if batch.more => failures = 0,
                    Ok(_) => {
                        // Its history serves nobody now (its watches are
                        // refused): it goes ahead of compaction, and the
                        // storage pages it held with it.
                        if let Err(e) = store.forget_history(&prefix).await {
                            tracing::warn!(error = %e, prefix = %prefix.as_str(), "a deleted VC's history is left until compaction");
                        }
                        return Ok(());
                    }
                    Err(e) if failures < 8 => {
                        failures += 1;
                        tracing::warn!(error = %e, prefix = %prefix.as_str(), "deleting a VC's keys failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << failures)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, prefix = %prefix.as_str(), "a deleted VC's keys are left in storage");
                        return Err(e);
                    }
                }
            }
        });
        deleting
            .await
            .map_err(|e| ApiError::internal(format!("deleting the VC's keys: {e}")))?
            .map_err(store_error)?;
        crate::give_back_memory();
        Ok(vc)
    }
}

/// Keeps `index` current until the registry is dropped.
async fn maintain(store: Arc<dyn Store>, index: std::sync::Weak<Index>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(current) = index.upgrade() else {
            return;
        };
        let loaded = async {
            let range = store
                .range(RangeRequest::prefix(Registry::prefix()?))
                .await
                .map_err(store_error)?;
            let mut records = Records::default();
            for kv in &range.kvs {
                records.insert(decode(kv)?);
            }
            let events = store
                .watch(&Registry::prefix()?, range.revision)
                .await
                .map_err(store_error)?;
            Ok::<_, ApiError>((records, range.revision, events))
        }
        .await;
        let mut events = match loaded {
            Ok((records, revision, events)) => {
                *current.records.write().expect("VC index lock") = Some(records);
                current.applied.send_replace(revision);
                backoff = Duration::from_millis(100);
                events
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot load the VC index; retrying");
                drop(current);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        drop(current);
        while let Some(next) = events.next().await {
            let Some(current) = index.upgrade() else {
                return;
            };
            let revision = match next {
                Ok(WatchEvent::Change(event)) => {
                    let mut records = current.records.write().expect("VC index lock");
                    let Some(records) = records.as_mut() else {
                        break;
                    };
                    match &event {
                        Event::Put { kv, .. } => match decode(kv) {
                            Ok(vc) => records.insert(vc),
                            Err(e) => tracing::warn!(error = %e.message, "unreadable VC record"),
                        },
                        Event::Delete { prev, .. } => {
                            let name = prev.key.as_str().rsplit('/').next().unwrap_or_default();
                            if let Some(vc) = records.remove(name) {
                                let mut departed = current.departed.lock().expect("departed lock");
                                departed.retain(|_, (_, at)| at.elapsed() < DEPARTED_FOR);
                                departed.insert(
                                    vc.uid().to_owned(),
                                    (name.to_owned(), std::time::Instant::now()),
                                );
                            }
                        }
                    }
                    event.revision()
                }
                Ok(WatchEvent::Progress(revision)) => revision,
                Err(e) => {
                    tracing::warn!(error = %e, "VC index watch ended; reloading");
                    break;
                }
            };
            current.applied.send_replace(revision);
        }
        // Until reloaded, lookups read storage.
        if let Some(current) = index.upgrade() {
            *current.records.write().expect("VC index lock") = None;
        }
    }
}

fn with_revision(mut object: Value, revision: kplex_storage::Revision) -> VirtualCluster {
    object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
    let policy = kplex_api::isolation::Isolation::from_spec(&object["spec"]).unwrap_or_default();
    let limits = kplex_api::limits::Limits::from_spec(&object["spec"]).unwrap_or_default();
    let text = |field: &str| {
        object["metadata"][field]
            .as_str()
            .unwrap_or_default()
            .into()
    };
    VirtualCluster {
        uid: text("uid"),
        name: text("name"),
        record: serde_json::to_vec(&object)
            .expect("a Value encodes")
            .into_boxed_slice(),
        policy: shared_policy(policy),
        limits,
    }
}

/// `policy`, as one shared copy when it is the default's (most VCs').
fn shared_policy(policy: kplex_api::isolation::Isolation) -> Arc<kplex_api::isolation::Isolation> {
    static DEFAULT: std::sync::OnceLock<Arc<kplex_api::isolation::Isolation>> =
        std::sync::OnceLock::new();
    let default = DEFAULT.get_or_init(|| {
        let spec = serde_json::json!({});
        Arc::new(kplex_api::isolation::Isolation::from_spec(&spec).unwrap_or_default())
    });
    if policy == **default {
        default.clone()
    } else {
        Arc::new(policy)
    }
}

fn decode(kv: &kplex_storage::KeyValue) -> Result<VirtualCluster, ApiError> {
    let object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt VC record {}: {e}", kv.key)))?;
    Ok(with_revision(object, kv.mod_revision))
}

/// Which storage event is a VC's departure: its record's deletion (the
/// UID read off the deleted record). The watch cache then stops handing
/// the deletion of the VC's objects to the system components' watches
/// across VCs, which drop a departed VC's objects when they see its record
/// go.
pub fn departures() -> kplex_registry::watchcache::Departures {
    let prefix = Registry::prefix().expect("the records' prefix is valid");
    Box::new(move |event| match event {
        Event::Delete { prev, .. } if prefix.contains(&prev.key) => {
            let record: Value = serde_json::from_slice(&prev.value).ok()?;
            record["metadata"]["uid"].as_str().map(str::to_owned)
        }
        _ => None,
    })
}

/// Maps a storage failure to the Status the caller sees.
pub fn store_error(e: StoreError) -> ApiError {
    kplex_registry::error::from_store(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kplex_storage::{EmbeddedOptions, EmbeddedStore};

    #[tokio::test]
    async fn a_write_authorized_before_deletion_is_deleted_with_the_vc() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
                .await
                .unwrap(),
        );
        let registry = Registry::indexed(store.clone()).await;
        let vc = registry.create("team-a", json!({})).await.unwrap();
        let uid = vc.uid().to_owned();
        // A write passed the lookup and is on its way to storage.
        let write = registry.begin_write(&uid);
        assert!(registry.get("team-a").await.unwrap().is_some());
        let deleting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.delete("team-a").await }
        });
        // The record goes at once: no new request is authorized.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while registry.get("team-a").await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        // The in-flight write lands now, after the record is gone...
        let key = vc
            .keyspace()
            .unwrap()
            .object_key("", "configmaps", Some("default"), "late")
            .unwrap();
        store.create(&key, Bytes::from_static(b"{}")).await.unwrap();
        assert!(!deleting.is_finished(), "the delete waits for the write");
        drop(write);
        deleting.await.unwrap().unwrap();
        // ...and went with the rest of the VC's keys.
        assert!(store.get(&key).await.unwrap().is_none());
        assert_eq!(
            store.count(vc.keyspace().unwrap().prefix()).await.unwrap(),
            0
        );
    }
}
