//! Two kplex processes on one etcd: exactly one runs the controllers (it
//! holds the Lease in the system cluster), and when it dies the other takes
//! over within the Lease's term and reconciles.

mod support;

#[path = "../../storage/tests/support/etcd.rs"]
mod etcd;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{create_vc, kubectl, stderr, stdout, tenant_kubeconfig, Kplex};

fn holder(system: &Path) -> String {
    let o = kubectl(&[
        "--kubeconfig",
        system.to_str().unwrap(),
        "get",
        "--raw",
        "/system/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kplex-controllers",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lease: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_dies() {
    let etcd = etcd::EtcdServer::start().await;
    let endpoint = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("system.kubeconfig");
    let write = format!("controllers={}", system.display());
    let first = Kplex::start_with_flags(
        &dir.path().join("first"),
        &[
            "--etcd-endpoints",
            &endpoint,
            "--write-system-kubeconfig",
            &write,
        ],
    );
    first.wait_for_log(
        "leading: kplex-controllers runs here",
        Duration::from_secs(30),
    );
    let second_system = dir.path().join("second-system.kubeconfig");
    let second_write = format!("controllers={}", second_system.display());
    let second = Kplex::start_with_flags(
        &dir.path().join("second"),
        &[
            "--etcd-endpoints",
            &endpoint,
            "--write-system-kubeconfig",
            &second_write,
        ],
    );
    let first_pid = first.pid().to_string();
    let second_pid = second.pid().to_string();
    assert!(
        holder(&system).contains(&format!("-{first_pid}-")),
        "{}",
        holder(&system)
    );

    // The leader dies without a word.
    let killed = Instant::now();
    first.kill();
    second.wait_for_log(
        "leading: kplex-controllers runs here",
        Duration::from_secs(15),
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "took over after {took:?}");
    assert!(
        holder(&second_system).contains(&format!("-{second_pid}-")),
        "{}",
        holder(&second_system)
    );
    eprintln!("the second replica took over {took:?} after the first died");

    // The new leader reconciles. (The system kubeconfig is the first's, so
    // the second's own admin credential makes the VC.)
    create_vc(&second, dir.path(), "team-a");
    let kc = tenant_kubeconfig(&second, dir.path(), "team-a", "alice");
    let o = kubectl(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "create",
        "deployment",
        "web",
        "--image=nginx",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = kubectl(&[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "get",
            "pods",
            "-o",
            "name",
        ]);
        if stdout(&o).contains("pod/web-") {
            break;
        }
        assert!(Instant::now() < deadline, "the new leader made no pod");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(second);
}

#[test]
fn the_controllers_run_in_their_own_process_with_a_system_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("system.kubeconfig");
    let write = format!("controllers={}", system.display());
    let kplex = Kplex::start_with_flags(
        &dir.path().join("data"),
        &["--controllers=false", "--write-system-kubeconfig", &write],
    );
    let mut controllers = std::process::Command::new(support::kplex_bin())
        .args(["controllers", "--kubeconfig", system.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    create_vc(&kplex, dir.path(), "team-a");
    let kc = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let o = kubectl(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "create",
        "deployment",
        "web",
        "--image=nginx",
        "--replicas=2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = kubectl(&[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "get",
            "pods",
            "-o",
            "name",
        ]);
        if stdout(&o)
            .lines()
            .filter(|l| l.starts_with("pod/web-"))
            .count()
            == 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controllers' process made no pods"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = controllers.kill();
    let _ = controllers.wait();
}
