//! The watch cache: one storage watch over everything kplex stores (`/kplex/`),
//! fanned out to every client watch in the process.
//!
//! - A **ring** of the most recent events lets a watch start from any
//!   revision it still covers: the matching events are replayed from memory
//!   and the watch joins the live feed in the same critical section, so
//!   nothing is missed or repeated. Older starts go to storage (which replays
//!   its history or answers 410).
//! - **Subscribers** are indexed by their key prefix; an event is offered to
//!   the subscribers of each `/`-ended prefix of its key (a handful of hash
//!   lookups), never to the rest. A subscriber that stops reading (its
//!   buffer full) is dropped: its stream ends and the client re-watches, as
//!   kube-apiserver does with slow watchers.
//! - **Across VCs**: kplex's system components watch one resource in
//!   every VC at once ([`WatchCache::watch_across`]); such a subscriber is
//!   indexed by the resource, and an event is offered to it when its key is
//!   that resource's in some VC (never a system key).
//! - **Lists at `resourceVersion=0`** ("any") are served from memory: the
//!   first one of a prefix reads storage at the cache's revision, replays
//!   the ring on top and keeps the result current from the feed; the least
//!   recently listed prefixes are evicted past an object budget.
//!
//! Nothing here is per VC: an idle VC has no subscriber, no list, no task
//! and no timer. The one task is the feed. If the storage watch fails
//! (storage down, the feed compacted away), every subscriber's stream ends,
//! the cache forgets its state, and watches go to storage directly until the
//! feed is back.
//!
//! `WatchCache` is itself a [`Store`]: everything but `watch` passes through.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use kplex_storage::{
    AcrossClusters, Deleted, DeletedRange, Event, Key, KeyPrefix, KeyValue, RangeRequest,
    RangeResponse, Revision, Store, StoreError, StoreResult, TenantKeyspace, WatchEvent,
    WatchStream,
};
use tokio::sync::mpsc;

/// How much the cache keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events kept for watches that start in the past.
    pub ring: usize,
    /// Events a watch may have unread before it is dropped as too slow.
    pub subscriber_buffer: usize,
    /// Objects kept for `resourceVersion=0` lists, over all prefixes.
    pub list_budget: usize,
    /// Prefixes with a kept list (empty lists cost no objects, but a map
    /// entry each).
    pub list_prefixes: usize,
    /// While events flow, every watch hears the cache's revision at least
    /// this often, so a quiet watch's bookmarks keep up with a busy store.
    pub progress_every: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ring: 8192,
            subscriber_buffer: 1024,
            list_budget: 100_000,
            list_prefixes: 10_000,
            progress_every: Duration::from_secs(1),
        }
    }
}

/// See the module documentation.
pub struct WatchCache {
    store: Arc<dyn Store>,
    shared: Arc<Mutex<State>>,
    usage: Arc<crate::usage::Usage>,
}

/// What the cache holds, behind one lock.
#[derive(Default)]
struct State {
    limits: Limits,
    /// Whether the feed is running (otherwise watches go to storage).
    live: bool,
    /// Every event up to this revision has been applied.
    revision: Revision,
    /// The ring holds every event after this revision.
    floor: Revision,
    ring: VecDeque<Event>,
    /// Prefix → its watches.
    subscribers: HashMap<String, Vec<Subscriber>>,
    next_id: u64,
    /// Prefix → the objects under it, for `resourceVersion=0` lists.
    lists: HashMap<String, CachedList>,
    /// Objects held in `lists`.
    listed_objects: usize,
    /// Ticks for least-recently-listed eviction.
    clock: u64,
    /// Tells waiters the revision applied.
    applied: Applied,
    /// When progress was last sent to every watch.
    progress_sent: Option<std::time::Instant>,
    /// Tells which event is a VC's departure (its record's deletion).
    departures: Option<Departures>,
    /// VCs departed lately, by UID: the revision of the departure, and
    /// when it was seen. Their objects' later events (their deletion) go
    /// to their own watches only, not to the system components' watches
    /// across VCs, which learn of the departure from the VC records.
    departed: HashMap<String, (Revision, std::time::Instant)>,
}

/// Reads a VC's UID off the event that is its departure.
pub type Departures = Box<dyn Fn(&Event) -> Option<String> + Send + Sync>;

/// How long a departed VC is remembered (its deletion is done long before).
const DEPARTED_FOR: Duration = Duration::from_secs(600);

impl State {
    /// Whether `event` is of a VC that departed before it.
    fn after_departure(&self, event: &Event) -> bool {
        if self.departed.is_empty() {
            return false;
        }
        TenantKeyspace::parse(event.key())
            .and_then(|parts| self.departed.get(parts.vc_uid))
            .is_some_and(|(revision, _)| event.revision() > *revision)
    }
}

/// The applied revision, for [`WatchCache::caught_up`].
struct Applied(tokio::sync::watch::Sender<Revision>);

impl Default for Applied {
    fn default() -> Applied {
        Applied(tokio::sync::watch::channel(Revision::new(0)).0)
    }
}

struct Subscriber {
    id: u64,
    /// Events at or before this revision were delivered (or not wanted).
    after: Revision,
    tx: mpsc::Sender<StoreResult<WatchEvent>>,
}

