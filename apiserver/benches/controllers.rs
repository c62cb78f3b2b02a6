//! Controllers benchmark: the release `kplex serve` (embedded storage) with
//! the controllers in their own process (`kplex controllers`), so their
//! memory is theirs alone. Each figure beside a baseline from the same run:
//!
//! - **Throughput**: 1,000 VCs each create one Deployment of 10 replicas;
//!   the time until all 10,000 Pods exist, beside creating the same 10,000
//!   Pods directly through the API (64 at a time, one system client).
//! - **Memory**: the controllers' RSS with 10,000 idle VCs (each with its
//!   four namespaces, default ServiceAccounts and root CA ConfigMaps),
//!   freshly started, beside freshly started with none.
//! - **Fairness**: one VC's Deployment of 3 replicas, time until its Pods
//!   exist, alone and while a neighbour VC's Deployment of 20,000 replicas
//!   is being made.
//!
//! Client, server and controllers share the machine's cores.
//! `KPLEX_BENCH_PERF=<file>` records a `perf` profile of the server while
//! the Deployments make their Pods.
//! Run: `hack/bench-controllers`. `KPLEX_BENCH_SCALE` scales the VC and
//! Pod counts.

#[path = "../../storage/benches/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    bare_server, client_at, cpu_seconds, create_vcs, list_rv, percentile, requests, rss, Component,
    CLIENTS, LEAN,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use support::{scale, Profile};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns once `want` root CA ConfigMaps exist (the controllers' work for
/// new VCs is done), polling every second.
async fn root_cas_settled(across: &kube::Client, want: usize) {
    let cms: Api<ConfigMap> = Api::all(across.clone());
    loop {
        let mut n = 0;
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default()
                .fields("metadata.name=kube-root-ca.crt")
                .limit(5000);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = cms.list_metadata(&lp).await.unwrap();
            n += page.items.len();
            match page.metadata.continue_ {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        if n >= want {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": "direct"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
    )
    .unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
    }))
    .unwrap()
}

/// Counts Pods created in VCs whose names start with `prefix`, from a
/// cross-VC watch; returns once `want` have been seen.
async fn count_pods(across: kube::Client, prefix: String, want: usize, from: String) -> Instant {
    // Metadata only: what the server sends the count costs it little.
    let pods: Api<kube::api::PartialObjectMeta<Pod>> = Api::all(across);
    let mut seen = 0;
    let mut rv = from;
    loop {
        let mut events = pods
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .unwrap()
            .boxed();
        while let Some(event) = events.try_next().await.unwrap() {
            match event {
                WatchEvent::Added(p) => {
                    rv = p.metadata.resource_version.clone().unwrap_or(rv);
                    let vc = p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("tenancy.kplex.dev/cluster"))
                        .cloned()
                        .unwrap_or_default();
                    if vc.starts_with(&prefix) {
                        seen += 1;
                        if seen >= want {
                            return Instant::now();
                        }
                    }
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                _ => {}
            }
        }
    }
}

