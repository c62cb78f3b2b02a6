//! Syncer benchmark: the release `kplex serve` (embedded storage) with one
//! of its VCs as the host cluster and the syncer in its own process
//! (`kplex syncer`), so its memory and CPU are its own. Each figure beside
//! a baseline from the same run:
//!
//! - **Downsync**: 100 VCs × 100 Pods created in the VCs; the time until
//!   all 10,000 copies exist on the host, beside creating the same 10,000
//!   Pods directly on the host (64 at a time, one client, before the syncer
//!   starts).
//! - **Upsync**: host status writes (a kubelet's Running) for 500 synced
//!   Pods, 8 at a time; the time from each write until the tenant's Pod
//!   shows it (p50/p99).
//! - **Memory**: the syncer's RSS freshly started, with 100 idle VCs, and
//!   with the 10,000 Pods synced (per idle VC, per synced Pod).
//!
//! Client, server and syncer share the machine's cores.
//! Run: `hack/bench-syncer`. `KPLEX_BENCH_SCALE` scales the counts.

#[path = "../../storage/benches/support/mod.rs"]
mod support;

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    bare_server, client_at, cpu_seconds, create_vcs, create_vcs_with, list_rv, percentile,
    requests, rss, Component, CLIENTS,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::scale;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }))
    .unwrap()
}

