//! Behaviour particular to the embedded backend: restart, crash safety,
//! exclusive opening, background compaction, point reads from memory.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kplex_storage::{
    EmbeddedOptions, EmbeddedStore, Key, RangeRequest, Revision, Store, StoreError, TenantKeyspace,
    WatchEvent,
};
use rand::Rng;

fn key(name: &str) -> Key {
    TenantKeyspace::for_vc("vc")
        .unwrap()
        .object_key("", "configmaps", Some("default"), name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_revision_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let options = support::embedded_options();
    let (a, b_kv, rev) = {
        let store = EmbeddedStore::open(dir.path(), options.clone())
            .await
            .unwrap();
        let a = store
            .create(&key("a"), Bytes::from_static(b"1"))
            .await
            .unwrap();
        let b_kv = store
            .create(&key("b"), Bytes::from_static(b"2"))
            .await
            .unwrap();
        let d = store.delete(&key("a"), a.mod_revision).await.unwrap();
        (a, b_kv, d.revision)
    };
    let store = EmbeddedStore::open(dir.path(), options).await.unwrap();
    assert_eq!(store.current_revision().await.unwrap(), rev);
    assert_eq!(store.get(&key("a")).await.unwrap(), None);
    assert_eq!(store.get(&key("b")).await.unwrap(), Some(b_kv.clone()));
    // History survives too: the past is readable and replayable.
    let mut req = RangeRequest::prefix(TenantKeyspace::for_vc("vc").unwrap().prefix().clone());
    req.revision = Some(b_kv.mod_revision);
    let past = store.range(req).await.unwrap();
    assert_eq!(past.kvs, vec![a.clone(), b_kv.clone()]);
    let mut watch = store.watch(&key_prefix(), Revision::new(1)).await.unwrap();
    let mut revisions = Vec::new();
    while revisions.len() < 3 {
        if let WatchEvent::Change(e) = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            revisions.push(e.revision());
        }
    }
    assert_eq!(revisions, vec![a.mod_revision, b_kv.mod_revision, rev]);
    // New writes continue from the old revision.
    let c = store
        .create(&key("c"), Bytes::from_static(b"3"))
        .await
        .unwrap();
    assert_eq!(c.mod_revision, Revision::new(rev.get() + 1));
}

fn key_prefix() -> kplex_storage::KeyPrefix {
    TenantKeyspace::for_vc("vc").unwrap().prefix().clone()
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap();
    let second = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).await;
    assert!(
        matches!(second, Err(StoreError::Internal(_))),
        "{:?}",
        second.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_compaction_keeps_one_interval_of_history() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        compaction_interval: Some(Duration::from_millis(200)),
        ..support::embedded_options()
    };
    let store = EmbeddedStore::open(dir.path(), options).await.unwrap();
    let first = store
        .create(&key("x"), Bytes::from_static(b"1"))
        .await
        .unwrap();
    store
        .update(&key("x"), Bytes::from_static(b"2"), first.mod_revision)
        .await
        .unwrap();
    // Poll until the compactor has passed the first write; it runs on its own clock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.watch(&key_prefix(), Revision::new(1)).await {
            Err(StoreError::Compacted { .. }) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("history was never compacted: {:?}", other.err()),
        }
    }
    // The latest state is untouched.
    assert_eq!(
        store.get(&key("x")).await.unwrap().unwrap().value,
        Bytes::from_static(b"2")
    );
}

/// A child writes with 16 concurrent writers and prints each acknowledged
/// write; it is SIGKILLed after a random number of acknowledgements. On
/// reopening, every acknowledged write must be there and the revision must
/// never go back. Twenty rounds on one directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rng();
    let mut last_revision = Revision::new(0);
    let mut counters: HashMap<String, u64> = HashMap::new();
    for run in 0..20 {
        let kill_after = rng.random_range(1..1500);
        let mut child = Command::new(env!("CARGO_BIN_EXE_kplex-storage-crash-writer"))
            .arg(dir.path())
            .arg(run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        while acked.len() < kill_after {
            match lines.next() {
                Some(line) => acked.push(line.unwrap()),
                None => panic!("writer exited early: {:?}", child.wait()),
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = EmbeddedStore::open(dir.path(), support::embedded_options())
            .await
            .unwrap();
        let revision = store.current_revision().await.unwrap();
        assert!(
            revision >= last_revision,
            "revision went back: {revision:?} < {last_revision:?}"
        );
        for line in &acked {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["create", k, rev] => {
                    let k = find_key(k);
                    let got = store.get(&k).await.unwrap();
                    let got = got.unwrap_or_else(|| panic!("run {run}: acknowledged {k} is lost"));
                    assert_eq!(got.mod_revision.get().to_string(), *rev);
                    assert!(revision >= got.mod_revision);
                }
                ["counter", k, value, rev] => {
                    let value: u64 = value.parse().unwrap();
                    let rev: u64 = rev.parse().unwrap();
                    assert!(
                        revision.get() >= rev,
                        "revision behind an acknowledged write"
                    );
                    let seen = counters.entry(k.to_string()).or_default();
                    *seen = (*seen).max(value);
                }
                _ => panic!("bad line {line:?}"),
            }
        }
        for (k, acked_value) in &counters {
            let k = find_key(k);
            let stored: u64 = std::str::from_utf8(&store.get(&k).await.unwrap().unwrap().value)
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                stored >= *acked_value,
                "counter {k} went back to {stored} < {acked_value}"
            );
        }
        last_revision = revision;
    }
}

