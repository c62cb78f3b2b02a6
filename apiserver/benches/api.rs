//! API server benchmark: the real `kplex serve` (release build, embedded
//! storage) over HTTPS with client certificates, each operation beside a
//! baseline measured in the same run:
//!
//! - GET of a configmap across 1,000 VCs vs a bare hyper+rustls server (same
//!   TLS setup, client certificates verified) answering the same bytes: the
//!   HTTP stack's own limit, with the bare server in the client's process
//!   and in a process of its own (as kplex is);
//! - CREATE vs the raw embedded store's create at the same concurrency;
//! - LIST (a namespace of 20 configmaps) vs the raw store's range of it;
//! - WATCH: 10,000 open watches (10 per VC), event delivery latency from the
//!   write being sent to each watcher reading the event, vs 10,000 raw
//!   storage watches on the same writes;
//! - resident memory per idle VC (RSS growth of the kplex process creating
//!   10,000 VCs through the admin API, divided) and the VC creation rate.
//!
//! Client and server share the machine's cores, for kplex and baselines alike.
//! `KPLEX_BENCH_PERF=<file>` records a `perf` profile of kplex during the
//! 64-client CREATE run (`KPLEX_BENCH_PERF_OP=get,get-warm,get-bare,list`: those
//! runs', each to `<file>.<op>`; `get-warm` is the GETs of objects read
//! before, `get-bare` the bare server in its own process (the first of
//! four rounds each, alternated), `get-rbac` and `get-masters` the first
//! round of GETs with and without RBAC);
//! `KPLEX_BENCH_PERF_STAT=1` counts system calls, wakeups and page faults
//! instead.
//! Run: `hack/bench-api`. `KPLEX_BENCH_SCALE` scales the operation counts
//! (not the VC or watch counts).

#[path = "api/bare.rs"]
mod bare;
#[path = "api/meter.rs"]
mod meter;
#[path = "../../storage/benches/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kplex_apiserver::cli::{parse_kubeconfig, KubeconfigTarget};
use kplex_storage::{
    EmbeddedOptions, EmbeddedStore, RangeRequest, Revision, Store, TenantKeyspace, WatchEvent,
};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use support::{header, row, run, scale, Profile, Stats};

use bare::{bare_child, bare_server, BareProcess, BARE_CHILD};
use meter::{alternated, rss, with_cpu, Cpu};

/// The same allocator as the `kplex` binary, so the bare baseline server and
/// the client are not handicapped by a slower one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// VCs the request benchmarks spread over.
const VCS: usize = 1000;
/// VCs created for the memory measurement.
const IDLE_VCS: usize = 10_000;
/// Watches per VC in the watch benchmark.
const WATCHES_PER_VC: usize = 10;
/// Configmaps created per VC (what LIST reads).
const OBJECTS_PER_VC: usize = 20;
const CLIENTS: usize = 64;

type Sender = SendRequest<Full<Bytes>>;

/// A kubeconfig for `user` in `group` of VC `vc`, issued through the
/// admin API.
async fn issue(admin: &Sender, vc: &str, user: &str, group: &str) -> KubeconfigTarget {
    let body = json!({"user": user, "groups": [group]});
    let (status, bytes) = call(
        admin,
        Method::POST,
        &format!("/apis/tenancy.kplex.dev/v1alpha1/virtualclusters/{vc}/kubeconfig"),
        Some(Bytes::from(body.to_string())),
    )
    .await;
    assert!(status.is_success(), "{bytes:?}");
    let response: Value = serde_json::from_slice(&bytes).unwrap();
    parse_kubeconfig(response["kubeconfig"].as_str().unwrap()).unwrap()
}