/// Creates `names` in `api`, [`CLIENTS`] at a time.
async fn create_pods(jobs: Vec<(Api<Pod>, String)>) {
    futures::stream::iter(jobs)
        .map(|(api, name)| async move {
            api.create(&PostParams::default(), &pod(&name))
                .await
                .unwrap();
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
}

/// Returns once `want` Pods labelled by kplex exist on the host (watched
/// from `rv`, metadata only).
async fn host_copies(host: kube::Client, want: usize, rv: String) -> Instant {
    let pods: Api<kube::api::PartialObjectMeta<Pod>> = Api::all(host);
    let mut seen = 0;
    let mut rv = rv;
    loop {
        let params = WatchParams::default()
            .labels("tenancy.kplex.dev/vc-uid")
            .timeout(290);
        let mut events = pods.watch(&params, &rv).await.unwrap().boxed();
        while let Some(event) = events.try_next().await.unwrap() {
            match event {
                WatchEvent::Added(p) => {
                    rv = p.metadata.resource_version.clone().unwrap_or(rv);
                    seen += 1;
                    if seen >= want {
                        return Instant::now();
                    }
                }
                WatchEvent::Modified(p) => rv = p.metadata.resource_version.unwrap_or(rv),
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                _ => {}
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = Path::new(env!("CARGO_BIN_EXE_kplex"));
    let dir = tempfile::tempdir().unwrap();
    let (server, system_kc) = bare_server(bin, dir.path(), "syncer");
    let admin = client_at(&server.kubeconfig(), "").await;
    let vcs = scale(100);
    let per_vc = scale(100).max(1);
    let pods_total = vcs * per_vc;
    let upsync_samples = scale(500).min(pods_total);

    // The host: a VC of this kplex, registered as the default host.
    // A real host enforces no VC's policy of its own: neither does this one.
    create_vcs_with(
        &admin,
        vec!["host".into()],
        json!({"isolation": {"podSecurity": "privileged", "userNamespaces": false, "quota": {"hard": {}}}}),
    )
    .await;
    let host_kc = kplex_e2e::tenant_kubeconfig(&server, dir.path(), "host", "platform");
    let host_text = std::fs::read_to_string(&host_kc).unwrap();
    let body = json!({"apiVersion": "tenancy.kplex.dev/v1alpha1", "kind": "HostCluster",
        "metadata": {"name": "default"}, "spec": {"kubeconfig": host_text, "default": true}});
    let req = hyper::Request::post("/apis/tenancy.kplex.dev/v1alpha1/hostclusters")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    admin.request_text(req).await.unwrap();
    let host = client_at(&host_kc, "").await;

    println!("## Syncer (`hack/bench-syncer`)\n");
    println!("| Measure | Result | Target |");
    println!("|---|---|---|");

    // Baseline: the same number of Pods made directly on the host, with no
    // syncer running; then removed.
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(host.clone());
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "direct"}})).unwrap(),
    )
    .await
    .unwrap();
    let direct: Api<Pod> = Api::namespaced(host.clone(), "direct");
    let started = Instant::now();
    create_pods(
        (0..pods_total)
            .map(|i| (direct.clone(), format!("p{i}")))
            .collect(),
    )
    .await;
    let direct_took = started.elapsed();
    ns.delete("direct", &Default::default()).await.unwrap();
    while direct
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // This machine's ceiling for a synced Pod when the host is this same
    // server: the tenant's create and the host's create, nothing else
    // (still no syncer running; a VC placed nowhere it could sync to).
    create_vcs(&admin, vec!["ceiling".into()]).await;
    let ceiling_tenant: Api<Pod> =
        Api::default_namespaced(client_at(&system_kc, "/clusters/ceiling").await);
    ns.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "ceiling"}})).unwrap(),
    )
    .await
    .unwrap();
    let ceiling_host: Api<Pod> = Api::namespaced(host.clone(), "ceiling");
    let started = Instant::now();
    let mut both = Vec::with_capacity(2 * pods_total);
    for i in 0..pods_total {
        both.push((ceiling_tenant.clone(), format!("p{i}")));
        both.push((ceiling_host.clone(), format!("p{i}")));
    }
    create_pods(both).await;
    let ceiling_took = started.elapsed();
    admin
        .request_text(
            hyper::Request::delete("/apis/tenancy.kplex.dev/v1alpha1/virtualclusters/ceiling")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    ns.delete("ceiling", &Default::default()).await.unwrap();
    while ceiling_host
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map(|l| !l.items.is_empty())
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Memory: the syncer freshly started, then with idle VCs.
    let settle = Duration::from_secs(5);
    // `KPLEX_BENCH_LEAN=1`: the syncer with mimalloc's lean settings.
    let lean = std::env::var_os("KPLEX_BENCH_LEAN").is_some();
    let syncer = Component::start_with(
        bin,
        "syncer",
        &system_kc,
        if lean { common::LEAN } else { &[] },
    );
    tokio::time::sleep(settle).await;
    let rss_empty = rss(syncer.pid());
    let names: Vec<String> = (0..vcs).map(|i| format!("vc-{i}")).collect();
    create_vcs(&admin, names.clone()).await;
    tokio::time::sleep(settle).await;
    let rss_idle = rss(syncer.pid());

    // Downsync: every VC's Pods, until their copies are on the host.
    let rv = list_rv(&Api::<Pod>::all(host.clone())).await;
    let counting = tokio::spawn(host_copies(host.clone(), pods_total, rv));
    let mut jobs = Vec::with_capacity(pods_total);
    let mut clients = Vec::new();
    for name in &names {
        clients.push(client_at(&system_kc, &format!("/clusters/{name}")).await);
    }
    // Interleaved across VCs, as many tenants at once would.
    for i in 0..per_vc {
        for client in &clients {
            jobs.push((
                Api::<Pod>::default_namespaced(client.clone()),
                format!("p{i}"),
            ));
        }
    }
    let before = requests(&admin).await;
    let (cpu_syncer, cpu_server) = (cpu_seconds(syncer.pid()), cpu_seconds(server.pid()));
    let started = Instant::now();
    create_pods(jobs).await;
    let created = started.elapsed();
    let done = counting.await.unwrap();
    let synced_took = done - started;
    let cpu_syncer = cpu_seconds(syncer.pid()) - cpu_syncer;
    let cpu_server = cpu_seconds(server.pid()) - cpu_server;
    let after = requests(&admin).await;
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "| {pods_total} Pods made directly on the host (baseline) | {:.1} s, {:.0} Pods/s | |",
        direct_took.as_secs_f64(),
        rate(pods_total, direct_took)
    );
    println!(
        "| {vcs} VCs × {per_vc} Pods created in the VCs ({:.1} s) until every copy is on the host | {:.1} s, {:.0} Pods/s | |",
        created.as_secs_f64(),
        synced_took.as_secs_f64(),
        rate(pods_total, synced_took)
    );
    println!(
        "| Downsync throughput ÷ direct | {:.2} | ≥ 0.80 |",
        rate(pods_total, synced_took) / rate(pods_total, direct_took)
    );
    println!(
        "| Ceiling here (host = this server): each Pod created in a VC and on the host, no syncer | {:.1} s, {:.0} Pods/s, **{:.2}** of direct | |",
        ceiling_took.as_secs_f64(),
        rate(pods_total, ceiling_took),
        rate(pods_total, ceiling_took) / rate(pods_total, direct_took)
    );
    println!(
        "| Downsync throughput ÷ that ceiling | {:.2} | |",
        rate(pods_total, synced_took) / rate(pods_total, ceiling_took)
    );
    println!(
        "| CPU per synced Pod: syncer / server (the server also took the tenants' creates) | {:.0} µs / {:.0} µs | |",
        cpu_syncer / pods_total as f64 * 1e6,
        cpu_server / pods_total as f64 * 1e6
    );
    let mut by_kind: Vec<((String, String), u64)> = after
        .iter()
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    by_kind.sort_by_key(|k| std::cmp::Reverse(k.1));
    let shown: Vec<String> = by_kind
        .iter()
        .take(8)
        .map(|((verb, resource), n)| {
            format!("{verb} {resource} {:.2}", *n as f64 / pods_total as f64)
        })
        .collect();
    println!(
        "| Requests per synced Pod (all clients) | {} | |",
        shown.join(", ")
    );

    // Memory with the Pods synced.
    tokio::time::sleep(settle).await;
    let rss_synced = rss(syncer.pid());
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "| Syncer RSS: started / {vcs} idle VCs / {pods_total} Pods synced | {:.1} / {:.1} / {:.1} MiB | |",
        mib(rss_empty),
        mib(rss_idle),
        mib(rss_synced)
    );
    println!(
        "| … per idle VC | {:.0} B | 0 |",
        (rss_idle as f64 - rss_empty as f64) / vcs as f64
    );
    println!(
        "| … per synced Pod | {:.2} KiB | |",
        (rss_synced as f64 - rss_idle as f64) / pods_total as f64 / 1024.0
    );

    // Upsync: a kubelet's status on the host until the tenant sees it.
    let across = client_at(&system_kc, "/clusters/*").await;
    let tenant_pods: Api<Pod> = Api::all(across);
    let rv = list_rv(&tenant_pods).await;
    let written: Arc<Mutex<HashMap<(String, String), Instant>>> = Default::default();
    let watching = {
        let written = written.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut rv = rv;
            while latencies.len() < upsync_samples {
                let mut events = tenant_pods
                    .watch(&WatchParams::default().timeout(290), &rv)
                    .await
                    .unwrap()
                    .boxed();
                while let Some(event) = events.try_next().await.unwrap() {
                    let WatchEvent::Modified(p) = event else {
                        continue;
                    };
                    rv = p.metadata.resource_version.clone().unwrap_or(rv);
                    if p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                        continue;
                    }
                    let vc = p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("tenancy.kplex.dev/cluster"))
                        .cloned()
                        .unwrap_or_default();
                    let key = (vc, p.metadata.name.clone().unwrap_or_default());
                    if let Some(at) = written.lock().unwrap().remove(&key) {
                        latencies.push(at.elapsed());
                        if latencies.len() >= upsync_samples {
                            return latencies;
                        }
                    }
                }
            }
            latencies
        })
    };
    let samples: Vec<(String, String)> = (0..upsync_samples)
        .map(|i| (names[i % vcs].clone(), format!("p{}", i / vcs)))
        .collect();
    futures::stream::iter(samples)
        .map(|(vc, name)| {
            let host = host.clone();
            let written = written.clone();
            async move {
                let api: Api<Pod> = Api::namespaced(host, &format!("kplex-{vc}-default"));
                let status = json!({"status": {"phase": "Running", "podIP": "10.244.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}]}});
                written
                    .lock()
                    .unwrap()
                    .insert((vc.clone(), name.clone()), Instant::now());
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut latencies = watching.await.unwrap();
    println!(
        "| Upsync: host status write until the tenant sees it, {} Pods, p50 / p99 | {:.1} ms / {:.1} ms | p99 < 1 s |",
        latencies.len(),
        percentile(&mut latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&mut latencies, 0.99).as_secs_f64() * 1e3
    );
    drop(syncer);
}
