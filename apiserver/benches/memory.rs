//! Memory benchmark (`hack/bench-memory`): the release `kplex serve`
//! (embedded storage, no controllers or syncer). VC `big` is filled with
//! 100,000 ConfigMaps of ~1 KiB (64 creates at once), then deleted through
//! the admin API while the server's RSS is sampled every 10 ms.
//!
//! Prints: RSS per stored object beside its stored size; the RSS peak
//! while the VC is deleted, above the level before (target: < 100 MB);
//! and the RSS a minute after the delete beside the level before the VC
//! was filled (target: back to it); the RSS a VC's 50 CRDs cost beside
//! their JSON. `KPLEX_BENCH_SCALE` scales the count;
//! `KPLEX_BENCH_CACHE_MIB` sets the embedded store's page cache.

#[path = "../../storage/benches/support/mod.rs"]
mod support;

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_at, create_vcs_with, rss, CLIENTS};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::scale;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::main]
async fn main() {
    let objects = scale(100_000);
    let bin = Path::new(env!("CARGO_BIN_EXE_kplex"));
    let dir = tempfile::tempdir().unwrap();
    // `KPLEX_BENCH_CACHE_MIB`: the embedded store's page cache (else
    // kplex's default).
    let cache = std::env::var("KPLEX_BENCH_CACHE_MIB")
        .ok()
        .map(|mib| format!("--embedded-cache-mib={mib}"));
    let mut flags = vec![
        "--controllers=false",
        "--syncer=false",
        "--max-requests-per-second-per-vc=10000000",
        "--max-request-burst-per-vc=10000000",
    ];
    flags.extend(cache.as_deref());
    let server = kplex_e2e::Kplex::start_bin(
        bin,
        &dir.path().join("kplex-data"),
        "kplex=info,warn",
        &flags,
    );
    let pid = server.pid();
    let admin = client_at(&server.kubeconfig(), "").await;
    create_vcs_with(
        &admin,
        vec!["big".into()],
        json!({"limits": {"objects": objects as u64 * 2, "storedBytes": "8Gi"}}),
    )
    .await;
    // First, while the process is fresh (a large VC's fill and delete
    // leave the allocator holding pages that would hide the growth).
    let (crd_growth, crd_json, crd_control) = fifty_crds(&server, dir.path(), &admin).await;
    let kc = kplex_e2e::tenant_kubeconfig(&server, dir.path(), "big", "admin");
    let tenant = client_at(&kc, "").await;
    let cms: Api<ConfigMap> = Api::namespaced(tenant, "default");
    // One object first, so the connection and caches exist before the
    // level is taken.
    cms.create(&PostParams::default(), &configmap(0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss(pid);

    eprintln!("bench: filling {objects} objects");
    let stored = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    futures::stream::iter(1..objects)
        .map(|i| {
            let (cms, stored) = (cms.clone(), stored.clone());
            async move {
                let cm = configmap(i);
                let created = cms.create(&PostParams::default(), &cm).await.unwrap();
                let bytes = serde_json::to_vec(&created).unwrap().len() as u64;
                stored.fetch_add(bytes, Ordering::Relaxed);
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
    let fill_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let filled = rss(pid);
    let per_object = (filled.saturating_sub(before)) as f64 / objects as f64;
    let json_per_object = stored.load(Ordering::Relaxed) as f64 / (objects - 1) as f64;

    eprintln!("bench: deleting the VC");
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(filled));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let req = hyper::Request::delete("/apis/tenancy.kplex.dev/v1alpha1/virtualclusters/big")
        .body(Vec::new())
        .unwrap();
    admin.request_text(req).await.unwrap();
    let delete_s = started.elapsed().as_secs_f64();
    // The events of the deletion are still being handed on for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    // Then up to a minute for the memory to be given back.
    let mut after = rss(pid);
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(60) && after > before + before / 10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = rss(pid);
    }
    let settled_s = settle.elapsed().as_secs_f64();

    println!("## Memory (embedded storage, one VC of {objects} ConfigMaps)\n");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| RSS per stored object (filled in {fill_s:.1} s, {:.0} objects/s) | {per_object:.0} B ({:.1} MiB → {:.1} MiB), beside {json_per_object:.0} B of JSON each | |",
        objects as f64 / fill_s,
        before as f64 / MIB,
        filled as f64 / MIB
    );
    println!(
        "| RSS peak while the VC is deleted ({delete_s:.1} s), above the level before the delete | {:.1} MiB ({:.1} MiB → peak {:.1} MiB) | < 100 MB |",
        peak.saturating_sub(filled) as f64 / MIB,
        filled as f64 / MIB,
        peak as f64 / MIB
    );
    println!(
        "| RSS after the delete (+{settled_s:.0} s), beside before the VC was filled | {:.1} MiB vs {:.1} MiB | back within a minute |",
        after as f64 / MIB,
        before as f64 / MIB
    );
    println!(
        "| RSS growth of a VC with {CRDS} CRDs served, beside their JSON and the same bytes stored as {CRDS} ConfigMaps (the control) | {:.2} MiB, beside {:.2} MiB of CRD JSON; control {:.2} MiB | what its schemas cost |",
        crd_growth as f64 / MIB,
        crd_json as f64 / MIB,
        crd_control as f64 / MIB,
    );
}

/// CRDs in one VC.
const CRDS: usize = 50;

/// RSS growth once a VC holds [`CRDS`] CRDs (each with a schema of 40
/// described fields) and serves them, beside their stored JSON: what a
/// VC's custom resources cost the server.
async fn fifty_crds(
    server: &kplex_e2e::Kplex,
    dir: &Path,
    admin: &kube::Client,
) -> (u64, u64, u64) {
    let pid = server.pid();
    create_vcs_with(admin, vec!["crds".into()], json!({})).await;
    let kc = kplex_e2e::tenant_kubeconfig(server, dir, "crds", "admin");
    let tenant = client_at(&kc, "").await;
    let get = |path: String| {
        let tenant = tenant.clone();
        async move {
            let req = hyper::Request::get(path).body(Vec::new()).unwrap();
            tenant.request_text(req).await.unwrap()
        }
    };
    // The VC served once (its catalog kept) before the level is taken.
    get("/api/v1/namespaces".into()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The control: the same bytes stored as ConfigMaps (what storing them
    // costs: page cache, watch cache, allocator), before the CRDs.
    let control_before = rss(pid);
    for i in 0..CRDS {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("control-{i}")},
            "data": {"crd": serde_json::to_string(&crd_of(i)).unwrap()}});
        let req = hyper::Request::post("/api/v1/namespaces/default/configmaps")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&cm).unwrap())
            .unwrap();
        tenant.request_text(req).await.unwrap();
    }
    get("/api/v1/namespaces/default/configmaps".into()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let control = rss(pid).saturating_sub(control_before);
    let before = rss(pid);
    let mut json_bytes = 0;
    for i in 0..CRDS {
        let crd = crd_of(i);
        let body = serde_json::to_vec(&crd).unwrap();
        json_bytes += body.len() as u64;
        let req = hyper::Request::post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        tenant.request_text(req).await.unwrap();
    }
    // Every kind served (the VC's catalog holds all fifty).
    for i in 0..CRDS {
        get(format!(
            "/apis/bench.example.com/v1/namespaces/default/kind{i}s"
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    (rss(pid).saturating_sub(before), json_bytes, control)
}

/// The `i`th CRD: a schema of 40 described string fields.
fn crd_of(i: usize) -> serde_json::Value {
    let properties: serde_json::Map<String, serde_json::Value> = (0..40)
        .map(|f| {
            (
                format!("field{f}"),
                json!({"type": "string", "description": format!("Field {f} of kind {i}: what it holds, as a CRD's generated schema describes each field.")}),
            )
        })
        .collect();
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("kind{i}s.bench.example.com")},
        "spec": {
            "group": "bench.example.com",
            "scope": "Namespaced",
            "names": {"plural": format!("kind{i}s"), "kind": format!("Kind{i}")},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": properties},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }}}}],
        },
    })
}

fn configmap(i: usize) -> ConfigMap {
    let mut cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": format!("cm-{i:06}"), "labels": {"app": "bench"}},
        "data": {"value": "v".repeat(900)},
    }))
    .unwrap();
    cm.metadata.annotations = None;
    cm
}
