//! Runs a real etcd (the `etcd` binary from Debian's `etcd-server`, or
//! `$KPLEX_ETCD_BIN`) on free loopback ports for one test, and stops it on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kplex_storage::{EtcdOptions, EtcdStore, EtcdTls};

/// TLS files for an etcd that requires client certificates.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free loopback port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn etcd_binary() -> String {
    std::env::var("KPLEX_ETCD_BIN").unwrap_or_else(|_| "etcd".to_owned())
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        Self::start_with(None).await
    }

    /// Starts etcd serving TLS and requiring client certificates signed by `tls.ca`.
    pub async fn start_with(tls: Option<TlsFiles>) -> EtcdServer {
        let mut server = EtcdServer {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        server.spawn();
        // A port picked free can be taken before etcd binds it (another
        // test's etcd, say); an etcd that exits at once gets new ports.
        for _ in 0..5 {
            if !server.exited_early() {
                break;
            }
            server.client_port = free_port();
            server.peer_port = free_port();
            server.spawn();
        }
        if server.tls.is_none() {
            server.wait_ready().await;
        }
        server
    }

    /// Whether etcd died within its first half second.
    fn exited_early(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) => return true,
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(20)),
                _ => return false,
            }
        }
        false
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    pub fn options(&self) -> EtcdOptions {
        let mut options = EtcdOptions::new(vec![self.endpoint()]);
        options.progress_interval = Duration::from_millis(100);
        options
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name=kplex-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=kplex-test={peer}"))
            // Room for a 1.5 MiB value plus its key and framing.
            .arg("--max-request-bytes=2097152")
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).expect("etcd log file"));
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.server_cert.display()))
                .arg(format!("--key-file={}", tls.server_key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "could not start etcd ({}): {e}; install Debian's etcd-server (hack/test does) \
                 or set KPLEX_ETCD_BIN",
                etcd_binary()
            )
        });
        self.child = Some(child);
    }

    /// Polls until etcd answers a request; etcd has no readiness signal we can await.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut options = self.options();
        options.request_timeout = Duration::from_millis(500);
        loop {
            match EtcdStore::connect(options.clone()).await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "etcd never became ready: {e}\netcd log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub async fn connect(&self) -> EtcdStore {
        EtcdStore::connect(self.options())
            .await
            .expect("connect to test etcd")
    }

    /// Kills etcd (SIGKILL) and leaves it down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    pub fn tls_for_client(&self, client_cert: Vec<u8>, client_key: Vec<u8>) -> EtcdTls {
        let tls = self.tls.as_ref().expect("started with TLS");
        EtcdTls {
            ca_pem: std::fs::read(&tls.ca).expect("read CA"),
            client_cert_pem: Some(client_cert),
            client_key_pem: Some(client_key),
            domain_name: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
