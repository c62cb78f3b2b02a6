//! Per-VC limits (`VirtualCluster.spec.limits`) over real HTTPS: stored
//! objects and bytes refuse writes with the limit named and leave stored
//! data intact, change at run time, show in status with their use; the
//! request rate answers 429 with Retry-After that clients wait out; open
//! watches are capped per VC. One VC's limits never touch another.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::core::v1::ConfigMap;
use kplex_e2e::{admin, configmap, create_vc, create_vc_with, k, stderr, tenant_kubeconfig, Kplex};
use kube::api::{Api, ListParams, PostParams, WatchParams};

async fn client(path: &std::path::Path, retries: bool) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.default_retry = retries;
    kube::Client::try_from(config).unwrap()
}

fn vc_status(kplex: &Kplex, name: &str) -> serde_json::Value {
    let o = admin(kplex, &["get", "virtualcluster", name, "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"].clone()
}

fn patch_limits(kplex: &Kplex, name: &str, limits: &str) {
    let patch = format!(r#"{{"spec":{{"limits":{limits}}}}}"#);
    let o = admin(
        kplex,
        &[
            "patch",
            "virtualcluster",
            name,
            "--type",
            "merge",
            "-p",
            &patch,
        ],
    );
    assert!(o.status.success(), "patch {name}: {}", stderr(&o));
}

fn refused_for(e: kube::Error, limit: &str) -> String {
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message.starts_with("exceeded quota:") && s.message.contains(limit),
                "{}",
                s.message
            );
            s.message
        }
        other => panic!("expected a 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_and_byte_limits_refuse_writes_and_change_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc_with(&kplex, dir.path(), "small", "{limits: {objects: 64}}");
    create_vc(&kplex, dir.path(), "other");
    let small = client(
        &tenant_kubeconfig(&kplex, dir.path(), "small", "alice"),
        true,
    )
    .await;
    let other = client(&tenant_kubeconfig(&kplex, dir.path(), "other", "bob"), true).await;
    let cms: Api<ConfigMap> = Api::namespaced(small.clone(), "default");

    // What the VC holds to start with (its namespaces and their accounts).
    let status = vc_status(&kplex, "small");
    assert_eq!(status["limits"]["hard"]["objects"], 64);
    let start = status["limits"]["used"]["objects"].as_u64().unwrap();
    assert!(start > 0 && start < 64, "{status}");

    // 48 creates at once, for fewer places than that: exactly the places
    // are taken, the rest refused naming the limit.
    let room = 64 - start;
    let results = join_all((0..48).map(|i| {
        let cms = cms.clone();
        async move {
            cms.create(&PostParams::default(), &configmap(&format!("cm-{i}"), "x"))
                .await
        }
    }))
    .await;
    let created = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(created, room.min(48), "racing creates passed the limit");
    let mut refusals = results.into_iter().filter_map(Result::err);
    if let Some(refused) = refusals.next() {
        refused_for(refused, "objects=");
    }
    // 48 may fit if the start was small: fill the rest one by one.
    let mut i = 48;
    let refused = loop {
        assert!(i < 100, "the limit of 64 objects was never enforced");
        match cms
            .create(&PostParams::default(), &configmap(&format!("cm-{i}"), "x"))
            .await
        {
            Ok(_) => i += 1,
            Err(e) => break e,
        }
    };
    let message = refused_for(refused, "objects=");
    assert!(
        message.contains("limited: objects=64"),
        "the limit is named: {message}"
    );
    let listed = cms.list(&ListParams::default()).await.unwrap().items.len() as u64;
    assert_eq!(vc_status(&kplex, "small")["limits"]["used"]["objects"], 64);
    // What is stored stays readable and deletable; the refused create left nothing.
    assert!(cms.get_opt(&format!("cm-{i}")).await.unwrap().is_none());
    assert_eq!(cms.get("cm-0").await.unwrap().data.unwrap()["value"], "x");
    // Another VC is not held to this one's limit.
    Api::<ConfigMap>::namespaced(other.clone(), "default")
        .create(&PostParams::default(), &configmap("free", "x"))
        .await
        .unwrap();

    // Raised at run time: the next create goes through.
    patch_limits(&kplex, "small", r#"{"objects": 200}"#);
    kplex_e2e::eventually("the raised limit", || {
        (vc_status(&kplex, "small")["limits"]["hard"]["objects"] == 200).then_some(())
    });
    cms.create(&PostParams::default(), &configmap("after-raise", "x"))
        .await
        .unwrap();
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len() as u64,
        listed + 1
    );

    // Bytes: 256 KiB for everything. One large value fits, a second does
    // not; shrinking what is stored is always allowed, and frees room.
    patch_limits(&kplex, "small", r#"{"storedBytes": "256Ki"}"#);
    let big = "b".repeat(150 * 1024);
    let used = vc_status(&kplex, "small")["limits"]["used"]["storedBytes"]
        .as_u64()
        .unwrap();
    assert!(used > 0 && used < 100 * 1024, "used {used}");
    cms.create(&PostParams::default(), &configmap("big", &big))
        .await
        .unwrap();
    let refused = cms
        .create(&PostParams::default(), &configmap("big-2", &big))
        .await
        .unwrap_err();
    refused_for(refused, "storedBytes=");
    // Growing an object past the limit is refused too, and changes nothing.
    let mut grown = cms.get("cm-0").await.unwrap();
    grown.data = Some(BTreeMap::from([("value".into(), big.clone())]));
    refused_for(
        cms.replace("cm-0", &PostParams::default(), &grown)
            .await
            .unwrap_err(),
        "storedBytes=",
    );
    assert_eq!(cms.get("cm-0").await.unwrap().data.unwrap()["value"], "x");
    let mut shrunk = cms.get("big").await.unwrap();
    shrunk.data = Some(BTreeMap::from([("value".into(), "small now".into())]));
    cms.replace("big", &PostParams::default(), &shrunk)
        .await
        .unwrap();
    cms.create(&PostParams::default(), &configmap("big-2", &big))
        .await
        .unwrap();

    // A VC over its limit (lowered below its use) can still delete, also
    // what deletion first marks (a namespace turns Terminating: it grows).
    let small_kc = tenant_kubeconfig(&kplex, dir.path(), "small", "carol");
    k(&small_kc, &["create", "namespace", "spare"]);
    patch_limits(&kplex, "small", r#"{"storedBytes": "1Mi"}"#);
    kplex_e2e::eventually("the raised byte limit", || {
        (vc_status(&kplex, "small")["limits"]["hard"]["storedBytes"] == 1 << 20).then_some(())
    });
    cms.create(&PostParams::default(), &configmap("fill", &big))
        .await
        .unwrap();
    patch_limits(&kplex, "small", r#"{"storedBytes": "256Ki"}"#);
    kplex_e2e::eventually("the lowered byte limit", || {
        (vc_status(&kplex, "small")["limits"]["hard"]["storedBytes"] == 256 * 1024).then_some(())
    });
    refused_for(
        cms.create(&PostParams::default(), &configmap("more", "x"))
            .await
            .unwrap_err(),
        "storedBytes=",
    );
    k(&small_kc, &["delete", "namespace", "spare", "--wait=true"]);
    cms.delete("fill", &Default::default()).await.unwrap();

    // Bad limits are a 422 naming the field, and change nothing.
    let o = admin(
        &kplex,
        &[
            "patch",
            "virtualcluster",
            "small",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"limits":{"objects":-1,"storedBytes":"lots"}}}"#,
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("spec.limits.objects") && err.contains("spec.limits.storedBytes"),
        "{err}"
    );
    assert_eq!(
        vc_status(&kplex, "small")["limits"]["hard"]["storedBytes"],
        256 * 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_answers_429_that_clients_wait_out() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc_with(
        &kplex,
        dir.path(),
        "slow",
        "{limits: {requestsPerSecond: 2, requestBurst: 4, watches: 2}}",
    );
    create_vc(&kplex, dir.path(), "fast");
    let slow_kc = tenant_kubeconfig(&kplex, dir.path(), "slow", "alice");
    let fast_kc = tenant_kubeconfig(&kplex, dir.path(), "fast", "bob");
    let raw = client(&slow_kc, false).await;
    let cms: Api<ConfigMap> = Api::namespaced(raw.clone(), "default");
    let status = vc_status(&kplex, "slow");
    assert_eq!(status["limits"]["hard"]["requestsPerSecond"], 2);
    assert_eq!(status["limits"]["hard"]["requestBurst"], 4);

    // Past the burst: 429 with Retry-After.
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = cms.list(&ListParams::default()).await {
            refused = Some(e);
            break;
        }
    }
    match refused.expect("the burst ran out") {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 429, "{s:?}");
            assert_eq!(s.reason, "TooManyRequests");
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    // kubectl waits out each 429 (its Retry-After) and gets its answer,
    // as does a kube-rs client with its default retries.
    let o = kplex_e2e::kubectl(&[
        "--kubeconfig",
        slow_kc.to_str().unwrap(),
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let retrying = client(&slow_kc, true).await;
    Api::<ConfigMap>::namespaced(retrying, "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    // Another VC is not held to this one's rate.
    for _ in 0..20 {
        k(&fast_kc, &["get", "configmaps"]);
    }

    // Watches: two open, a third is a 429 until one ends. (The rate is
    // raised first, at run time, so only the watch limit can refuse.)
    patch_limits(
        &kplex,
        "slow",
        r#"{"requestsPerSecond": 1000, "requestBurst": 1000}"#,
    );
    kplex_e2e::eventually("the raised rate", || {
        (vc_status(&kplex, "slow")["limits"]["hard"]["requestsPerSecond"] == 1000).then_some(())
    });
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            cms.watch(&WatchParams::default().timeout(60), "0")
                .await
                .unwrap(),
        );
    }
    match cms.watch(&WatchParams::default().timeout(60), "0").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 429);
            assert!(s.message.contains("watches"), "{}", s.message);
        }
        Err(other) => panic!("expected a 429, got {other:?}"),
        Ok(_) => panic!("a third watch was opened past the limit of 2"),
    }
    assert_eq!(vc_status(&kplex, "slow")["limits"]["used"]["watches"], 2);
    // One ends: the slot is free again.
    drop(open.pop());
    kplex_e2e::eventually("the freed watch slot", || {
        (vc_status(&kplex, "slow")["limits"]["used"]["watches"] == 1).then_some(())
    });
    let _again = cms
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .unwrap();
}
