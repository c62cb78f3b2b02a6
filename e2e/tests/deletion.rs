//! Deleting a large VC: its objects go in bounded batches, its own
//! watches end instead of hanging, the shared controllers drop what they
//! held of it at once (not object by object), and nothing of it is left.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kplex_e2e::kubelet::client_of;
use kplex_e2e::{admin, create_vc, eventually, items, k, stderr, tenant_kubeconfig, Kplex};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_large_vc_ends_its_watches_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The controllers run (in the process); no host, so no syncer.
    let kplex = Kplex::start_with_flags(&dir.path().join("data"), &["--syncer=false"]);
    create_vc(&kplex, dir.path(), "big");
    create_vc(&kplex, dir.path(), "stays");
    let kc = tenant_kubeconfig(&kplex, dir.path(), "big", "alice");
    let stays = tenant_kubeconfig(&kplex, dir.path(), "stays", "bob");
    let client = client_of(&kc).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // 2,500 ConfigMaps: three batches of the delete.
    futures::stream::iter(0..2500)
        .map(|i| {
            let cms = cms.clone();
            async move {
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("cm-{i:04}")),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("v".to_owned(), "x".repeat(200))])),
                    ..Default::default()
                };
                cms.create(&PostParams::default(), &cm).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    // And a workload the controllers hold: a Deployment's ReplicaSet and Pods.
    k(
        &kc,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
        ],
    );
    eventually("the Deployment's Pods", || {
        (items(&kc, &["pods"]).len() == 2).then_some(())
    });
    k(&stays, &["create", "configmap", "mine"]);

    let listed = cms.list(&Default::default()).await.unwrap();
    assert!(listed.items.len() >= 2500);
    let mut watch = cms
        .watch(
            &WatchParams::default().timeout(120),
            &listed.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap()
        .boxed();

    let o = admin(&kplex, &["delete", "virtualcluster", "big"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The VC's own watch ends: no 2,500 DELETED events, no open stream.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.try_next().await {
                Ok(None) | Err(_) => return,
                Ok(Some(WatchEvent::Deleted(cm))) => {
                    panic!(
                        "the deleted VC's watch got the deletion of {:?}",
                        cm.metadata.name
                    )
                }
                // (The controllers' own writes before the deletion.)
                Ok(Some(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the deleted VC's watch hung");
    // The controllers forgot the VC at once, by its record's deletion.
    let line = kplex.wait_for_log("its objects forgotten", Duration::from_secs(30));
    assert!(line.contains("big"), "{line}");
    let dropped: usize = line
        .split("dropped=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!(
        dropped >= 3,
        "the Deployment, its ReplicaSet and Pods: {line}"
    );

    // Nothing of it is left: a new VC of the same name is empty, and the
    // other VC is whole.
    create_vc(&kplex, dir.path(), "big");
    let again = tenant_kubeconfig(&kplex, dir.path(), "big", "alice");
    let left: Vec<_> = items(&again, &["configmaps", "-A"])
        .into_iter()
        .filter(|cm| cm["metadata"]["name"].as_str().unwrap().starts_with("cm-"))
        .collect();
    assert!(left.is_empty(), "{} ConfigMaps left", left.len());
    assert!(items(&again, &["deployments", "-A"]).is_empty());
    k(&stays, &["get", "configmap", "mine"]);
}
