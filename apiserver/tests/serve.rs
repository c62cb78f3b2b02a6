//! `kplex serve` as a user runs it: the real binary, the real kubectl.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::{kubectl, stderr, stdout, Kplex};

#[test]
fn first_start_bootstraps_credentials_that_kubectl_uses_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(dir.path());
    for private in ["admin.kubeconfig", "pki/ca.key", "pki/apiserver.key"] {
        let mode = std::fs::metadata(dir.path().join(private))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{private} must be private");
    }
    let kc = kplex.kubeconfig();
    let kc = kc.to_str().unwrap();
    let ready = kubectl(&["--kubeconfig", kc, "get", "--raw", "/readyz"]);
    assert!(ready.status.success(), "{}", stderr(&ready));
    assert_eq!(stdout(&ready), "ok");
    let version = kubectl(&["--kubeconfig", kc, "version", "-o", "json"]);
    assert!(version.status.success(), "{}", stderr(&version));
    let v: serde_json::Value = serde_json::from_slice(&version.stdout).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    assert!(v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap()
        .starts_with("v1."));

    let ca = std::fs::read(dir.path().join("pki/ca.crt")).unwrap();
    assert!(kplex.terminate().success());
    let kplex = Kplex::start_api_only(dir.path());
    assert_eq!(
        std::fs::read(dir.path().join("pki/ca.crt")).unwrap(),
        ca,
        "the CA is kept"
    );
    // The port changed; the old credential still verifies against the kept CA.
    let again = kubectl(&[
        "--kubeconfig",
        kc,
        "--server",
        &kplex.server(),
        "get",
        "--raw",
        "/livez",
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn callers_without_a_credential_get_401_except_on_health_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(dir.path());
    let ca = dir.path().join("pki/ca.crt");
    // kubectl prompts for a password when it has no credential at all; a
    // bearer token kplex does not accept is the same to the server: no
    // credential.
    let anonymous = |path: &str| {
        kubectl(&[
            "--token",
            "not-a-kplex-credential",
            "--server",
            &kplex.server(),
            "--certificate-authority",
            ca.to_str().unwrap(),
            "get",
            "--raw",
            path,
        ])
    };
    for path in ["/livez", "/readyz", "/healthz", "/version"] {
        let o = anonymous(path);
        assert!(o.status.success(), "{path}: {}", stderr(&o));
    }
    for path in ["/api", "/apis", "/metrics", "/clusters/a/api"] {
        let o = anonymous(path);
        assert!(!o.status.success(), "{path} must be refused");
        assert!(
            stderr(&o).contains("Unauthorized"),
            "{path}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(dir.path());
    // A look-alike admin credential signed by a CA kplex never saw.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = kplex_certs::Authority::load_or_create(rogue_dir.path()).unwrap();
    let cred = rogue
        .issue_client(
            &kplex_certs::Identity {
                user: "kplex-admin".into(),
                groups: vec!["system:masters".into()],
                scope: kplex_certs::Scope::Admin,
            },
            Duration::from_secs(3600),
        )
        .unwrap();
    let cert = rogue_dir.path().join("client.crt");
    let key = rogue_dir.path().join("client.key");
    std::fs::write(&cert, cred.cert_pem).unwrap();
    std::fs::write(&key, cred.key_pem).unwrap();
    let o = kubectl(&[
        "--server",
        &kplex.server(),
        "--certificate-authority",
        dir.path().join("pki/ca.crt").to_str().unwrap(),
        "--client-certificate",
        cert.to_str().unwrap(),
        "--client-key",
        key.to_str().unwrap(),
        "get",
        "--raw",
        "/api",
    ]);
    assert!(
        !o.status.success(),
        "a foreign CA's certificate must not be accepted"
    );
    // The server keeps serving its own callers.
    let ok = kubectl(&[
        "--kubeconfig",
        kplex.kubeconfig().to_str().unwrap(),
        "get",
        "--raw",
        "/readyz",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// A TLS connection to kplex with the admin credential.
async fn tls_connection(kplex: &Kplex) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let text = std::fs::read_to_string(kplex.kubeconfig()).unwrap();
    let target = kplex_apiserver::cli::parse_kubeconfig(&text).unwrap();
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).unwrap();
    tokio_rustls::TlsConnector::from(target.tls.clone())
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn connections_that_send_no_whole_request_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    // One connection says nothing after its handshake (an HTTP/2 client
    // that never sends its preface); one sends half a request line.
    let mut silent = tls_connection(&kplex).await;
    let mut slow = tls_connection(&kplex).await;
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for conn in [&mut silent, &mut slow] {
        let mut buf = [0u8; 64];
        // The server's limit is 10 s; a connection still open at 30 s is a bug.
        let read = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("expected the connection closed, got {n} bytes"),
            Err(_) => panic!("the connection is still open after 30 s"),
        }
    }
    // A connection that does send its request is served.
    let mut prompt = tls_connection(&kplex).await;
    prompt
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    prompt.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// A body over the cap is a 413 over HTTP/2 as over HTTP/1.1: the answer
/// comes after the request's end (curl, among others, loses an answer a
/// reset overtakes), the server goes on serving, nothing is stored.
#[test]
fn a_body_over_the_cap_is_a_413_over_http2_as_over_http1() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let text = std::fs::read_to_string(kplex.kubeconfig()).unwrap();
    // The admin credential as files, for curl.
    let field = |name: &str| {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in the kubeconfig"));
        base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .unwrap()
    };
    let pem = |name: &str, file: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, field(name)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (
        pem("certificate-authority-data", "ca.pem"),
        pem("client-certificate-data", "cert.pem"),
        pem("client-key-data", "key.pem"),
    );
    let body = dir.path().join("big.json");
    std::fs::write(
        &body,
        format!(
            r#"{{"apiVersion":"tenancy.kplex.dev/v1alpha1","kind":"VirtualCluster","metadata":{{"name":"big","annotations":{{"a":"{}"}}}}}}"#,
            "x".repeat(4 << 20)
        ),
    )
    .unwrap();
    let url = format!(
        "{}/apis/tenancy.kplex.dev/v1alpha1/virtualclusters",
        kplex.server()
    );
    for version in ["--http2", "--http1.1"] {
        let o = std::process::Command::new("curl")
            .args([
                "-sS", version, "--cacert", &ca, "--cert", &cert, "--key", &key,
            ])
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-w", "\n%{http_code} %{http_version}", &url])
            .output()
            .expect("curl (hack/ensure-deps installs it)");
        assert!(o.status.success(), "{version}: {}", stderr(&o));
        let out = stdout(&o);
        let (status, code) = out.rsplit_once('\n').unwrap();
        let expected = if version == "--http2" {
            "413 2"
        } else {
            "413 1.1"
        };
        assert_eq!(code, expected, "{version}");
        let status: serde_json::Value = serde_json::from_str(status).unwrap();
        assert_eq!(status["reason"], "RequestEntityTooLarge", "{version}");
    }
    let o = kubectl(&[
        "--kubeconfig",
        kplex.kubeconfig().to_str().unwrap(),
        "get",
        "virtualclusters",
        "-o",
        "name",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "", "nothing was stored");
}
