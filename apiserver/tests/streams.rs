//! `kubectl logs` and `exec` in a VC reach the Pod's host copy: kplex
//! proxies them to the host the VC is placed on, on the mapped path, with
//! the host's credentials, streams passed on and upgrades passed through.
//!
//! The host is a stub standing in for a host's API server and kubelet: it
//! answers the Pod paths with bytes the test knows and echoes an upgraded
//! connection, and records what it was asked. (The syncer finds no API to
//! watch there; that does not matter to the proxy.)

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::{admin, create_vc, kubectl, stderr, stdout, tenant_kubeconfig, Kplex};

type StubBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the stub was asked: method, path with query, Authorization.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// The labels the stub's Pod `web` carries: the VC UID and tenant Pod UID
/// of the copy it claims to be.
type Claim = Arc<Mutex<(String, String)>>;

const TOKEN: &str = "stub-token";

async fn answer(
    mut req: Request<hyper::body::Incoming>,
    seen: Seen,
    claim: Claim,
) -> Response<StubBody> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock()
        .unwrap()
        .push((req.method().to_string(), path.clone(), auth.clone()));
    let full = |code: StatusCode, text: String| {
        let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
        *r.status_mut() = code;
        r
    };
    if auth != format!("Bearer {TOKEN}") {
        return full(StatusCode::UNAUTHORIZED, "no".into());
    }
    if req.uri().path() == "/base/api/v1/namespaces/kplex-team-a-default/pods/web" {
        let (vc_uid, pod_uid) = claim.lock().unwrap().clone();
        let pod = serde_json::json!({"kind": "Pod", "apiVersion": "v1", "metadata": {
            "name": "web", "namespace": "kplex-team-a-default",
            "labels": {"tenancy.kplex.dev/vc-uid": vc_uid},
            "annotations": {"tenancy.kplex.dev/object-uid": pod_uid}}});
        return full(StatusCode::OK, pod.to_string());
    }
    let pod = "/base/api/v1/namespaces/kplex-team-a-default/pods/web/";
    let Some(sub) = req.uri().path().strip_prefix(pod).map(str::to_owned) else {
        return full(StatusCode::NOT_FOUND, "{}".into());
    };
    match sub.as_str() {
        "log" if req.uri().query().is_some_and(|q| q.contains("follow=true")) => {
            // Three lines, each its own chunk, then the end.
            let lines = (1..=3).map(|n| Ok(Frame::data(Bytes::from(format!("line {n}\n")))));
            Response::new(StreamBody::new(futures::stream::iter(lines)).boxed())
        }
        "log" => full(
            StatusCode::OK,
            format!("logs of web?{}\n", req.uri().query().unwrap_or("")),
        ),
        "exec" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            r.headers_mut()
                .insert("upgrade", "SPDY/3.1".parse().unwrap());
            r.headers_mut().insert(
                "x-stream-protocol-version",
                "v4.channel.k8s.io".parse().unwrap(),
            );
            r
        }
        _ => full(StatusCode::NOT_FOUND, "{}".into()),
    }
}