/// Rebuilds a printed key through the keyspace (the only way to make one).
fn find_key(printed: &str) -> Key {
    let parts: Vec<&str> = printed.trim_start_matches('/').split('/').collect();
    // /kplex/clusters/crash/core/configmaps/<ns>/<name>
    TenantKeyspace::for_vc(parts[2])
        .unwrap()
        .object_key("", parts[4], Some(parts[5]), parts[6])
        .unwrap()
}

/// A deleted VC's history goes at once: a watch of another VC from the
/// start still replays that VC's changes, one of the deleted VC's replays
/// none of its past, and history outside the prefix is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixs_history_is_forgotten_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Three history entries per write: the forgetting takes several.
    let options = EmbeddedOptions {
        forget_batch: 3,
        ..support::embedded_options()
    };
    let store = EmbeddedStore::open(dir.path(), options).await.unwrap();
    let (gone, kept) = (
        TenantKeyspace::for_vc("gone").unwrap(),
        TenantKeyspace::for_vc("kept").unwrap(),
    );
    let cm = |ks: &TenantKeyspace, name: &str| {
        ks.object_key("", "configmaps", Some("default"), name)
            .unwrap()
    };
    let start = store.current_revision().await.unwrap();
    for i in 0..5 {
        for ks in [&gone, &kept] {
            store
                .create(&cm(ks, &format!("cm-{i}")), Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
    }
    while store.delete_batch(gone.prefix(), 2).await.unwrap().more {}
    store.forget_history(gone.prefix()).await.unwrap();
    let next = |watch: kplex_storage::WatchStream| async move {
        let mut watch = watch;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                WatchEvent::Change(e) => return (e.key().clone(), watch),
                WatchEvent::Progress(_) => {}
            }
        }
    };
    // The kept VC's five creations replay from history, in order.
    let mut watch = store.watch(kept.prefix(), start).await.unwrap();
    for i in 0..5 {
        let (key, w) = next(watch).await;
        assert_eq!(key, cm(&kept, &format!("cm-{i}")));
        watch = w;
    }
    // The deleted VC's watch from the start sees nothing of its past: its
    // first event is the next change.
    let gone_watch = store.watch(gone.prefix(), start).await.unwrap();
    store
        .create(&cm(&gone, "later"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(next(gone_watch).await.0, cm(&gone, "later"));
}

/// Point reads come from memory once read (`EmbeddedOptions::point_cache_bytes`):
/// a read that follows a write's acknowledgement never answers with the
/// value the write replaced or removed, whatever reads raced with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_reads_never_answer_a_value_an_acknowledged_write_replaced() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), support::embedded_options())
        .await
        .unwrap();
    let value = |n: u64| Bytes::from(n.to_string());
    let read = |store: EmbeddedStore, name: &'static str| async move {
        store
            .get(&key(name))
            .await
            .unwrap()
            .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
    };

    // Each kind of change is seen by the read after it, the key having
    // been read (and kept) before it.
    let kv = store.create(&key("a"), value(1)).await.unwrap();
    assert_eq!(read(store.clone(), "a").await.as_deref(), Some("1"));
    assert_eq!(read(store.clone(), "a").await.as_deref(), Some("1"));
    let kv = store
        .update(&key("a"), value(2), kv.mod_revision)
        .await
        .unwrap();
    let got = store.get(&key("a")).await.unwrap().unwrap();
    assert_eq!((got.value, got.mod_revision), (value(2), kv.mod_revision));
    store.delete(&key("a"), kv.mod_revision).await.unwrap();
    assert_eq!(read(store.clone(), "a").await, None);
    store.create(&key("a"), value(3)).await.unwrap();
    assert_eq!(read(store.clone(), "a").await.as_deref(), Some("3"));
    let written = store.create(&key("b"), value(4)).await.unwrap();
    let local = store.local_revision().unwrap();
    assert_eq!((local.revision, local.events), (written.mod_revision, 1));
    let prefix = TenantKeyspace::for_vc("vc").unwrap();
    let deleted = store.delete_range(prefix.prefix()).await.unwrap();
    assert_eq!(read(store.clone(), "a").await, None);
    // Two keys deleted at one revision: two events of it.
    let local = store.local_revision().unwrap();
    assert_eq!((local.revision, local.events), (deleted.revision, 2));

    // Readers race a writer: each read starts after some acknowledged
    // write and must answer that write's value or a later one.
    let mut kv = store.create(&key("race"), value(0)).await.unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, acked, done) = (store.clone(), acked.clone(), done.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !done.load(Ordering::Acquire) {
                    let floor = acked.load(Ordering::Acquire);
                    let got = store.get(&key("race")).await.unwrap().unwrap();
                    let n: u64 = std::str::from_utf8(&got.value).unwrap().parse().unwrap();
                    assert!(n >= floor, "read {n} after write {floor} was acknowledged");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for n in 1..=300 {
        kv = store
            .update(&key("race"), value(n), kv.mod_revision)
            .await
            .unwrap();
        acked.store(n, Ordering::Release);
    }
    done.store(true, Ordering::Release);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(reads > 0);
    assert_eq!(read(store.clone(), "race").await.as_deref(), Some("300"));
}
