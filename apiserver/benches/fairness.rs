//! Noisy-neighbour benchmark (`hack/bench-fairness`): the release `kplex
//! serve` (embedded storage, no controllers or syncer); VC `noisy` holds
//! 2,000 ConfigMaps of ~1 KiB, VC `victim` reads one ConfigMap in a loop
//! (one client, one request at a time), for a few seconds in each setting:
//!
//! - alone;
//! - the control: 8 CPU-spinning processes that never touch kplex (what
//!   the machine's contention alone leaves the victim);
//! - a LIST flood: 8 loops listing noisy's ConfigMaps (as `kubectl get cm`
//!   would, backing off for `Retry-After` on a 429);
//! - a create flood: 8 loops creating ConfigMaps in noisy;
//! - a watch storm: 1,000 watches of noisy's ConfigMaps opened and closed
//!   (50 loops).
//!
//! Targets: under each flood the victim's p99 ≤ 2× and its throughput
//! ≥ 0.5× of the control. Prints Markdown (docs/BENCHMARKS.md).

#[path = "../../storage/benches/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_at, create_vcs, percentile};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use serde_json::json;
use support::scale;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long each setting runs.
fn run() -> Duration {
    Duration::from_secs(8)
}

struct Victim {
    per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// The victim's loop for `run()`, on a thread and a runtime of its own,
/// with a client of its own. The scenario's victim is a process of its
/// own: its GETs must not wait behind the neighbour's client work (the
/// floods decode their lists, and create, in this process's runtime),
/// which would measure this benchmark's runtime, not kplex. On a thread of
/// its own the kernel shares the cores between the two as between
/// processes.
async fn victim(kubeconfig: &Path) -> Victim {
    let kubeconfig = kubeconfig.to_owned();
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(victim_loop(&kubeconfig))
    })
    .await
    .unwrap()
}

async fn victim_loop(kubeconfig: &Path) -> Victim {
    let api: Api<ConfigMap> = Api::namespaced(client_at(kubeconfig, "").await, "default");
    // Connected before the clock starts.
    api.get("mine").await.expect("the victim's first GET");
    let until = Instant::now() + run();
    let mut samples = Vec::new();
    let started = Instant::now();
    while Instant::now() < until {
        let t = Instant::now();
        api.get("mine").await.expect("the victim's GET");
        samples.push(t.elapsed());
    }
    let per_s = samples.len() as f64 / started.elapsed().as_secs_f64();
    Victim {
        per_s,
        p50: percentile(&mut samples, 0.50),
        p99: percentile(&mut samples, 0.99),
    }
}

/// What a flood did meanwhile.
#[derive(Default)]
struct Flood {
    done: AtomicUsize,
    refused: AtomicUsize,
}

/// Starts `loops` copies of `step` until `stop`.
fn flood<F, Fut>(
    loops: usize,
    stop: &Arc<AtomicBool>,
    step: F,
) -> (Arc<Flood>, tokio::task::JoinSet<()>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), kube::Error>> + Send,
{
    let counts = Arc::new(Flood::default());
    let mut tasks = tokio::task::JoinSet::new();
    for l in 0..loops {
        let (stop, counts, step) = (stop.clone(), counts.clone(), step.clone());
        tasks.spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match step(l, i).await {
                    Ok(()) => {
                        counts.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(kube::Error::Api(s)) if s.code == 429 => {
                        // As client-go does: wait for Retry-After (1 s).
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => panic!("flood step failed: {e}"),
                }
                i += 1;
            }
        });
    }
    (counts, tasks)
}