/// Starts the stub host on a free port; its port and what it saw.
async fn stub() -> (u16, Seen, Claim) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Default::default();
    let claim: Claim = Default::default();
    let (s, c) = (seen.clone(), claim.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (s, c) = (s.clone(), c.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (s, c) = (s.clone(), c.clone());
                    async move { Ok::<_, Infallible>(answer(req, s, c).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, seen, claim)
}

fn kubeconfig_of_stub(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: stub\nclusters:\n- name: stub\n  cluster: {{server: 'http://127.0.0.1:{port}/base'}}\ncontexts:\n- name: stub\n  context: {{cluster: stub, user: stub}}\nusers:\n- name: stub\n  user: {{token: {TOKEN}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_reach_the_pods_host_copy() {
    let (port, seen, claim) = stub().await;
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_with_flags(&dir.path().join("data"), &["--controllers=false"]);
    create_vc(&kplex, dir.path(), "team-a");
    let tenant = tenant_kubeconfig(&kplex, dir.path(), "team-a", "admin");
    let k = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", tenant.to_str().unwrap()];
        all.extend_from_slice(args);
        kubectl(&all)
    };

    // Before any host is registered: a clear 400, the stub never asked.
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: web, image: nginx}\n  - {name: sidecar, image: busybox}\n",
    )
    .unwrap();
    let o = k(&["create", "-f", pod.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = k(&["logs", "web"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("placed on no host cluster"),
        "{}",
        stderr(&o)
    );

    let file = dir.path().join("stub.kubeconfig");
    std::fs::write(&file, kubeconfig_of_stub(port)).unwrap();
    let host = format!(
        r#"{{"apiVersion":"tenancy.kplex.dev/v1alpha1","kind":"HostCluster","metadata":{{"name":"stub"}},"spec":{{"default":true,"kubeconfig":{}}}}}"#,
        serde_json::to_string(&kubeconfig_of_stub(port)).unwrap()
    );
    let host_file = dir.path().join("host.json");
    std::fs::write(&host_file, host).unwrap();
    let o = admin(&kplex, &["create", "-f", host_file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    let log_path = "/base/api/v1/namespaces/kplex-team-a-default/pods/web/log";
    let pod_uid = stdout(&k(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"]));
    let o = admin(
        &kplex,
        &["get", "vc", "team-a", "-o", "jsonpath={.metadata.uid}"],
    );
    let vc_uid = stdout(&o);
    // The host's Pod of that name is another VC's (or nobody's): refused,
    // nothing of it read.
    *claim.lock().unwrap() = ("another-vc".into(), pod_uid.clone());
    let o = k(&["logs", "web"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not running on its host cluster"),
        "{}",
        stderr(&o)
    );
    *claim.lock().unwrap() = (vc_uid.clone(), "an-older-pod".into());
    assert!(!k(&["logs", "web"]).status.success());
    let log_asked = |seen: &Seen| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, p, _)| p.starts_with(log_path))
    };
    assert!(!log_asked(&seen));
    *claim.lock().unwrap() = (vc_uid, pod_uid);
    let asked = |prefix: &str| -> Vec<(String, String, String)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p.starts_with(prefix))
            .cloned()
            .collect()
    };
    let o = k(&["logs", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // (kubectl names the first container.)
    assert_eq!(stdout(&o), "logs of web?container=web\n");
    let (method, _, auth) = asked(log_path).pop().unwrap();
    assert_eq!(
        (method.as_str(), auth.as_str()),
        ("GET", "Bearer stub-token")
    );

    let o = k(&["logs", "web", "-c", "sidecar", "--previous", "--tail=5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    for part in ["container=sidecar", "previous=true", "tailLines=5"] {
        assert!(said.contains(part), "{said}");
    }

    let o = k(&["logs", "-f", "web"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "line 1\nline 2\nline 3\n");

    // A Pod the VC does not have: 404 from kplex, nothing asked of the host.
    let o = k(&["logs", "nothere"]);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));
    assert!(asked("/base/api/v1/namespaces/kplex-team-a-default/pods/nothere").is_empty());

    // exec: the upgrade passes through, bytes go both ways.
    let text = std::fs::read_to_string(&tenant).unwrap();
    let target = kplex_apiserver::cli::parse_kubeconfig(&text).unwrap();
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(
            rustls::pki_types::ServerName::try_from(target.host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection.with_upgrades());
    let request = Request::post(format!(
        "{}/api/v1/namespaces/default/pods/web/exec?command=sh&stdin=true&stdout=true",
        target.base_path
    ))
    .header("host", "kplex")
    .header("connection", "Upgrade")
    .header("upgrade", "SPDY/3.1")
    .header("x-stream-protocol-version", "v4.channel.k8s.io")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let mut response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.headers()["x-stream-protocol-version"],
        "v4.channel.k8s.io"
    );
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(b"ping through kplex").await.unwrap();
    let mut echoed = [0u8; 18];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping through kplex");
    let (_, path, _) = asked("/base/api/v1/namespaces/kplex-team-a-default/pods/web/exec")
        .pop()
        .unwrap();
    assert!(path.contains("command=sh"), "{path}");
}
