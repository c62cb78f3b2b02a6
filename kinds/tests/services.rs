//! Service allocation under concurrent writes, through the generic store on
//! a real embedded store: two services never get the same ClusterIP or
//! NodePort, however their writes interleave.

use std::sync::Arc;

use kplex_registry::allocation::AllocationLocks;
use kplex_registry::generic::{GenericStore, WriteOptions};
use kplex_registry::watchcache::WatchCache;
use kplex_storage::{EmbeddedOptions, EmbeddedStore, TenantKeyspace};
use serde_json::{json, Value};

/// Services created at once per contested value.
const RACERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_created_at_once_never_share_a_cluster_ip_or_node_port() {
    let dir = tempfile::tempdir().unwrap();
    let raw = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
        .await
        .unwrap();
    let catalog = kplex_kinds::catalog::shared();
    let locks = Arc::new(AllocationLocks::default());
    let store = Arc::new(GenericStore::new(
        WatchCache::start(Arc::new(raw)).await,
        TenantKeyspace::for_vc("0b3c7c1e-race").unwrap(),
        catalog.clone(),
        locks.clone(),
        Default::default(),
    ));
    let namespaces = catalog.find("", "v1", "namespaces").unwrap().clone();
    store
        .create(
            &namespaces,
            None,
            json!({"metadata": {"name": "default"}}),
            WriteOptions::default(),
        )
        .await
        .unwrap();
    let services = Arc::new(catalog.find("", "v1", "services").unwrap().clone());

    // Half ask for one address, half for one node port, all released at once.
    let start = Arc::new(tokio::sync::Barrier::new(2 * RACERS));
    let mut tasks = Vec::new();
    for i in 0..2 * RACERS {
        let (store, services, start) = (store.clone(), services.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let spec = if i < RACERS {
                json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})
            } else {
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]})
            };
            let body = json!({"metadata": {"name": format!("svc-{i}")}, "spec": spec});
            start.wait().await;
            store
                .create(&services, Some("default"), body, WriteOptions::default())
                .await
        }));
    }
    let mut results: Vec<Result<Value, _>> = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let (ip_race, port_race) = results.split_at(RACERS);
    for (what, race) in [("10.96.0.50", ip_race), ("30080", port_race)] {
        let won = race.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "exactly one service gets {what}");
        for lost in race.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(lost.code, kplex_registry::StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                lost.message.contains("already allocated"),
                "{}",
                lost.message
            );
        }
    }
    // The node-port winner's ClusterIP, picked at random, is unique too.
    let mut ips: Vec<&str> = results
        .iter()
        .flatten()
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 2);
    assert!(locks.is_empty(), "no turn outlives its write");
}
