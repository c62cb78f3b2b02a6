//! The system components' side of the API, tried the way the isolation
//! tests try tenant credentials: `/clusters/*` and `/system` answer system
//! credentials only, a system credential reaches no admin path, the VC
//! annotations on cross-VC items cannot be forged, and lists and watches
//! across VCs carry every VC's objects, each marked with its VC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kplex_e2e::kubelet::client_of;
use kplex_e2e::{admin, create_vc, kubectl, stderr, stdout, tenant_kubeconfig, Kplex};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde_json::Value;

const CLUSTER: &str = "tenancy.kplex.dev/cluster";
const CLUSTER_UID: &str = "tenancy.kplex.dev/cluster-uid";

struct Setup {
    _dir: tempfile::TempDir,
    kplex: Kplex,
    system: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

/// kplex without its own controllers (nothing else writes), a system
/// kubeconfig, and two VCs.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let system = dir.path().join("system.kubeconfig");
    let flag = format!("controllers={}", system.display());
    let kplex = Kplex::start_with_flags(
        &dir.path().join("data"),
        &[
            "--controllers=false",
            "--syncer=false",
            "--write-system-kubeconfig",
            &flag,
        ],
    );
    create_vc(&kplex, dir.path(), "team-a");
    create_vc(&kplex, dir.path(), "team-b");
    let a = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let b = tenant_kubeconfig(&kplex, dir.path(), "team-b", "bob");
    Setup {
        _dir: dir,
        kplex,
        system,
        a,
        b,
    }
}

fn raw(kc: &Path, verb: &str, path: &str) -> std::process::Output {
    kubectl(&["--kubeconfig", kc.to_str().unwrap(), verb, "--raw", path])
}

fn forbidden(o: &std::process::Output) -> bool {
    !o.status.success() && stderr(o).contains("Forbidden")
}

