//! End-to-end tests drive the real `kplex` binary with real clients
//! (kubectl, kube-rs). This library is their harness, shared with the
//! apiserver's own binary tests: start kplex on a free port and wait for it,
//! run kubectl, make VCs and their kubeconfigs through the admin API.
//!
//! The binary is `$KPLEX_BIN`, or the `kplex` that `cargo build` / the
//! workspace test build puts beside the test executable's directory
//! (`target/<profile>/kplex`: building the apiserver's tests builds it, so
//! `hack/test` always has a fresh one).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `kplex` binary under test.
pub fn kplex_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("KPLEX_BIN") {
        return bin.into();
    }
    // target/<profile>/deps/<test> → target/<profile>/kplex
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("kplex"))
        .expect("test executable has a target directory");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it (cargo build --bin kplex) or set KPLEX_BIN",
                bin.display()
            )
        });
    // `cargo test -p kplex-e2e` alone does not rebuild the binary: refuse to
    // test an old one.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in [
        "apiserver",
        "registry",
        "kinds",
        "rbac",
        "storage",
        "certs",
        "api",
        "controllers",
        "syncer",
    ] {
        let root = workspace.join(krate);
        let newer = [root.join("Cargo.toml"), root.join("build.rs")]
            .into_iter()
            .find(|file| modified(file).is_some_and(|m| m > built))
            .or_else(|| newer_than(&root.join("src"), built));
        if let Some(newer) = newer {
            panic!(
                "{} is older than {}: rebuild it (cargo build --bin kplex; hack/test does)",
                bin.display(),
                newer.display()
            );
        }
    }
    bin
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A file under `dir` modified after `time`.
fn newer_than(dir: &Path, time: std::time::SystemTime) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let path = entry.path();
        if path.is_dir() {
            newer_than(&path, time)
        } else {
            modified(&path).filter(|m| *m > time).map(|_| path)
        }
    })
}

pub mod kubelet;