#[tokio::main]
async fn main() {
    let bin = Path::new(env!("CARGO_BIN_EXE_kplex"));
    let dir = tempfile::tempdir().unwrap();
    let server = kplex_e2e::Kplex::start_bin(
        bin,
        &dir.path().join("kplex-data"),
        "kplex=info,warn",
        // The scenario is scheduling: no VC is held to a request rate.
        &[
            "--controllers=false",
            "--syncer=false",
            "--max-requests-per-second-per-vc=10000000",
            "--max-request-burst-per-vc=10000000",
        ],
    );
    let admin = client_at(&server.kubeconfig(), "").await;
    create_vcs(&admin, vec!["noisy".into(), "victim".into()]).await;
    let noisy_kc = kplex_e2e::tenant_kubeconfig(&server, dir.path(), "noisy", "admin");
    let victim_kc = kplex_e2e::tenant_kubeconfig(&server, dir.path(), "victim", "admin");
    let noisy = client_at(&noisy_kc, "").await;
    let victim_client = client_at(&victim_kc, "").await;
    let noisy_cms: Api<ConfigMap> = Api::namespaced(noisy.clone(), "default");
    let victim_cms: Api<ConfigMap> = Api::namespaced(victim_client, "default");

    let objects = scale(2000);
    futures::stream::iter(0..objects)
        .map(|i| {
            let api = noisy_cms.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("cm-{i}")}, "data": {"v": "x".repeat(1000)}}))
                .unwrap();
                api.create(&PostParams::default(), &cm).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let mine: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "mine"}, "data": {"v": "x"}})).unwrap();
    victim_cms
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();

    println!("## Fairness between VCs (`hack/bench-fairness`)\n");
    println!(
        "VC `noisy` holds {objects} ConfigMaps of ~1 KiB; VC `victim` GETs one ConfigMap in a loop (one request at a time), {} s per row.\n",
        run().as_secs()
    );
    println!("| Setting | Victim GETs/s | p50 | p99 | p99 vs control | GETs/s vs control | Neighbour meanwhile |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);

    let alone = victim(&victim_kc).await;
    println!(
        "| alone | {:.0} | {} | {} | | | |",
        alone.per_s,
        ms(alone.p50),
        ms(alone.p99)
    );

    // The control: the machine's contention alone.
    let spinners: Vec<std::process::Child> = (0..8)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    let control = victim(&victim_kc).await;
    for mut s in spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
    println!(
        "| control: 8 CPU-spinning processes | {:.0} | {} | {} | 1.00 | 1.00 | (none) |",
        control.per_s,
        ms(control.p50),
        ms(control.p99)
    );

    let row = |name: &str, v: &Victim, neighbour: String| {
        println!(
            "| {name} | {:.0} | {} | {} | {:.2} | {:.2} | {neighbour} |",
            v.per_s,
            ms(v.p50),
            ms(v.p99),
            v.p99.as_secs_f64() / control.p99.as_secs_f64(),
            v.per_s / control.per_s
        );
    };
    let secs = run().as_secs_f64();

    // A LIST flood.
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, mut tasks) = flood(8, &stop, {
        let api = noisy_cms.clone();
        move |_, _| {
            let api = api.clone();
            async move { api.list(&ListParams::default()).await.map(|_| ()) }
        }
    });
    let under = victim(&victim_kc).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    row(
        "8 LIST loops of the neighbour's ConfigMaps",
        &under,
        format!(
            "{:.0} LISTs/s, {} answered 429",
            counts.done.load(Ordering::Relaxed) as f64 / secs,
            counts.refused.load(Ordering::Relaxed)
        ),
    );

    // A create flood.
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, mut tasks) = flood(8, &stop, {
        let api = noisy_cms.clone();
        move |l, i| {
            let api = api.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("new-{l}-{i}")}, "data": {"v": "x".repeat(1000)}}))
                .unwrap();
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        }
    });
    let under = victim(&victim_kc).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    row(
        "8 create loops in the neighbour",
        &under,
        format!(
            "{:.0} creates/s, {} answered 429",
            counts.done.load(Ordering::Relaxed) as f64 / secs,
            counts.refused.load(Ordering::Relaxed)
        ),
    );

    // A watch storm: watches opened, their first event read, closed.
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, mut tasks) = flood(50, &stop, {
        let api = noisy_cms.clone();
        move |_, _| {
            let api = api.clone();
            async move {
                let stream = api.watch(&WatchParams::default().timeout(1), "0").await?;
                let mut stream = std::pin::pin!(stream);
                let _ = stream.next().await;
                Ok(())
            }
        }
    });
    let under = victim(&victim_kc).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    row(
        "watch storm: 50 loops opening and closing watches",
        &under,
        format!(
            "{:.0} watches/s, {} answered 429",
            counts.done.load(Ordering::Relaxed) as f64 / secs,
            counts.refused.load(Ordering::Relaxed)
        ),
    );
    drop(server);
}
