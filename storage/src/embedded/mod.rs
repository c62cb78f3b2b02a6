//! The embedded backend: one redb file, one writer thread with group commit,
//! history kept for watch replay and compacted in the background.
//!
//! Tables:
//! - `kv`: key → `create_rev | mod_rev | value`, the current state;
//! - `history`: `(revision, index)` → event (with the previous value), the
//!   change log that watches replay and that reads at an older revision undo;
//! - `meta`: the current and compacted revisions.

mod codec;
mod points;
mod watch;
mod writer;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use crate::error::{StoreError, StoreResult};
use crate::keyspace::{Key, KeyPrefix};
use crate::store::{
    Deleted, DeletedRange, KeyValue, LocalRevision, RangeRequest, RangeResponse, Revision, Store,
    WatchStream, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PROGRESS_INTERVAL,
};
use codec::{decode_event, decode_kv, event_key};
use points::PointCache;
use writer::{Hub, WriteOp, Writer};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
/// The file inside the data directory.
const FILE_NAME: &str = "kplex.redb";
/// Pages of the latest state up to this many keys are read on the caller's
/// thread (kubectl pages by 500).
const INLINE_RANGE_LIMIT: usize = 500;
/// Batches kept for watchers before a slow one falls back to reading history.
const WATCH_BUFFER: usize = 4096;

/// Settings of the embedded backend.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// How often history is compacted. Each pass compacts to the revision
    /// seen at the pass before, so watch replay reaches back at least one
    /// interval. `None` never compacts on its own.
    pub compaction_interval: Option<Duration>,
    /// Idle time after which a watch reports progress.
    pub progress_interval: Duration,
    /// Memory for redb's cache of the file's pages, in bytes. redb's own
    /// default (1 GiB) is a ceiling no page is evicted under: every page a
    /// large VC ever touched would stay resident after its deletion. The
    /// operating system's page cache holds the file as well, so a smaller
    /// cache costs a system call per miss, not a disk read.
    pub cache_bytes: usize,
    /// History entries looked at per write when a prefix's history is
    /// forgotten ([`Store::forget_history`]): other writes wait for no
    /// more than that.
    pub forget_batch: usize,
    /// Memory for the current values of recently read keys, in bytes (0:
    /// none): a point read of one of them opens no redb transaction.
    pub point_cache_bytes: usize,
}

/// [`EmbeddedOptions::cache_bytes`] unless told otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// [`EmbeddedOptions::point_cache_bytes`] unless told otherwise.
pub const DEFAULT_POINT_CACHE_BYTES: usize = 32 << 20;

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            compaction_interval: Some(Duration::from_secs(300)),
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            cache_bytes: DEFAULT_CACHE_BYTES,
            forget_batch: 10_000,
            point_cache_bytes: DEFAULT_POINT_CACHE_BYTES,
        }
    }
}

