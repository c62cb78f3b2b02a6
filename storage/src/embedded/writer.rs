//! The single writer thread and its group commit.
//!
//! Every write is sent here. The thread takes all requests waiting in its
//! queue (up to [`MAX_BATCH`]), applies them in order in one redb write
//! transaction, commits once — one fsync for the whole batch — then publishes
//! the batch's events to watchers and only then answers the callers. An
//! acknowledged write is therefore on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableTable, Table};
use tokio::sync::{broadcast, oneshot};

use super::codec::{decode_kv, encode_event, encode_kv};
use super::points::PointCache;
use super::{HISTORY, KV, META, META_COMPACTED, META_REVISION};
use crate::error::{StoreError, StoreResult};
use crate::keyspace::{Key, KeyPrefix};
use crate::store::{Deleted, DeletedRange, Event, KeyValue, LocalRevision, Revision};

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 1024;

/// One committed transaction's changes, as watchers receive them.
pub(super) struct Batch {
    /// The last revision the batch wrote.
    pub revision: u64,
    pub events: Vec<Event>,
}

/// What watchers listen to: the batches, and the last revision published.
pub(super) struct Hub {
    pub batches: broadcast::Sender<Arc<Batch>>,
    /// The last revision published and how many events it made, in one
    /// word (see [`Hub::published`]); raised only after the batch carrying
    /// it was sent on `batches`.
    pub published: AtomicU64,
}

/// Bits of [`Hub::published`] that count the events.
const EVENT_BITS: u32 = 20;

impl Hub {
    /// Packs a revision and its event count for [`Hub::published`].
    pub fn pack(revision: u64, events: usize) -> u64 {
        let events = events.min(LocalRevision::MOST_EVENTS as usize) as u64;
        (revision << EVENT_BITS) | events
    }

    /// The last revision published and how many events it made.
    pub fn published(&self) -> LocalRevision {
        let packed = self.published.load(Ordering::Acquire);
        LocalRevision {
            revision: Revision::new(packed >> EVENT_BITS),
            events: (packed & u64::from(LocalRevision::MOST_EVENTS)) as u32,
        }
    }
}

pub(super) enum WriteOp {
    Create {
        key: Key,
        value: Bytes,
        reply: oneshot::Sender<StoreResult<KeyValue>>,
    },
    Update {
        key: Key,
        value: Bytes,
        expected: Revision,
        reply: oneshot::Sender<StoreResult<KeyValue>>,
    },
    Delete {
        key: Key,
        expected: Revision,
        reply: oneshot::Sender<StoreResult<Deleted>>,
    },
    DeleteRange {
        prefix: KeyPrefix,
        /// At most this many keys (the first in key order); `None`: all.
        limit: Option<usize>,
        reply: oneshot::Sender<StoreResult<DeletedRange>>,
    },
    Compact {
        revision: Revision,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    /// Forgets the history of `prefix`'s keys among the `limit` entries
    /// after `after`; answers where to go on (`None`: done).
    ForgetHistory {
        prefix: KeyPrefix,
        after: Option<HistoryKey>,
        limit: usize,
        reply: oneshot::Sender<StoreResult<Option<HistoryKey>>>,
    },
}

/// A history entry's key: its revision, and its place among the revision's
/// events.
pub(super) type HistoryKey = (u64, u32);

/// An answer held back until the batch's commit has succeeded.
enum Pending {
    Kv(
        oneshot::Sender<StoreResult<KeyValue>>,
        StoreResult<KeyValue>,
    ),
    Deleted(oneshot::Sender<StoreResult<Deleted>>, StoreResult<Deleted>),
    Range(
        oneshot::Sender<StoreResult<DeletedRange>>,
        StoreResult<DeletedRange>,
    ),
    Unit(oneshot::Sender<StoreResult<()>>, StoreResult<()>),
    Position(
        oneshot::Sender<StoreResult<Option<HistoryKey>>>,
        StoreResult<Option<HistoryKey>>,
    ),
}

impl Pending {
    /// Sends the answer; if the commit failed, every caller learns that instead.
    fn answer(self, commit_error: Option<&str>) {
        fn pick<T>(r: StoreResult<T>, err: Option<&str>) -> StoreResult<T> {
            match err {
                Some(e) => Err(StoreError::Internal(format!("commit failed: {e}"))),
                None => r,
            }
        }
        // A caller that gave up (dropped its receiver) needs no answer.
        match self {
            Pending::Kv(tx, r) => drop(tx.send(pick(r, commit_error))),
            Pending::Deleted(tx, r) => drop(tx.send(pick(r, commit_error))),
            Pending::Range(tx, r) => drop(tx.send(pick(r, commit_error))),
            Pending::Unit(tx, r) => drop(tx.send(pick(r, commit_error))),
            Pending::Position(tx, r) => drop(tx.send(pick(r, commit_error))),
        }
    }
}

pub(super) struct Writer {
    db: Arc<Database>,
    hub: Arc<Hub>,
    points: Arc<PointCache>,
    revision: u64,
    compacted: u64,
}

impl Writer {
    pub fn new(
        db: Arc<Database>,
        hub: Arc<Hub>,
        points: Arc<PointCache>,
        revision: u64,
        compacted: u64,
    ) -> Writer {
        Writer {
            db,
            hub,
            points,
            revision,
            compacted,
        }
    }

