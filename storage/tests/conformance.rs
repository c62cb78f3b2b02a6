//! One conformance suite, run against every backend: the embedded store and
//! a real etcd. Each test takes a fresh store.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kplex_storage::{
    Event, Key, KeyPrefix, RangeRequest, Revision, Store, StoreError, TenantKeyspace, WatchEvent,
    WatchStream,
};
use support::TestStore;

/// Bound on waiting for any one watch event; a hang is a failure, not a stall.
const WAIT: Duration = Duration::from_secs(15);

fn vc(uid: &str) -> TenantKeyspace {
    TenantKeyspace::for_vc(uid).unwrap()
}

fn cm(ks: &TenantKeyspace, name: &str) -> Key {
    ks.object_key("", "configmaps", Some("default"), name)
        .unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next(watch: &mut WatchStream) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("watch produced nothing in time")
        .expect("watch ended")
}

/// Next change, skipping progress reports.
async fn next_change(watch: &mut WatchStream) -> Event {
    let wait = async {
        loop {
            match watch
                .next()
                .await
                .expect("watch ended")
                .expect("watch error")
            {
                WatchEvent::Change(e) => return e,
                WatchEvent::Progress(_) => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("no change arrived in time")
}

/// Waits for a progress report at or past `revision`; any change is a failure.
async fn expect_progress_past(watch: &mut WatchStream, revision: Revision) {
    let wait = async {
        loop {
            match watch
                .next()
                .await
                .expect("watch ended")
                .expect("watch error")
            {
                WatchEvent::Progress(r) if r >= revision => return,
                WatchEvent::Progress(_) => {}
                WatchEvent::Change(e) => panic!("unexpected change {e:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("no progress report arrived in time")
}

/// A watch whose start is compacted must fail with `Compacted`, either at
/// once or as its first item (etcd reports it on the stream).
async fn assert_watch_compacted(result: Result<WatchStream, StoreError>) {
    match result {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut watch) => match next(&mut watch).await {
            Err(StoreError::Compacted { .. }) => {}
            other => panic!("expected Compacted on the stream, got {other:?}"),
        },
        Err(e) => panic!("expected Compacted, got {e:?}"),
    }
}

async fn writes_bump_one_revision_and_set_revisions(s: TestStore) {
    let ks = vc("a");
    let start = s.current_revision().await.unwrap();
    let created = s.create(&cm(&ks, "x"), b("1")).await.unwrap();
    assert_eq!(created.mod_revision, Revision::new(start.get() + 1));
    assert_eq!(created.create_revision, created.mod_revision);
    let updated = s
        .update(&cm(&ks, "x"), b("2"), created.mod_revision)
        .await
        .unwrap();
    assert_eq!(updated.mod_revision, Revision::new(start.get() + 2));
    assert_eq!(updated.create_revision, created.create_revision);
    let got = s.get(&cm(&ks, "x")).await.unwrap().unwrap();
    assert_eq!(got, updated);
    let deleted = s.delete(&cm(&ks, "x"), updated.mod_revision).await.unwrap();
    assert_eq!(deleted.revision, Revision::new(start.get() + 3));
    assert_eq!(deleted.prev, updated);
    assert_eq!(s.get(&cm(&ks, "x")).await.unwrap(), None);
    assert_eq!(s.current_revision().await.unwrap(), deleted.revision);
}

async fn failed_writes_report_current_value_and_change_nothing(s: TestStore) {
    let ks = vc("a");
    let key = cm(&ks, "x");
    let v1 = s.create(&key, b("1")).await.unwrap();
    let v2 = s.update(&key, b("2"), v1.mod_revision).await.unwrap();
    let rev = s.current_revision().await.unwrap();

    match s.create(&key, b("again")).await {
        Err(StoreError::AlreadyExists { current }) => assert_eq!(*current, v2),
        other => panic!("create of existing key: {other:?}"),
    }
    match s.update(&key, b("stale"), v1.mod_revision).await {
        Err(StoreError::Conflict { current, expected }) => {
            assert_eq!(*current, v2);
            assert_eq!(expected, v1.mod_revision);
        }
        other => panic!("stale update: {other:?}"),
    }
    match s.delete(&key, v1.mod_revision).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(*current, v2),
        other => panic!("stale delete: {other:?}"),
    }
    let missing = cm(&ks, "missing");
    for result in [
        s.update(&missing, b("v"), Revision::new(0))
            .await
            .map(|_| ()),
        s.update(&missing, b("v"), rev).await.map(|_| ()),
        s.delete(&missing, Revision::new(0)).await.map(|_| ()),
        s.delete(&missing, rev).await.map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(StoreError::NotFound { .. })),
            "{result:?}"
        );
    }
    let big = Bytes::from(vec![b'x'; s.max_value_bytes + 1]);
    assert!(matches!(
        s.create(&cm(&ks, "big"), big.clone()).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        s.update(&key, big, v2.mod_revision).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    // A value exactly at the cap is accepted.
    let at_cap = Bytes::from(vec![b'y'; s.max_value_bytes]);
    let stored = s.create(&cm(&ks, "at-cap"), at_cap.clone()).await.unwrap();
    assert_eq!(stored.value, at_cap);

    assert_eq!(s.get(&key).await.unwrap().unwrap(), v2);
    assert_eq!(s.get(&missing).await.unwrap(), None);
    assert_eq!(s.get(&cm(&ks, "big")).await.unwrap(), None);
    assert_eq!(s.current_revision().await.unwrap().get(), rev.get() + 1);
}

async fn range_is_ordered_paginated_and_scoped(s: TestStore) {
    let a = vc("a");
    let ab = vc("ab");
    for name in ["c", "a", "e", "b", "d"] {
        s.create(&cm(&a, name), b(name)).await.unwrap();
    }
    s.create(&cm(&ab, "a"), b("other vc")).await.unwrap();
    s.create(
        &a.object_key("", "configmaps", Some("default0"), "z")
            .unwrap(),
        b("other ns"),
    )
    .await
    .unwrap();
    let prefix = a.namespace_prefix("", "configmaps", "default").unwrap();
    let all = s.range(RangeRequest::prefix(prefix.clone())).await.unwrap();
    let names: Vec<_> = all.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(names, vec![b("a"), b("b"), b("c"), b("d"), b("e")]);
    assert!(!all.more);
    assert_eq!(all.revision, s.current_revision().await.unwrap());
    assert_eq!(s.count(&prefix).await.unwrap(), 5);
    assert_eq!(s.count(a.prefix()).await.unwrap(), 6);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .range(RangeRequest {
                prefix: prefix.clone(),
                after: after.clone(),
                limit: Some(2),
                revision: None,
            })
            .await
            .unwrap();
        assert!(page.kvs.len() <= 2);
        seen.extend(page.kvs.iter().map(|kv| kv.value.clone()));
        after = page.kvs.last().map(|kv| kv.key.clone());
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, names);
}

async fn paginated_range_is_consistent_at_one_revision_while_writes_continue(s: TestStore) {
    let ks = vc("a");
    let prefix = ks.resource_prefix("", "configmaps").unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..40 {
        let kv = s
            .create(&cm(&ks, &format!("k{i:02}")), b(&format!("v{i}")))
            .await
            .unwrap();
        expected.insert(kv.key.clone(), kv);
    }
    let first = s
        .range(RangeRequest {
            prefix: prefix.clone(),
            after: None,
            limit: Some(7),
            revision: None,
        })
        .await
        .unwrap();
    let at = first.revision;
    let mut seen: Vec<_> = first.kvs.clone();
    let mut after = first.kvs.last().map(|kv| kv.key.clone());
    let mut more = first.more;

    // Writers change the range while the pages are read: updates, deletes
    // (ahead of and behind the cursor), and new keys.
    let writer = {
        let s = s.store.clone();
        let ks = ks.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                let key = cm(&ks, &format!("k{i:02}"));
                let cur = s.get(&key).await.unwrap().unwrap();
                if i % 3 == 0 {
                    s.delete(&key, cur.mod_revision).await.unwrap();
                } else {
                    s.update(&key, b("changed"), cur.mod_revision)
                        .await
                        .unwrap();
                }
                s.create(&cm(&ks, &format!("k{i:02}-new")), b("new"))
                    .await
                    .unwrap();
            }
        })
    };
    while more {
        let page = s
            .range(RangeRequest {
                prefix: prefix.clone(),
                after: after.clone(),
                limit: Some(7),
                revision: Some(at),
            })
            .await
            .unwrap();
        assert_eq!(page.revision, at);
        seen.extend(page.kvs.iter().cloned());
        after = page.kvs.last().map(|kv| kv.key.clone());
        more = page.more;
    }
    writer.await.unwrap();
    let seen: BTreeMap<_, _> = seen.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    assert_eq!(seen, expected);

    // After the writes, the whole range at the old revision is still the old state.
    let whole = s
        .range(RangeRequest {
            prefix: prefix.clone(),
            after: None,
            limit: None,
            revision: Some(at),
        })
        .await
        .unwrap();
    let whole: BTreeMap<_, _> = whole
        .kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    assert_eq!(whole, expected);
    // And the latest state has the writers' changes.
    assert_eq!(s.count(&prefix).await.unwrap(), 40 - 14 + 40);
    let future = Revision::new(s.current_revision().await.unwrap().get() + 100);
    let mut req = RangeRequest::prefix(prefix);
    req.revision = Some(future);
    assert!(matches!(
        s.range(req).await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn concurrent_writers_lose_no_update(s: TestStore) {
    let ks = vc("a");
    let key = cm(&ks, "counter");
    s.create(&key, b("0")).await.unwrap();
    let writers = 16;
    let increments = 25;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let s = s.store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..increments {
                loop {
                    let cur = s.get(&key).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match s
                        .update(&key, b(&(n + 1).to_string()), cur.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fin = s.get(&key).await.unwrap().unwrap();
    assert_eq!(fin.value, b(&(writers * increments).to_string()));
}

async fn concurrent_creates_get_distinct_increasing_revisions(s: TestStore) {
    let ks = vc("a");
    let start = s.current_revision().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.store.clone();
        let ks = ks.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let kv = s
                    .create(&cm(&ks, &format!("t{t}-{i}")), b("v"))
                    .await
                    .unwrap();
                revs.push(kv.mod_revision.get());
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions go up"
        );
        all.extend(revs);
    }
    all.sort();
    let expected: Vec<u64> = (start.get() + 1..=start.get() + 200).collect();
    assert_eq!(
        all, expected,
        "every create got its own revision, none skipped"
    );
}

async fn watch_delivers_every_change_after_a_revision_exactly_once(s: TestStore) {
    let ks = vc("a");
    let other = vc("b");
    let prefix = ks.prefix().clone();
    let mut log = Vec::new();
    for i in 0..10 {
        let kv = s.create(&cm(&ks, &format!("k{i}")), b("v1")).await.unwrap();
        log.push(Event::Put { kv, prev: None });
    }
    let from = s.current_revision().await.unwrap();
    // History after `from`, then a live tail written while the watch runs.
    let mut expected = Vec::new();
    for i in 0..5 {
        let key = cm(&ks, &format!("k{i}"));
        let prev = s.get(&key).await.unwrap().unwrap();
        let kv = s.update(&key, b("v2"), prev.mod_revision).await.unwrap();
        expected.push(Event::Put {
            kv,
            prev: Some(prev),
        });
        s.create(&cm(&other, &format!("k{i}")), b("other vc"))
            .await
            .unwrap();
    }
    let mut watch = s.watch(&prefix, from).await.unwrap();
    for i in 5..10 {
        let key = cm(&ks, &format!("k{i}"));
        let prev = s.get(&key).await.unwrap().unwrap();
        let d = s.delete(&key, prev.mod_revision).await.unwrap();
        expected.push(Event::Delete {
            prev,
            revision: d.revision,
        });
        s.create(&cm(&other, &format!("x{i}")), b("other vc"))
            .await
            .unwrap();
    }
    let last = s.create(&cm(&ks, "last"), b("end")).await.unwrap();
    expected.push(Event::Put {
        kv: last.clone(),
        prev: None,
    });

    let mut got = Vec::new();
    while got.last().map(Event::revision) != Some(last.mod_revision) {
        got.push(next_change(&mut watch).await);
    }
    assert_eq!(got, expected);

    // A watch from the very start replays everything, in order.
    let mut all = s.watch(&prefix, Revision::new(1)).await.unwrap();
    let mut replay = Vec::new();
    while replay.len() < log.len() + expected.len() {
        replay.push(next_change(&mut all).await);
    }
    log.extend(expected);
    assert_eq!(replay, log);
    // Nothing more arrives but progress.
    let marker = s.create(&cm(&other, "marker"), b("m")).await.unwrap();
    expect_progress_past(&mut all, marker.mod_revision).await;
}

async fn idle_watch_reports_progress_of_unrelated_writes(s: TestStore) {
    let a = vc("a");
    let b_vc = vc("b");
    let start = s.current_revision().await.unwrap();
    let mut watch = s.watch(a.prefix(), start).await.unwrap();
    let write = s.create(&cm(&b_vc, "elsewhere"), b("v")).await.unwrap();
    expect_progress_past(&mut watch, write.mod_revision).await;
}

async fn compaction_is_reported_never_skipped(s: TestStore) {
    let ks = vc("a");
    let first = s.create(&cm(&ks, "x"), b("1")).await.unwrap();
    let second = s
        .update(&cm(&ks, "x"), b("2"), first.mod_revision)
        .await
        .unwrap();
    let third = s
        .update(&cm(&ks, "x"), b("3"), second.mod_revision)
        .await
        .unwrap();
    s.compact(third.mod_revision).await.unwrap();
    // Compacting again, or to an older revision, is harmless.
    s.compact(second.mod_revision).await.unwrap();
    let future = Revision::new(s.current_revision().await.unwrap().get() + 10);
    assert!(matches!(
        s.compact(future).await,
        Err(StoreError::FutureRevision { .. })
    ));

    assert_watch_compacted(s.watch(ks.prefix(), first.mod_revision).await).await;
    let mut req = RangeRequest::prefix(ks.prefix().clone());
    req.revision = Some(second.mod_revision);
    assert!(matches!(
        s.range(req.clone()).await,
        Err(StoreError::Compacted { .. })
    ));
    // At and after the compacted revision, history is whole.
    req.revision = Some(third.mod_revision);
    let at = s.range(req).await.unwrap();
    assert_eq!(at.kvs, vec![third.clone()]);
    let mut watch = s.watch(ks.prefix(), second.mod_revision).await.unwrap();
    let fourth = s
        .update(&cm(&ks, "x"), b("4"), third.mod_revision)
        .await
        .unwrap();
    // The value before the first kept revision may itself be compacted away
    // (etcd drops it; the embedded store keeps it with the event).
    match next_change(&mut watch).await {
        Event::Put { kv, prev } => {
            assert_eq!(kv, third);
            assert!(prev.is_none() || prev == Some(second), "{prev:?}");
        }
        e => panic!("expected the put at the compacted revision, got {e:?}"),
    }
    assert_eq!(
        next_change(&mut watch).await,
        Event::Put {
            kv: fourth,
            prev: Some(third)
        }
    );
}

async fn delete_range_removes_one_vc_at_one_revision(s: TestStore) {
    let a = vc("a");
    let other = vc("a0");
    for i in 0..30 {
        s.create(&cm(&a, &format!("k{i}")), b("v")).await.unwrap();
        s.create(
            &a.object_key("apps", "deployments", Some("ns"), &format!("d{i}"))
                .unwrap(),
            b("v"),
        )
        .await
        .unwrap();
    }
    let survivor = s.create(&cm(&other, "k0"), b("keep")).await.unwrap();
    let before = s.current_revision().await.unwrap();
    let mut watch = s.watch(&KeyPrefix::root(), before).await.unwrap();
    let gone = s.delete_range(a.prefix()).await.unwrap();
    assert_eq!(gone.deleted, 60);
    assert_eq!(gone.revision, Revision::new(before.get() + 1));
    assert_eq!(s.count(a.prefix()).await.unwrap(), 0);
    assert_eq!(s.get(&cm(&other, "k0")).await.unwrap(), Some(survivor));
    for _ in 0..60 {
        match next_change(&mut watch).await {
            Event::Delete { prev, revision } => {
                assert_eq!(revision, gone.revision);
                assert!(a.prefix().contains(&prev.key));
                assert_eq!(prev.value, b("v"));
            }
            e => panic!("expected a delete, got {e:?}"),
        }
    }
    // Deleting an empty range writes nothing.
    let again = s.delete_range(a.prefix()).await.unwrap();
    assert_eq!(again.deleted, 0);
    assert_eq!(again.revision, gone.revision);
    assert_eq!(s.current_revision().await.unwrap(), gone.revision);
}

async fn delete_batch_deletes_a_range_in_bounded_writes(s: TestStore) {
    let a = vc("a");
    let other = vc("a0");
    for i in 0..25 {
        s.create(&cm(&a, &format!("k{i:02}")), b("v"))
            .await
            .unwrap();
    }
    let survivor = s.create(&cm(&other, "k0"), b("keep")).await.unwrap();
    let before = s.current_revision().await.unwrap();
    let mut watch = s.watch(&KeyPrefix::root(), before).await.unwrap();
    let mut batches = Vec::new();
    loop {
        let batch = s.delete_batch(a.prefix(), 10).await.unwrap();
        batches.push(batch);
        if !batch.more {
            break;
        }
    }
    let counts: Vec<u64> = batches.iter().map(|b| b.deleted).collect();
    assert_eq!(counts, [10, 10, 5]);
    // Each batch is one write of its own revision, with an event per key.
    for (i, batch) in batches.iter().enumerate() {
        assert_eq!(batch.revision, Revision::new(before.get() + 1 + i as u64));
        for _ in 0..batch.deleted {
            match next_change(&mut watch).await {
                Event::Delete { prev, revision } => {
                    assert_eq!(revision, batch.revision);
                    assert!(a.prefix().contains(&prev.key));
                }
                e => panic!("expected a delete, got {e:?}"),
            }
        }
    }
    assert_eq!(s.count(a.prefix()).await.unwrap(), 0);
    assert_eq!(s.get(&cm(&other, "k0")).await.unwrap(), Some(survivor));
    let none = s.delete_batch(a.prefix(), 10).await.unwrap();
    assert_eq!((none.deleted, none.more), (0, false));
}

async fn dropped_watch_does_not_block_writers(s: TestStore) {
    let ks = vc("a");
    let watch = s
        .watch(ks.prefix(), s.current_revision().await.unwrap())
        .await
        .unwrap();
    drop(watch);
    let mut slow = s
        .watch(ks.prefix(), s.current_revision().await.unwrap())
        .await
        .unwrap();
    // Far more writes than any buffer, with one watcher not reading.
    let mut last = None;
    for i in 0..600 {
        last = Some(s.create(&cm(&ks, &format!("k{i}")), b("v")).await.unwrap());
    }
    // The slow watcher still gets every event, in order.
    let last = last.unwrap();
    let mut n = 0;
    loop {
        let e = next_change(&mut slow).await;
        n += 1;
        if e.revision() == last.mod_revision {
            break;
        }
    }
    assert_eq!(n, 600);
}

async fn watch_replays_a_history_larger_than_one_message(s: TestStore) {
    // 24 values of 1 MiB: far more than one gRPC message (4 MiB by default).
    let ks = vc("a");
    let start = s.current_revision().await.unwrap();
    let big = Bytes::from(vec![b'z'; 1024 * 1024]);
    let mut last = None;
    for i in 0..24 {
        last = Some(
            s.create(&cm(&ks, &format!("big{i}")), big.clone())
                .await
                .unwrap(),
        );
    }
    let mut watch = s.watch(ks.prefix(), start).await.unwrap();
    let mut n = 0;
    loop {
        let e = next_change(&mut watch).await;
        n += 1;
        assert_eq!(e.revision().get(), start.get() + n);
        if e.revision() == last.as_ref().unwrap().mod_revision {
            break;
        }
    }
    assert_eq!(n, 24);
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::TestStore::embedded().await).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::support::TestStore::etcd().await).await
                }
            )*
        }
    };
}

conformance!(
    writes_bump_one_revision_and_set_revisions,
    failed_writes_report_current_value_and_change_nothing,
    range_is_ordered_paginated_and_scoped,
    paginated_range_is_consistent_at_one_revision_while_writes_continue,
    concurrent_writers_lose_no_update,
    concurrent_creates_get_distinct_increasing_revisions,
    watch_delivers_every_change_after_a_revision_exactly_once,
    idle_watch_reports_progress_of_unrelated_writes,
    compaction_is_reported_never_skipped,
    delete_range_removes_one_vc_at_one_revision,
    delete_batch_deletes_a_range_in_bounded_writes,
    dropped_watch_does_not_block_writers,
    watch_replays_a_history_larger_than_one_message,
);

#[allow(dead_code)]
fn assert_object_safe(_: Arc<dyn Store>) {}
