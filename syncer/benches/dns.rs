//! `kplex dns` benchmark: the server as `kplex dns` runs it (hickory's UDP
//! server, the VC index, the per-question source lookup) loaded with
//! 10,000 Services over 1,000 VCs, asked from one client process keeping a
//! window of questions in flight, each from the address of a Pod of the VC
//! it names; beside the same server answering one fixed record without
//! looking anything up (its own ceiling on this machine) and the lookup
//! alone, in process. Memory: heap bytes per Service, counted by the
//! allocator. Prints Markdown (docs/BENCHMARKS.md). `hack/bench-dns`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, Metadata, Query};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use k8s_openapi::api::core::v1::{Pod, Service};
use kplex_api::mapping;
use kplex_syncer::dns::{self, index, index::Zones};
use serde_json::json;

/// Counts the heap in use, to measure what the index holds.
struct Counting;

static HEAP: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(new_size, Ordering::Relaxed);
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const VCS: usize = 1_000;
const SERVICES_PER_VC: usize = 10;
/// Questions in flight at once from the client: a few (latency) and many
/// (throughput).
const WINDOWS: [usize; 2] = [8, 64];
/// How long each row asks.
const RUN: Duration = Duration::from_secs(8);

/// The address of VC `i`'s asking Pod (loopback: every 127/8 address is
/// this machine's).
fn pod_ip(i: usize) -> String {
    format!("127.1.{}.{}", (i + 1) / 256, (i + 1) % 256)
}

fn load(zones: &mut Zones) -> usize {
    let before = HEAP.load(Ordering::Relaxed);
    for vc in 0..VCS {
        for s in 0..SERVICES_PER_VC {
            let service: Service = serde_json::from_value(json!({
                "metadata": {"namespace": format!("kplex-vc{vc}-ns{}", s % 2), "name": format!("svc{s}"),
                    "labels": {mapping::VC_UID_LABEL: format!("uid-{vc}"), mapping::NAMESPACE_LABEL: format!("ns{}", s % 2)}},
                "spec": {"clusterIP": format!("10.{}.{}.{}", 96 + vc / 256, vc % 256, s + 1),
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            }))
            .unwrap();
            index::apply(zones, &service);
        }
    }
    let services = HEAP.load(Ordering::Relaxed) - before;
    for vc in 0..VCS {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": format!("kplex-vc{vc}-ns0"), "name": "client",
                "labels": {mapping::VC_UID_LABEL: format!("uid-{vc}"), mapping::NAMESPACE_LABEL: "ns0"}},
            "status": {"phase": "Running", "podIP": pod_ip(vc)},
        }))
        .unwrap();
        index::apply(zones, &pod);
    }
    services
}

/// The same server, answering one record for every question without a
/// lookup: what the sockets, hickory and the encoding cost here.
struct Fixed;

#[async_trait::async_trait]
impl RequestHandler for Fixed {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let name = request.queries.queries()[0].original().name().clone();
        let record = Record::from_rdata(name, 5, RData::A(A([10, 96, 0, 1].into())));
        let metadata = Metadata::response_from_request(&request.metadata);
        dns::send(request, &mut response, metadata, &[record], &[], &[]).await
    }
}

/// Runs a server with `handler` on its own thread (one worker: the client
/// has the other core); its address.
fn server<H: RequestHandler>(handler: H) -> SocketAddr {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (ready, started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut server = dns::serve(handler, addr).await.unwrap();
            ready.send(()).unwrap();
            let _ = server.block_until_done().await;
        });
    });
    started.recv().unwrap();
    addr
}

struct Row {
    qps: f64,
    p50: Duration,
    p99: Duration,
    refused: usize,
}

