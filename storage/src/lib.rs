//! Revisioned key-value storage for kplex.
//!
//! This crate knows nothing of Kubernetes: it stores bytes under keys, with
//! etcd's semantics on every backend — one global, monotonic [`Revision`];
//! create/update/delete conditioned on revisions; watch from a revision with
//! no gap and no repeat; compaction that is reported, never silent.
//!
//! - [`Store`] is the trait the apiserver holds (as `Arc<dyn Store>`).
//! - [`EmbeddedStore`] is the default backend: a single file on local disk
//!   (redb), crash-safe, with group commit.
//! - [`EtcdStore`] talks to a real etcd cluster through `etcd-client`.
//! - [`TenantKeyspace`] and [`SystemKeyspace`] are the only ways to build a
//!   [`Key`]; every segment is validated, so a tenant's keyspace cannot name a
//!   key outside its own prefix.

mod embedded;
mod error;
mod etcd;
mod keyspace;
mod store;

pub use embedded::{
    EmbeddedOptions, EmbeddedStore, DEFAULT_CACHE_BYTES, DEFAULT_POINT_CACHE_BYTES,
};
pub use error::{StoreError, StoreResult};
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use keyspace::{
    AcrossClusters, Key, KeyPrefix, SystemKeyspace, TenantKeyParts, TenantKeyspace, MAX_SEGMENT_LEN,
};
pub use store::{
    Deleted, DeletedRange, Event, KeyValue, LocalRevision, RangeRequest, RangeResponse, Revision,
    Store, WatchEvent, WatchStream, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PROGRESS_INTERVAL,
};
