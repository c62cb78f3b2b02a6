//! The one error type of the storage crate.

use crate::store::{KeyValue, Revision};

/// Result alias used throughout the crate.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything a storage call can fail with. Each variant is distinct so the
/// apiserver can map it to one HTTP status (see the comments).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key segment was rejected; no key was built. (400)
    #[error("invalid key segment {segment:?}: {reason}")]
    InvalidKey {
        /// The offending segment, escaped and truncated for display.
        segment: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The key does not exist. (404)
    #[error("key {key} not found")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },
    /// `create` found the key already present. (409 AlreadyExists)
    #[error("key {} already exists", .current.key)]
    AlreadyExists {
        /// The value currently stored.
        current: Box<KeyValue>,
    },
    /// The key's `mod_revision` differs from the caller's expectation. (409 Conflict)
    #[error("key {} was modified: expected revision {expected}, current {}", .current.key, .current.mod_revision)]
    Conflict {
        /// The revision the caller expected.
        expected: Revision,
        /// The value currently stored.
        current: Box<KeyValue>,
    },
    /// The value exceeds the configured size cap. (413)
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Size of the rejected value.
        size: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The requested revision has been compacted away. (410 Expired)
    #[error("revision {requested} has been compacted")]
    Compacted {
        /// The revision the caller asked for.
        requested: Revision,
    },
    /// The requested revision is newer than the store's current revision. (504, as
    /// kube-apiserver answers a too-new resourceVersion)
    #[error("revision {requested} is newer than the current revision")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: Revision,
    },
    /// The write would take its VC past one of its limits; nothing was
    /// written. The message names the limit. (403, as kube-apiserver
    /// answers `exceeded quota`)
    #[error("{0}")]
    QuotaExceeded(String),
    /// The backend cannot be reached. (503)
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time. (504)
    #[error("storage request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The store has been closed. (503)
    #[error("store is closed")]
    Closed,
    /// An unexpected backend failure (I/O, corruption). (500)
    #[error("storage internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        StoreError::Internal(e.to_string())
    }
}