/// Asks `server` for `RUN`, `window` questions in flight, each from VC
/// i's Pod address for one of VC i's Services.
fn ask(server: SocketAddr, window: usize) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let deadline = Instant::now() + RUN;
        for w in 0..window {
            tasks.spawn(async move {
                // This worker asks as VCs w, w + window, …
                let mut sockets = Vec::new();
                for vc in (w..VCS).step_by(window) {
                    let s = tokio::net::UdpSocket::bind(format!("{}:0", pod_ip(vc)))
                        .await
                        .unwrap();
                    s.connect(server).await.unwrap();
                    sockets.push((vc, s));
                }
                let mut latencies = Vec::new();
                let mut refused = 0;
                let mut buf = vec![0u8; 1500];
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let (vc, socket) = &sockets[n % sockets.len()];
                    let mut q = Message::query();
                    q.metadata.id = (n & 0xffff) as u16;
                    q.metadata.recursion_desired = true;
                    let name = format!("svc{}.ns{}.svc.cluster.local.", n % SERVICES_PER_VC, n % 2);
                    q.add_query(Query::query(
                        Name::from_ascii(&name).unwrap(),
                        RecordType::A,
                    ));
                    let bytes = q.to_vec().unwrap();
                    let sent = Instant::now();
                    socket.send(&bytes).await.unwrap();
                    match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
                    {
                        Ok(Ok(len)) => {
                            latencies.push(sent.elapsed());
                            let m = Message::from_vec(&buf[..len]).unwrap();
                            if m.answers.is_empty() {
                                refused += 1;
                                eprintln!(
                                    "no answer for {name} from VC {vc}: {:?}",
                                    m.metadata.response_code
                                );
                            }
                        }
                        _ => refused += 1,
                    }
                    n += 1;
                }
                (latencies, refused)
            });
        }
        let started = Instant::now();
        let mut all = Vec::new();
        let mut refused = 0;
        while let Some(done) = tasks.join_next().await {
            let (latencies, r) = done.unwrap();
            all.extend(latencies);
            refused += r;
        }
        let elapsed = started.elapsed();
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        Row {
            qps: all.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
            refused,
        }
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rss_before = rss_kib();
    let mut zones = Zones::default();
    let service_bytes = load(&mut zones);
    let rss_after = rss_kib();
    let services = VCS * SERVICES_PER_VC;

    // The lookup alone, in process.
    let askers: Vec<_> = (0..VCS)
        .map(|vc| {
            zones
                .asker(pod_ip(vc).parse().unwrap())
                .expect("a known Pod")
        })
        .collect();
    let names: Vec<(Name, String)> = (0..SERVICES_PER_VC)
        .map(|s| {
            let n = format!("svc{s}.ns{}.svc.cluster.local.", s % 2);
            (Name::from_ascii(&n).unwrap(), n)
        })
        .collect();
    let started = Instant::now();
    let mut lookups = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        for (i, asker) in askers.iter().enumerate() {
            let (name, lower) = &names[i % names.len()];
            let answer =
                dns::answer::resolve(&zones, asker, name, lower, RecordType::A, "cluster.local.");
            assert!(
                matches!(answer, dns::answer::Answer::Records { ref answers, .. } if answers.len() == 1)
            );
            lookups += 1;
        }
    }
    let lookups_per_s = lookups as f64 / started.elapsed().as_secs_f64();

    let zones = Arc::new(RwLock::new(zones));
    let indexed_server = server(dns::Handler::new(zones, None, "cluster.local"));
    let fixed_server = server(Fixed);
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    println!("### kplex dns: {services} Services over {VCS} VCs, from one client");
    println!();
    println!("| In flight | Server | Queries/s | p50 ms | p99 ms | vs fixed record |");
    println!("|---:|---|---:|---:|---:|---:|");
    for window in WINDOWS {
        let fixed = ask(fixed_server, window);
        let indexed = ask(indexed_server, window);
        assert_eq!(indexed.refused, 0, "every question answered from the index");
        println!(
            "| {window} | fixed record (the server's ceiling here) | {:.0} | {} | {} | 1.00 |",
            fixed.qps,
            ms(fixed.p50),
            ms(fixed.p99)
        );
        println!(
            "| {window} | kplex dns (source lookup + VC index) | {:.0} | {} | {} | {:.2} |",
            indexed.qps,
            ms(indexed.p50),
            ms(indexed.p99),
            indexed.qps / fixed.qps
        );
    }
    println!();
    println!(
        "- Lookup alone (source address → VC → Service → record), in process: {lookups_per_s:.0}/s"
    );
    println!(
        "- Memory per Service: {} B of heap ({} B RSS growth over {services} Services and {VCS} Pods)",
        service_bytes / services,
        (rss_after.saturating_sub(rss_before) * 1024) as usize / services
    );
    println!(
        "- Machine: {} cores; server 1 worker thread, client 1 thread",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
}
