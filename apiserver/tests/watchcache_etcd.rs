//! The watch cache on real etcd: its one feed follows etcd through a
//! restart without losing or repeating an event; when etcd stays down the
//! cached watches end (clients re-watch) instead of hanging, and the cache
//! comes back by itself with etcd.

#[path = "../../storage/tests/support/etcd.rs"]
mod etcd;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd::EtcdServer;
use futures::StreamExt;
use kplex_registry::watchcache::WatchCache;
use kplex_storage::{EtcdStore, Key, KeyPrefix, Store, TenantKeyspace, WatchEvent, WatchStream};

fn configmaps() -> KeyPrefix {
    TenantKeyspace::for_vc("a")
        .unwrap()
        .resource_prefix("", "configmaps")
        .unwrap()
}

fn key(name: &str) -> Key {
    TenantKeyspace::for_vc("a")
        .unwrap()
        .object_key("", "configmaps", Some("default"), name)
        .unwrap()
}

/// The next change's key name, or `None` if the stream ended. Progress
/// reports do not extend the 30 s allowed (a lost change must fail the test,
/// not keep it waiting).
async fn next_change(w: &mut WatchStream) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("the watch neither delivered a change nor ended within 30 s");
        match next {
            Some(Ok(WatchEvent::Change(e))) => {
                return Some(e.key().as_str().rsplit('/').next().unwrap().to_owned())
            }
            Some(Ok(WatchEvent::Progress(_))) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Retries a create until etcd answers again (bounded).
async fn create(store: &dyn Store, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.create(&key(name), Bytes::from_static(b"{}")).await {
            Ok(_) => return,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "create {name}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits (bounded) until the cache's liveness is `live`.
async fn live(cache: &WatchCache, live: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while cache.stats().live != live {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cache live stayed {}",
            !live
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_follows_etcd_and_ends_watches_when_etcd_stays_down() {
    let mut server = EtcdServer::start().await;
    let mut options = server.options();
    // Long enough to ride out a restart, short enough to give up on an outage.
    options.reconnect_timeout = Duration::from_secs(6);
    options.request_timeout = Duration::from_millis(500);
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(options).await.unwrap());
    let cache = WatchCache::start(store.clone()).await;
    assert!(cache.stats().live);
    let mut w = cache
        .watch(&configmaps(), cache.current_revision().await.unwrap())
        .await
        .unwrap();
    assert_eq!(cache.stats().subscribers, 1, "served by the cache");

    create(&*store, "before").await;
    assert_eq!(next_change(&mut w).await.as_deref(), Some("before"));
    // A restart: the feed reconnects from where it was.
    server.restart().await;
    create(&*store, "after-restart").await;
    assert_eq!(next_change(&mut w).await.as_deref(), Some("after-restart"));

    // Down for good: the watch ends rather than hang, the cache goes dark.
    server.kill();
    assert_eq!(next_change(&mut w).await, None);
    live(&cache, false).await;
    assert_eq!(cache.stats().subscribers, 0);

    // Back: the cache reopens its feed on its own and serves watches again.
    server.restart().await;
    live(&cache, true).await;
    let mut again = cache
        .watch(&configmaps(), cache.current_revision().await.unwrap())
        .await
        .unwrap();
    create(&*store, "back").await;
    assert_eq!(next_change(&mut again).await.as_deref(), Some("back"));
}