/// One HTTP/2 connection with the target's credentials.
async fn connect(target: &KubeconfigTarget, port: u16) -> Sender {
    let mut tls = (*target.tls).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), port))
        .await
        .unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from(target.host.clone()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn call(
    sender: &Sender,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> (StatusCode, Bytes) {
    let response = send(sender, method, path, body).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes)
}

async fn send(
    sender: &Sender,
    method: Method,
    path: &str,
    body: Option<Bytes>,
) -> Response<hyper::body::Incoming> {
    let request = Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(body.unwrap_or_default()))
        .unwrap();
    sender.clone().send_request(request).await.unwrap()
}

fn configmap(name: &str, namespace: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
            "data": {"payload": "x".repeat(400)},
        })
        .to_string(),
    )
}

fn vc_name(i: usize) -> String {
    format!("vc-{i:05}")
}

fn memory_row(label: &str, value: String, target: &str) {
    println!("| {label} | {value} | {target} |");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Some(dir) = std::env::var_os(BARE_CHILD) {
        return bare_child(Path::new(&dir)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    // The API alone: the controllers have their own benchmark.
    let server = kplex_e2e::Kplex::start_bin(
        Path::new(env!("CARGO_BIN_EXE_kplex")),
        &dir.path().join("kplex-data"),
        "kplex=info,warn",
        &["--controllers=false", "--syncer=false"],
    );
    let admin_text = std::fs::read_to_string(server.data_dir.join("admin.kubeconfig")).unwrap();
    let admin = parse_kubeconfig(&admin_text).unwrap();
    let admin_conn = connect(&admin, admin.port).await;
    let vcs_path = "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters";

    // --- Memory per idle VC and creation rate ---------------------------
    eprintln!("bench: memory");
    let create_vc = {
        let admin_conn = admin_conn.clone();
        move |name: String| {
            let admin_conn = admin_conn.clone();
            async move {
                let body = json!({"apiVersion": "tenancy.kplex.dev/v1alpha1",
                    "kind": "VirtualCluster", "metadata": {"name": name}});
                let (status, bytes) = call(
                    &admin_conn,
                    Method::POST,
                    vcs_path,
                    Some(Bytes::from(body.to_string())),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "{:?}", bytes);
            }
        }
    };
    // Warm the allocator and the caches with a few VCs first.
    for i in 0..100 {
        create_vc(format!("warm-{i}")).await;
    }
    let rss_before = rss(server.pid());
    let create = create_vc.clone();
    let creation = run(32, IDLE_VCS, move |i| create(vc_name(i))).await;
    let rss_after = rss(server.pid());
    let per_vc = (rss_after.saturating_sub(rss_before)) as f64 / IDLE_VCS as f64;

    // --- Tenant connections -------------------------------------------------
    eprintln!("bench: connections");
    let mut targets = Vec::with_capacity(VCS);
    for i in 0..VCS {
        targets.push(issue(&admin_conn, &vc_name(i), "bench", "system:masters").await);
    }
    let mut tenants = Vec::with_capacity(VCS);
    for t in &targets {
        tenants.push((connect(t, t.port).await, t.base_path.clone()));
    }
    let tenants = Arc::new(tenants);

    // Baseline store, in this process.
    let raw_dir = dir.path().join("raw");
    let raw: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&raw_dir, EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let keyspaces: Arc<Vec<TenantKeyspace>> = Arc::new(
        (0..VCS)
            .map(|i| TenantKeyspace::for_vc(&vc_name(i)).unwrap())
            .collect(),
    );

    // The bare servers get kplex's CA, so the same client certificates are
    // verified the same way, and a serving certificate of their own.
    let bare_pki = dir.path().join("bare/pki");
    std::fs::create_dir_all(&bare_pki).unwrap();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(server.data_dir.join("pki").join(file), bare_pki.join(file)).unwrap();
    }
    let bare_tls = kplex_apiserver::bootstrap::prepare(
        &dir.path().join("bare"),
        &["127.0.0.1".to_owned()],
        "https://127.0.0.1",
    )
    .unwrap()
    .tls;
    let connect_all = |port: u16| {
        let targets = &targets;
        async move {
            let mut conns = Vec::with_capacity(VCS);
            for t in targets {
                conns.push((connect(t, port).await, t.base_path.clone()));
            }
            Arc::new(conns)
        }
    };
    let pid = server.pid();

    // --- CREATE -------------------------------------------------------------
    eprintln!("bench: create");
    let creates = VCS * OBJECTS_PER_VC;
    // The one-client creates go to another namespace, so LIST reads the
    // same 20 objects per VC on both sides.
    let namespace = |prefix: &str| {
        if prefix == "cm" {
            "default"
        } else {
            "kube-public"
        }
    };
    let create_op = |conns: &Arc<Vec<(Sender, String)>>, prefix: &'static str, expect| {
        let t = conns.clone();
        move |i: usize| {
            let t = t.clone();
            async move {
                let (conn, base) = &t[i % VCS];
                let name = format!("{prefix}-{}", i / VCS);
                let (status, bytes) = call(
                    conn,
                    Method::POST,
                    &format!("{base}/api/v1/namespaces/{}/configmaps", namespace(prefix)),
                    Some(configmap(&name, namespace(prefix))),
                )
                .await;
                assert_eq!(status, expect, "{bytes:?}");
            }
        }
    };
    let kplex_create_op = |prefix| create_op(&tenants, prefix, StatusCode::CREATED);
    let raw_create_op = |prefix: &'static str| {
        let (r, k) = (raw.clone(), keyspaces.clone());
        move |i: usize| {
            let (r, k) = (r.clone(), k.clone());
            async move {
                let name = format!("{prefix}-{}", i / VCS);
                let key = k[i % VCS]
                    .object_key("", "configmaps", Some(namespace(prefix)), &name)
                    .unwrap();
                r.create(&key, configmap(&name, namespace(prefix)))
                    .await
                    .unwrap();
            }
        }
    };
    let profile = Profile::start_for("create", pid);
    let (kplex_create, kplex_create_cpu) =
        with_cpu(pid, creates, run(CLIENTS, creates, kplex_create_op("cm"))).await;
    drop(profile);
    let (raw_create, raw_create_cpu) =
        with_cpu(pid, creates, run(CLIENTS, creates, raw_create_op("cm"))).await;
    // The ceiling for any HTTPS API over this store on this machine: a bare
    // server that stores each request's body in a raw store of its own
    // (same key spread) and answers with it: no parsing, no checks.
    let floor_store: Arc<dyn Store> = Arc::new(
        EmbeddedStore::open(&dir.path().join("floor"), EmbeddedOptions::default())
            .await
            .unwrap(),
    );
    let by_vc: Arc<HashMap<String, TenantKeyspace>> = Arc::new(
        (0..VCS)
            .map(|i| (vc_name(i), TenantKeyspace::for_vc(&vc_name(i)).unwrap()))
            .collect(),
    );
    let stored = Arc::new(AtomicUsize::new(0));
    let floor_port = bare_server(
        bare_tls.clone(),
        Arc::new({
            let by_vc = by_vc.clone();
            move |req| {
                let (store, by_vc, stored) = (floor_store.clone(), by_vc.clone(), stored.clone());
                Box::pin(async move {
                    let vc = req.uri().path()["/clusters/".len()..]
                        .split('/')
                        .next()
                        .unwrap()
                        .to_owned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let name = format!("floor-{}", stored.fetch_add(1, Ordering::Relaxed));
                    let key = by_vc[&vc]
                        .object_key("", "configmaps", Some("default"), &name)
                        .unwrap();
                    store.create(&key, body.clone()).await.unwrap();
                    body
                })
            }
        }),
    );
    let floor = connect_all(floor_port).await;
    let (floor_create, floor_create_cpu) = with_cpu(
        pid,
        creates,
        run(CLIENTS, creates, create_op(&floor, "cm", StatusCode::OK)),
    )
    .await;
    drop(floor);
    // Four times the clients: how far group commit carries each side.
    let kplex_create_wide = run(4 * CLIENTS, creates, kplex_create_op("wide")).await;
    let raw_create_wide = run(4 * CLIENTS, creates, raw_create_op("wide")).await;
    let solo = scale(3_000);
    let (kplex_create1, kplex_create1_cpu) =
        with_cpu(pid, solo, run(1, solo, kplex_create_op("solo"))).await;
    let (raw_create1, raw_create1_cpu) =
        with_cpu(pid, solo, run(1, solo, raw_create_op("solo"))).await;

    // --- GET ------------------------------------------------------------------
    eprintln!("bench: get");
    let gets = scale(40_000);
    let (_, sample) = call(
        &tenants[0].0,
        Method::GET,
        &format!("{}/api/v1/namespaces/default/configmaps/cm-0", tenants[0].1),
        None,
    )
    .await;
    let get_sample = sample.clone();
    let get_op = |conns: Arc<Vec<(Sender, String)>>| {
        move |i: usize| {
            let conns = conns.clone();
            async move {
                let (conn, base) = &conns[i % VCS];
                let name = format!("cm-{}", (i / VCS) % OBJECTS_PER_VC);
                let (status, _) = call(
                    conn,
                    Method::GET,
                    &format!("{base}/api/v1/namespaces/default/configmaps/{name}"),
                    None,
                )
                .await;
                assert_eq!(status, StatusCode::OK);
            }
        }
    };
    let profile = Profile::start_for("get", pid);
    let (kplex_get, kplex_get_cpu) =
        with_cpu(pid, gets, run(CLIENTS, gets, get_op(tenants.clone()))).await;
    drop(profile);
    let kplex_get1 = run(1, solo, get_op(tenants.clone())).await;
    let bare_port = bare_server(
        bare_tls.clone(),
        Arc::new(move |_| {
            let sample = sample.clone();
            Box::pin(async move { sample })
        }),
    );
    let bare = connect_all(bare_port).await;
    let (bare_get, bare_get_cpu) =
        with_cpu(pid, gets, run(CLIENTS, gets, get_op(bare.clone()))).await;
    let bare_get1 = run(1, solo, get_op(bare)).await;
    // The ceiling for a GET that reads this store: a bare server answering
    // each GET with the object read from the raw store (its objects, never
    // read before, are read twice as kplex's are), no checks, no encoding.
    let floor_get_port = {
        let (raw, by_vc) = (raw.clone(), by_vc.clone());
        bare_server(
            bare_tls.clone(),
            Arc::new(move |req| {
                let (raw, by_vc) = (raw.clone(), by_vc.clone());
                Box::pin(async move {
                    let path = req.uri().path();
                    let vc = path["/clusters/".len()..].split('/').next().unwrap();
                    let name = path.rsplit('/').next().unwrap();
                    let key = by_vc[vc]
                        .object_key("", "configmaps", Some("default"), name)
                        .unwrap();
                    raw.get(&key).await.unwrap().unwrap().value
                })
            }),
        )
    };
    let floor_gets = connect_all(floor_get_port).await;
    let (floor_get, floor_get_cpu) =
        with_cpu(pid, gets, run(CLIENTS, gets, get_op(floor_gets))).await;
    // The same bare server in a process of its own, as kplex is.
    let own_dir = dir.path().join("bare-process");
    std::fs::create_dir_all(own_dir.join("pki")).unwrap();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(bare_pki.join(file), own_dir.join("pki").join(file)).unwrap();
    }
    let own = BareProcess::start(&own_dir, &get_sample);
    let own_conns = connect_all(own.port).await;
    // Every object has now been read once since its write: the same GETs
    // again are all answered from the point cache, none from the file.
    // These and the bare server's alternate, as the RBAC rows below do.
    let ((kplex_warm, kplex_warm_cpu), (own_get, own_get_cpu)) = alternated(
        ("get-warm", pid, || {
            with_cpu(pid, gets, run(CLIENTS, gets, get_op(tenants.clone())))
        }),
        ("get-bare", own.pid(), || {
            with_cpu(
                own.pid(),
                gets,
                run(CLIENTS, gets, get_op(own_conns.clone())),
            )
        }),
    )
    .await;
    let own_get1 = run(1, solo, get_op(own_conns)).await;
    drop(own);

    // --- GET under RBAC -------------------------------------------------------
    // The same GETs by a user RBAC must check (a RoleBinding to a Role
    // among a few other bindings in its VC) beside the VC's cluster-admin,
    // whom RBAC does not check (`system:masters`): what authorization adds.
    eprintln!("bench: get under rbac");
    let rbac_objects = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "cm-reader"},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
               "subjects": [{"kind": "User", "name": "reader"}]}),
    ];
    for (conn, base) in tenants.iter() {
        let mut objects = rbac_objects.to_vec();
        for other in 0..8 {
            objects.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("other-{other}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": format!("team-{other}")}]}));
        }
        for object in objects {
            let plural = if object["kind"] == "Role" {
                "roles"
            } else {
                "rolebindings"
            };
            let (status, bytes) = call(
                conn,
                Method::POST,
                &format!("{base}/apis/rbac.authorization.k8s.io/v1/namespaces/default/{plural}"),
                Some(Bytes::from(object.to_string())),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{bytes:?}");
        }
    }
    // Each reader's connection is used as soon as it is open (the server
    // closes one that sends no request within 10 s); its first GETs wait
    // for the binding to reach the policy through its watch.
    let mut readers = Vec::with_capacity(VCS);
    for i in 0..VCS {
        let target = issue(&admin_conn, &vc_name(i), "reader", "readers").await;
        let conn = connect(&target, target.port).await;
        let base = target.base_path.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, _) = call(
                &conn,
                Method::GET,
                &format!("{base}/api/v1/namespaces/default/configmaps/cm-0"),
                None,
            )
            .await;
            if status == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "the reader's binding: {status}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        readers.push((conn, base));
    }
    let readers = Arc::new(readers);
    let ((rbac_get, rbac_cpu), (masters_get, masters_cpu)) = alternated(
        ("get-rbac", pid, || {
            with_cpu(pid, gets, run(CLIENTS, gets, get_op(readers.clone())))
        }),
        ("get-masters", pid, || {
            with_cpu(pid, gets, run(CLIENTS, gets, get_op(tenants.clone())))
        }),
    )
    .await;

    // --- LIST -----------------------------------------------------------------
    eprintln!("bench: list");
    let lists = scale(10_000);
    let list_op = |conns: Arc<Vec<(Sender, String)>>| {
        move |i: usize| {
            let conns = conns.clone();
            async move {
                let (conn, base) = &conns[i % VCS];
                let (status, bytes) = call(
                    conn,
                    Method::GET,
                    &format!("{base}/api/v1/namespaces/default/configmaps"),
                    None,
                )
                .await;
                assert_eq!(status, StatusCode::OK);
                debug_assert!(bytes.len() > OBJECTS_PER_VC * 400);
            }
        }
    };
    let profile = Profile::start_for("list", pid);
    let kplex_list = run(CLIENTS, lists, list_op(tenants.clone())).await;
    drop(profile);
    // The ceiling: a bare server answering the same list's bytes.
    let (_, list_sample) = call(
        &tenants[0].0,
        Method::GET,
        &format!("{}/api/v1/namespaces/default/configmaps", tenants[0].1),
        None,
    )
    .await;
    let own_list_sample = list_sample.clone();
    let bare_list_port = bare_server(
        bare_tls,
        Arc::new(move |_| {
            let sample = list_sample.clone();
            Box::pin(async move { sample })
        }),
    );
    let bare_lists = connect_all(bare_list_port).await;
    let bare_list = run(CLIENTS, lists, list_op(bare_lists)).await;
    let own = BareProcess::start(&own_dir, &own_list_sample);
    let own_list = run(CLIENTS, lists, list_op(connect_all(own.port).await)).await;
    drop(own);
    let (r, k) = (raw.clone(), keyspaces.clone());
    let raw_list = run(CLIENTS, lists, move |i| {
        let (r, k) = (r.clone(), k.clone());
        async move {
            let page = r
                .range(RangeRequest::prefix(
                    k[i % VCS]
                        .namespace_prefix("", "configmaps", "default")
                        .unwrap(),
                ))
                .await
                .unwrap();
            assert_eq!(page.kvs.len(), OBJECTS_PER_VC);
        }
    })
    .await;

    // --- WATCH ----------------------------------------------------------------
    eprintln!("bench: watch");
    let writes = VCS;
    let (kplex_watch, kplex_opened) = watch_kplex(&tenants, writes).await;
    let raw_watch = watch_raw(&raw, &keyspaces, writes).await;

    println!("\n## API server vs baselines (embedded storage, HTTPS, HTTP/2, {VCS} VCs)");
    header("Requests", "baseline");
    let get = "GET configmap (baseline: bare hyper+rustls, same bytes)";
    row(get, 1, &kplex_get1, &bare_get1);
    row(get, CLIENTS, &kplex_get, &bare_get);
    let own_get_label =
        "GET configmap (baseline: the bare server in a process of its own, as kplex is; at 64 clients its best of 4 runs)";
    row(own_get_label, 1, &kplex_get1, &own_get1);
    row(own_get_label, CLIENTS, &kplex_get, &own_get);
    row(
        "GET configmap, each read before (baseline: the bare server in a process of its own; each side's best of 4 alternated runs)",
        CLIENTS,
        &kplex_warm,
        &own_get,
    );
    row(
        "GET through a bare hyper+rustls server reading the object from the raw store, no API work (baseline: bare hyper+rustls, same bytes)",
        CLIENTS,
        &floor_get,
        &bare_get,
    );
    row(
        "GET through the bare server in a process of its own, best of 4 runs (baseline: the bare server in the client's process)",
        CLIENTS,
        &own_get,
        &bare_get,
    );
    row(
        "GET configmap as a user RBAC checks (baseline: the same GETs as the VC's cluster-admin, unchecked)",
        CLIENTS,
        &rbac_get,
        &masters_get,
    );
    let create = "CREATE configmap (baseline: raw embedded store create)";
    row(create, 1, &kplex_create1, &raw_create1);
    row(create, CLIENTS, &kplex_create, &raw_create);
    row(create, 4 * CLIENTS, &kplex_create_wide, &raw_create_wide);
    row(
        "CREATE through a bare hyper+rustls server storing the body, no API work (baseline: raw embedded store create)",
        CLIENTS,
        &floor_create,
        &raw_create,
    );
    row(
        &format!("LIST {OBJECTS_PER_VC} configmaps (baseline: raw store range)"),
        CLIENTS,
        &kplex_list,
        &raw_list,
    );
    row(
        &format!("LIST {OBJECTS_PER_VC} configmaps (baseline: bare hyper+rustls, same bytes)"),
        CLIENTS,
        &kplex_list,
        &bare_list,
    );
    row(
        "LIST through a bare hyper+rustls server answering the same bytes, no API work (baseline: raw store range)",
        CLIENTS,
        &bare_list,
        &raw_list,
    );
    row(
        &format!("LIST {OBJECTS_PER_VC} configmaps (baseline: the bare server in a process of its own, as kplex is)"),
        CLIENTS,
        &kplex_list,
        &own_list,
    );
    row(
        "LIST through the bare server in a process of its own, no API work (baseline: raw store range)",
        CLIENTS,
        &own_list,
        &raw_list,
    );
    row(
        &format!(
            "WATCH delivery, {kplex_opened} watches, {writes} writes (events/s; baseline: raw store watches)"
        ),
        8,
        &kplex_watch,
        &raw_watch,
    );
    println!("\n### CPU per operation\n");
    println!(
        "User + system CPU of each process (from `/proc`) divided by the operations: \
         what each request costs the two shared cores. \"store writer\" is the \
         embedded store's writer thread (its commits, fsync included), part of \
         the process before it."
    );
    println!();
    println!("| op | clients | server process | of it: store writer | client process | total |");
    println!("|---|---|---|---|---|---|");
    let us = |v: f64| format!("{v:.1} µs");
    let split = |label: &str, clients: usize, c: Cpu| {
        println!(
            "| {label} | {clients} | {} | {} | {} | {} |",
            us(c.kplex),
            us(c.kplex_writer),
            us(c.bench),
            us(c.kplex + c.bench)
        );
    };
    // Baselines run inside the bench process: one figure covers both sides.
    let joint = |label: &str, clients: usize, c: Cpu| {
        println!(
            "| {label} | {clients} | (in the client process) | {} | {} | {} |",
            us(c.bench_writer),
            us(c.bench),
            us(c.bench)
        );
    };
    split("CREATE, kplex", 1, kplex_create1_cpu);
    joint("CREATE, raw store", 1, raw_create1_cpu);
    split("CREATE, kplex", CLIENTS, kplex_create_cpu);
    joint("CREATE, raw store", CLIENTS, raw_create_cpu);
    joint("CREATE, bare server + raw store", CLIENTS, floor_create_cpu);
    split("GET, kplex", CLIENTS, kplex_get_cpu);
    split(
        "GET, kplex, each read before (mean of 4 runs)",
        CLIENTS,
        kplex_warm_cpu,
    );
    joint("GET, bare server", CLIENTS, bare_get_cpu);
    joint(
        "GET, bare server reading the raw store",
        CLIENTS,
        floor_get_cpu,
    );
    split(
        "GET, bare server in its own process (mean of 4 runs)",
        CLIENTS,
        own_get_cpu,
    );
    split(
        "GET as a user RBAC checks, kplex (mean of 4 runs)",
        CLIENTS,
        rbac_cpu,
    );
    split(
        "GET as the VC's cluster-admin, unchecked, kplex (mean of 4 runs)",
        CLIENTS,
        masters_cpu,
    );
    println!(
        "\nServer CPU per GET under RBAC beside unchecked: **{:.3}** ({:+.1}%).",
        rbac_cpu.kplex / masters_cpu.kplex,
        (rbac_cpu.kplex / masters_cpu.kplex - 1.0) * 100.0
    );

    println!("\n### Virtual clusters\n");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    memory_row(
        &format!("RSS growth per idle VC ({IDLE_VCS} VCs created through the admin API)"),
        format!(
            "{:.1} KiB ({:.1} MiB → {:.1} MiB)",
            per_vc / 1024.0,
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0
        ),
        "< 16 KiB",
    );
    memory_row(
        "VC creation rate (32 concurrent admin requests)",
        format!(
            "{:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
            creation.throughput(),
            creation.percentile(0.5).as_secs_f64() * 1e3,
            creation.percentile(0.99).as_secs_f64() * 1e3
        ),
        "≥ 500/s",
    );
    drop(server);
}

