//! Watches on the embedded store.
//!
//! A watch subscribes to the writer's live batches *first*, then replays
//! history from its start revision up to a snapshot, then delivers live
//! batches, skipping revisions it already sent. Subscribing before reading
//! leaves no gap; tracking the last revision sent leaves no repeat. A watcher
//! that falls too far behind the live feed re-reads history the same way.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::codec::decode_event;
use super::writer::Batch;
use super::{EmbeddedStore, Inner, Snapshot, HISTORY};
use crate::error::{StoreError, StoreResult};
use crate::keyspace::KeyPrefix;
use crate::store::{Event, Revision, WatchEvent, WatchStream};

/// Events read from history per read transaction during catch-up.
const REPLAY_CHUNK: usize = 1024;
/// Events buffered between the watch task and its consumer.
const STREAM_BUFFER: usize = 256;

pub(super) async fn start(
    store: &EmbeddedStore,
    prefix: KeyPrefix,
    after: Revision,
) -> StoreResult<WatchStream> {
    let inner = &store.inner;
    // Fail fast on a start that can never be served.
    let snap = {
        let db = inner.db.clone();
        tokio::task::spawn_blocking(move || Snapshot::take(&db))
            .await
            .map_err(StoreError::internal)??
    };
    if after.get() > snap.revision {
        return Err(StoreError::FutureRevision { requested: after });
    }
    check_not_compacted(after.get(), snap.compacted)?;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let watch = Watch {
        inner: Arc::downgrade(inner),
        live: inner.hub.batches.subscribe(),
        prefix,
        last: after.get(),
        tx,
        progress_interval: inner.options.progress_interval,
    };
    tokio::spawn(watch.run());
    Ok(Box::pin(ReceiverStream::new(rx)))
}

fn check_not_compacted(after: u64, compacted: u64) -> StoreResult<()> {
    // Events from `after + 1` on are needed; history keeps those >= compacted.
    if after + 1 < compacted {
        return Err(StoreError::Compacted {
            requested: Revision::new(after),
        });
    }
    Ok(())
}

struct Watch {
    /// Weak, so an open watch does not keep a dropped store open.
    inner: Weak<Inner>,
    live: broadcast::Receiver<Arc<Batch>>,
    prefix: KeyPrefix,
    /// Every change up to this revision has been delivered.
    last: u64,
    tx: mpsc::Sender<StoreResult<WatchEvent>>,
    progress_interval: Duration,
}

/// Why a watch stops: the consumer went away, or the watch ended in error.
enum Stop {
    ConsumerGone,
    Failed(StoreError),
}

impl Watch {
    async fn run(mut self) {
        if let Err(Stop::Failed(e)) = self.serve().await {
            let _ = self.tx.send(Err(e)).await;
        }
    }

    /// Runs until the consumer goes away or the watch fails; never returns `Ok`.
    async fn serve(&mut self) -> Result<(), Stop> {
        self.catch_up().await?;
        let mut idle_until = Instant::now() + self.progress_interval;
        loop {
            tokio::select! {
                _ = self.tx.closed() => return Err(Stop::ConsumerGone),
                received = self.live.recv() => match received {
                    Ok(batch) => {
                        if self.deliver(&batch).await? {
                            idle_until = Instant::now() + self.progress_interval;
                        }
                    }
                    Err(RecvError::Lagged(_)) => self.resubscribe_and_catch_up().await?,
                    Err(RecvError::Closed) => return Err(Stop::Failed(StoreError::Closed)),
                },
                _ = tokio::time::sleep_until(idle_until) => {
                    self.report_progress().await?;
                    idle_until = Instant::now() + self.progress_interval;
                }
            }
        }
    }

    /// Sends the batch's events this watch has not seen; true if any was sent.
    async fn deliver(&mut self, batch: &Batch) -> Result<bool, Stop> {
        let mut sent = false;
        for event in &batch.events {
            if event.revision().get() > self.last && self.prefix.contains(event.key()) {
                self.send(WatchEvent::Change(event.clone())).await?;
                sent = true;
            }
        }
        self.last = self.last.max(batch.revision);
        Ok(sent)
    }

    /// Progress is only claimed for revisions whose batches were drained:
    /// `published` is raised after its batch is sent, so reading it first and
    /// draining second covers it.
    async fn report_progress(&mut self) -> Result<(), Stop> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(Stop::Failed(StoreError::Closed));
        };
        let published = inner.hub.published().revision.get();
        drop(inner);
        loop {
            match self.live.try_recv() {
                Ok(batch) => {
                    self.deliver(&batch).await?;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_)) => {
                    self.resubscribe_and_catch_up().await?;
                    break;
                }
                Err(TryRecvError::Closed) => return Err(Stop::Failed(StoreError::Closed)),
            }
        }
        self.last = self.last.max(published);
        self.send(WatchEvent::Progress(Revision::new(self.last)))
            .await
    }

    async fn resubscribe_and_catch_up(&mut self) -> Result<(), Stop> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(Stop::Failed(StoreError::Closed));
        };
        self.live = inner.hub.batches.subscribe();
        drop(inner);
        self.catch_up().await
    }

    /// Replays history after `last` up to the newest committed revision.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let Some(inner) = self.inner.upgrade() else {
                return Err(Stop::Failed(StoreError::Closed));
            };
            let db = inner.db.clone();
            drop(inner);
            let (after, prefix) = (self.last, self.prefix.clone());
            let chunk = tokio::task::spawn_blocking(move || read_history(&db, after, &prefix))
                .await
                .map_err(|e| Stop::Failed(StoreError::internal(e)))?
                .map_err(Stop::Failed)?;
            for event in chunk.events {
                self.send(WatchEvent::Change(event)).await?;
            }
            self.last = chunk.read_through;
            if chunk.complete {
                return Ok(());
            }
        }
    }

    async fn send(&self, event: WatchEvent) -> Result<(), Stop> {
        self.tx
            .send(Ok(event))
            .await
            .map_err(|_| Stop::ConsumerGone)
    }
}

struct HistoryChunk {
    /// Matching events, in order.
    events: Vec<Event>,
    /// Every event up to this revision has been read.
    read_through: u64,
    /// Whether `read_through` is the snapshot's current revision.
    complete: bool,
}

/// Reads up to about [`REPLAY_CHUNK`] events after `after`, never splitting
/// one revision's events across chunks.
fn read_history(db: &redb::Database, after: u64, prefix: &KeyPrefix) -> StoreResult<HistoryChunk> {
    let snap = Snapshot::take(db)?;
    check_not_compacted(after, snap.compacted)?;
    let history = snap.txn.open_table(HISTORY).map_err(StoreError::internal)?;
    let mut events = Vec::new();
    let mut read_through = after;
    let entries = history
        .range((after + 1, 0)..)
        .map_err(StoreError::internal)?;
    for (scanned, entry) in entries.enumerate() {
        let (k, v) = entry.map_err(StoreError::internal)?;
        let (revision, _) = k.value();
        if revision > snap.revision {
            break;
        }
        if scanned >= REPLAY_CHUNK && revision > read_through {
            return Ok(HistoryChunk {
                events,
                read_through,
                complete: false,
            });
        }
        read_through = revision;
        let event = decode_event(revision, v.value())?;
        if prefix.contains(event.key()) {
            events.push(event);
        }
    }
    Ok(HistoryChunk {
        events,
        read_through: snap.revision,
        complete: true,
    })
}
