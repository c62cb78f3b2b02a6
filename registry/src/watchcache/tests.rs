//! The watch cache against a real embedded store.

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
    async fn update(&self, key: &Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted> {
        self.inner.delete(key, expected).await
    }
    async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange> {
        self.inner.delete_range(prefix).await
    }
    async fn delete_batch(&self, prefix: &KeyPrefix, limit: usize) -> StoreResult<DeletedRange> {
        self.inner.delete_batch(prefix, limit).await
    }
    async fn current_revision(&self) -> StoreResult<Revision> {
        self.inner.current_revision().await
    }
    fn local_revision(&self) -> Option<kplex_storage::LocalRevision> {
        self.inner.local_revision()
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

#[tokio::test]
async fn a_departed_vcs_events_leave_the_ring_and_the_others_stay_replayable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = WatchCache::start(embedded(dir.path()).await).await;
    let record = kplex_storage::SystemKeyspace::key(&["virtualclusters", "a"]).unwrap();
    let watched = record.clone();
    cache.set_departures(Box::new(move |event| match event {
        Event::Delete { prev, .. } if prev.key == watched => Some("a".to_owned()),
        _ => None,
    }));
    let before = cache.current_revision().await.unwrap();
    let made = cache
        .create(&record, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    for i in 0..25 {
        let name = format!("cm-{i:02}");
        for vc in ["a", "b"] {
            if vc == "a" || i < 3 {
                cache
                    .create(&key(vc, "default", &name), Bytes::from_static(b"{}"))
                    .await
                    .unwrap();
            }
        }
    }
    cache.delete(&record, made.mod_revision).await.unwrap();
    let prefix = TenantKeyspace::for_vc("a").unwrap().prefix().clone();
    while cache.delete_batch(&prefix, 10).await.unwrap().more {}
    let last = cache
        .create(&key("b", "default", "after"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    caught_up(&cache, last.mod_revision).await;
    // The record's creation and deletion, b's four objects: none of a's
    // 25 creations or 25 deletions.
    assert_eq!(cache.stats().ring, 6);
    // A watch of b from before it all replays b's objects from the ring.
    let mut b = cache.watch(&configmaps("b"), before).await.unwrap();
    for name in ["cm-00", "cm-01", "cm-02", "after"] {
        assert_eq!(next_change(&mut b).await.key(), &key("b", "default", name));
    }
}

/// A consistent list is answered from memory only with every acknowledged
/// write in it: the cache must have applied storage's revision of when the
/// list began, else storage answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_lists_from_memory_hold_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let counted = Arc::new(CountingStore {
        inner: embedded(dir.path()).await,
        ranges: Default::default(),
    });
    let cache = WatchCache::start(counted.clone()).await;
    let prefix = configmaps("a");
    for name in ["one", "two"] {
        cache
            .create(&key("a", "default", name), Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    // VC "ab", whose name "a" is a textual prefix of: never in "a"'s list.
    cache
        .create(&key("ab", "default", "other"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    // Nothing cached yet: storage answers, and its page is adopted.
    let now = cache.local_revision().expect("the embedded store knows");
    assert!(cache.cached_list(&prefix, now).is_none());
    let page = cache
        .range(RangeRequest::prefix(prefix.clone()))
        .await
        .unwrap();
    caught_up(&cache, page.revision).await;
    // A write between the read and its adoption is applied from the ring.
    cache
        .create(&key("a", "default", "three"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    caught_up(&cache, cache.local_revision().unwrap().revision).await;
    cache.adopt(&prefix, &page.kvs, page.revision);
    let ranges = counted.ranges.load(std::sync::atomic::Ordering::SeqCst);
    let (listed, _) = cache
        .cached_list(&prefix, cache.local_revision().unwrap())
        .expect("cached and current");
    assert_eq!(listed.len(), 3);
    assert!(
        listed.iter().all(|kv| prefix.contains(&kv.key)),
        "{listed:?}"
    );
    // Nor does another VC's write reach it.
    let other = cache
        .create(&key("ab", "default", "later"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    caught_up(&cache, other.mod_revision).await;
    let (listed, _) = cache
        .cached_list(&prefix, cache.local_revision().unwrap())
        .expect("cached and current");
    assert_eq!(listed.len(), 3, "{listed:?}");

    // Each list right after a write: storage's (None) or one holding it.
    let (mut from_memory, mut from_storage) = (0, 0);
    for i in 0..300 {
        let name = format!("n-{i}");
        let written = cache
            .create(&key("a", "default", &name), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        match cache.cached_list(&prefix, cache.local_revision().unwrap()) {
            Some((objects, revision)) => {
                assert!(revision >= written.mod_revision);
                assert!(
                    objects.iter().any(|kv| kv.key == written.key),
                    "{name} acknowledged but not listed"
                );
                assert_eq!(objects.len(), 3 + i + 1);
                from_memory += 1;
            }
            None => from_storage += 1,
        }
        if i % 50 == 0 {
            // Some lists come once the cache has caught up.
            caught_up(&cache, written.mod_revision).await;
            assert!(cache
                .cached_list(&prefix, cache.local_revision().unwrap())
                .is_some());
            from_memory += 1;
        }
    }
    assert!(from_memory > 0, "{from_storage} lists all went to storage");
    assert_eq!(
        counted.ranges.load(std::sync::atomic::Ordering::SeqCst),
        ranges,
        "no list of the cached prefix read storage"
    );

    // No room without evicting another list: nothing adopted.
    let full = WatchCache::start_with(
        counted.clone(),
        Limits {
            list_budget: 2,
            ..Limits::default()
        },
    )
    .await;
    let page = full
        .range(RangeRequest::prefix(prefix.clone()))
        .await
        .unwrap();
    caught_up(&full, page.revision).await;
    full.adopt(&prefix, &page.kvs, page.revision);
    assert_eq!(full.stats().lists, 0);
}

/// A range deleted in one write is one revision of several events: the
/// cached lists lose every key of it and a watch hears every deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_range_deleted_at_once_reaches_lists_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let cache = WatchCache::start(embedded(dir.path()).await).await;
    let prefix = configmaps("a");
    for name in ["one", "two", "three"] {
        cache
            .create(&key("a", "default", name), Bytes::from_static(b"{}"))
            .await
            .unwrap();
    }
    let start = cache.current_revision().await.unwrap();
    caught_up(&cache, start).await;
    let (listed, _) = cache.list(&prefix, None).await.unwrap();
    assert_eq!(listed.len(), 3);
    let mut watch = cache.watch(&prefix, start).await.unwrap();
    let deleted = cache.delete_range(&prefix).await.unwrap();
    assert_eq!(deleted.deleted, 3);
    let mut gone = Vec::new();
    for _ in 0..3 {
        match next_change(&mut watch).await {
            Event::Delete { prev, revision } => {
                assert_eq!(revision, deleted.revision);
                gone.push(prev.key.as_str().rsplit('/').next().unwrap().to_owned());
            }
            other => panic!("{other:?}"),
        }
    }
    gone.sort();
    assert_eq!(gone, ["one", "three", "two"]);
    caught_up(&cache, deleted.revision).await;
    let (listed, _) = cache.list(&prefix, None).await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    let current = cache.local_revision().unwrap();
    let (listed, _) = cache.cached_list(&prefix, current).unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// The events of a range deleted at once arrive one by one: the cache
/// counts a revision as applied only once it has all of them (as storage
/// counts them), or a progress report or a later revision says so.
#[test]
fn a_revision_counts_as_applied_only_with_all_its_events() {
    let local = |revision: u64, events: u32| LocalRevision {
        revision: Revision::new(revision),
        events,
    };
    let deleted = |name: &str, revision: u64| Event::Delete {
        prev: KeyValue {
            key: key("a", "default", name),
            value: Bytes::from_static(b"{}"),
            create_revision: Revision::new(1),
            mod_revision: Revision::new(2),
        },
        revision: Revision::new(revision),
    };
    let mut state = State::default();
    state.go_live(Revision::new(10));
    // Started at 10: all of 10 is in, however many events it made.
    assert!(state.has_applied(local(10, LocalRevision::MOST_EVENTS)));
    state.apply(deleted("one", 11));
    assert!(state.has_applied(local(11, 1)));
    assert!(!state.has_applied(local(11, 3)), "one of three deletions");
    state.apply(deleted("two", 11));
    assert!(!state.has_applied(local(11, 3)));
    state.apply(deleted("three", 11));
    assert!(state.has_applied(local(11, 3)));
    assert!(!state.has_applied(local(12, 1)));
    // Progress at 12: everything up to 12 is in.
    state.progress(Revision::new(12));
    assert!(state.has_applied(local(12, LocalRevision::MOST_EVENTS)));
}