struct CachedList {
    objects: BTreeMap<String, KeyValue>,
    used: u64,
}

/// A snapshot of the cache's size, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// The feed is running.
    pub live: bool,
    /// The revision the cache has applied.
    pub revision: Revision,
    /// Open watches served from the cache.
    pub subscribers: usize,
    /// Prefixes with a cached list.
    pub lists: usize,
    /// Events in the ring.
    pub ring: usize,
}

impl CacheStats {
    /// The stats in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "kplex_watch_cache_live",
                "1 while the watch cache's storage watch runs.",
                u64::from(self.live),
            ),
            (
                "kplex_watch_cache_revision",
                "The storage revision the watch cache has applied.",
                self.revision.get(),
            ),
            (
                "kplex_watch_cache_watchers",
                "Client watches served from the watch cache.",
                self.subscribers as u64,
            ),
            (
                "kplex_watch_cache_lists",
                "Key prefixes with a cached list.",
                self.lists as u64,
            ),
            (
                "kplex_watch_cache_events",
                "Recent events kept for watches that start in the past.",
                self.ring as u64,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
        out
    }
}

impl WatchCache {
    /// Opens the feed on `store` and keeps it running (reopening it after a
    /// failure) on one task. Returns once the feed is open, or once it has
    /// failed for the first time (watches then go to storage meanwhile).
    pub async fn start(store: Arc<dyn Store>) -> Arc<WatchCache> {
        WatchCache::start_with(store, Limits::default()).await
    }

    /// [`WatchCache::start`] with other limits.
    pub async fn start_with(store: Arc<dyn Store>, limits: Limits) -> Arc<WatchCache> {
        let state = State {
            limits,
            ..State::default()
        };
        let cache = Arc::new(WatchCache {
            store: store.clone(),
            shared: Arc::new(Mutex::new(state)),
            usage: Default::default(),
        });
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        tokio::spawn(feed(
            store,
            Arc::downgrade(&cache.shared),
            cache.usage.clone(),
            opened_tx,
        ));
        let _ = opened.await;
        cache
    }

    /// Tells the cache which event is a VC's departure (the server knows
    /// its records' shape; the cache does not).
    pub fn set_departures(&self, departures: Departures) {
        self.state().departures = Some(departures);
    }

    /// An update of `current` (as read) to `value` if nothing wrote it
    /// since, held to its VC's limits by exactly what it adds (the
    /// `Store::update` of the trait, which knows no previous size, claims
    /// the whole new value first).
    pub async fn update_from(&self, current: &KeyValue, value: Bytes) -> StoreResult<KeyValue> {
        let key = &current.key;
        let claim = match (value.len() as u64).checked_sub(current.value.len() as u64) {
            Some(grows) if grows > 0 => {
                let added = crate::usage::Used {
                    bytes: grows,
                    objects: 0,
                };
                self.usage.reserve(&*self.store, key, added).await?
            }
            // Shrinking, or the same size: always allowed.
            _ => None,
        };
        let kv = self.store.update(key, value, current.mod_revision).await?;
        if let Some(claim) = claim {
            claim.stored();
        }
        Ok(kv)
    }

    /// An update its VC's limits never refuse: marking an object deleted
    /// (it grows by a timestamp) must work at any use, or a VC at its
    /// limit could free nothing. (The feed counts it like any write.)
    pub async fn update_unlimited(
        &self,
        key: &Key,
        value: Bytes,
        expected: Revision,
    ) -> StoreResult<KeyValue> {
        self.store.update(key, value, expected).await
    }

    /// What each VC stores, and its storage limits.
    pub fn usage(&self) -> &crate::usage::Usage {
        &self.usage
    }

    /// What the VC with `uid` stores now (`None` while the feed is down).
    pub async fn used(&self, uid: &str) -> StoreResult<Option<crate::usage::Used>> {
        self.usage.used(&*self.store, uid).await
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock().expect("watch cache lock")
    }

    /// Returns once the cache has applied `revision` (never while the feed
    /// is down: bound it with a timeout).
    pub async fn caught_up(&self, revision: Revision) {
        let mut applied = self.state().applied.0.subscribe();
        let _ = applied.wait_for(|r| *r >= revision).await;
    }

    /// Current size.
    pub fn stats(&self) -> CacheStats {
        let state = self.state();
        CacheStats {
            live: state.live,
            revision: state.revision,
            subscribers: state.subscribers.values().map(Vec::len).sum(),
            lists: state.lists.len(),
            ring: state.ring.len(),
        }
    }