    /// Serves write requests until every sender is gone.
    pub fn run(mut self, queue: mpsc::Receiver<WriteOp>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, ops: Vec<WriteOp>) {
        let mut pending = Vec::with_capacity(ops.len());
        let mut events = Vec::new();
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let result = (|| -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut kv = txn.open_table(KV).map_err(|e| e.to_string())?;
                let mut history = txn.open_table(HISTORY).map_err(|e| e.to_string())?;
                let mut tx = Tx {
                    kv: &mut kv,
                    history: &mut history,
                    revision: &mut revision,
                    events: &mut events,
                };
                for op in ops {
                    pending.push(match op {
                        WriteOp::Create { key, value, reply } => {
                            Pending::Kv(reply, tx.create(key, value))
                        }
                        WriteOp::Update {
                            key,
                            value,
                            expected,
                            reply,
                        } => Pending::Kv(reply, tx.update(key, value, expected)),
                        WriteOp::Delete {
                            key,
                            expected,
                            reply,
                        } => Pending::Deleted(reply, tx.delete(key, expected)),
                        WriteOp::DeleteRange {
                            prefix,
                            limit,
                            reply,
                        } => Pending::Range(reply, tx.delete_range(&prefix, limit)),
                        WriteOp::Compact {
                            revision: target,
                            reply,
                        } => Pending::Unit(reply, tx.compact(target, &mut compacted)),
                        WriteOp::ForgetHistory {
                            prefix,
                            after,
                            limit,
                            reply,
                        } => Pending::Position(reply, tx.forget_history(&prefix, after, limit)),
                    });
                }
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                meta.insert(META_REVISION, revision)
                    .map_err(|e| e.to_string())?;
                meta.insert(META_COMPACTED, compacted)
                    .map_err(|e| e.to_string())?;
            }
            // The cache neither serves nor keeps the keys changed while
            // the commit makes them visible (see `points`).
            self.points.begin(events.iter().map(|e| e.key().as_str()));
            let committed = txn.commit().map_err(|e| e.to_string());
            self.points.end(events.iter().map(|e| e.key().as_str()));
            committed
        })();
        match result {
            Ok(()) => {
                self.revision = revision;
                self.compacted = compacted;
                // Events of the batch's last revision: several for a
                // range deleted at once; none for a batch that changed no
                // key, which leaves what was published as it was.
                let at_last = events
                    .iter()
                    .rev()
                    .take_while(|e| e.revision().get() == revision)
                    .count();
                if !events.is_empty() {
                    // No receiver is not an error: nobody is watching.
                    let _ = self.hub.batches.send(Arc::new(Batch { revision, events }));
                    self.hub
                        .published
                        .store(Hub::pack(revision, at_last), Ordering::Release);
                }
                for p in pending {
                    p.answer(None);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded store commit failed");
                for p in pending {
                    p.answer(Some(&e));
                }
            }
        }
    }
}

/// The tables and counters of one batch's transaction.
struct Tx<'a, 't> {
    kv: &'a mut Table<'t, &'static str, &'static [u8]>,
    history: &'a mut Table<'t, (u64, u32), &'static [u8]>,
    revision: &'a mut u64,
    events: &'a mut Vec<Event>,
}

impl Tx<'_, '_> {
    fn current(&self, key: &Key) -> StoreResult<Option<KeyValue>> {
        match self.kv.get(key.as_str()).map_err(StoreError::internal)? {
            Some(v) => Ok(Some(decode_kv(key.as_str(), v.value())?)),
            None => Ok(None),
        }
    }

    /// Records an event at `revision` (index `idx` within it).
    fn record(&mut self, revision: u64, idx: u32, event: Event) -> StoreResult<()> {
        self.history
            .insert((revision, idx), encode_event(&event).as_slice())
            .map_err(StoreError::internal)?;
        self.events.push(event);
        Ok(())
    }

    fn put(&mut self, key: Key, value: Bytes, prev: Option<KeyValue>) -> StoreResult<KeyValue> {
        let rev = *self.revision + 1;
        let create = prev.as_ref().map_or(rev, |p| p.create_revision.get());
        self.kv
            .insert(key.as_str(), encode_kv(create, rev, &value).as_slice())
            .map_err(StoreError::internal)?;
        let kv = KeyValue {
            key,
            value,
            create_revision: Revision::new(create),
            mod_revision: Revision::new(rev),
        };
        self.record(
            rev,
            0,
            Event::Put {
                kv: kv.clone(),
                prev,
            },
        )?;
        *self.revision = rev;
        Ok(kv)
    }