/// A running `kplex serve`, killed when dropped.
pub struct Kplex {
    child: Child,
    pub data_dir: PathBuf,
    pub port: u16,
    /// Its log lines after the "serving" one.
    log: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Kplex {
    /// Starts kplex and waits for its "serving" log line.
    pub fn start(data_dir: &Path) -> Kplex {
        let log = std::env::var("KPLEX_TEST_LOG").unwrap_or_else(|_| "info".into());
        Kplex::start_with(&kplex_bin(), data_dir, &log)
    }

    /// Starts the binary `bin` (a benchmark's release build, say) with the
    /// log filter `log`, and waits for its "serving" log line.
    pub fn start_with(bin: &Path, data_dir: &Path, log: &str) -> Kplex {
        Kplex::spawn(bin, data_dir, log, &[])
    }

    /// [`Kplex::start_with`] with more `kplex serve` flags.
    pub fn start_bin(bin: &Path, data_dir: &Path, log: &str, flags: &[&str]) -> Kplex {
        Kplex::spawn(bin, data_dir, log, flags)
    }

    /// Starts kplex without its controllers and syncer
    /// (`--controllers=false --syncer=false`): for tests of the API's own
    /// behaviour, where objects the controllers make (a namespace's
    /// `kube-root-ca.crt`, a Deployment's ReplicaSets and status) and the
    /// syncer's Pod conditions would add to what the test lists and reads
    /// back.
    pub fn start_api_only(data_dir: &Path) -> Kplex {
        Kplex::start_with_flags(data_dir, &["--controllers=false", "--syncer=false"])
    }

    /// Starts the test build with more `kplex serve` flags.
    pub fn start_with_flags(data_dir: &Path, flags: &[&str]) -> Kplex {
        let log = std::env::var("KPLEX_TEST_LOG").unwrap_or_else(|_| "info".into());
        Kplex::spawn(&kplex_bin(), data_dir, &log, flags)
    }

    fn spawn(bin: &Path, data_dir: &Path, log: &str, flags: &[&str]) -> Kplex {
        Kplex::spawn_on(bin, data_dir, log, flags, free_port())
    }

    /// Stops this kplex (SIGTERM) and starts the test build again on the
    /// same data directory and port, with `flags`: clients' kubeconfigs
    /// keep working.
    pub fn restart(self, flags: &[&str]) -> Kplex {
        let (data_dir, port) = (self.data_dir.clone(), self.port);
        assert!(self.terminate().success(), "kplex stopped cleanly");
        let log = std::env::var("KPLEX_TEST_LOG").unwrap_or_else(|_| "info".into());
        Kplex::spawn_on(&kplex_bin(), &data_dir, &log, flags, port)
    }

    fn spawn_on(bin: &Path, data_dir: &Path, log: &str, flags: &[&str], port: u16) -> Kplex {
        let mut child = Command::new(bin)
            .args(["serve", "--port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(flags)
            .env("RUST_LOG", log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kplex");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (log_tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut serving = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Shown with the test's output when it fails.
                eprintln!("kplex: {line}");
                if serving {
                    let _ = log_tx.send(line);
                } else if line.contains("kplex serving") {
                    serving = true;
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kplex did not report serving");
        assert!(
            line.contains("admin.kubeconfig"),
            "the log says where the kubeconfig is: {line}"
        );
        Kplex {
            child,
            data_dir: data_dir.to_owned(),
            port,
            log: std::sync::Mutex::new(log),
        }
    }

    /// Waits (up to `within`) for a log line containing `text`, reading the
    /// lines logged since the last wait; returns it.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let log = self.log.lock().unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => continue,
                Err(_) => panic!("kplex did not log {text:?} within {within:?}"),
            }
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kplex did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kplex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kubectl(args: &[&str]) -> Output {
    let bin = std::env::var("KPLEX_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Command::new(&bin)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); hack/ensure-deps installs kubectl"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn admin(kplex: &Kplex, args: &[&str]) -> std::process::Output {
    let kc = kplex.kubeconfig();
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
    all.extend_from_slice(args);
    kubectl(&all)
}

pub fn create_vc(kplex: &Kplex, dir: &Path, name: &str) {
    create_vc_with(kplex, dir, name, "{}");
}

/// Creates a VC with `spec` (YAML flow or block text, indented under `spec:`).
pub fn create_vc_with(kplex: &Kplex, dir: &Path, name: &str, spec: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!("apiVersion: tenancy.kplex.dev/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: {name}\nspec: {spec}\n"),
    )
    .unwrap();
    let o = admin(kplex, &["create", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "create {name}: {}", stderr(&o));
}

/// The spec of a VC that stands in for a host cluster in tests: a real
/// host takes whatever Pods the syncer writes (the tenant VC's policy was
/// applied before), so this one enforces nothing of its own.
pub const HOST_VC_SPEC: &str =
    "{isolation: {podSecurity: privileged, userNamespaces: false, quota: {hard: {}}}}";

/// Creates a VC that stands in for a host cluster ([`HOST_VC_SPEC`]).
pub fn create_host_vc(kplex: &Kplex, dir: &Path, name: &str) {
    create_vc_with(kplex, dir, name, HOST_VC_SPEC);
}

/// Issues a kubeconfig for `user` as the VC's cluster-admin (group
/// `system:masters`, as a VC's first kubeconfig) through the admin API's
/// kubeconfig subresource.
pub fn tenant_kubeconfig(kplex: &Kplex, dir: &Path, vc: &str, user: &str) -> PathBuf {
    user_kubeconfig(kplex, dir, vc, user, &["system:masters"])
}

/// Issues a kubeconfig for `user` in `groups`: it may do what the VC's
/// RBAC bindings give it.
pub fn user_kubeconfig(
    kplex: &Kplex,
    dir: &Path,
    vc: &str,
    user: &str,
    groups: &[&str],
) -> PathBuf {
    let body = dir.join("kubeconfig-request.json");
    let request = serde_json::json!({"user": user, "groups": groups});
    std::fs::write(&body, request.to_string()).unwrap();
    let o = admin(
        kplex,
        &[
            "create",
            "--raw",
            &format!("/apis/tenancy.kplex.dev/v1alpha1/virtualclusters/{vc}/kubeconfig"),
            "-f",
            body.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "kubeconfig for {vc}: {}", stderr(&o));
    let response: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let path = dir.join(format!("{vc}-{user}.kubeconfig"));
    std::fs::write(&path, response["kubeconfig"].as_str().unwrap()).unwrap();
    path
}

/// A long-running kubectl (`get -w`) whose stdout lines arrive on `lines`;
/// killed when dropped.
pub struct KubectlStream {
    child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl KubectlStream {
    pub fn spawn(args: &[&str]) -> KubectlStream {
        let bin = std::env::var("KPLEX_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let mut child = Command::new(&bin)
            .args(args)
            .env_remove("KUBECONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} ({e})"));
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        KubectlStream { child, lines }
    }

    /// The next line, or a panic naming what was awaited.
    pub fn next_line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("kubectl printed nothing while waiting for {what}"))
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs kubectl with `kc`; its stdout, or a panic with its stderr.
pub fn k(kc: &Path, args: &[&str]) -> String {
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = kubectl(&all);
    assert!(o.status.success(), "kubectl {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Runs kubectl expecting it to fail; its stderr.
pub fn k_fails(kc: &Path, args: &[&str]) -> String {
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = kubectl(&all);
    assert!(
        !o.status.success(),
        "kubectl {args:?} succeeded: {}",
        stdout(&o)
    );
    stderr(&o)
}

/// `kubectl get … -o json`.
pub fn get(kc: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&k(kc, &all)).unwrap()
}

/// The items of `kubectl get <what> -o json`.
pub fn items(kc: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    get(kc, args)["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `check` until it yields a value (bounded: 60 s).
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A kplex with one of its VCs, `host`, registered as the default host
/// cluster (the stand-in for a real host in the syncer's and the
/// isolation policy's tests).
pub struct Hosted {
    /// Scratch space (kubeconfigs, manifests).
    pub dir: tempfile::TempDir,
    /// The server.
    pub kplex: Kplex,
    /// A kubeconfig of the host.
    pub host: PathBuf,
}

impl Hosted {
    /// Starts kplex and registers its VC `host` as the default host.
    pub fn start() -> Hosted {
        let dir = tempfile::tempdir().unwrap();
        let kplex = Kplex::start(&dir.path().join("data"));
        create_host_vc(&kplex, dir.path(), "host");
        let host = tenant_kubeconfig(&kplex, dir.path(), "host", "platform");
        let o = Command::new(kplex_bin())
            .args(["host", "add", "default", "--default", "--kubeconfig"])
            .arg(&host)
            .arg("--admin-kubeconfig")
            .arg(kplex.kubeconfig())
            .output()
            .unwrap();
        assert!(o.status.success(), "kplex host add: {}", stderr(&o));
        Hosted { dir, kplex, host }
    }

    /// A tenant VC `vc` with the default spec; its admin's kubeconfig.
    pub fn tenant(&self, vc: &str) -> PathBuf {
        self.tenant_with(vc, "{}")
    }

    /// A tenant VC with `spec` (YAML flow text); its admin's kubeconfig.
    pub fn tenant_with(&self, vc: &str, spec: &str) -> PathBuf {
        create_vc_with(&self.kplex, self.dir.path(), vc, spec);
        tenant_kubeconfig(&self.kplex, self.dir.path(), vc, "admin")
    }

    /// `kubectl get <args> -o json` through the admin API.
    pub fn admin_get(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let o = admin(&self.kplex, &all);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

/// A ConfigMap `name` holding `value` under the key `value`.
pub fn configmap(name: &str, value: &str) -> k8s_openapi::api::core::v1::ConfigMap {
    k8s_openapi::api::core::v1::ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            "value".to_owned(),
            value.to_owned(),
        )])),
        ..Default::default()
    }
}
