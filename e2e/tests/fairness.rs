//! Fair scheduling between VCs over real HTTPS: one VC's LIST flood is
//! queued and refused in its own flow (429 with `Retry-After`) while
//! another VC's requests are all served; kubectl backs off and completes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kplex_e2e::kubelet::client_of;
use kplex_e2e::{create_vc, k, tenant_kubeconfig, Kplex};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_vc_is_refused_in_its_own_flow_while_another_is_served() {
    let dir = tempfile::tempdir().unwrap();
    // Small queues, so the flood overflows them within the test.
    let kplex = Kplex::start_with_flags(
        &dir.path().join("data"),
        &[
            "--controllers=false",
            "--syncer=false",
            "--max-queued-per-vc=2",
            "--max-queue-wait-ms=300",
        ],
    );
    for vc in ["noisy", "victim"] {
        create_vc(&kplex, dir.path(), vc);
    }
    let noisy_kc = tenant_kubeconfig(&kplex, dir.path(), "noisy", "admin");
    let victim_kc = tenant_kubeconfig(&kplex, dir.path(), "victim", "admin");
    let noisy = client_of(&noisy_kc).await;
    let victim = client_of(&victim_kc).await;
    // The flood's client does not retry (kube-rs's default client does,
    // after Retry-After): it sees the 429s.
    let raw = {
        let kc = kube::config::Kubeconfig::read_from(&noisy_kc).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    };

    // The noisy VC holds 400 ConfigMaps of ~1 KiB; the victim one.
    let cms: Api<ConfigMap> = Api::namespaced(noisy.clone(), "default");
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..400 {
        let cms = cms.clone();
        creates.spawn(async move {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": format!("cm-{i}")}, "data": {"v": "x".repeat(1000)}}))
            .unwrap();
            cms.create(&PostParams::default(), &cm).await.unwrap();
        });
        if creates.len() >= 32 {
            creates.join_next().await;
        }
    }
    while creates.join_next().await.is_some() {}
    let mine: Api<ConfigMap> = Api::namespaced(victim.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "mine"}})).unwrap();
    mine.create(&PostParams::default(), &cm).await.unwrap();

    // The flood: 48 LIST loops in the noisy VC for three seconds.
    let until = Instant::now() + Duration::from_secs(3);
    let flooding: Api<ConfigMap> = Api::namespaced(raw.clone(), "default");
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let (cms, served, refused) = (flooding.clone(), served.clone(), refused.clone());
        flood.spawn(async move {
            while Instant::now() < until {
                match cms.list(&ListParams::default()).await {
                    Ok(list) => {
                        assert_eq!(list.items.len(), 400);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kube::Error::Api(status)) if status.code == 429 => {
                        assert_eq!(status.reason, "TooManyRequests", "{status:?}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("the flood got {e}"),
                }
            }
        });
    }
    // A 429's Retry-After, as the raw response carries it: one more
    // client of the flood, reading the headers.
    let probe = {
        let raw = raw.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                let req = http::Request::get("/api/v1/namespaces/default/configmaps")
                    .body(Vec::new())
                    .unwrap();
                let response = raw.send(req.map(Into::into)).await.unwrap();
                if response.status() == 429 {
                    return response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                }
            }
            None
        })
    };
    // Meanwhile the victim reads its ConfigMap: every read is served.
    let mut reads = 0;
    while Instant::now() < until {
        mine.get("mine").await.expect("the victim's read is served");
        reads += 1;
    }
    // And kubectl in the noisy VC backs off on 429 and completes.
    let kubectl = tokio::task::spawn_blocking(move || {
        k(&noisy_kc, &["get", "configmaps", "-o", "name"])
            .lines()
            .count()
    });
    // So does a kube-rs client with its default retries.
    let backing_off = {
        let cms = cms.clone();
        tokio::spawn(async move {
            cms.list(&ListParams::default())
                .await
                .map(|l| l.items.len())
        })
    };
    let retry_after = probe.await.unwrap();
    while flood.join_next().await.is_some() {}
    assert_eq!(
        kubectl.await.unwrap(),
        400,
        "kubectl listed every ConfigMap"
    );
    let listed = backing_off
        .await
        .unwrap()
        .expect("kube-rs retried and listed");
    assert_eq!(listed, 400);
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    eprintln!("flood: {served} served, {refused} refused; victim: {reads} reads");
    assert!(refused > 0, "the flood was never refused ({served} served)");
    assert!(served > 0, "the flood was never served");
    assert!(reads > 0);
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "a 429 says when to retry"
    );

    // The refusals are counted by priority level, not by VC.
    let metrics = kplex_e2e::admin(&kplex, &["get", "--raw", "/metrics"]);
    let text = String::from_utf8_lossy(&metrics.stdout);
    let rejected: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_flowcontrol_rejected_requests_total{priority_level=\"lists\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        rejected >= refused as u64,
        "{rejected} < {refused}:\n{text}"
    );
    assert!(!text.contains("noisy"), "no VC names in metrics");

    // The noisy VC stores more than a light VC, so its LISTs are heavy
    // work. One that fits a chunk is sent whole, with its length; the 400
    // ConfigMaps are written chunk by chunk on the LIST runtime, so their
    // length is not known up front.
    let length_of = |path: &'static str| {
        let raw = raw.clone();
        async move {
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            let response = raw.send(req.map(Into::into)).await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let length = response
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
            let body = response.into_body().collect_bytes().await.unwrap();
            let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (length, body.len(), list["items"].as_array().unwrap().len())
        }
    };
    let (length, read, items) = length_of("/api/v1/namespaces").await;
    assert_eq!(length, Some(read), "a one-chunk heavy list is sent whole");
    assert!(items >= 1);
    let (length, _, items) = length_of("/api/v1/namespaces/default/configmaps").await;
    assert_eq!(length, None, "a longer heavy list is streamed");
    assert_eq!(items, 400);
}
