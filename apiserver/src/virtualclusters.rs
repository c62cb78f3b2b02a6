//! The registry of virtual clusters: records under
//! `/kplex/system/virtualclusters/<name>`, each with the UID that names the
//! VC's keyspace. Deleting a VC removes its whole key range, then its record.

use std::sync::Arc;

use bytes::Bytes;
use kplex_storage::{KeyPrefix, RangeRequest, Store, StoreError, SystemKeyspace, TenantKeyspace};
use serde_json::{json, Value};

use crate::status::ApiError;

/// The admin API group and version.
pub const GROUP: &str = "tenancy.kplex.dev";
/// The served version.
pub const VERSION: &str = "v1alpha1";
/// The kind.
pub const KIND: &str = "VirtualCluster";
const RECORDS: &str = "virtualclusters";

/// The VCs, backed by the system keyspace.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
}

/// A VC as stored: the object the admin API serves, plus its revision.
#[derive(Debug, Clone)]
pub struct VirtualCluster {
    /// The object (`apiVersion`, `kind`, `metadata`, `spec`, `status`).
    pub object: Value,
}

impl VirtualCluster {
    /// The VC's UID.
    pub fn uid(&self) -> &str {
        self.object["metadata"]["uid"].as_str().unwrap_or_default()
    }

    /// The VC's name.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// The VC's keyspace.
    pub fn keyspace(&self) -> Result<TenantKeyspace, ApiError> {
        TenantKeyspace::for_vc(self.uid()).map_err(store_error)
    }
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
        Registry { store }
    }

    fn key(name: &str) -> Result<kplex_storage::Key, ApiError> {
        SystemKeyspace::key(&[RECORDS, name]).map_err(store_error)
    }

    fn prefix() -> Result<KeyPrefix, ApiError> {
        SystemKeyspace::prefix(&[RECORDS]).map_err(store_error)
    }

    /// Creates a VC named `name` with a fresh UID.
    pub async fn create(&self, name: &str, spec: Value) -> Result<VirtualCluster, ApiError> {
        validate_name(name)?;
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("zero nanoseconds is valid");
        let created = now
            .format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339 formatting");
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
            Ok(kv) => Ok(with_revision(object, kv.mod_revision)),
            Err(StoreError::AlreadyExists { .. }) => Err(ApiError::already_exists(
                &format!("{RECORDS}.{GROUP}"),
                name,
            )),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The VC named `name`.
    pub async fn get(&self, name: &str) -> Result<Option<VirtualCluster>, ApiError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        let kv = self
            .store
            .get(&Self::key(name)?)
            .await
            .map_err(store_error)?;
        kv.map(|kv| decode(&kv)).transpose()
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
        let key = Self::key(name)?;
        let Some(kv) = self.store.get(&key).await.map_err(store_error)? else {
            return Err(ApiError::not_found_object(KIND, GROUP, name));
        };
        let vc = decode(&kv)?;
        // The record goes first: from then on no request can be authorized
        // for this VC, so nothing new lands in the range deleted next.
        match self.store.delete(&key, kv.mod_revision).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::not_found_object(KIND, GROUP, name))
            }
            Err(e) => return Err(store_error(e)),
        }
        self.store
            .delete_range(vc.keyspace()?.prefix())
            .await
            .map_err(store_error)?;
        Ok(vc)
    }
}

fn with_revision(mut object: Value, revision: kplex_storage::Revision) -> VirtualCluster {
    object["metadata"]["resourceVersion"] = Value::String(revision.to_string());
    VirtualCluster { object }
}

fn decode(kv: &kplex_storage::KeyValue) -> Result<VirtualCluster, ApiError> {
    let object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt VC record {}: {e}", kv.key)))?;
    Ok(with_revision(object, kv.mod_revision))
}

/// Maps a storage failure to the Status the caller sees.
pub fn store_error(e: StoreError) -> ApiError {
    crate::status::from_store(e)
}