/// When each write was sent, by object name.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Writes `writes` configmaps (one per VC, 8 writers) through `create`,
/// recording when each was sent.
async fn write_all<F, Fut>(writes: usize, sent: Sent, create: F) -> Duration
where
    F: Fn(usize, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let stats = run(8, writes, move |i| {
        let name = format!("w-{i}");
        sent.lock().unwrap().insert(name.clone(), Instant::now());
        create(i, name)
    })
    .await;
    drop(stats);
    started.elapsed()
}

/// Collects delivery latencies until `expected` events arrived (or a minute).
async fn deliveries(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    sent: Sent,
    expected: usize,
    started: Instant,
) -> Stats {
    let mut latencies = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while latencies.len() < expected {
        let Ok(Some((name, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            eprintln!("only {} of {expected} deliveries arrived", latencies.len());
            break;
        };
        if let Some(sent) = sent.lock().unwrap().get(&name) {
            latencies.push(at.saturating_duration_since(*sent));
        }
    }
    Stats {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

/// 10 HTTP watches per VC, then one write per VC through the API.
async fn watch_kplex(tenants: &Arc<Vec<(Sender, String)>>, writes: usize) -> (Stats, usize) {
    // Start every watch at the current revision (no initial events).
    let (_, bytes) = call(
        &tenants[0].0,
        Method::GET,
        &format!(
            "{}/api/v1/namespaces/default/configmaps?limit=1",
            tenants[0].1
        ),
        None,
    )
    .await;
    let list: Value = serde_json::from_slice(&bytes).unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut opened = 0;
    for (conn, base) in tenants.iter() {
        for _ in 0..WATCHES_PER_VC {
            let response = send(
                conn,
                Method::GET,
                &format!(
                    "{base}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
                ),
                None,
            )
            .await;
            assert_eq!(response.status(), StatusCode::OK);
            opened += 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut body = response.into_body();
                let mut buffer = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let at = Instant::now();
                    buffer.extend_from_slice(&data);
                    while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buffer.drain(..=end).collect();
                        let event: Value = serde_json::from_slice(&line).unwrap();
                        if let Some(name) = event["object"]["metadata"]["name"].as_str() {
                            let _ = tx.send((name.to_owned(), at));
                        }
                    }
                }
            });
        }
    }
    drop(tx);
    let sent: Sent = Default::default();
    let started = Instant::now();
    let t = tenants.clone();
    let collector = tokio::spawn(deliveries(
        rx,
        sent.clone(),
        writes * WATCHES_PER_VC,
        started,
    ));
    write_all(writes, sent, move |i, name| {
        let t = t.clone();
        async move {
            let (conn, base) = &t[i % VCS];
            let (status, _) = call(
                conn,
                Method::POST,
                &format!("{base}/api/v1/namespaces/default/configmaps"),
                Some(configmap(&name, "default")),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED);
        }
    })
    .await;
    (collector.await.unwrap(), opened)
}