    /// The objects under `prefix` at the cache's revision, for a
    /// `resourceVersion=0` list; `None` when the cache cannot answer (feed
    /// down, or the caller needs something newer than `not_older_than` the
    /// cache has) and storage must.
    pub async fn list(
        &self,
        prefix: &KeyPrefix,
        not_older_than: Option<Revision>,
    ) -> Option<(Vec<KeyValue>, Revision)> {
        let base = {
            let mut state = self.state();
            if !state.live || not_older_than.is_some_and(|min| min > state.revision) {
                return None;
            }
            state.clock += 1;
            let (clock, revision) = (state.clock, state.revision);
            if let Some(list) = state.lists.get_mut(prefix.as_str()) {
                list.used = clock;
                return Some((list.objects.values().cloned().collect(), revision));
            }
            revision
        };
        // First list of this prefix: read storage at the cache's revision,
        // then catch up from the ring.
        let page = self
            .store
            .range(RangeRequest {
                prefix: prefix.clone(),
                after: None,
                limit: None,
                revision: Some(base),
            })
            .await
            .ok()?;
        let mut state = self.state();
        if !state.live || state.floor > base {
            // The ring no longer reaches back to `base`: answer at `base`
            // (any revision will do) without caching.
            return Some((page.kvs, base));
        }
        let mut objects: BTreeMap<String, KeyValue> = page
            .kvs
            .into_iter()
            .map(|kv| (kv.key.as_str().to_owned(), kv))
            .collect();
        for event in state.events_after(base) {
            if prefix.contains(event.key()) {
                apply_to(&mut objects, event);
            }
        }
        let revision = state.revision;
        let out: Vec<KeyValue> = objects.values().cloned().collect();
        let budget = state.limits.list_budget;
        if !state.lists.contains_key(prefix.as_str()) && objects.len() <= budget {
            while state.listed_objects + objects.len() > budget
                || state.lists.len() >= state.limits.list_prefixes.max(1)
            {
                state.evict_one();
            }
            state.listed_objects += objects.len();
            let used = state.clock;
            state
                .lists
                .insert(prefix.as_str().to_owned(), CachedList { objects, used });
        }
        Some((out, revision))
    }

