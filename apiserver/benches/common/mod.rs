//! What the benchmarks of kplex's components share: process memory and
//! CPU, the server's request counts, a component in its own process,
//! clients, VCs made through the admin API.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

/// Requests in flight at once from a benchmark's clients.
pub const CLIENTS: usize = 64;

/// mimalloc settings for a long-lived process whose bursts are freed at
/// once: commit memory as used, give freed pages back without delay.
pub const LEAN: &[(&str, &str)] = &[
    ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
    ("MIMALLOC_PURGE_DELAY", "0"),
];

/// A process's resident memory, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// Requests the server has answered, by (verb, resource), from `/metrics`.
pub async fn requests(admin: &kube::Client) -> std::collections::BTreeMap<(String, String), u64> {
    let req = hyper::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = admin.request_text(req).await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("kplex_apiserver_requests_total{"))
    {
        let field = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry((field("verb"), field("resource"))).or_default() += n;
    }
    out
}

/// A `kplex <component>` process (`controllers`, `syncer`), killed when
/// dropped.
pub struct Component(Child);

impl Component {
    /// Starts `kplex <name>` and waits until its caches are synced.
    pub fn start(bin: &Path, name: &str, kubeconfig: &Path) -> Component {
        Component::start_with(bin, name, kubeconfig, &[])
    }

    /// [`Component::start`] with more environment.
    pub fn start_with(
        bin: &Path,
        name: &str,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> Component {
        let mut child = Command::new(bin)
            .args([name, "--kubeconfig", kubeconfig.to_str().unwrap()])
            .envs(env.iter().copied())
            .env("RUST_LOG", format!("kplex_{name}=info,warn"))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.contains("caches synced") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(600))
            .expect("the component synced");
        Component(child)
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client of `kubeconfig` based at `path` below its server.
pub async fn client_at(kubeconfig: &Path, path: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    config.cluster_url = format!(
        "{}{path}",
        config.cluster_url.to_string().trim_end_matches('/')
    )
    .parse()
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Makes the VCs `names` through the admin API, [`CLIENTS`] at a time.
pub async fn create_vcs(admin: &kube::Client, names: Vec<String>) {
    create_vcs_with(admin, names, json!({})).await
}

/// Creates VCs with `spec` through the admin API, several at once.
pub async fn create_vcs_with(admin: &kube::Client, names: Vec<String>, spec: serde_json::Value) {
    futures::stream::iter(names)
        .map(|name| {
            let admin = admin.clone();
            let spec = spec.clone();
            async move {
                let body = json!({"apiVersion": "tenancy.kplex.dev/v1alpha1", "kind": "VirtualCluster", "metadata": {"name": name}, "spec": spec});
                let req = hyper::Request::post("/apis/tenancy.kplex.dev/v1alpha1/virtualclusters")
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&body).unwrap())
                    .unwrap();
                admin.request_text(req).await.unwrap();
            }
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<_>>()
        .await;
}

/// The `p` quantile of `samples`.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

/// The release `kplex serve` on embedded storage in `dir`, without its
/// controllers and syncer, and the system kubeconfig it wrote for
/// `component` (which the benchmark runs as its own process).
pub fn bare_server(bin: &Path, dir: &Path, component: &str) -> (kplex_e2e::Kplex, PathBuf) {
    let system_kc = dir.join("system.kubeconfig");
    let flag = format!("{component}={}", system_kc.display());
    let server = kplex_e2e::Kplex::start_bin(
        bin,
        &dir.join("kplex-data"),
        "kplex=info,warn",
        &[
            "--controllers=false",
            "--syncer=false",
            "--write-system-kubeconfig",
            &flag,
        ],
    );
    (server, system_kc)
}

/// The resourceVersion a list of `api` is at (to watch from).
pub async fn list_rv<K>(api: &kube::Api<K>) -> String
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
}
