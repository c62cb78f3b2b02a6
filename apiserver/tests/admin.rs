//! The admin API and tenant routing, driven with the real kubectl.

mod support;

use std::path::Path;

use support::{admin, create_vc, kubectl, stderr, stdout, tenant_kubeconfig, Kplex, KubectlStream};

fn raw_get(kubeconfig: &Path, path: &str) -> std::process::Output {
    kubectl(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "get",
        "--raw",
        path,
    ])
}

#[test]
fn admins_create_list_get_and_delete_virtualclusters_with_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    create_vc(&kplex, dir.path(), "team-b");

    let table = admin(&kplex, &["get", "virtualclusters"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "ENDPOINT", "AGE"]);
    assert!(text.contains("team-a") && text.contains("team-b"), "{text}");
    assert!(
        text.contains(&format!("{}/clusters/team-a", kplex.server())),
        "{text}"
    );

    let one = admin(&kplex, &["get", "vc", "team-a", "-o", "json"]);
    assert!(one.status.success(), "{}", stderr(&one));
    let vc: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(vc["kind"], "VirtualCluster");
    assert_eq!(vc["status"]["phase"], "Ready");
    // The four default namespaces and their default ServiceAccounts.
    assert_eq!(vc["status"]["objectCount"], 8);
    assert_eq!(vc["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(vc["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let again = dir.path().join("team-a.yaml");
    let dup = admin(&kplex, &["create", "-f", again.to_str().unwrap()]);
    assert!(!dup.status.success());
    assert!(stderr(&dup).contains("AlreadyExists"), "{}", stderr(&dup));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: tenancy.kplex.dev/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: Not_A_Label\n").unwrap();
    let o = admin(&kplex, &["create", "-f", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is invalid"), "{}", stderr(&o));

    let metrics = admin(&kplex, &["get", "--raw", "/metrics"]);
    assert!(metrics.status.success(), "{}", stderr(&metrics));
    let text = stdout(&metrics);
    assert!(text.contains("kplex_virtual_clusters 2"), "{text}");
    assert!(
        text.contains(r#"kplex_apiserver_requests_total{verb="create",resource="virtualclusters",code="201"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"kplex_storage_duration_seconds_count{operation="create"}"#),
        "{text}"
    );

    let del = admin(&kplex, &["delete", "vc", "team-a"]);
    assert!(del.status.success(), "{}", stderr(&del));
    let gone = admin(&kplex, &["get", "vc", "team-a"]);
    assert!(!gone.status.success());
    assert!(stderr(&gone).contains("NotFound"), "{}", stderr(&gone));
    let list = admin(&kplex, &["get", "vc", "-o", "name"]);
    assert_eq!(
        stdout(&list).trim(),
        "virtualcluster.tenancy.kplex.dev/team-b"
    );
}

#[test]
fn a_tenant_credential_reaches_only_its_own_virtual_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    create_vc(&kplex, dir.path(), "team-b");
    let alice = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");

    // Its own VC answers.
    let own = raw_get(&alice, "/clusters/team-a/api");
    assert!(own.status.success(), "{}", stderr(&own));
    let own_health = raw_get(&alice, "/clusters/team-a/readyz");
    assert_eq!(stdout(&own_health), "ok", "{}", stderr(&own_health));
    // Another VC, a VC that does not exist: all 403.
    for path in [
        "/clusters/team-b/api",
        "/clusters/team-b/readyz",
        "/clusters/no-such-vc/api",
        "/clusters/team-a0/api",
        "/clusters//api",
    ] {
        let o = raw_get(&alice, path);
        assert!(!o.status.success(), "{path} must be refused");
        assert!(stderr(&o).contains("Forbidden"), "{path}: {}", stderr(&o));
    }
    // The bare paths are its own VC (in-cluster clients know no other
    // URL): never the admin API.
    let bare = raw_get(&alice, "/api/v1/namespaces");
    let prefixed = raw_get(&alice, "/clusters/team-a/api/v1/namespaces");
    let names = |o: &std::process::Output| {
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&bare), names(&prefixed));
    let groups = stdout(&raw_get(&alice, "/apis"));
    assert!(!groups.contains("tenancy.kplex.dev"), "{groups}");
    for path in [
        "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters",
        "/metrics",
    ] {
        let o = raw_get(&alice, path);
        assert!(!o.status.success(), "{path} must not answer");
        assert!(stderr(&o).contains("NotFound"), "{path}: {}", stderr(&o));
    }
    // An admin credential on a tenant path is refused too.
    let o = admin(&kplex, &["get", "--raw", "/clusters/team-a/api"]);
    assert!(stderr(&o).contains("Forbidden"), "{}", stderr(&o));
}

#[test]
fn deleting_a_vc_revokes_its_credentials_even_when_the_name_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let alice = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    assert!(raw_get(&alice, "/clusters/team-a/api").status.success());

    assert!(admin(&kplex, &["delete", "vc", "team-a"]).status.success());
    let o = raw_get(&alice, "/clusters/team-a/api");
    assert!(stderr(&o).contains("Forbidden"), "{}", stderr(&o));

    create_vc(&kplex, dir.path(), "team-a");
    let o = raw_get(&alice, "/clusters/team-a/api");
    assert!(
        stderr(&o).contains("Forbidden"),
        "an old credential must not open the new VC: {}",
        stderr(&o)
    );
    let fresh = tenant_kubeconfig(&kplex, dir.path(), "team-a", "bob");
    assert!(raw_get(&fresh, "/clusters/team-a/api").status.success());
}

#[test]
fn malformed_and_oversized_requests_get_a_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let post = |file: &Path| {
        admin(
            &kplex,
            &[
                "create",
                "--raw",
                "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters",
                "-f",
                file.to_str().unwrap(),
            ],
        )
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "broken.json",
            b"{\"metadata\": {\"name\": ".to_vec(),
            "BadRequest",
        ),
        ("array.json", b"[1, 2]".to_vec(), "BadRequest"),
        (
            "deep.json",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            "BadRequest",
        ),
        (
            "noname.json",
            b"{\"kind\": \"VirtualCluster\", \"metadata\": {}}".to_vec(),
            "is invalid",
        ),
        (
            "big.json",
            format!(
                "{{\"metadata\":{{\"name\":\"big\"}},\"spec\":{{\"x\":\"{}\"}}}}",
                "x".repeat(4 << 20)
            )
            .into_bytes(),
            "RequestEntityTooLarge",
        ),
    ];
    for (name, body, want) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, body).unwrap();
        let o = post(&file);
        assert!(!o.status.success(), "{name} must be refused");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
    }
    let list = admin(&kplex, &["get", "vc", "-o", "name"]);
    assert!(
        list.status.success(),
        "the server keeps serving: {}",
        stderr(&list)
    );
    assert_eq!(stdout(&list).trim(), "", "nothing was stored");
}

#[test]
fn kubectl_get_vc_watch_sees_vcs_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "first");
    let kc = kplex.kubeconfig();
    let watcher = KubectlStream::spawn(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "get",
        "vc",
        "-w",
        "--output-watch-events",
    ]);
    let wait_for = |prefix: &str| loop {
        let line = watcher.next_line(prefix);
        if line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
            == prefix
        {
            return line;
        }
    };
    // Listed first, then watched: a VC made by another client, then its deletion.
    wait_for("ADDED first");
    create_vc(&kplex, dir.path(), "second");
    let added = wait_for("ADDED second");
    assert!(added.contains("/clusters/second"), "{added}");
    assert!(admin(&kplex, &["delete", "vc", "second"]).status.success());
    wait_for("DELETED second");
}
