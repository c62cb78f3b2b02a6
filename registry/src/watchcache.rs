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
    AcrossClusters, Deleted, DeletedRange, Event, Key, KeyPrefix, KeyValue, LocalRevision,
    RangeRequest, RangeResponse, Revision, Store, StoreError, StoreResult, TenantKeyspace,
    WatchEvent, WatchStream,
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
    /// Every event before this revision has been applied, and
    /// `at_revision` of its own.
    revision: Revision,
    /// Events of `revision` applied (`usize::MAX`: all of them, as a
    /// progress report or the feed's start says; a range deleted at once
    /// is several events of one revision, which arrive one by one).
    at_revision: usize,
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
        if !state.live || state.floor > base || state.departed_prefix(prefix) {
            // The ring no longer reaches back to `base` (or no longer
            // holds the departed VC's events): answer at `base` (any
            // revision will do) without caching.
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

    /// The objects under `prefix` for a consistent list, if the cache holds
    /// them and has applied all of `storage` (its revision when the list
    /// began: every write acknowledged before it, each event of that
    /// revision included); `None`: storage answers (and its page may be
    /// offered with [`WatchCache::adopt`]).
    pub fn cached_list(
        &self,
        prefix: &KeyPrefix,
        storage: LocalRevision,
    ) -> Option<(Vec<KeyValue>, Revision)> {
        let mut state = self.state();
        if !state.live || !state.has_applied(storage) {
            return None;
        }
        state.clock += 1;
        let (clock, revision) = (state.clock, state.revision);
        let list = state.lists.get_mut(prefix.as_str())?;
        list.used = clock;
        Some((list.objects.values().cloned().collect(), revision))
    }

    /// Keeps `kvs`, every object under `prefix` as storage read them at
    /// `revision`, as the prefix's cached list — if the cache has applied
    /// `revision`, its ring reaches back to it, and there is room without
    /// evicting another list (a flood of lists of many prefixes costs the
    /// cache no scans).
    pub fn adopt(&self, prefix: &KeyPrefix, kvs: &[KeyValue], revision: Revision) {
        let mut state = self.state();
        let room = state.listed_objects + kvs.len() <= state.limits.list_budget
            && state.lists.len() < state.limits.list_prefixes;
        if !room
            || !state.live
            || state.revision < revision
            || state.floor > revision
            || state.lists.contains_key(prefix.as_str())
            || state.departed_prefix(prefix)
        {
            return;
        }
        let mut objects: BTreeMap<String, KeyValue> = kvs
            .iter()
            .map(|kv| (kv.key.as_str().to_owned(), kv.clone()))
            .collect();
        for event in state.events_after(revision) {
            if prefix.contains(event.key()) {
                apply_to(&mut objects, event);
            }
        }
        state.listed_objects += objects.len();
        state.clock += 1;
        let used = state.clock;
        state
            .lists
            .insert(prefix.as_str().to_owned(), CachedList { objects, used });
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
        self.at_revision = usize::MAX;
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
        // Older than what is applied: seen already. One revision may carry
        // several events (a range deleted at once): each is applied.
        if revision < self.revision {
            return;
        }
        self.at_revision = if revision > self.revision {
            1
        } else {
            self.at_revision.saturating_add(1)
        };
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
        // A departed VC's events (its objects' deletion) are for no watch:
        // the ring does not keep them.
        if !self.after_departure(&event) {
            self.ring.push_back(event);
        }
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
    /// is refused), its lists and its events in the ring are dropped (the
    /// ring still covers every other key from its floor), and the deletion
    /// of its objects goes to no watch across VCs.
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
            self.ring
                .retain(|event| !event.key().as_str().starts_with(prefix));
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
        self.at_revision = usize::MAX;
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

    /// Whether every event of `storage`'s revision, and of those before
    /// it, has been applied.
    fn has_applied(&self, storage: LocalRevision) -> bool {
        self.revision > storage.revision
            || (self.revision == storage.revision && self.at_revision >= storage.events as usize)
    }

    /// Whether `prefix` is in a VC that departed lately (the ring no
    /// longer holds its events, so no list of it can be brought up to date).
    fn departed_prefix(&self, prefix: &KeyPrefix) -> bool {
        self.departed.keys().any(|uid| {
            TenantKeyspace::for_vc(uid)
                .is_ok_and(|ks| prefix.as_str().starts_with(ks.prefix().as_str()))
        })
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
    fn local_revision(&self) -> Option<LocalRevision> {
        self.store.local_revision()
    }
    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        self.store.compact(revision).await
    }
    async fn forget_history(&self, prefix: &KeyPrefix) -> StoreResult<()> {
        self.store.forget_history(prefix).await
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
mod tests;