/// The embedded, on-disk backend. Cheap to clone; the database closes when
/// the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    hub: Arc<Hub>,
    points: Arc<PointCache>,
    options: EmbeddedOptions,
    path: PathBuf,
    queue: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its current batch; waiting
        // for it means the file is closed when the last handle is gone.
        self.queue.lock().expect("queue lock").take();
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`.
    pub async fn open(dir: impl AsRef<Path>, options: EmbeddedOptions) -> StoreResult<Self> {
        let dir = dir.as_ref().to_owned();
        let (db, revision, compacted) = tokio::task::spawn_blocking({
            let (dir, cache) = (dir.clone(), options.cache_bytes);
            move || open_database(&dir, cache)
        })
        .await
        .map_err(StoreError::internal)??;
        let db = Arc::new(db);
        let (batches, _) = broadcast::channel(WATCH_BUFFER);
        let hub = Arc::new(Hub {
            batches,
            // How many events the revision opened with made is not known
            // here: the most, which only a cache that has all of it (from
            // its start, a later event or progress) takes as applied.
            published: AtomicU64::new(Hub::pack(revision, LocalRevision::MOST_EVENTS as usize)),
        });
        let (queue, rx) = mpsc::channel();
        let points = Arc::new(PointCache::new(options.point_cache_bytes));
        let writer = Writer::new(db.clone(), hub.clone(), points.clone(), revision, compacted);
        let handle = std::thread::Builder::new()
            .name("kplex-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(StoreError::internal)?;
        let inner = Arc::new(Inner {
            db,
            hub,
            points,
            options,
            path: dir.join(FILE_NAME),
            queue: Mutex::new(Some(queue)),
            writer: Mutex::new(Some(handle)),
        });
        if let Some(interval) = inner.options.compaction_interval {
            tokio::spawn(compact_periodically(Arc::downgrade(&inner), interval));
        }
        tracing::info!(path = %inner.path.display(), %revision, "embedded store open");
        Ok(EmbeddedStore { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> WriteOp,
    ) -> StoreResult<T> {
        let (tx, rx) = oneshot::channel();
        {
            let queue = self.inner.queue.lock().expect("queue lock");
            let queue = queue.as_ref().ok_or(StoreError::Closed)?;
            queue.send(make(tx)).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn check_size(&self, value: &Bytes) -> StoreResult<()> {
        let limit = self.inner.options.max_value_bytes;
        if value.len() > limit {
            return Err(StoreError::ValueTooLarge {
                size: value.len(),
                limit,
            });
        }
        Ok(())
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(StoreError::internal)?
    }
}

fn open_database(dir: &Path, cache_bytes: usize) -> StoreResult<(Database, u64, u64)> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
    let path = dir.join(FILE_NAME);
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&path)
        .map_err(|e| StoreError::Internal(format!("opening {}: {e}", path.display())))?;
    let txn = db.begin_write().map_err(StoreError::internal)?;
    let (revision, compacted) = {
        txn.open_table(KV).map_err(StoreError::internal)?;
        txn.open_table(HISTORY).map_err(StoreError::internal)?;
        let mut meta = txn.open_table(META).map_err(StoreError::internal)?;
        let get = |meta: &redb::Table<&str, u64>, k| -> StoreResult<Option<u64>> {
            Ok(meta
                .get(k)
                .map_err(StoreError::internal)?
                .map(|v| v.value()))
        };
        // A new store starts at revision 1, as etcd does.
        let revision = match get(&meta, META_REVISION)? {
            Some(r) => r,
            None => {
                meta.insert(META_REVISION, 1)
                    .map_err(StoreError::internal)?;
                1
            }
        };
        (revision, get(&meta, META_COMPACTED)?.unwrap_or(0))
    };
    txn.commit().map_err(StoreError::internal)?;
    Ok((db, revision, compacted))
}

/// A consistent read transaction with the revisions it sees.
struct Snapshot {
    txn: redb::ReadTransaction,
    revision: u64,
    compacted: u64,
}

impl Snapshot {
    fn take(db: &Database) -> StoreResult<Snapshot> {
        let txn = db.begin_read().map_err(StoreError::internal)?;
        let meta = txn.open_table(META).map_err(StoreError::internal)?;
        let get = |k| -> StoreResult<u64> {
            Ok(meta
                .get(k)
                .map_err(StoreError::internal)?
                .map_or(0, |v| v.value()))
        };
        let revision = get(META_REVISION)?;
        let compacted = get(META_COMPACTED)?;
        drop(meta);
        Ok(Snapshot {
            txn,
            revision,
            compacted,
        })
    }

    /// Fails unless history from `revision` on is still kept.
    fn check_revision(&self, requested: u64) -> StoreResult<()> {
        if requested > self.revision {
            return Err(StoreError::FutureRevision {
                requested: Revision::new(requested),
            });
        }
        if requested < self.compacted {
            return Err(StoreError::Compacted {
                requested: Revision::new(requested),
            });
        }
        Ok(())
    }
}

fn range_blocking(db: &Database, req: &RangeRequest) -> StoreResult<RangeResponse> {
    let snap = Snapshot::take(db)?;
    let at = match req.revision {
        Some(r) => {
            snap.check_revision(r.get())?;
            r.get()
        }
        None => snap.revision,
    };
    let end = req.prefix.range_end();
    let start: Bound<&str> = match &req.after {
        Some(after) if after.as_str() >= req.prefix.as_str() => Bound::Excluded(after.as_str()),
        _ => Bound::Included(req.prefix.as_str()),
    };
    let in_range = |k: &str| {
        k < end.as_str()
            && match start {
                Bound::Excluded(s) => k > s,
                Bound::Included(s) => k >= s,
                Bound::Unbounded => true,
            }
    };

    // Reading the past: every key changed after `at` is overridden by what it
    // held just before its first later change.
    let mut overlay: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
    if at < snap.revision {
        let history = snap.txn.open_table(HISTORY).map_err(StoreError::internal)?;
        for entry in history.range((at + 1, 0)..).map_err(StoreError::internal)? {
            let (k, v) = entry.map_err(StoreError::internal)?;
            let key = event_key(v.value())?;
            if in_range(key) && !overlay.contains_key(key) {
                let event = decode_event(k.value().0, v.value())?;
                let before = match event {
                    crate::store::Event::Put { prev, .. } => prev,
                    crate::store::Event::Delete { prev, .. } => Some(prev),
                };
                overlay.insert(key.to_owned(), before);
            }
        }
    }

    let want = req.limit.filter(|&l| l > 0).unwrap_or(usize::MAX);
    let mut kvs = Vec::new();
    let mut more = false;
    let kv = snap.txn.open_table(KV).map_err(StoreError::internal)?;
    let mut current = kv
        .range::<&str>((start, Bound::Excluded(end.as_str())))
        .map_err(StoreError::internal)?
        .peekable();
    let mut past = overlay
        .range::<str, _>((start, Bound::Excluded(end.as_str())))
        .peekable();
    loop {
        // Merge the two sorted sources; the overlay wins on equal keys.
        let next_current = match current.peek() {
            Some(Ok((k, _))) => Some(k.value().to_owned()),
            Some(Err(_)) => {
                let err = current.next().expect("peeked").err().expect("error");
                return Err(StoreError::internal(err));
            }
            None => None,
        };
        let next_past = past.peek().map(|(k, _)| k.as_str());
        let item = match (next_current.as_deref(), next_past) {
            (None, None) => break,
            (Some(c), Some(p)) if p <= c => {
                if p == c {
                    current.next();
                }
                past.next().expect("peeked").1.clone()
            }
            (Some(c), _) => {
                let (_, v) = current
                    .next()
                    .expect("peeked")
                    .map_err(StoreError::internal)?;
                if overlay.contains_key(c) {
                    continue;
                }
                Some(decode_kv(c, v.value())?)
            }
            (None, Some(_)) => past.next().expect("peeked").1.clone(),
        };
        if let Some(item) = item {
            if kvs.len() == want {
                more = true;
                break;
            }
            kvs.push(item);
        }
    }
    Ok(RangeResponse {
        kvs,
        revision: Revision::new(at),
        more,
    })
}

/// Compacts every `interval` to the revision current one interval earlier.
async fn compact_periodically(inner: Weak<Inner>, interval: Duration) {
    let mut previous: Option<Revision> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let store = EmbeddedStore { inner };
        if let Some(target) = previous {
            if let Err(e) = store.compact(target).await {
                tracing::warn!(error = %e, "background compaction failed");
            }
        }
        previous = store.current_revision().await.ok();
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<KeyValue>> {
        let ticket = match self.inner.points.get(key) {
            Ok(kv) => return Ok(Some(kv)),
            Err(ticket) => ticket,
        };
        // A point read is a few microseconds from redb's cache: cheaper on
        // this thread than a hop to the blocking pool and back.
        let txn = self.inner.db.begin_read().map_err(StoreError::internal)?;
        let kv = txn.open_table(KV).map_err(StoreError::internal)?;
        let Some(v) = kv.get(key.as_str()).map_err(StoreError::internal)? else {
            return Ok(None);
        };
        let kv = decode_kv(key.as_str(), v.value())?;
        if let Some(ticket) = ticket {
            self.inner.points.fill(ticket, &kv);
        }
        Ok(Some(kv))
    }

    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        // A bounded page of the latest state is read here, like a get; reads
        // of unbounded size or of the past (a history scan) go to the
        // blocking pool.
        let small = request
            .limit
            .is_some_and(|l| l > 0 && l <= INLINE_RANGE_LIMIT);
        if small && request.revision.is_none() {
            return range_blocking(&self.inner.db, &request);
        }
        self.read(move |db| range_blocking(db, &request)).await
    }

    async fn count(&self, prefix: &KeyPrefix) -> StoreResult<u64> {
        let prefix = prefix.clone();
        self.read(move |db| {
            let txn = db.begin_read().map_err(StoreError::internal)?;
            let kv = txn.open_table(KV).map_err(StoreError::internal)?;
            let end = prefix.range_end();
            let mut n = 0;
            for entry in kv
                .range(prefix.as_str()..end.as_str())
                .map_err(StoreError::internal)?
            {
                entry.map_err(StoreError::internal)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn create(&self, key: &Key, value: Bytes) -> StoreResult<KeyValue> {
        self.check_size(&value)?;
        let key = key.clone();
        self.submit(|reply| WriteOp::Create { key, value, reply })
            .await
    }

    async fn update(&self, key: &Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue> {
        self.check_size(&value)?;
        let key = key.clone();
        self.submit(|reply| WriteOp::Update {
            key,
            value,
            expected,
            reply,
        })
        .await
    }

    async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted> {
        let key = key.clone();
        self.submit(|reply| WriteOp::Delete {
            key,
            expected,
            reply,
        })
        .await
    }

    async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange> {
        let prefix = prefix.clone();
        self.submit(|reply| WriteOp::DeleteRange {
            prefix,
            limit: None,
            reply,
        })
        .await
    }

    async fn delete_batch(&self, prefix: &KeyPrefix, limit: usize) -> StoreResult<DeletedRange> {
        let prefix = prefix.clone();
        self.submit(|reply| WriteOp::DeleteRange {
            prefix,
            limit: Some(limit.max(1)),
            reply,
        })
        .await
    }

    async fn current_revision(&self) -> StoreResult<Revision> {
        Ok(self.inner.hub.published().revision)
    }

    fn local_revision(&self) -> Option<LocalRevision> {
        // Raised before any write of the batch is acknowledged.
        Some(self.inner.hub.published())
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.submit(|reply| WriteOp::Compact { revision, reply })
            .await
    }

    async fn forget_history(&self, prefix: &KeyPrefix) -> StoreResult<()> {
        // In bounded writes, as a VC's keys are deleted.
        let mut after = None;
        loop {
            let prefix = prefix.clone();
            after = self
                .submit(|reply| WriteOp::ForgetHistory {
                    prefix,
                    after,
                    limit: self.inner.options.forget_batch.max(1),
                    reply,
                })
                .await?;
            if after.is_none() {
                return Ok(());
            }
        }
    }

    async fn watch(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream> {
        watch::start(self, prefix.clone(), after).await
    }
}