    fn create(&mut self, key: Key, value: Bytes) -> StoreResult<KeyValue> {
        if let Some(current) = self.current(&key)? {
            return Err(StoreError::AlreadyExists {
                current: Box::new(current),
            });
        }
        self.put(key, value, None)
    }

    fn expect(&self, key: &Key, expected: Revision) -> StoreResult<KeyValue> {
        let current = self.current(key)?.ok_or_else(|| StoreError::NotFound {
            key: key.to_string(),
        })?;
        if current.mod_revision != expected {
            return Err(StoreError::Conflict {
                expected,
                current: Box::new(current),
            });
        }
        Ok(current)
    }

    fn update(&mut self, key: Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue> {
        let prev = self.expect(&key, expected)?;
        self.put(key, value, Some(prev))
    }

    fn delete(&mut self, key: Key, expected: Revision) -> StoreResult<Deleted> {
        let prev = self.expect(&key, expected)?;
        let rev = *self.revision + 1;
        self.kv.remove(key.as_str()).map_err(StoreError::internal)?;
        let revision = Revision::new(rev);
        self.record(
            rev,
            0,
            Event::Delete {
                prev: prev.clone(),
                revision,
            },
        )?;
        *self.revision = rev;
        Ok(Deleted { prev, revision })
    }

    fn delete_range(
        &mut self,
        prefix: &KeyPrefix,
        limit: Option<usize>,
    ) -> StoreResult<DeletedRange> {
        let end = prefix.range_end();
        let mut more = false;
        let removed: Vec<(String, Vec<u8>)> = if let Some(limit) = limit {
            let mut out = Vec::new();
            for entry in self
                .kv
                .range(prefix.as_str()..end.as_str())
                .map_err(StoreError::internal)?
            {
                if out.len() == limit {
                    more = true;
                    break;
                }
                let (k, v) = entry.map_err(StoreError::internal)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            for (k, _) in &out {
                self.kv.remove(k.as_str()).map_err(StoreError::internal)?;
            }
            out
        } else {
            let mut out = Vec::new();
            let range = self
                .kv
                .extract_from_if(prefix.as_str()..end.as_str(), |_, _| true)
                .map_err(StoreError::internal)?;
            for entry in range {
                let (k, v) = entry.map_err(StoreError::internal)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            out
        };
        if removed.is_empty() {
            return Ok(DeletedRange {
                deleted: 0,
                revision: Revision::new(*self.revision),
                more: false,
            });
        }
        let rev = *self.revision + 1;
        let revision = Revision::new(rev);
        for (idx, (k, v)) in removed.iter().enumerate() {
            let prev = decode_kv(k, v)?;
            let idx = u32::try_from(idx).map_err(StoreError::internal)?;
            self.record(rev, idx, Event::Delete { prev, revision })?;
        }
        *self.revision = rev;
        Ok(DeletedRange {
            deleted: removed.len() as u64,
            revision,
            more,
        })
    }

    /// Drops the history events of the keys under `prefix` among the
    /// `limit` entries after `after` (one bounded write: other writes wait
    /// for no more than that); where to go on, `None` at the end.
    fn forget_history(
        &mut self,
        prefix: &KeyPrefix,
        after: Option<HistoryKey>,
        limit: usize,
    ) -> StoreResult<Option<HistoryKey>> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut doomed = Vec::new();
        let (mut seen, mut last) = (0, None);
        for entry in self
            .history
            .range::<HistoryKey>((start, Bound::Unbounded))
            .map_err(StoreError::internal)?
        {
            let (key, raw) = entry.map_err(StoreError::internal)?;
            seen += 1;
            last = Some(key.value());
            let raw = raw.value();
            if super::codec::event_key(raw).is_ok_and(|k| k.starts_with(prefix.as_str())) {
                doomed.push(key.value());
            }
            if seen >= limit {
                break;
            }
        }
        for key in doomed {
            self.history.remove(key).map_err(StoreError::internal)?;
        }
        Ok(last.filter(|_| seen >= limit))
    }

    fn compact(&mut self, target: Revision, compacted: &mut u64) -> StoreResult<()> {
        let target = target.get();
        if target > *self.revision {
            return Err(StoreError::FutureRevision {
                requested: Revision::new(target),
            });
        }
        if target <= *compacted {
            return Ok(());
        }
        self.history
            .retain_in(..(target, 0), |_, _| false)
            .map_err(StoreError::internal)?;
        *compacted = target;
        Ok(())
    }
}