    /// A watch of `prefix` after `after`, from the cache when it reaches back
    /// that far, else from storage.
    async fn subscribe(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream> {
        let cached =
            self.subscribe_cached(prefix.as_str(), after, false, |key| prefix.contains(key));
        match cached {
            Some(stream) => Ok(stream),
            None => self.store.watch(prefix, after).await,
        }
    }

    /// A watch of one resource in every VC after `after` (the system
    /// components' cross-VC watch), from the cache when it reaches back
    /// that far, else from storage's watch of every VC, filtered.
    pub async fn watch_across(
        &self,
        across: &AcrossClusters,
        after: Revision,
    ) -> StoreResult<WatchStream> {
        if let Some(stream) =
            self.subscribe_cached(across.index(), after, true, |key| across.contains(key))
        {
            return Ok(stream);
        }
        let across = across.clone();
        let all = self
            .store
            .watch(&TenantKeyspace::all_clusters(), after)
            .await?;
        Ok(Box::pin(all.filter(move |item| {
            let keep = match item {
                Ok(WatchEvent::Change(event)) => across.contains(event.key()),
                _ => true,
            };
            std::future::ready(keep)
        })))
    }

    /// Subscribes under `index` (a key prefix, or an [`AcrossClusters`]
    /// index: `across`) with the ring's events after `after` that `matches`
    /// first.
    fn subscribe_cached(
        &self,
        index: &str,
        after: Revision,
        across: bool,
        matches: impl Fn(&Key) -> bool,
    ) -> Option<WatchStream> {
        let mut state = self.state();
        if !state.live || after < state.floor {
            return None;
        }
        let replay: Vec<Event> = state
            .events_after(after)
            .filter(|e| matches(e.key()) && !(across && state.after_departure(e)))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(state.limits.subscriber_buffer + replay.len());
        for event in replay {
            tx.try_send(Ok(WatchEvent::Change(event)))
                .expect("the buffer has room for the replay");
        }
        state.next_id += 1;
        let id = state.next_id;
        let after = after.max(state.revision);
        state
            .subscribers
            .entry(index.to_owned())
            .or_default()
            .push(Subscriber { id, after, tx });
        Some(Box::pin(CacheWatch {
            rx,
            _guard: Unsubscribe {
                shared: Arc::downgrade(&self.shared),
                prefix: index.to_owned(),
                id,
            },
        }))
    }
}

/// Runs the feed for as long as the cache exists.
async fn feed(
    store: Arc<dyn Store>,
    shared: Weak<Mutex<State>>,
    usage: Arc<crate::usage::Usage>,
    opened: tokio::sync::oneshot::Sender<()>,
) {
    let mut opened = Some(opened);
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = match store.current_revision().await {
            Ok(revision) => store
                .watch(&KeyPrefix::root(), revision)
                .await
                .map(|w| (revision, w)),
            Err(e) => Err(e),
        };
        match started {
            Ok((revision, mut events)) => {
                let Some(state) = shared.upgrade() else {
                    return;
                };
                state.lock().expect("watch cache lock").go_live(revision);
                drop(state);
                usage.go_live();
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
                backoff = Duration::from_millis(100);
                while let Some(next) = events.next().await {
                    let Some(state) = shared.upgrade() else {
                        return;
                    };
                    let mut state = state.lock().expect("watch cache lock");
                    match next {
                        Ok(WatchEvent::Change(event)) => {
                            usage.observe(&event);
                            state.apply(event)
                        }
                        Ok(WatchEvent::Progress(revision)) => state.progress(revision),
                        Err(e) => {
                            tracing::warn!(error = %e, "watch cache feed failed; reopening");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "watch cache feed cannot open; retrying");
                if let Some(opened) = opened.take() {
                    let _ = opened.send(());
                }
            }
        }
        let Some(state) = shared.upgrade() else {
            return;
        };
        state.lock().expect("watch cache lock").go_dark();
        drop(state);
        usage.go_dark();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl State {
    fn go_live(&mut self, revision: Revision) {
        self.live = true;
        self.revision = revision;
        self.floor = revision;
        self.ring.clear();
        self.applied.0.send_replace(revision);
        self.progress_sent = Some(std::time::Instant::now());
    }

    /// The feed broke: every watch ends (clients re-watch), and the cache
    /// forgets what it can no longer keep current.
    fn go_dark(&mut self) {
        self.live = false;
        self.subscribers.clear();
        self.lists.clear();
        self.listed_objects = 0;
        self.ring.clear();
    }

    fn apply(&mut self, event: Event) {
        let revision = event.revision();
        if revision <= self.revision {
            return;
        }
        self.revision = revision;
        let key = event.key().as_str().to_owned();
        for (end, _) in key.match_indices('/') {
            let prefix = &key[..=end];
            if let Some(list) = self.lists.get_mut(prefix) {
                let before = list.objects.len();
                apply_to(&mut list.objects, &event);
                self.listed_objects = self.listed_objects + list.objects.len() - before;
            }
            self.offer(prefix, &event);
        }
        if let Some(uid) = self.departures.as_ref().and_then(|d| d(&event)) {
            self.depart(uid, revision);
        }
        // The system components' watches of one resource in every VC
        // (but for a departed VC's objects).
        if let Some(index) = AcrossClusters::index_of(event.key()) {
            if !self.after_departure(&event) {
                let index = index.to_owned();
                self.offer(&index, &event);
            }
        }
        self.ring.push_back(event);
        if self.ring.len() > self.limits.ring {
            if let Some(oldest) = self.ring.pop_front() {
                self.floor = oldest.revision();
            }
        }
        self.applied.0.send_replace(revision);
        if self
            .progress_sent
            .is_none_or(|sent| sent.elapsed() >= self.limits.progress_every)
        {
            self.progress(revision);
        }
    }

    /// The VC with `uid` departed at `revision`: its own watches end (its
    /// tenants' credentials no longer work; a client that watches again
    /// is refused), its lists are dropped, and the deletion of its objects
    /// goes to no watch across VCs.
    fn depart(&mut self, uid: String, revision: Revision) {
        let now = std::time::Instant::now();
        self.departed
            .retain(|_, (_, at)| now.duration_since(*at) < DEPARTED_FOR);
        if let Ok(keyspace) = TenantKeyspace::for_vc(&uid) {
            let prefix = keyspace.prefix().as_str();
            self.subscribers
                .retain(|index, _| !index.starts_with(prefix));
            let mut dropped = 0;
            self.lists.retain(|index, list| {
                let keep = !index.starts_with(prefix);
                if !keep {
                    dropped += list.objects.len();
                }
                keep
            });
            self.listed_objects -= dropped;
        }
        self.departed.insert(uid, (revision, now));
    }

    /// Offers `event` to the subscribers under `index`; drops those too slow
    /// to take it.
    fn offer(&mut self, index: &str, event: &Event) {
        let revision = event.revision();
        let Some(subscribers) = self.subscribers.get_mut(index) else {
            return;
        };
        subscribers.retain(|s| {
            if revision <= s.after {
                return true;
            }
            match s.tx.try_send(Ok(WatchEvent::Change(event.clone()))) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(index, "watcher too slow; closing its watch");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if subscribers.is_empty() {
            self.subscribers.remove(index);
        }
    }

    /// Storage says everything up to `revision` has been seen: so do the
    /// watches (their bookmarks come from this).
    fn progress(&mut self, revision: Revision) {
        if revision < self.revision {
            return;
        }
        self.revision = revision;
        self.applied.0.send_replace(revision);
        self.progress_sent = Some(std::time::Instant::now());
        for subscribers in self.subscribers.values_mut() {
            subscribers.retain(|s| {
                if revision < s.after {
                    return true;
                }
                // A full buffer loses only this progress report.
                !matches!(
                    s.tx.try_send(Ok(WatchEvent::Progress(revision))),
                    Err(mpsc::error::TrySendError::Closed(_))
                )
            });
        }
        self.subscribers.retain(|_, s| !s.is_empty());
    }

    /// The ring's events after `revision`: the ring is in revision order,
    /// so a binary search finds the first (a watch from a recent revision
    /// looks at no others).
    fn events_after(&self, revision: Revision) -> impl Iterator<Item = &Event> {
        let first = self.ring.partition_point(|e| e.revision() <= revision);
        self.ring.range(first..)
    }

    fn evict_one(&mut self) {
        let oldest = self
            .lists
            .iter()
            .min_by_key(|(_, l)| l.used)
            .map(|(p, _)| p.clone());
        if let Some(prefix) = oldest {
            if let Some(list) = self.lists.remove(&prefix) {
                self.listed_objects -= list.objects.len();
            }
        }
    }
}

fn apply_to(objects: &mut BTreeMap<String, KeyValue>, event: &Event) {
    match event {
        Event::Put { kv, .. } => {
            objects.insert(kv.key.as_str().to_owned(), kv.clone());
        }
        Event::Delete { prev, .. } => {
            objects.remove(prev.key.as_str());
        }
    }
}

/// A watch served from the cache; unsubscribes when dropped.
struct CacheWatch {
    rx: mpsc::Receiver<StoreResult<WatchEvent>>,
    _guard: Unsubscribe,
}

impl Stream for CacheWatch {
    type Item = StoreResult<WatchEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

struct Unsubscribe {
    shared: Weak<Mutex<State>>,
    prefix: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.lock().expect("watch cache lock");
        if let Some(subscribers) = state.subscribers.get_mut(&self.prefix) {
            subscribers.retain(|s| s.id != self.id);
            if subscribers.is_empty() {
                state.subscribers.remove(&self.prefix);
            }
        }
    }
}

#[async_trait]
impl Store for WatchCache {
    async fn get(&self, key: &Key) -> StoreResult<Option<KeyValue>> {
        self.store.get(key).await
    }
    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        self.store.range(request).await
    }
    async fn count(&self, prefix: &KeyPrefix) -> StoreResult<u64> {
        self.store.count(prefix).await
    }
    /// A create within its VC's limits (see [`crate::usage`]).
    async fn create(&self, key: &Key, value: Bytes) -> StoreResult<KeyValue> {
        let amount = crate::usage::Used {
            bytes: (key.as_str().len() + value.len()) as u64,
            objects: 1,
        };
        let claim = self.usage.reserve(&*self.store, key, amount).await?;
        let kv = self.store.create(key, value).await?;
        if let Some(claim) = claim {
            claim.stored();
        }
        Ok(kv)
    }
    /// An update within its VC's limits: one that grows the object needs
    /// room for what it adds (shrinking is always allowed).
    async fn update(&self, key: &Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue> {
        let size = (key.as_str().len() + value.len()) as u64;
        // At most the whole new value is added: if that fits, the
        // current size need not be read.
        let whole = crate::usage::Used {
            bytes: size,
            objects: 0,
        };
        let claim = match self.usage.reserve(&*self.store, key, whole).await {
            Err(StoreError::QuotaExceeded(_)) => {
                let before = match self.store.get(key).await? {
                    Some(kv) => (kv.key.as_str().len() + kv.value.len()) as u64,
                    None => 0,
                };
                if size <= before {
                    None
                } else {
                    let added = crate::usage::Used {
                        bytes: size - before,
                        objects: 0,
                    };
                    self.usage.reserve(&*self.store, key, added).await?
                }
            }
            other => other?,
        };
        let kv = self.store.update(key, value, expected).await?;
        if let Some(claim) = claim {
            claim.stored();
        }
        Ok(kv)
    }
    async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted> {
        self.store.delete(key, expected).await
    }
    async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange> {
        self.store.delete_range(prefix).await
    }
    async fn delete_batch(&self, prefix: &KeyPrefix, limit: usize) -> StoreResult<DeletedRange> {
        self.store.delete_batch(prefix, limit).await
    }
    async fn current_revision(&self) -> StoreResult<Revision> {
        self.store.current_revision().await
    }
    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.store.compact(revision).await
    }
    async fn watch(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream> {
        self.subscribe(prefix, after).await
    }
}

impl std::fmt::Debug for WatchCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchCache")
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kplex_storage::{EmbeddedOptions, EmbeddedStore, TenantKeyspace};

    async fn embedded(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(
            EmbeddedStore::open(dir, EmbeddedOptions::default())
                .await
                .unwrap(),
        )
    }

    /// A store that counts its range reads.
    struct CountingStore {
        inner: Arc<dyn Store>,
        ranges: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Store for CountingStore {
        async fn get(&self, key: &Key) -> StoreResult<Option<KeyValue>> {
            self.inner.get(key).await
        }
        async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
            self.ranges
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.range(request).await
        }
        async fn count(&self, prefix: &KeyPrefix) -> StoreResult<u64> {
            self.inner.count(prefix).await
        }
        async fn create(&self, key: &Key, value: Bytes) -> StoreResult<KeyValue> {
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &Key,
            value: Bytes,
            expected: Revision,
        ) -> StoreResult<KeyValue> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted> {
            self.inner.delete(key, expected).await
        }
        async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange> {
            self.inner.delete_range(prefix).await
        }
        async fn delete_batch(
            &self,
            prefix: &KeyPrefix,
            limit: usize,
        ) -> StoreResult<DeletedRange> {
            self.inner.delete_batch(prefix, limit).await
        }
        async fn current_revision(&self) -> StoreResult<Revision> {
            self.inner.current_revision().await
        }
        async fn compact(&self, revision: Revision) -> StoreResult<()> {
            self.inner.compact(revision).await
        }
        async fn watch(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream> {
            self.inner.watch(prefix, after).await
        }
    }

    fn key(vc: &str, ns: &str, name: &str) -> Key {
        TenantKeyspace::for_vc(vc)
            .unwrap()
            .object_key("", "configmaps", Some(ns), name)
            .unwrap()
    }

    fn configmaps(vc: &str) -> KeyPrefix {
        TenantKeyspace::for_vc(vc)
            .unwrap()
            .resource_prefix("", "configmaps")
            .unwrap()
    }

    async fn next_change(w: &mut WatchStream) -> Event {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), w.next())
                .await
                .expect("an event within 10 s")
                .expect("the watch is open")
                .unwrap();
            if let WatchEvent::Change(event) = next {
                return event;
            }
        }
    }

    /// Waits (bounded) until the cache has applied `revision`.
    async fn caught_up(cache: &WatchCache, revision: Revision) {
        tokio::time::timeout(Duration::from_secs(10), cache.caught_up(revision))
            .await
            .unwrap_or_else(|_| panic!("cache stuck at {:?}", cache.stats()));
    }

    #[tokio::test]
    async fn each_watch_gets_its_own_prefix_in_order_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache = WatchCache::start(embedded(dir.path()).await).await;
        assert!(cache.stats().live);
        let start = cache.current_revision().await.unwrap();
        // "a" is a textual prefix of "ab": the key boundary must hold.
        let mut a = cache.watch(&configmaps("a"), start).await.unwrap();
        let mut ab = cache.watch(&configmaps("ab"), start).await.unwrap();
        assert_eq!(cache.stats().subscribers, 2);
        for (vc, name) in [("ab", "x"), ("a", "one"), ("ab", "y"), ("a", "two")] {
            cache
                .create(&key(vc, "default", name), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        for (watch, want) in [(&mut a, ["one", "two"]), (&mut ab, ["x", "y"])] {
            for name in want {
                let event = next_change(watch).await;
                assert!(
                    event.key().as_str().ends_with(&format!("/default/{name}")),
                    "{event:?}"
                );
            }
        }
        drop(a);
        assert_eq!(cache.stats().subscribers, 1, "a dropped watch unsubscribes");
        drop(ab);
        assert_eq!(cache.stats().subscribers, 0);
    }

    #[tokio::test]
    async fn a_watch_across_vcs_gets_its_resource_from_every_vc_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            ring: 3,
            ..Limits::default()
        };
        let cache = WatchCache::start_with(embedded(dir.path()).await, limits).await;
        let start = cache.current_revision().await.unwrap();
        let configmaps = AcrossClusters::resource("", "configmaps").unwrap();
        let mut across = cache.watch_across(&configmaps, start).await.unwrap();
        assert_eq!(cache.stats().subscribers, 1);
        let secret = |vc: &str| {
            TenantKeyspace::for_vc(vc)
                .unwrap()
                .object_key("", "secrets", Some("default"), "s")
                .unwrap()
        };
        let system = TenantKeyspace::system_cluster()
            .object_key("", "configmaps", Some("kube-system"), "sys")
            .unwrap();
        for k in [
            key("a", "default", "one"),
            secret("a"),
            system.clone(),
            key("b", "default", "two"),
        ] {
            cache.create(&k, Bytes::from_static(b"{}")).await.unwrap();
        }
        let first = next_change(&mut across).await;
        let second = next_change(&mut across).await;
        assert_eq!(first.key(), &key("a", "default", "one"));
        assert_eq!(second.key(), &key("b", "default", "two"));
        // From the past: the ring (3 events) replays what it holds, older
        // starts go to storage; both filtered to the resource.
        let last = cache.current_revision().await.unwrap();
        caught_up(&cache, last).await;
        let mut recent = cache
            .watch_across(&configmaps, Revision::new(last.get() - 1))
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut recent).await.key(),
            &key("b", "default", "two")
        );
        let mut old = cache.watch_across(&configmaps, start).await.unwrap();
        assert_eq!(cache.stats().subscribers, 2, "the old start is storage's");
        assert_eq!(
            next_change(&mut old).await.key(),
            &key("a", "default", "one")
        );
        assert_eq!(
            next_change(&mut old).await.key(),
            &key("b", "default", "two")
        );
        drop((across, recent));
        assert_eq!(cache.stats().subscribers, 0);
    }