fn create_cm(kc: &Path, dir: &Path, name: &str, annotations: &str) {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\ndata: {{k: v}}\n"),
    )
    .unwrap();
    let o = kubectl(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "create",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn only_system_credentials_reach_every_vc_and_none_reaches_the_admin_api() {
    let s = setup();
    let across = "/clusters/*/api/v1/configmaps";
    // Tenants and admins are refused everything across VCs, and the system cluster.
    for kc in [&s.a, &s.b, &s.kplex.kubeconfig()] {
        for path in [
            across,
            "/clusters/*/api/v1/namespaces/default/configmaps",
            "/clusters/*/api",
            "/system/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
        ] {
            let o = raw(kc, "get", path);
            assert!(
                forbidden(&o),
                "{} on {path}: {}{}",
                kc.display(),
                stdout(&o),
                stderr(&o)
            );
        }
    }
    // The system credential reaches no admin path.
    for path in [
        "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters",
        "/metrics",
        "/api/v1/namespaces",
    ] {
        let o = raw(&s.system, "get", path);
        assert!(forbidden(&o), "system on {path}: {}", stdout(&o));
    }
    // A credential minted through the admin API is a VC's, whatever its groups.
    let dir = s.system.parent().unwrap();
    let body = dir.join("mint.json");
    std::fs::write(
        &body,
        r#"{"user":"kplex:controllers","groups":["system:masters","kplex:system"]}"#,
    )
    .unwrap();
    let o = admin(
        &s.kplex,
        &[
            "create",
            "--raw",
            "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters/team-a/kubeconfig",
            "-f",
            body.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let minted: Value = serde_json::from_slice(&o.stdout).unwrap();
    let minted_path = dir.join("minted.kubeconfig");
    std::fs::write(&minted_path, minted["kubeconfig"].as_str().unwrap()).unwrap();
    assert!(forbidden(&raw(&minted_path, "get", across)));
    // Writes across VCs are not served: they go to one VC.
    let o = kubectl(&[
        "--kubeconfig",
        s.system.to_str().unwrap(),
        "delete",
        "--raw",
        "/clusters/*/api/v1/namespaces/default/configmaps/x",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("MethodNotAllowed")
            || stderr(&o).contains("not allowed")
            || stderr(&o).contains("NotFound"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn cross_vc_lists_mark_each_item_with_its_vc_and_cannot_be_fooled() {
    let s = setup();
    let dir = s.system.parent().unwrap();
    // A tenant claims another VC in its annotations: never stored.
    create_cm(
        &s.a,
        dir,
        "same",
        &format!("{CLUSTER}: team-b, {CLUSTER_UID}: forged, keep: me"),
    );
    create_cm(&s.b, dir, "same", "note: b");
    let stored = kubectl(&[
        "--kubeconfig",
        s.a.to_str().unwrap(),
        "get",
        "cm",
        "same",
        "-o",
        "json",
    ]);
    let stored: Value = serde_json::from_slice(&stored.stdout).unwrap();
    assert!(
        stored["metadata"]["annotations"].get(CLUSTER).is_none(),
        "{stored}"
    );
    assert_eq!(stored["metadata"]["annotations"]["keep"], "me");

    let uid_of = |vc: &str| {
        let o = admin(
            &s.kplex,
            &["get", "vc", vc, "-o", "jsonpath={.metadata.uid}"],
        );
        stdout(&o)
    };
    let o = raw(
        &s.system,
        "get",
        "/clusters/*/api/v1/configmaps?fieldSelector=metadata.name%3Dsame",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut seen: Vec<(String, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let a = &i["metadata"]["annotations"];
            (
                a[CLUSTER].as_str().unwrap().to_owned(),
                a[CLUSTER_UID].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("team-a".to_owned(), uid_of("team-a")),
            ("team-b".to_owned(), uid_of("team-b"))
        ]
    );
    assert!(list["metadata"]["resourceVersion"].is_string());

    // Pages walk every VC; a forged token is refused.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let path = format!("/clusters/*/api/v1/namespaces?limit=3&continue={token}");
        let page: Value = serde_json::from_slice(&raw(&s.system, "get", &path).stdout).unwrap();
        for item in page["items"].as_array().unwrap() {
            names.push(format!(
                "{}/{}",
                item["metadata"]["annotations"][CLUSTER].as_str().unwrap(),
                item["metadata"]["name"].as_str().unwrap()
            ));
        }
        match page["metadata"]["continue"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => break,
        }
    }
    names.sort();
    assert_eq!(
        names.len(),
        8,
        "four namespaces in each of two VCs: {names:?}"
    );
    assert!(names.contains(&"team-b/kube-system".to_owned()));
    let forged = raw(&s.system, "get", "/clusters/*/api/v1/namespaces?limit=1&continue=eyJydiI6MSwia2V5IjoiL2twbGV4L3N5c3RlbS92aXJ0dWFsY2x1c3RlcnMvdGVhbS1hIn0");
    assert!(
        !forged.status.success() && stderr(&forged).contains("continue"),
        "{}",
        stderr(&forged)
    );

    // A system write lands in the VC it names, and only there.
    let file = dir.join("sys.json");
    std::fs::write(&file, r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"from-system"},"data":{"k":"v"}}"#).unwrap();
    let o = kubectl(&[
        "--kubeconfig",
        s.system.to_str().unwrap(),
        "create",
        "--raw",
        "/clusters/team-a/api/v1/namespaces/default/configmaps",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let in_a = kubectl(&[
        "--kubeconfig",
        s.a.to_str().unwrap(),
        "get",
        "cm",
        "from-system",
    ]);
    assert!(in_a.status.success());
    let in_b = kubectl(&[
        "--kubeconfig",
        s.b.to_str().unwrap(),
        "get",
        "cm",
        "from-system",
    ]);
    assert!(!in_b.status.success());
    // Not into a VC that is gone.
    assert!(admin(&s.kplex, &["delete", "vc", "team-b"])
        .status
        .success());
    let o = kubectl(&[
        "--kubeconfig",
        s.system.to_str().unwrap(),
        "create",
        "--raw",
        "/clusters/team-b/api/v1/namespaces/default/configmaps",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert!(forbidden(&o), "{}", stderr(&o));
}

/// A kube-rs client of `kc` whose base is `path` below its server.
async fn client_at(kc: &Path, path: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kc).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_across_vcs_sees_every_vcs_changes_marked_with_its_vc() {
    let s = setup();
    let across: Api<ConfigMap> = Api::all(client_at(&s.system, "/clusters/*").await);
    let list = across.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut events = across
        .watch(&WatchParams::default().timeout(30), &rv)
        .await
        .unwrap()
        .boxed();
    let a: Api<ConfigMap> = Api::default_namespaced(client_of(&s.a).await);
    let b: Api<ConfigMap> = Api::default_namespaced(client_of(&s.b).await);
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}))
            .unwrap()
    };
    b.create(&Default::default(), &cm("in-b")).await.unwrap();
    a.create(&Default::default(), &cm("in-a")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), events.try_next())
            .await
            .expect("events within 30 s")
            .unwrap()
            .expect("the watch is open");
        if let WatchEvent::Added(o) = event {
            let vc = o.metadata.annotations.as_ref().unwrap()[CLUSTER].clone();
            got.push((vc, o.metadata.name.unwrap()));
        }
    }
    assert_eq!(
        got,
        [
            ("team-b".to_owned(), "in-b".to_owned()),
            ("team-a".to_owned(), "in-a".to_owned())
        ]
    );
    // Deleting a VC is not told to the watch object by object (the VC's
    // record going says it all, to those who follow the records): the
    // next event is the next change of a VC that remains.
    assert!(admin(&s.kplex, &["delete", "vc", "team-b"])
        .status
        .success());
    let after: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "after"}})).unwrap();
    Api::<ConfigMap>::namespaced(client_of(&s.a).await, "default")
        .create(&Default::default(), &after)
        .await
        .unwrap();
    let next = loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.try_next())
            .await
            .expect("events within 30 s")
            .unwrap()
            .expect("the watch is open");
        match event {
            WatchEvent::Bookmark(_) => continue,
            other => break other,
        }
    };
    match next {
        WatchEvent::Added(o) => {
            assert_eq!(o.metadata.name.as_deref(), Some("after"));
            assert_eq!(o.metadata.annotations.unwrap()[CLUSTER], "team-a");
        }
        other => panic!("expected team-a's new ConfigMap, got {other:?}"),
    }
}
