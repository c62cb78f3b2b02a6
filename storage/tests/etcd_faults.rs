//! The etcd backend under faults: etcd unreachable, killed and restarted
//! mid-watch, and TLS with client certificates.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use kplex_storage::{
    EtcdOptions, EtcdStore, Event, Revision, Store, StoreError, TenantKeyspace, WatchEvent,
};
use support::etcd::{EtcdServer, TlsFiles};

fn key(name: &str) -> kplex_storage::Key {
    TenantKeyspace::for_vc("vc")
        .unwrap()
        .object_key("", "configmaps", Some("default"), name)
        .unwrap()
}

fn unavailable(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Timeout(_))
}

#[tokio::test]
async fn unreachable_etcd_is_a_clear_error_within_the_timeout() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = EtcdOptions::new(vec![format!("127.0.0.1:{port}")]);
    options.request_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = EtcdStore::connect(options)
        .await
        .err()
        .expect("connecting to nothing must fail");
    assert!(unavailable(&err), "{err:?}");
    assert!(
        err.to_string().contains(&port.to_string()),
        "names the endpoint: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_cleanly_while_etcd_is_down_and_recover_after_restart() {
    let mut server = EtcdServer::start().await;
    let mut options = server.options();
    options.request_timeout = Duration::from_secs(1);
    let store = EtcdStore::connect(options).await.unwrap();
    let kept = store
        .create(&key("kept"), Bytes::from_static(b"v"))
        .await
        .unwrap();

    server.kill();
    let started = Instant::now();
    let err = store.get(&key("kept")).await.unwrap_err();
    assert!(unavailable(&err), "{err:?}");
    let err = store
        .create(&key("lost"), Bytes::from_static(b"v"))
        .await
        .unwrap_err();
    assert!(unavailable(&err), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    server.restart().await;
    // The same client reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match store.get(&key("kept")).await {
            Ok(v) => break v,
            Err(e) if unavailable(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    };
    assert_eq!(got, Some(kept));
    assert_eq!(store.get(&key("lost")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_an_etcd_restart_without_gap_or_repeat() {
    let mut server = EtcdServer::start().await;
    let store = server.connect().await;
    let prefix = TenantKeyspace::for_vc("vc").unwrap().prefix().clone();
    let start = store.current_revision().await.unwrap();
    let mut watch = store.watch(&prefix, start).await.unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(
            store
                .create(&key(&format!("before-{i}")), Bytes::from_static(b"v"))
                .await
                .unwrap(),
        );
    }
    // Read two events, then take etcd away with the rest unread.
    let mut got = Vec::new();
    while got.len() < 2 {
        if let WatchEvent::Change(e) = next(&mut watch).await {
            got.push(e);
        }
    }
    server.restart().await;
    let writer = server.connect().await;
    for i in 0..5 {
        written.push(
            writer
                .create(&key(&format!("after-{i}")), Bytes::from_static(b"v"))
                .await
                .unwrap(),
        );
    }
    let last = written.last().unwrap().mod_revision;
    while got.last().map(Event::revision) != Some(last) {
        if let WatchEvent::Change(e) = next(&mut watch).await {
            got.push(e);
        }
    }
    let revisions: Vec<Revision> = got.iter().map(Event::revision).collect();
    let expected: Vec<Revision> = written.iter().map(|kv| kv.mod_revision).collect();
    assert_eq!(revisions, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_unavailable_when_etcd_stays_down() {
    let mut server = EtcdServer::start().await;
    let mut options = server.options();
    options.reconnect_timeout = Duration::from_secs(2);
    options.request_timeout = Duration::from_millis(500);
    let store = EtcdStore::connect(options).await.unwrap();
    let mut watch = store
        .watch(
            &kplex_storage::KeyPrefix::root(),
            store.current_revision().await.unwrap(),
        )
        .await
        .unwrap();
    server.kill();
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match watch.next().await {
                Some(Ok(WatchEvent::Progress(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch must give up within its reconnect timeout");
    match outcome {
        Some(Err(e)) => assert!(unavailable(&e), "{e:?}"),
        other => panic!("expected an Unavailable error, got {other:?}"),
    }
}

async fn next(watch: &mut kplex_storage::WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("watch produced nothing in time")
        .expect("watch ended")
        .expect("watch error")
}

struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kplex test etcd CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    fn issue(
        &self,
        cn: &str,
        sans: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(&self, name: &str, pem: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue(
        "etcd",
        &["127.0.0.1", "localhost"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let files = TlsFiles {
        ca: pki.write("ca.pem", &pki.ca_pem),
        server_cert: pki.write("server.pem", &server_cert),
        server_key: pki.write("server-key.pem", &server_key),
    };
    let server = EtcdServer::start_with(Some(files)).await;
    let (client_cert, client_key) =
        pki.issue("kplex", &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth);

    let mut options = server.options();
    options.tls = Some(server.tls_for_client(client_cert.into_bytes(), client_key.into_bytes()));
    // etcd has no readiness signal; retry the TLS connect until it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = loop {
        match EtcdStore::connect(options.clone()).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("TLS connect failed: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let kv = store
        .create(&key("tls"), Bytes::from_static(b"secure"))
        .await
        .unwrap();
    assert_eq!(store.get(&key("tls")).await.unwrap(), Some(kv));

    // Without a client certificate etcd refuses us, and we say so.
    let mut no_cert = options.clone();
    no_cert.request_timeout = Duration::from_secs(2);
    if let Some(tls) = no_cert.tls.as_mut() {
        tls.client_cert_pem = None;
        tls.client_key_pem = None;
    }
    let err = EtcdStore::connect(no_cert)
        .await
        .err()
        .expect("must be refused");
    assert!(unavailable(&err), "{err:?}");

    // A certificate and key must come together.
    let mut half = options.clone();
    if let Some(tls) = half.tls.as_mut() {
        tls.client_key_pem = None;
    }
    assert!(EtcdStore::connect(half).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_work_when_one_is_down() {
    let server = EtcdServer::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut options = server.options();
    options.endpoints = vec![format!("http://{dead}"), server.endpoint()];
    let store = EtcdStore::connect(options).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let prefix = TenantKeyspace::for_vc("vc").unwrap().prefix().clone();
    let mut watch = store.watch(&prefix, start).await.unwrap();
    for i in 0..20 {
        let k = key(&format!("k{i}"));
        let kv = store.create(&k, Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(store.get(&k).await.unwrap(), Some(kv.clone()));
        loop {
            if let WatchEvent::Change(e) = next(&mut watch).await {
                assert_eq!(e.revision(), kv.mod_revision);
                break;
            }
        }
    }
}
