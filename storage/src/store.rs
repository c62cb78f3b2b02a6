//! The [`Store`] trait and the values it speaks in.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::error::StoreResult;
use crate::keyspace::{Key, KeyPrefix};

/// Default cap on one stored value, as etcd's default request limit (1.5 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1536 * 1024;

/// Default idle time after which a watch reports progress.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The store's one clock: a global counter bumped by every successful write.
/// It is the object's `metadata.resourceVersion`.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(u64);

impl Revision {
    /// Wraps a raw revision number.
    pub const fn new(n: u64) -> Revision {
        Revision(n)
    }

    /// The raw revision number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// One stored key and its value.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyValue {
    /// The key.
    pub key: Key,
    /// The value bytes.
    pub value: Bytes,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
}

/// One change, as a watch reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// A key was created or updated.
    Put {
        /// The new value (its `mod_revision` is the event's revision).
        kv: KeyValue,
        /// The value before, if the key existed and that value has not been
        /// compacted away (etcd forgets it once its revision is compacted).
        prev: Option<KeyValue>,
    },
    /// A key was deleted.
    Delete {
        /// The value deleted.
        prev: KeyValue,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl Event {
    /// The revision at which the change happened.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &Key {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
}

/// Storage's latest revision as this process knows it
/// ([`Store::local_revision`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRevision {
    /// The revision of the last acknowledged write.
    pub revision: Revision,
    /// How many events that revision made: one, or several for a range
    /// deleted at once (at most [`LocalRevision::MOST_EVENTS`]: a
    /// revision of more reads as one a cache cannot know it has all of).
    pub events: u32,
}

impl LocalRevision {
    /// The most events a [`LocalRevision`] counts.
    pub const MOST_EVENTS: u32 = (1 << 20) - 1;
}

/// What a watch stream yields.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum WatchEvent {
    /// A change under the watched prefix.
    Change(Event),
    /// Every change up to and including this revision has been delivered.
    /// Sent when the watch has been idle for its progress interval. (On etcd
    /// older than 3.4.24 / 3.5.8, etcd itself may report progress ahead of a
    /// history replay still in flight; the replayed changes still follow.)
    Progress(Revision),
}

/// A watch: changes in revision order, exactly once. It ends after yielding an
/// error (e.g. [`crate::StoreError::Compacted`]).
pub type WatchStream = Pin<Box<dyn Stream<Item = StoreResult<WatchEvent>> + Send>>;

/// A read of the keys under a prefix.
#[derive(Clone, Debug)]
pub struct RangeRequest {
    /// Read keys under this prefix.
    pub prefix: KeyPrefix,
    /// Start after this key (exclusive); how pagination continues.
    pub after: Option<Key>,
    /// Return at most this many keys; `None` or `Some(0)` for all.
    pub limit: Option<usize>,
    /// Read the state as of this revision (for a consistent paginated read);
    /// `None` reads the latest.
    pub revision: Option<Revision>,
}

impl RangeRequest {
    /// All keys under `prefix`, latest state.
    pub fn prefix(prefix: KeyPrefix) -> RangeRequest {
        RangeRequest {
            prefix,
            after: None,
            limit: None,
            revision: None,
        }
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug)]
pub struct RangeResponse {
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// The revision the read is consistent at.
    pub revision: Revision,
    /// Whether keys remain beyond the limit.
    pub more: bool,
}

/// The result of a [`Store::delete`].
#[derive(Clone, Debug)]
pub struct Deleted {
    /// The value that was deleted.
    pub prev: KeyValue,
    /// The revision of the deletion.
    pub revision: Revision,
}

/// The result of a [`Store::delete_range`].
#[derive(Clone, Copy, Debug)]
pub struct DeletedRange {
    /// How many keys were deleted.
    pub deleted: u64,
    /// The revision of the deletion (the current revision if nothing was deleted).
    pub revision: Revision,
    /// Whether keys remain under the prefix ([`Store::delete_batch`]).
    pub more: bool,
}

/// A revisioned key-value store with etcd's semantics. Every backend passes
/// the same conformance suite (`storage/tests/conformance.rs`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`.
    async fn get(&self, key: &Key) -> StoreResult<Option<KeyValue>>;

    /// Keys under a prefix, in key order, consistent at one revision.
    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse>;

    /// How many keys are under `prefix` now.
    async fn count(&self, prefix: &KeyPrefix) -> StoreResult<u64>;

    /// Stores `value` under `key` if the key does not exist
    /// (else [`crate::StoreError::AlreadyExists`] with the current value).
    async fn create(&self, key: &Key, value: Bytes) -> StoreResult<KeyValue>;

    /// Replaces the value of `key` if its `mod_revision` is `expected`
    /// (else [`crate::StoreError::Conflict`] with the current value, or
    /// [`crate::StoreError::NotFound`]).
    async fn update(&self, key: &Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue>;

    /// Deletes `key` if its `mod_revision` is `expected` (else `Conflict` or `NotFound`).
    async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted>;

    /// Deletes every key under `prefix` in one write, at one revision.
    async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange>;

    /// Deletes the first `limit` keys under `prefix` (in key order) in one
    /// write, at one revision; `more` says whether keys remain. A large
    /// range deleted batch by batch never holds more than one batch's
    /// values (nor sends more events at once) in the process.
    async fn delete_batch(&self, prefix: &KeyPrefix, limit: usize) -> StoreResult<DeletedRange>;

    /// The revision of the last write.
    async fn current_revision(&self) -> StoreResult<Revision>;

    /// The revision of the last acknowledged write and how many events it
    /// made, when this process knows them without asking anyone (the
    /// embedded store, whose only writer is here); `None` when only
    /// storage can tell (etcd). Wrappers forward it: one that does not
    /// only sends its consistent lists to storage instead of the watch
    /// cache.
    fn local_revision(&self) -> Option<LocalRevision> {
        None
    }

    /// Forgets history before `revision`: reads and watches from older
    /// revisions fail with [`crate::StoreError::Compacted`] afterwards.
    async fn compact(&self, revision: Revision) -> StoreResult<()>;

    /// Forgets the history of the keys under `prefix` at once, ahead of
    /// compaction (a deleted VC's: nothing may read or watch it again).
    /// Reads of those keys at older revisions then see them as they are
    /// now. A backend that cannot (etcd keeps one history for all keys)
    /// keeps it until compaction.
    async fn forget_history(&self, _prefix: &KeyPrefix) -> StoreResult<()> {
        Ok(())
    }

    /// Every change under `prefix` after revision `after`, in order, exactly
    /// once, then live changes; `Progress` when idle.
    async fn watch(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream>;
}