/// Time until VC `vc`'s Deployment `name` of `replicas` has its Pods.
async fn time_to_pods(system_kc: &Path, vc: &str, name: &str, replicas: usize) -> Duration {
    let client = client_at(system_kc, &format!("/clusters/{vc}")).await;
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let rv = pods
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut events = pods
        .watch(
            &WatchParams::default()
                .labels(&format!("app={name}"))
                .timeout(120),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment(name, replicas as i32))
        .await
        .unwrap();
    let mut seen = 0;
    while seen < replicas {
        if let Some(WatchEvent::Added(_)) = events.try_next().await.unwrap() {
            seen += 1;
        }
    }
    let took = started.elapsed();
    deployments.delete(name, &Default::default()).await.unwrap();
    took
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = Path::new(env!("CARGO_BIN_EXE_kplex"));
    let dir = tempfile::tempdir().unwrap();
    let (server, system_kc) = bare_server(bin, dir.path(), "controllers");
    let admin = client_at(&server.kubeconfig(), "").await;
    let across = client_at(&system_kc, "/clusters/*").await;
    let idle = scale(10_000);
    let vcs = scale(1000);
    let per_vc = 10;

    println!("## Controllers (`hack/bench-controllers`)\n");

    // Memory: freshly started with no VC, then with `idle` idle VCs; each
    // with the allocator's default settings and with lean ones. The RSS is
    // read once the first listing's burst is over (10 s after the sync).
    let settle = Duration::from_secs(10);
    let measure = |env: &'static [(&'static str, &'static str)]| {
        let system_kc = system_kc.clone();
        async move {
            let controllers = Component::start_with(bin, "controllers", &system_kc, env);
            tokio::time::sleep(settle).await;
            rss(controllers.pid())
        }
    };
    let rss_empty = measure(&[]).await;
    let lean_empty = measure(LEAN).await;
    let started = Instant::now();
    create_vcs(&admin, (0..idle).map(|i| format!("idle-{i}")).collect()).await;
    // Their root CA ConfigMaps are the controllers' work: wait for all of
    // them (made by a controllers process running meanwhile).
    let filling = Component::start(bin, "controllers", &system_kc);
    root_cas_settled(&across, idle * 4).await;
    let filled = started.elapsed();
    drop(filling);
    let rss_idle = measure(&[]).await;
    let lean_idle = measure(LEAN).await;
    let mib = |b: u64| b as f64 / 1048576.0;
    let per = |full: u64, empty: u64| (full as f64 - empty as f64) / idle as f64;
    println!("| Measure | Result | Target |");
    println!("|---|---|---|");
    println!("| Controllers' RSS, 0 VCs / {idle} idle VCs (default allocator settings) | {:.1} / {:.1} MiB | |", mib(rss_empty), mib(rss_idle));
    println!(
        "| … difference per idle VC | {:.0} B | < 1 KiB |",
        per(rss_idle, rss_empty)
    );
    println!("| Controllers' RSS, 0 VCs / {idle} idle VCs (`MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=0`) | {:.1} / {:.1} MiB | |", mib(lean_empty), mib(lean_idle));
    println!(
        "| … difference per idle VC | {:.0} B | < 1 KiB |",
        per(lean_idle, lean_empty)
    );
    println!(
        "| {idle} VCs made, with their {} root CA ConfigMaps | {:.1} s | |",
        idle * 4,
        filled.as_secs_f64()
    );

    // Fairness: a victim's Deployment alone, then beside a flood.
    let controllers = Component::start(bin, "controllers", &system_kc);
    create_vcs(&admin, vec!["victim".into(), "noisy".into()]).await;
    // Let the start's own work (the root CA ConfigMaps of every VC
    // checked) pass first.
    root_cas_settled(&across, (idle + 2) * 4).await;
    tokio::time::sleep(settle).await;
    let runs = 10;
    let mut alone = Vec::new();
    for i in 0..runs {
        alone.push(time_to_pods(&system_kc, "victim", &format!("a{i}"), 3).await);
    }
    let flood_size = scale(20_000) as i32;
    let noisy = client_at(&system_kc, "/clusters/noisy").await;
    let noisy_deployments: Api<Deployment> = Api::default_namespaced(noisy.clone());
    noisy_deployments
        .create(&PostParams::default(), &deployment("flood", flood_size))
        .await
        .unwrap();
    let noisy_pods: Api<Pod> = Api::default_namespaced(noisy.clone());
    let mut beside = Vec::new();
    for i in 0..runs {
        beside.push(time_to_pods(&system_kc, "victim", &format!("b{i}"), 3).await);
    }
    let flooded = noisy_pods
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let (alone_p50, beside_p50) = (percentile(&mut alone, 0.5), percentile(&mut beside, 0.5));
    let (alone_max, beside_max) = (percentile(&mut alone, 1.0), percentile(&mut beside, 1.0));
    println!(
        "| Victim's Deployment (3 replicas) until its Pods exist, alone: p50 / max of {runs} | {:.1} ms / {:.1} ms | |",
        alone_p50.as_secs_f64() * 1e3,
        alone_max.as_secs_f64() * 1e3
    );
    println!(
        "| … beside a neighbour's Deployment of {flood_size} replicas: p50 / max | {:.1} ms / {:.1} ms | ≤ 2× alone |",
        beside_p50.as_secs_f64() * 1e3,
        beside_max.as_secs_f64() * 1e3
    );
    println!(
        "| Ratio beside ÷ alone (p50) | {:.2} | ≤ 2 |",
        beside_p50.as_secs_f64() / alone_p50.as_secs_f64()
    );
    println!(
        "| The neighbour's Pods made meanwhile | {} of {flood_size} | |",
        flooded
    );
    // The flood goes before the next phase.
    noisy_deployments
        .delete("flood", &Default::default())
        .await
        .unwrap();
    drop(controllers);

    // Throughput: the same Pods directly, then through Deployments.
    let loaded = Component::start(bin, "controllers", &system_kc);
    create_vcs(&admin, (0..vcs).map(|i| format!("d-{i}")).collect()).await;
    create_vcs(&admin, (0..vcs).map(|i| format!("c-{i}")).collect()).await;
    // The new VCs' root CA ConfigMaps first: not part of what is measured.
    root_cas_settled(&across, (idle + 2 + 2 * vcs) * 4).await;
    let root = client_at(&system_kc, "").await;
    let cpu_server = || cpu_seconds(server.pid());
    let server_before = cpu_server();
    let direct_started = Instant::now();
    futures::stream::iter((0..vcs).flat_map(|v| (0..per_vc).map(move |p| (v, p))))
        .map(|(v, p)| {
            let root = root.clone();
            async move {
                let req = kube::core::Request::new(format!(
                    "/clusters/d-{v}/api/v1/namespaces/default/pods"
                ))
                .create(
                    &PostParams::default(),
                    serde_json::to_vec(&pod(&format!("p-{p}"))).unwrap(),
                )
                .unwrap();
                let _: Pod = root.request(req).await.unwrap();
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
    let direct = direct_started.elapsed();
    let direct_server_cpu = cpu_server() - server_before;
    let rv = list_rv(&Api::<Pod>::all(across.clone())).await;
    let before = requests(&admin).await;
    let (server_before, controllers_before) = (cpu_server(), cpu_seconds(loaded.pid()));
    let waiting = tokio::spawn(count_pods(across.clone(), "c-".into(), vcs * per_vc, rv));
    let profile = Profile::start(server.pid());
    let controllers_started = Instant::now();
    futures::stream::iter(0..vcs)
        .map(|v| {
            let root = root.clone();
            async move {
                let req = kube::core::Request::new(format!(
                    "/clusters/c-{v}/apis/apps/v1/namespaces/default/deployments"
                ))
                .create(
                    &PostParams::default(),
                    serde_json::to_vec(&deployment("web", per_vc as i32)).unwrap(),
                )
                .unwrap();
                let _: Deployment = root.request(req).await.unwrap();
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
    let done = waiting.await.unwrap();
    drop(profile);
    let through = done - controllers_started;
    let (server_cpu, controllers_cpu) = (
        cpu_server() - server_before,
        cpu_seconds(loaded.pid()) - controllers_before,
    );
    let after = requests(&admin).await;
    let pods = (vcs * per_vc) as f64;
    println!(
        "| {} Pods created directly (64 at a time) | {:.1} s, {:.0} Pods/s | baseline |",
        vcs * per_vc,
        direct.as_secs_f64(),
        pods / direct.as_secs_f64()
    );
    println!(
        "| {vcs} Deployments × {per_vc} replicas, until every Pod exists | {:.1} s, {:.0} Pods/s | |",
        through.as_secs_f64(),
        pods / through.as_secs_f64()
    );
    println!(
        "| Throughput through the controllers ÷ direct | {:.2} | ≥ 0.70 |",
        direct.as_secs_f64() / through.as_secs_f64()
    );
    println!(
        "| Server CPU per Pod: direct / through the controllers (+ the controllers' own) | {:.0} µs / {:.0} µs (+ {:.0} µs) | |",
        direct_server_cpu / pods * 1e6,
        server_cpu / pods * 1e6,
        controllers_cpu / pods * 1e6
    );
    let mut made: Vec<String> = after
        .iter()
        .filter_map(|(k, n)| {
            let d = n - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{} {} {:.1}", k.0, k.1, d as f64 / pods))
        })
        .collect();
    made.sort();
    println!(
        "| Requests per Pod through the controllers (the watch's included) | {} | |",
        made.join("; ")
    );
    drop(loaded);
}