    #[tokio::test]
    async fn a_watch_from_the_past_replays_then_follows_without_gap_or_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            ring: 4,
            ..Limits::default()
        };
        let cache = WatchCache::start_with(embedded(dir.path()).await, limits).await;
        let mut revisions = Vec::new();
        for i in 0..6 {
            let kv = cache
                .create(
                    &key("a", "default", &format!("cm{i}")),
                    Bytes::from_static(b"{}"),
                )
                .await
                .unwrap();
            revisions.push(kv.mod_revision);
        }
        caught_up(&cache, revisions[5]).await;
        assert_eq!(cache.stats().ring, 4);
        // From the ring (it holds cm2..cm5): cm3.. replayed, then live.
        let mut w = cache.watch(&configmaps("a"), revisions[2]).await.unwrap();
        assert_eq!(cache.stats().subscribers, 1, "served by the cache");
        let live = cache
            .create(&key("a", "default", "cm6"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let seen: Vec<Revision> = [
            next_change(&mut w).await,
            next_change(&mut w).await,
            next_change(&mut w).await,
            next_change(&mut w).await,
        ]
        .iter()
        .map(Event::revision)
        .collect();
        assert_eq!(
            seen,
            [revisions[3], revisions[4], revisions[5], live.mod_revision]
        );
        // Older than the ring: storage replays it (not a cache subscriber).
        let mut old = cache.watch(&configmaps("a"), revisions[0]).await.unwrap();
        assert_eq!(cache.stats().subscribers, 1);
        assert_eq!(next_change(&mut old).await.revision(), revisions[1]);
    }

    #[tokio::test]
    async fn cached_lists_are_evicted_least_recently_listed_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            list_budget: 3,
            list_prefixes: 2,
            ..Limits::default()
        };
        let cache = WatchCache::start_with(embedded(dir.path()).await, limits).await;
        for (vc, n) in [("a", 2), ("b", 1), ("c", 2)] {
            for i in 0..n {
                cache
                    .create(
                        &key(vc, "default", &format!("cm{i}")),
                        Bytes::from_static(b"{}"),
                    )
                    .await
                    .unwrap();
            }
        }
        let written = cache.current_revision().await.unwrap();
        caught_up(&cache, written).await;
        let count = |vc: &'static str| {
            let cache = &cache;
            async move { cache.list(&configmaps(vc), None).await.unwrap().0.len() }
        };
        assert_eq!((count("a").await, count("b").await), (2, 1));
        assert_eq!(cache.stats().lists, 2);
        // c's two objects do not fit beside a's two: a (least recent) goes.
        assert_eq!(count("c").await, 2);
        assert_eq!(cache.stats().lists, 2);
        // Evicted or not, every answer is whole.
        assert_eq!(
            (count("a").await, count("b").await, count("c").await),
            (2, 1, 2)
        );
        assert!(cache.stats().lists <= 2);
    }

    #[tokio::test]
    async fn a_quiet_watch_hears_the_revision_of_other_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            progress_every: Duration::ZERO,
            ..Limits::default()
        };
        let cache = WatchCache::start_with(embedded(dir.path()).await, limits).await;
        let start = cache.current_revision().await.unwrap();
        let mut quiet = cache.watch(&configmaps("a"), start).await.unwrap();
        let other = cache
            .create(&key("b", "default", "x"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), quiet.next())
            .await
            .expect("progress within 10 s")
            .unwrap()
            .unwrap();
        // Only the revision: nothing of VC b's object.
        assert_eq!(next, WatchEvent::Progress(other.mod_revision));
    }

    #[tokio::test]
    async fn a_watcher_that_stops_reading_is_dropped_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            subscriber_buffer: 2,
            // Only changes in the buffer, for the count below.
            progress_every: Duration::from_secs(3600),
            ..Limits::default()
        };
        let cache = WatchCache::start_with(embedded(dir.path()).await, limits).await;
        let start = cache.current_revision().await.unwrap();
        let mut slow = cache.watch(&configmaps("a"), start).await.unwrap();
        let mut fast = cache.watch(&configmaps("a"), start).await.unwrap();
        let mut last = Revision::new(0);
        for i in 0..5 {
            last = cache
                .create(
                    &key("a", "default", &format!("cm{i}")),
                    Bytes::from_static(b"{}"),
                )
                .await
                .unwrap()
                .mod_revision;
            // The fast one keeps up.
            assert_eq!(next_change(&mut fast).await.revision(), last);
        }
        caught_up(&cache, last).await;
        assert_eq!(cache.stats().subscribers, 1, "only the reader is left");
        // The slow one gets what it had buffered, then its stream ends.
        let mut got = 0;
        while let Some(item) = slow.next().await {
            if matches!(item.unwrap(), WatchEvent::Change(_)) {
                got += 1;
            }
        }
        assert_eq!(got, 2);
    }

    #[tokio::test]
    async fn lists_at_any_revision_come_from_memory_and_stay_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = embedded(dir.path()).await;
        let counted = Arc::new(CountingStore {
            inner: store,
            ranges: Default::default(),
        });
        let cache = WatchCache::start(counted.clone()).await;
        for name in ["one", "two"] {
            cache
                .create(&key("a", "default", name), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        cache
            .create(&key("b", "default", "other"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let ranges = || counted.ranges.load(std::sync::atomic::Ordering::SeqCst);
        let written = cache.current_revision().await.unwrap();
        caught_up(&cache, written).await;
        let (first, _) = cache.list(&configmaps("a"), None).await.unwrap();
        assert_eq!(first.len(), 2, "only VC a's objects");
        let after_first = ranges();
        let kv = cache
            .create(&key("a", "default", "three"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let one = cache
            .get(&key("a", "default", "one"))
            .await
            .unwrap()
            .unwrap();
        let gone = cache.delete(&one.key, one.mod_revision).await.unwrap();
        caught_up(&cache, gone.revision).await;
        let (second, revision) = cache.list(&configmaps("a"), None).await.unwrap();
        let names: Vec<&str> = second
            .iter()
            .map(|kv| kv.key.as_str().rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["three", "two"]);
        assert!(revision >= kv.mod_revision);
        assert_eq!(ranges(), after_first, "the second list read no storage");
        assert_eq!(cache.stats().lists, 1);
        // A list that must be newer than the cache is storage's to answer.
        assert!(cache
            .list(&configmaps("a"), Some(Revision::new(revision.get() + 100)))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn a_vc_is_held_to_its_storage_limits_counted_from_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let store = embedded(dir.path()).await;
        // Written before the cache starts: found by the first count.
        store
            .create(&key("a", "ns", "old"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let cache = WatchCache::start(store.clone()).await;
        cache.usage().set_defaults(crate::usage::StorageLimits {
            bytes: 1 << 20,
            objects: 3,
        });
        let mut created = Vec::new();
        for name in ["x", "y"] {
            created.push(
                cache
                    .create(&key("a", "ns", name), Bytes::from_static(b"{}"))
                    .await
                    .unwrap()
                    .mod_revision,
            );
        }
        let refused = cache
            .create(&key("a", "ns", "z"), Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, StoreError::QuotaExceeded(m) if m.contains("limited: objects=3")),
            "{refused:?}"
        );
        assert!(store.get(&key("a", "ns", "z")).await.unwrap().is_none());
        // Another VC has its own count.
        cache
            .create(&key("b", "ns", "z"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        // A delete frees its place once the feed has counted it.
        let deleted = cache
            .delete(&key("a", "ns", "x"), created[0])
            .await
            .unwrap();
        caught_up(&cache, deleted.revision).await;
        let used = cache.used("a").await.unwrap().unwrap();
        assert_eq!(used.objects, 2);
        assert_eq!(cache.usage().peek("a"), Some(used));
        assert_eq!(cache.usage().peek("never-written"), None);
        cache
            .create(&key("a", "ns", "z"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        // Bytes: growing an object past the limit is refused, shrinking is not.
        cache.usage().set_defaults(crate::usage::StorageLimits {
            bytes: used.bytes + 400,
            objects: 100,
        });
        let current = store.get(&key("a", "ns", "y")).await.unwrap().unwrap();
        let big = Bytes::from(vec![b' '; 1000]);
        let refused = cache
            .update(&key("a", "ns", "y"), big, current.mod_revision)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, StoreError::QuotaExceeded(m) if m.contains("storedBytes")),
            "{refused:?}"
        );
        cache
            .update(
                &key("a", "ns", "y"),
                Bytes::from_static(b"1"),
                current.mod_revision,
            )
            .await
            .unwrap();
        // Knowing the size before, an update claims only what it adds: 300
        // bytes more fit in the 400 of room where the whole value would not.
        let current = store.get(&key("a", "ns", "y")).await.unwrap().unwrap();
        caught_up(&cache, current.mod_revision).await;
        let grown = cache
            .update_from(&current, Bytes::from(vec![b' '; 301]))
            .await
            .unwrap();
        caught_up(&cache, grown.mod_revision).await;
        let refused = cache
            .update_from(&grown, Bytes::from(vec![b' '; 700]))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, StoreError::QuotaExceeded(_)),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_departed_vc_ends_its_own_watches_and_its_deletion_reaches_no_watch_across() {
        let dir = tempfile::tempdir().unwrap();
        let cache = WatchCache::start(embedded(dir.path()).await).await;
        let record = kplex_storage::SystemKeyspace::key(&["virtualclusters", "a"]).unwrap();
        let watched = record.clone();
        cache.set_departures(Box::new(move |event| match event {
            Event::Delete { prev, .. } if prev.key == watched => Some("a".to_owned()),
            _ => None,
        }));
        let made = cache
            .create(&record, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        for i in 0..25 {
            cache
                .create(
                    &key("a", "default", &format!("cm-{i:02}")),
                    Bytes::from_static(b"{}"),
                )
                .await
                .unwrap();
        }
        let start = cache.current_revision().await.unwrap();
        caught_up(&cache, start).await;
        let every = AcrossClusters::resource("", "configmaps").unwrap();
        let mut across = cache.watch_across(&every, start).await.unwrap();
        let mut own = cache.watch(&configmaps("a"), start).await.unwrap();
        // A VC whose UID begins with the departed one's is another VC.
        let mut neighbour = cache.watch(&configmaps("a0"), start).await.unwrap();
        // The record goes, then the objects, in batches.
        cache.delete(&record, made.mod_revision).await.unwrap();
        let prefix = TenantKeyspace::for_vc("a").unwrap().prefix().clone();
        while cache.delete_batch(&prefix, 10).await.unwrap().more {}
        // Another VC's change after it all.
        cache
            .create(&key("b", "default", "after"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        // The watch across VCs hears the other VC's change next: none of
        // the 25 deletions came before it.
        assert_eq!(
            next_change(&mut across).await.key(),
            &key("b", "default", "after")
        );
        cache
            .create(&key("a0", "default", "after"), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            next_change(&mut neighbour).await.key(),
            &key("a0", "default", "after")
        );
        // The VC's own watch ended.
        loop {
            match tokio::time::timeout(Duration::from_secs(10), own.next())
                .await
                .expect("the departed VC's watch ends")
            {
                None => break,
                Some(Ok(WatchEvent::Progress(_))) => {}
                Some(other) => panic!("the departed VC's watch got {other:?}"),
            }
        }
        assert_eq!(cache.store.count(&prefix).await.unwrap(), 0);
    }
}
