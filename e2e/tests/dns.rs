//! `kplex dns`, the one DNS server of a host for all its VCs: the real
//! binary on loopback, watching a kplex VC that stands in for the host
//! (its Pods, Services and EndpointSlices as the syncer and the host's
//! controllers write them); a stand-in kubelet gives the tenants' host Pods
//! addresses on distinct loopback addresses, and the test asks from each
//! address with a DNS client, over UDP and TCP.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use kplex_e2e::kubelet::{client_of, set_fate, FakeKubelet, Fate};
use kplex_e2e::{admin, eventually, get, k, kplex_bin, stderr, Hosted};
use serde_json::Value;

/// `kplex dns`, killed when dropped.
struct Dns {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kplex dns` against the host and waits until it serves (after
/// its first listing of the host).
fn start_dns(host: &Path, upstream: SocketAddr) -> Dns {
    let port = kplex_e2e::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(kplex_bin())
        .args(["dns", "--kubeconfig"])
        .arg(host)
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            &upstream.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kplex dns starts");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[kplex dns] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("kplex dns: serving on") => break,
            Ok(_) => continue,
            Err(_) => panic!("kplex dns did not start serving"),
        }
    }
    Dns { child, addr }
}

/// A question as a stub resolver asks it (recursion desired), with EDNS
/// (a 1232-byte UDP size) or without (512 bytes).
fn question(name: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.id = rand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(4242);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends `bytes` over UDP from address `from` (any port); the answer, if
/// one comes within two seconds.
async fn udp_raw(dns: &Dns, from: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = tokio::net::UdpSocket::bind(format!("{from}:0"))
        .await
        .unwrap();
    socket.send_to(bytes, dns.addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp(dns: &Dns, from: &str, name: &str, qtype: RecordType, edns: bool) -> Message {
    let q = question(name, qtype, edns);
    let bytes = udp_raw(dns, from, &q.to_vec().unwrap())
        .await
        .unwrap_or_else(|| panic!("no answer to {name} {qtype} from {from}"));
    let answer = Message::from_vec(&bytes).unwrap();
    assert_eq!(answer.metadata.id, q.metadata.id);
    answer
}

async fn tcp(dns: &Dns, from: &str, name: &str, qtype: RecordType) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(dns.addr).await.unwrap();
    let bytes = question(name, qtype, false).to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// The data of the answer section, as text (`10.96.0.1`, a CNAME's target…).
fn data(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

/// Asks until the answer is what `done` wants (the server follows the host
/// as its watches deliver); the last answer.
async fn until(
    dns: &Dns,
    from: &str,
    name: &str,
    qtype: RecordType,
    done: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = udp(dns, from, name, qtype, true).await;
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {qtype} from {from}: still {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stand-in for the host's upstream resolver: answers every A question
/// with 192.0.2.7 (TTL 60) and counts the questions.
async fn upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut r = Message::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            if let Some(query) = q.queries.first() {
                let rdata = RData::A("192.0.2.7".parse().unwrap());
                r.add_answer(hickory_proto::rr::Record::from_rdata(
                    query.name().clone(),
                    60,
                    rdata,
                ));
            }
            let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    (addr, asked)
}

fn apply(kc: &Path, dir: &Path, file: &str, yaml: &str) {
    let path = dir.join(file);
    std::fs::write(&path, yaml).unwrap();
    k(kc, &["apply", "-f", path.to_str().unwrap()]);
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers: [{name: c, image: busybox, command: [sleep, "3600"]}]
"#;

const TEAM_A_EXTRA: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: pg, image: postgres}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata: {name: many}
spec:
  clusterIP: None
  ports: [{name: http, port: 80, protocol: TCP}]
"#;

/// The host copy of a tenant object, once the syncer made it.
fn on_host(h: &Hosted, kind: &str, ns: &str, name: &str) -> Value {
    eventually(&format!("{kind} {ns}/{name} on the host"), || {
        let o = kplex_e2e::kubectl(&[
            "--kubeconfig",
            h.host.to_str().unwrap(),
            "-n",
            ns,
            "get",
            kind,
            name,
            "-o",
            "json",
        ]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    })
}

/// Plays the kubelet for a host Pod: Running and Ready at `ip`.
async fn run_at(host: &kube::Client, pod: &Value, ip: &str) {
    let mut pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).unwrap();
    pod.status.get_or_insert_with(Default::default).pod_ip = Some(ip.to_owned());
    set_fate(host, &pod, Fate::Ready).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_vc_resolves_its_own_names_and_nothing_else() {
    let h = tokio::task::spawn_blocking(Hosted::start).await.unwrap();
    let dir = h.dir.path().to_owned();
    // The shared DNS server's objects on the host, from the manifest a
    // platform applies (deploy/host/dns.yaml; its RBAC kinds aside, which
    // the stand-in host does not serve).
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/host/dns.yaml"
    ))
    .unwrap();
    let served: Vec<&str> = manifest
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: ClusterRole"))
        .collect();
    apply(&h.host, &dir, "dns.yaml", &served.join("\n---\n"));
    // Its Pods carry what the syncer's egress rule lets DNS through to.
    let template =
        &get(&h.host, &["-n", "kplex-system", "deployment", "kplex-dns"])["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["app.kubernetes.io/name"],
        "kplex-dns"
    );
    let ports: Vec<&str> = template["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["dns", "dns-tcp"]);
    let dns_ip = get(&h.host, &["-n", "kplex-system", "service", "kplex-dns"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    // The syncer reports where tenant Pods will ask.
    let status = eventually("the host's DNSReady condition", || {
        let host = h.admin_get(&["hostclusters", "default"]);
        (host["status"]["dnsServer"] == dns_ip.as_str()).then_some(host["status"].clone())
    });
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DNSReady")
        .expect("a DNSReady condition");
    assert_eq!(ready["status"], "True", "{ready}");

    let a = h.tenant("team-a");
    let b = h.tenant("team-b");
    let c = h.tenant_with("team-c", "{dns: {domain: c.internal}}");
    apply(&a, &dir, "a.yaml", &format!("{WEB}---{TEAM_A_EXTRA}"));
    apply(&b, &dir, "b.yaml", WEB);
    apply(&c, &dir, "c.yaml", WEB);

    // The host's kubelet: every host Pod runs (the clients at the loopback
    // addresses the test asks from, the rest wherever the stand-in says).
    let host = client_of(&h.host).await;
    let _kubelet = FakeKubelet::start(host.clone(), |p| {
        if p.metadata.name.as_deref() == Some("client") {
            Fate::Hold
        } else {
            Fate::Ready
        }
    });
    let mut clients = Vec::new();
    for (vc, ip) in [
        ("team-a", "127.0.0.2"),
        ("team-b", "127.0.0.3"),
        ("team-c", "127.0.0.4"),
    ] {
        let ns = format!("kplex-{vc}-default");
        let h2 = &h;
        let pod = tokio::task::block_in_place(|| on_host(h2, "pod", &ns, "client"));
        run_at(&host, &pod, ip).await;
        clients.push(pod);
    }

    // The syncer pointed each client at the shared server, in its VC's domain.
    let spec = &clients[0]["spec"];
    assert_eq!(spec["dnsPolicy"], "None", "{spec}");
    assert_eq!(
        spec["dnsConfig"]["nameservers"],
        serde_json::json!([dns_ip])
    );
    assert_eq!(
        spec["dnsConfig"]["searches"],
        serde_json::json!([
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ])
    );
    assert_eq!(
        spec["dnsConfig"]["options"],
        serde_json::json!([{"name": "ndots", "value": "5"}])
    );
    assert_eq!(
        clients[2]["spec"]["dnsConfig"]["searches"][0], "default.svc.c.internal",
        "team-c's own domain"
    );

    // The host ClusterIPs of each VC's `web` (what the tenant sees too).
    let web_ip = |vc: &str| {
        let ns = format!("kplex-{vc}-default");
        let h2 = &h;
        tokio::task::block_in_place(|| on_host(h2, "service", &ns, "web"))["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (web_a, web_b, web_c) = (web_ip("team-a"), web_ip("team-b"), web_ip("team-c"));
    assert_ne!(web_a, web_b);
    assert_eq!(
        get(&a, &["service", "web"])["spec"]["clusterIP"],
        web_a.as_str()
    );

    // `many`: a headless Service whose 60 endpoints the host's mirroring
    // controller would slice (the test plays it, with the Service's labels).
    let many =
        tokio::task::block_in_place(|| on_host(&h, "service", "kplex-team-a-default", "many"));
    let mut labels = many["metadata"]["labels"].clone();
    labels["kubernetes.io/service-name"] = "many".into();
    let endpoints: Vec<Value> = (1..=60)
        .map(|i| serde_json::json!({"addresses": [format!("192.0.2.{i}")], "conditions": {"ready": true}}))
        .collect();
    let slice = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "many-1", "namespace": "kplex-team-a-default", "labels": labels},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]});
    apply(&h.host, &dir, "many-slice.json", &slice.to_string());

    let (upstream_addr, upstream_asked) = upstream().await;
    let dns = tokio::task::block_in_place(|| start_dns(&h.host, upstream_addr));
    let (ask_a, ask_b, ask_c) = ("127.0.0.2", "127.0.0.3", "127.0.0.4");

    // Every search-path form of `web`, from team-a's Pod: team-a's web.
    // (A stub resolver expands `web`, `web.default` and `web.default.svc`
    // through the search path into this name.)
    let fqdn = "web.default.svc.cluster.local.";
    let m = until(&dns, ask_a, fqdn, RecordType::A, |m| !m.answers.is_empty()).await;
    assert_eq!(data(&m), [web_a.as_str()]);
    assert!(m.metadata.authoritative);
    // The same name from team-b's Pod: team-b's web, never team-a's.
    let m = udp(&dns, ask_b, fqdn, RecordType::A, true).await;
    assert_eq!(data(&m), [web_b.as_str()]);
    // team-c answers in its own domain only.
    let m = udp(
        &dns,
        ask_c,
        "web.default.svc.c.internal.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(data(&m), [web_c.as_str()]);
    let m = udp(&dns, ask_c, fqdn, RecordType::A, true).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "the host's domain is never forwarded"
    );

    // team-a's other names are NXDOMAIN to team-b, as are the host's names
    // of team-a's objects to anyone.
    for name in [
        "db.default.svc.cluster.local.",
        "ext.default.svc.cluster.local.",
        "web.kplex-team-a-default.svc.cluster.local.",
        "kplex-dns.kplex-system.svc.cluster.local.",
    ] {
        let m = udp(&dns, ask_b, name, RecordType::A, true).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{name} from team-b: {m:?}"
        );
        assert!(m.answers.is_empty());
    }
    let m = udp(
        &dns,
        ask_a,
        "web.kplex-team-a-default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Headless: the StatefulSet Pod's own name and the Service's ready
    // endpoints; SRV for named ports.
    let db0 = until(
        &dns,
        ask_a,
        "db-0.db.default.svc.cluster.local.",
        RecordType::A,
        |m| !m.answers.is_empty(),
    )
    .await;
    let db0_ip = data(&db0)[0].clone();
    let host_db0 =
        tokio::task::block_in_place(|| on_host(&h, "pod", "kplex-team-a-default", "db-0"));
    assert_eq!(host_db0["status"]["podIP"], db0_ip.as_str());
    let m = udp(
        &dns,
        ask_a,
        "db.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(data(&m), [db0_ip.as_str()]);
    let m = udp(
        &dns,
        ask_a,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
        true,
    )
    .await;
    assert_eq!(data(&m), ["0 100 5432 db-0.db.default.svc.cluster.local."]);
    assert_eq!(
        m.additionals.first().map(|r| r.data.to_string()),
        Some(db0_ip.clone())
    );
    let m = udp(
        &dns,
        ask_a,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        true,
    )
    .await;
    assert_eq!(data(&m), ["0 100 80 web.default.svc.cluster.local."]);

    // ExternalName: a CNAME to the tenant's own name, followed in its VC.
    let m = udp(
        &dns,
        ask_a,
        "ext.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(
        data(&m),
        ["web.default.svc.cluster.local.".to_owned(), web_a.clone()]
    );

    // PTR: the VC's own addresses; another VC's are not named.
    let arpa = |ip: &str| {
        let mut parts: Vec<&str> = ip.split('.').collect();
        parts.reverse();
        format!("{}.in-addr.arpa.", parts.join("."))
    };
    let m = udp(&dns, ask_a, &arpa(&web_a), RecordType::PTR, true).await;
    assert_eq!(data(&m), ["web.default.svc.cluster.local."]);
    let m = udp(&dns, ask_a, &arpa(&web_b), RecordType::PTR, true).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Names outside every cluster domain go upstream, once while cached.
    let m = udp(&dns, ask_a, "example.test.", RecordType::A, true).await;
    assert_eq!(data(&m), ["192.0.2.7"]);
    assert!(!m.metadata.authoritative);
    let asked = || upstream_asked.load(std::sync::atomic::Ordering::SeqCst);
    let m = udp(&dns, ask_a, "example.test.", RecordType::A, true).await;
    assert_eq!(data(&m), ["192.0.2.7"]);
    assert_eq!(asked(), 1, "team-a's second question came from its cache");
    // Each VC has its own cache: a TTL already counting down would tell
    // team-b what team-a looked up.
    let m = udp(&dns, ask_b, "example.test.", RecordType::A, true).await;
    assert_eq!(data(&m), ["192.0.2.7"]);
    assert_eq!(m.answers[0].ttl, 60);
    assert_eq!(asked(), 2);

    // An address no kplex Pod has is refused, for every name.
    for name in [fqdn, "example.test."] {
        let m = udp(&dns, "127.0.0.9", name, RecordType::A, true).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(m.answers.is_empty());
    }

    // A big answer: truncated over UDP at 512 bytes, whole over TCP.
    let many = "many.default.svc.cluster.local.";
    until(&dns, ask_a, many, RecordType::A, |m| {
        m.metadata.truncation || m.answers.len() == 60
    })
    .await;
    let small = udp(&dns, ask_a, many, RecordType::A, false).await;
    assert!(
        small.metadata.truncation,
        "60 addresses do not fit 512 bytes"
    );
    assert!(small.answers.len() < 60);
    let whole = tcp(&dns, ask_a, many, RecordType::A).await;
    assert!(!whole.metadata.truncation);
    assert_eq!(whole.answers.len(), 60);

    // Malformed packets: dropped or answered FORMERR, and the server goes on.
    let header_only_claims_a_question = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    let mut cut = question(fqdn, RecordType::A, false).to_vec().unwrap();
    cut.truncate(cut.len() - 3);
    let mut loop_pointer = vec![0x12, 0x35, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    loop_pointer.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    for garbage in [
        vec![0xde, 0xad],
        vec![0xff; 300],
        header_only_claims_a_question.to_vec(),
        cut,
        loop_pointer,
    ] {
        if let Some(reply) = udp_raw(&dns, ask_a, &garbage).await {
            let reply = Message::from_vec(&reply).expect("an answer is a DNS message");
            assert!(reply.answers.is_empty(), "garbage got records: {reply:?}");
            assert_ne!(
                reply.metadata.response_code,
                ResponseCode::NoError,
                "{reply:?}"
            );
        }
    }
    let m = udp(&dns, ask_a, fqdn, RecordType::A, true).await;
    assert_eq!(
        data(&m),
        [web_a.as_str()],
        "the server answers after garbage"
    );

    // A deleted Service leaves the VC's names.
    k(&b, &["delete", "service", "web"]);
    until(&dns, ask_b, fqdn, RecordType::A, |m| {
        m.metadata.response_code == ResponseCode::NXDomain
    })
    .await;
    let m = udp(&dns, ask_a, fqdn, RecordType::A, true).await;
    assert_eq!(data(&m), [web_a], "team-a's web stays");

    // The admin API refuses a domain that is not one.
    let o = admin(
        &h.kplex,
        &[
            "patch",
            "vc",
            "team-c",
            "--type=merge",
            "-p",
            r#"{"spec":{"dns":{"domain":"Not_A_Domain"}}}"#,
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("spec.dns.domain"), "{}", stderr(&o));
}