/// 10 storage watches per VC prefix, then one raw write per VC.
async fn watch_raw(
    raw: &Arc<dyn Store>,
    keyspaces: &Arc<Vec<TenantKeyspace>>,
    writes: usize,
) -> Stats {
    let from: Revision = raw.current_revision().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for ks in keyspaces.iter() {
        for _ in 0..WATCHES_PER_VC {
            let prefix = ks.namespace_prefix("", "configmaps", "default").unwrap();
            let mut events = raw.watch(&prefix, from).await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(event)) = events.next().await {
                    if let WatchEvent::Change(event) = event {
                        let at = Instant::now();
                        let name = event.key().as_str().rsplit('/').next().unwrap().to_owned();
                        let _ = tx.send((name, at));
                    }
                }
            });
        }
    }
    drop(tx);
    let sent: Sent = Default::default();
    let started = Instant::now();
    let collector = tokio::spawn(deliveries(
        rx,
        sent.clone(),
        writes * WATCHES_PER_VC,
        started,
    ));
    let (r, k) = (raw.clone(), keyspaces.clone());
    write_all(writes, sent, move |i, name| {
        let (r, k) = (r.clone(), k.clone());
        async move {
            let key = k[i % VCS]
                .object_key("", "configmaps", Some("default"), &name)
                .unwrap();
            r.create(&key, configmap(&name, "default")).await.unwrap();
        }
    })
    .await;
    collector.await.unwrap()
}
