//! The syncer, through kubectl in VCs and on the host: a tenant's
//! Deployment becomes Pods on the host (in `kplex-<vc>-<ns>`, names kept,
//! labelled with the VC) with the ConfigMaps and Secrets they reference,
//! and what the host makes of them — bound to a Node, Running, an IP —
//! is what the tenant sees. Drift on the host is repaired, foreign host
//! objects are never touched, deletes reach the host, two VCs on one host
//! stay apart, and a VC's deletion clears its host namespaces.
//!
//! The host is a VC of the same kplex (it serves the API a host serves);
//! a stand-in scheduler and kubelet (`kplex_e2e::kubelet`) bind host Pods
//! to a Node and write their status there.

use std::path::{Path, PathBuf};

use kplex_e2e::kubelet::{client_of, FakeKubelet, Fate};
use kplex_e2e::{
    admin, create_host_vc, create_vc, eventually, get, items, k, k_fails, kplex_bin, stderr,
    stdout, tenant_kubeconfig, Kplex,
};
use serde_json::Value;

/// A kplex with a VC `host` registered as the default host cluster.
type Setup = kplex_e2e::Hosted;

fn setup() -> Setup {
    Setup::start()
}

/// `kubectl get <args> -o json` as `kc`, if it exists.
fn found(kc: &Path, args: &[&str]) -> Option<Value> {
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap(), "get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let o = kplex_e2e::kubectl(&all);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

/// A host Node, as a host's kubelet registers one.
fn host_node(host: &Path, name: &str) {
    let node = format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{"kubernetes.io/hostname":"{name}","pool":"blue"}}}},
        "status":{{"capacity":{{"cpu":"8","memory":"32Gi","pods":"110"}},"allocatable":{{"cpu":"7","memory":"30Gi","pods":"110"}},
        "conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}}]}}}}"#
    );
    let file = host.with_extension(format!("{name}.json"));
    std::fs::write(&file, node).unwrap();
    k(host, &["create", "-f", file.to_str().unwrap()]);
    // A Node's status is its own subresource: the kubelet writes it there.
    let status = serde_json::from_str::<Value>(&std::fs::read_to_string(&file).unwrap()).unwrap()
        ["status"]
        .to_string();
    k(
        host,
        &[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{status}}}"#),
        ],
    );
}

fn names(list: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = list
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_on_the_host_and_the_tenant_sees_it_run() {
    let s = setup();
    // The host is registered: kubectl lists it, reachable, and its
    // kubeconfig's credentials are never shown.
    let host_kc = s.host.clone();
    let listed = eventually("the host to be reachable", || {
        let hosts = s.admin_get(&["hostclusters"]);
        let host = hosts["items"][0].clone();
        (host["status"]["reachable"] == true).then_some(host)
    });
    assert_eq!(listed["metadata"]["name"], "default");
    assert_eq!(listed["spec"]["default"], true);
    assert!(listed["spec"]["server"]
        .as_str()
        .unwrap()
        .contains("/clusters/host"));
    let shown = listed.to_string();
    assert!(
        !shown.contains("client-key-data") && !shown.contains("kubeconfig"),
        "{shown}"
    );
    let table = stdout(&admin(&s.kplex, &["get", "hostclusters"]));
    assert!(
        table.contains("default") && table.contains("true"),
        "{table}"
    );

    host_node(&s.host, "node-1");
    let _host = FakeKubelet::start_on(client_of(&s.host).await, Some("node-1".into()), |_| {
        Fate::Ready
    });

    let tenant = s.tenant("team-a");
    let t = tenant.clone();
    blocking(move || {
        k(&t, &["create", "namespace", "shop"]);
        k(&t, &["-n", "shop", "create", "configmap", "settings", "--from-literal=mode=fast"]);
        k(&t, &["-n", "shop", "create", "configmap", "unused", "--from-literal=a=b"]);
        k(&t, &["-n", "shop", "create", "secret", "generic", "creds", "--from-literal=password=hunter2"]);
        let manifest = t.with_extension("web.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: nginx\n        image: nginx\n        envFrom: [{configMapRef: {name: settings}}]\n        volumeMounts: [{name: creds, mountPath: /creds}]\n      volumes: [{name: creds, secret: {secretName: creds}}]\n",
        )
        .unwrap();
        k(&t, &["apply", "-f", manifest.to_str().unwrap()]);
        // The rollout finishes once the host's Pods run: the tenant's Pods
        // got their status from the host.
        k(&t, &["-n", "shop", "rollout", "status", "deployment/web", "--timeout=60s"]);
    })
    .await;

    // On the host: the Pods under their own names, in the mapped namespace,
    // labelled; the referenced ConfigMap and Secret, not the unused one.
    let tenant_pods = items(&tenant, &["-n", "shop", "pods"]);
    let host_pods = items(&host_kc, &["-n", "kplex-team-a-shop", "pods"]);
    assert_eq!(names(&tenant_pods), names(&host_pods));
    assert_eq!(host_pods.len(), 2);
    let vc_uid = s.admin_get(&["virtualcluster", "team-a"])["metadata"]["uid"].clone();
    for pod in &host_pods {
        let labels = &pod["metadata"]["labels"];
        assert_eq!(labels["tenancy.kplex.dev/vc"], "team-a");
        assert_eq!(labels["tenancy.kplex.dev/vc-uid"], vc_uid);
        assert_eq!(labels["tenancy.kplex.dev/namespace"], "shop");
        assert_eq!(labels["app"], "web");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        assert_eq!(pod["spec"]["enableServiceLinks"], false);
        assert!(pod["metadata"].get("ownerReferences").is_none());
    }
    // (The host's own controllers put its kube-root-ca.crt there too.)
    // The host's Pod Security admission guards the namespace.
    let host_ns = get(&host_kc, &["namespace", "kplex-team-a-shop"]);
    assert_eq!(
        host_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    let host_cms = names(&items(
        &host_kc,
        &[
            "-n",
            "kplex-team-a-shop",
            "configmaps",
            "-l",
            "tenancy.kplex.dev/vc=team-a",
        ],
    ));
    assert_eq!(host_cms, ["settings"]);
    let secret = get(&host_kc, &["-n", "kplex-team-a-shop", "secret", "creds"]);
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");

    // The tenant sees the host's truth: the Node, an IP, Running.
    for pod in &tenant_pods {
        assert_eq!(pod["spec"]["nodeName"], "node-1");
        assert_eq!(pod["status"]["phase"], "Running");
        assert!(pod["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.244.")));
        assert!(pod["metadata"]["finalizers"]
            .to_string()
            .contains("tenancy.kplex.dev/syncer"));
    }
    let node = get(&tenant, &["node", "node-1"]);
    assert_eq!(node["metadata"]["labels"]["pool"], "blue");
    assert_eq!(node["status"]["capacity"]["cpu"], "8");
    assert_eq!(node["status"]["conditions"][0]["type"], "Ready");
    let wide = k(&tenant, &["-n", "shop", "get", "pods", "-o", "wide"]);
    assert!(
        wide.contains("node-1") && wide.contains("Running"),
        "{wide}"
    );

    // Drift on the host is repaired: a deleted copy comes back, an edited
    // label is put back.
    k(
        &host_kc,
        &["-n", "kplex-team-a-shop", "delete", "configmap", "settings"],
    );
    eventually("the ConfigMap copy to come back", || {
        found(
            &host_kc,
            &["-n", "kplex-team-a-shop", "configmap", "settings"],
        )
        .map(|_| ())
    });
    let first = names(&host_pods)[0].clone();
    k(
        &host_kc,
        &[
            "-n",
            "kplex-team-a-shop",
            "label",
            "pod",
            &first,
            "app=hijacked",
            "--overwrite",
        ],
    );
    eventually("the label to be put back", || {
        let pod = get(&host_kc, &["-n", "kplex-team-a-shop", "pod", &first]);
        (pod["metadata"]["labels"]["app"] == "web").then_some(())
    });
    // A label the tenant adds, then removes (taking a Pod out of a
    // Service's selection), comes and goes on the host; one the host's
    // own controllers add stays.
    k(
        &host_kc,
        &[
            "-n",
            "kplex-team-a-shop",
            "label",
            "pod",
            &first,
            "host-added=yes",
        ],
    );
    k(
        &tenant,
        &["-n", "shop", "label", "pod", &first, "serving=yes"],
    );
    eventually("the tenant's label on the host", || {
        let pod = get(&host_kc, &["-n", "kplex-team-a-shop", "pod", &first]);
        (pod["metadata"]["labels"]["serving"] == "yes").then_some(())
    });
    k(&tenant, &["-n", "shop", "label", "pod", &first, "serving-"]);
    let pod = eventually("the tenant's removed label gone from the host", || {
        let pod = get(&host_kc, &["-n", "kplex-team-a-shop", "pod", &first]);
        pod["metadata"]["labels"]
            .get("serving")
            .is_none()
            .then_some(pod)
    });
    assert_eq!(pod["metadata"]["labels"]["host-added"], "yes");
    assert_eq!(pod["metadata"]["labels"]["app"], "web");
    // A tenant edit reaches the host (the tenant's spec wins).
    k(
        &tenant,
        &[
            "-n",
            "shop",
            "patch",
            "configmap",
            "settings",
            "--type=merge",
            "-p",
            r#"{"data":{"mode":"slow"}}"#,
        ],
    );
    eventually("the tenant's edit on the host", || {
        let cm = get(
            &host_kc,
            &["-n", "kplex-team-a-shop", "configmap", "settings"],
        );
        (cm["data"]["mode"] == "slow").then_some(())
    });

    // Deleting the Deployment deletes the host Pods, then the tenant's (the
    // finalizer held them), the no longer referenced copies and the Node.
    let t = tenant.clone();
    blocking(move || {
        k(
            &t,
            &["-n", "shop", "delete", "deployment", "web", "--wait=true"],
        )
    })
    .await;
    eventually("the tenant's Pods to go", || {
        items(&tenant, &["-n", "shop", "pods"])
            .is_empty()
            .then_some(())
    });
    assert!(items(&host_kc, &["-n", "kplex-team-a-shop", "pods"]).is_empty());
    eventually("the copies and the virtual Node to go", || {
        let cms = items(
            &host_kc,
            &[
                "-n",
                "kplex-team-a-shop",
                "configmaps",
                "-l",
                "tenancy.kplex.dev/vc",
            ],
        );
        let secrets = items(&host_kc, &["-n", "kplex-team-a-shop", "secrets"]);
        let nodes = items(&tenant, &["nodes"]);
        (cms.is_empty() && secrets.is_empty() && nodes.is_empty()).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_objects_kplex_did_not_make_are_never_touched() {
    let s = setup();
    let tenant = s.tenant("team-a");
    k(&tenant, &["create", "namespace", "shop"]);
    // The tenant's first Pod makes the host namespace.
    k(&tenant, &["-n", "shop", "run", "first", "--image=nginx"]);
    eventually("the first Pod on the host", || {
        let pods = items(&s.host, &["-n", "kplex-team-a-shop", "pods"]);
        (pods.len() == 1).then_some(())
    });
    // Someone else's Pod and ConfigMap of the names the tenant will use.
    k(
        &s.host,
        &[
            "-n",
            "kplex-team-a-shop",
            "run",
            "taken",
            "--image=busybox",
            "--labels=owner=platform",
        ],
    );
    k(
        &s.host,
        &[
            "-n",
            "kplex-team-a-shop",
            "create",
            "configmap",
            "cfg",
            "--from-literal=owner=platform",
        ],
    );
    k(
        &tenant,
        &[
            "-n",
            "shop",
            "create",
            "configmap",
            "cfg",
            "--from-literal=owner=tenant",
        ],
    );
    k(
        &tenant,
        &[
            "-n",
            "shop",
            "run",
            "taken",
            "--image=nginx",
            "--overrides",
            r#"{"spec":{"volumes":[{"name":"c","configMap":{"name":"cfg"}}]}}"#,
        ],
    );
    let message = eventually("the tenant Pod to say why it waits", || {
        let pod = get(&tenant, &["-n", "shop", "pod", "taken"]);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
    });
    assert!(message.contains("did not place"), "{message}");
    // The host's own objects are as they were.
    let pod = get(&s.host, &["-n", "kplex-team-a-shop", "pod", "taken"]);
    assert_eq!(pod["metadata"]["labels"]["owner"], "platform");
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox");
    let cm = get(&s.host, &["-n", "kplex-team-a-shop", "configmap", "cfg"]);
    assert_eq!(cm["data"]["owner"], "platform");
    // Deleting the tenant's Pod leaves the host's alone.
    k(
        &tenant,
        &["-n", "shop", "delete", "pod", "taken", "--wait=true"],
    );
    let pod = get(&s.host, &["-n", "kplex-team-a-shop", "pod", "taken"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vcs_share_a_host_apart_and_a_deleted_vc_leaves_nothing_there() {
    let s = setup();
    let a = s.tenant("a");
    let b = s.tenant("b");
    for kc in [&a, &b] {
        k(kc, &["create", "namespace", "shop"]);
        k(kc, &["-n", "shop", "run", "web", "--image=nginx"]);
    }
    eventually("both Pods on the host", || {
        let a = items(&s.host, &["-n", "kplex-a-shop", "pods"]);
        let b = items(&s.host, &["-n", "kplex-b-shop", "pods"]);
        (a.len() == 1 && b.len() == 1).then_some(())
    });
    let uid_a = s.admin_get(&["virtualcluster", "a"])["metadata"]["uid"].clone();
    let uid_b = s.admin_get(&["virtualcluster", "b"])["metadata"]["uid"].clone();
    let pod_a = get(&s.host, &["-n", "kplex-a-shop", "pod", "web"]);
    let pod_b = get(&s.host, &["-n", "kplex-b-shop", "pod", "web"]);
    assert_eq!(
        pod_a["metadata"]["labels"]["tenancy.kplex.dev/vc-uid"],
        uid_a
    );
    assert_eq!(
        pod_b["metadata"]["labels"]["tenancy.kplex.dev/vc-uid"],
        uid_b
    );
    // A's status never reaches B.
    let host = client_of(&s.host).await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod_a).unwrap();
    kplex_e2e::kubelet::bind(&host, &pod, "node-a")
        .await
        .unwrap();
    kplex_e2e::kubelet::set_fate(&host, &pod, Fate::Ready)
        .await
        .unwrap();
    eventually("A's Pod to run", || {
        let pod = get(&a, &["-n", "shop", "pod", "web"]);
        (pod["status"]["phase"] == "Running").then_some(())
    });
    let in_b = get(&b, &["-n", "shop", "pod", "web"]);
    assert_ne!(in_b["status"]["phase"], "Running");
    assert!(in_b["spec"]["nodeName"].is_null());
    // A second binding is refused, as kube-apiserver refuses it.
    let again = kplex_e2e::kubelet::bind(&host, &pod, "node-b")
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already assigned"), "{again}");

    // Deleting VC a clears its host namespace — before the delete returns
    // (while its storage still exists); b's stays.
    let o = admin(&s.kplex, &["delete", "virtualcluster", "a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    if let Some(ns) = found(&s.host, &["namespace", "kplex-a-shop"]) {
        assert!(
            ns["metadata"]["deletionTimestamp"].is_string(),
            "still there: {ns}"
        );
    }
    eventually("a's host namespace to go", || {
        let namespaces = names(&items(&s.host, &["namespaces"]));
        (!namespaces.contains(&"kplex-a-shop".to_owned())).then_some(())
    });
    assert!(names(&items(&s.host, &["namespaces"])).contains(&"kplex-b-shop".to_owned()));
    assert_eq!(items(&s.host, &["-n", "kplex-b-shop", "pods"]).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_host_pods_wait_with_a_reason_and_a_used_host_cannot_go() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let tenant = tenant_kubeconfig(&kplex, dir.path(), "team-a", "admin");
    k(&tenant, &["run", "web", "--image=nginx"]);
    let condition = eventually("the Pod to say it has no host", || {
        let pod = get(&tenant, &["pod", "web"]);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions.into_iter().find(|c| c["type"] == "PodScheduled")
    });
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Unschedulable");
    assert!(condition["message"]
        .as_str()
        .unwrap()
        .contains("no host cluster"));
    assert_eq!(get(&tenant, &["pod", "web"])["status"]["phase"], "Pending");

    // The tenant cannot read the host records, nor the system cluster.
    let refused = k_fails(
        &tenant,
        &[
            "get",
            "--raw",
            "/system/apis/tenancy.kplex.dev/v1alpha1/hostclusters",
        ],
    );
    assert!(
        refused.contains("Forbidden") || refused.contains("forbidden"),
        "{refused}"
    );

    // A host with VCs placed on it cannot be removed.
    create_host_vc(&kplex, dir.path(), "host");
    let host = tenant_kubeconfig(&kplex, dir.path(), "host", "platform");
    let kplex_cmd = |args: &[&str]| {
        std::process::Command::new(kplex_bin())
            .args(args)
            .arg("--admin-kubeconfig")
            .arg(kplex.kubeconfig())
            .output()
            .unwrap()
    };
    let o = kplex_cmd(&[
        "host",
        "add",
        "main",
        "--default",
        "--kubeconfig",
        host.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = stdout(&kplex_cmd(&["host", "list"]));
    assert!(
        listed.contains("main") && listed.contains("/clusters/host"),
        "{listed}"
    );
    // Now placed: the waiting Pod goes to the host.
    eventually("the Pod on the host", || {
        let pods = items(&host, &["-n", "kplex-team-a-default", "pods"]);
        (pods.len() == 1).then_some(())
    });
    let o = kplex_cmd(&["host", "remove", "main"]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains("placed on it") && said.contains("team-a"),
        "{said}"
    );
    // A malformed host is refused with the field that is wrong.
    let bad = dir.path().join("bad.kubeconfig");
    std::fs::write(&bad, "clusters: []\n").unwrap();
    let o = kplex_cmd(&[
        "host",
        "add",
        "broken",
        "--kubeconfig",
        bad.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("spec.kubeconfig"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_syncer_catches_up_without_duplicates_or_orphans() {
    let Setup { dir, kplex, host } = setup();
    let s_dir = dir.path().to_owned();
    let a = {
        create_vc(&kplex, &s_dir, "a");
        tenant_kubeconfig(&kplex, &s_dir, "a", "admin")
    };
    let b = {
        create_vc(&kplex, &s_dir, "b");
        tenant_kubeconfig(&kplex, &s_dir, "b", "admin")
    };
    k(
        &a,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=3",
        ],
    );
    k(&b, &["run", "solo", "--image=nginx"]);
    eventually("a's and b's Pods on the host", || {
        let a = items(&host, &["-n", "kplex-a-default", "pods"]);
        let b = items(&host, &["-n", "kplex-b-default", "pods"]);
        (a.len() == 3 && b.len() == 1).then_some(())
    });
    // The syncer is away while both sides change.
    let kplex = kplex.restart(&["--syncer=false"]);
    let tenant_pods = names(&items(&a, &["pods"]));
    let host_pods = names(&items(&host, &["-n", "kplex-a-default", "pods"]));
    assert_eq!(tenant_pods, host_pods);
    // A tenant Pod deleted (its finalizer holds it; its ReplicaSet makes
    // another), a host copy deleted behind kplex's back, a VC deleted.
    let o = kplex_e2e::kubectl(&[
        "--kubeconfig",
        a.to_str().unwrap(),
        "delete",
        "pod",
        &tenant_pods[0],
        "--wait=false",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    k(
        &host,
        &["-n", "kplex-a-default", "delete", "pod", &tenant_pods[1]],
    );
    assert!(admin(&kplex, &["delete", "virtualcluster", "b"])
        .status
        .success());
    // With no syncer running, the server itself cleared b's host namespace
    // before b's storage went.
    if let Some(ns) = found(&host, &["namespace", "kplex-b-default"]) {
        assert!(
            ns["metadata"]["deletionTimestamp"].is_string(),
            "still there: {ns}"
        );
    }
    eventually("the ReplicaSet's replacement", || {
        let live: Vec<Value> = items(&a, &["pods"])
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        (live.len() == 3).then_some(())
    });

    let _kplex = kplex.restart(&[]);
    eventually("both sides to agree again", || {
        let tenant = items(&a, &["pods"]);
        let host_pods = items(&host, &["-n", "kplex-a-default", "pods"]);
        let namespaces = names(&items(&host, &["namespaces"]));
        let agreed = tenant.len() == 3
            && tenant
                .iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_null())
            && names(&tenant) == names(&host_pods)
            && !namespaces.contains(&"kplex-b-default".to_owned());
        agreed.then_some(())
    });
    // The deleted Pod is gone on both sides; the copy deleted on the host
    // is back.
    let host_pods = names(&items(&host, &["-n", "kplex-a-default", "pods"]));
    assert!(!host_pods.contains(&tenant_pods[0]));
    assert!(host_pods.contains(&tenant_pods[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_route_from_the_host_address_the_tenant_sees() {
    let s = setup();
    // Node ports are closed by default; this VC's admin opened one.
    let tenant = s.tenant_with(
        "team-a",
        r#"{isolation: {quota: {hard: {services.nodeports: "1"}}}}"#,
    );
    let host = s.host.clone();
    let ns = "kplex-team-a-default";
    k(
        &tenant,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=2",
        ],
    );
    k(
        &tenant,
        &[
            "expose",
            "deployment",
            "web",
            "--port=80",
            "--target-port=8080",
        ],
    );
    k(
        &tenant,
        &["create", "service", "nodeport", "np", "--tcp=80:8080"],
    );
    let selectorless = s.dir.path().join("ext.yaml");
    std::fs::write(
        &selectorless,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  ports: [{port: 5432}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: ext}\nsubsets:\n- addresses: [{ip: 192.0.2.10}]\n  ports: [{port: 5432}]\n",
    )
    .unwrap();
    k(&tenant, &["create", "-f", selectorless.to_str().unwrap()]);

    // The copy selects the VC's Pods only; its address is the tenant's.
    let copy = eventually("the Service's copy", || {
        found(&host, &["-n", ns, "service", "web"])
    });
    let vc_uid = s.admin_get(&["virtualcluster", "team-a"])["metadata"]["uid"].clone();
    assert_eq!(copy["spec"]["selector"]["app"], "web");
    assert_eq!(copy["spec"]["selector"]["tenancy.kplex.dev/vc-uid"], vc_uid);
    assert_eq!(copy["spec"]["ports"][0]["targetPort"], 8080);
    let host_ip = copy["spec"]["clusterIP"].as_str().unwrap().to_owned();
    eventually("the tenant to see the host's ClusterIP", || {
        let service = get(&tenant, &["service", "web"]);
        (service["spec"]["clusterIP"] == host_ip.as_str()).then_some(())
    });
    let np = eventually("the NodePort's copy", || {
        found(&host, &["-n", ns, "service", "np"])
    });
    let node_port = np["spec"]["ports"][0]["nodePort"].clone();
    eventually("the tenant to see the host's node port", || {
        let service = get(&tenant, &["service", "np"]);
        (service["spec"]["ports"][0]["nodePort"] == node_port
            && service["spec"]["clusterIP"] == np["spec"]["clusterIP"])
            .then_some(())
    });
    // A selector-less Service brings its Endpoints.
    let endpoints = eventually("the Endpoints' copy", || {
        found(&host, &["-n", ns, "endpoints", "ext"])
    });
    assert_eq!(endpoints["subsets"][0]["addresses"][0]["ip"], "192.0.2.10");
    assert_eq!(
        endpoints["metadata"]["labels"]["tenancy.kplex.dev/vc"],
        "team-a"
    );

    // Only the syncer may set a Service's addresses.
    let refused = k_fails(
        &tenant,
        &[
            "replace",
            "--raw",
            "/clusters/team-a/api/v1/namespaces/default/services/web/clusterip",
            "-f",
            selectorless.to_str().unwrap(),
        ],
    );
    assert!(refused.contains("only kplex's syncer"), "{refused}");

    // Drift on the host is put back; a tenant delete reaches the host.
    k(
        &host,
        &[
            "-n",
            ns,
            "patch",
            "service",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"app":"other"}}}"#,
        ],
    );
    eventually("the selector to be put back", || {
        let copy = get(&host, &["-n", ns, "service", "web"]);
        (copy["spec"]["selector"]["app"] == "web").then_some(())
    });
    k(&tenant, &["delete", "service", "web", "ext", "--wait=true"]);
    let left = names(&items(&host, &["-n", ns, "services"]));
    assert_eq!(left, ["np"]);
    // The selector-less Service's Endpoints went with it; the host's own
    // Endpoints of a Service with a selector (np's) are the host's.
    let endpoints = names(&items(&host, &["-n", ns, "endpoints"]));
    assert!(!endpoints.contains(&"ext".to_owned()), "{endpoints:?}");
    assert!(endpoints.contains(&"np".to_owned()), "{endpoints:?}");
}

/// A kubeconfig that presents `token` to `server` (an in-cluster client's
/// view: the bare URL, kplex's CA, a bearer token).
fn token_kubeconfig(dir: &Path, name: &str, server: &str, ca: &Path, token: &str) -> PathBuf {
    let path = dir.join(format!("{name}.token.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority: '{}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user: {{token: '{token}'}}\n",
            ca.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_their_own_vc_with_a_token_the_syncer_keeps() {
    let s = setup();
    let tenant = s.tenant("team-a");
    let ca = s.kplex.data_dir.join("pki").join("ca.crt");
    let server = s.kplex.server();

    // kubectl create token: a token of the VC, for the bare URL.
    let token = k(&tenant, &["create", "token", "default"])
        .trim()
        .to_owned();
    let as_sa = token_kubeconfig(s.dir.path(), "sa", &server, &ca, &token);
    let who = k(&as_sa, &["auth", "whoami"]);
    assert!(
        who.contains("system:serviceaccount:default:default"),
        "{who}"
    );
    assert!(who.contains("system:serviceaccounts:default"), "{who}");
    // A ServiceAccount may do what its VC's RBAC gives it: nothing, then
    // what a binding gives.
    assert!(k_fails(&as_sa, &["get", "namespaces"]).contains(
        "User \"system:serviceaccount:default:default\" cannot list resource \"namespaces\""
    ));
    k(
        &tenant,
        &[
            "create",
            "clusterrolebinding",
            "default-views",
            "--clusterrole=view",
            "--serviceaccount=default:default",
        ],
    );
    eventually("the binding to apply", || {
        let mut all = vec!["--kubeconfig", as_sa.to_str().unwrap()];
        all.extend_from_slice(&["get", "namespaces"]);
        kplex_e2e::kubectl(&all).status.success().then_some(())
    });
    let namespaces = names(&items(&as_sa, &["namespaces"]));
    assert_eq!(namespaces, names(&items(&tenant, &["namespaces"])));
    // Another VC's URL refuses it; so does the admin API.
    let elsewhere = token_kubeconfig(
        s.dir.path(),
        "elsewhere",
        &format!("{server}/clusters/host"),
        &ca,
        &token,
    );
    assert!(k_fails(&elsewhere, &["get", "pods"]).contains("Forbidden"));
    let groups = k(&as_sa, &["get", "--raw", "/apis"]);
    assert!(!groups.contains("tenancy.kplex.dev"));
    // Bad requests are refused as kube-apiserver refuses them.
    assert!(
        k_fails(&tenant, &["create", "token", "default", "--duration=1m"]).contains("10 minutes")
    );
    assert!(k_fails(&tenant, &["create", "token", "nobody"]).contains("not found"));
    // A forged token is nobody.
    let mut forged = token.clone();
    forged.pop();
    let forged = token_kubeconfig(s.dir.path(), "forged", &server, &ca, &forged);
    assert!(k_fails(&forged, &["get", "pods"]).contains("Unauthorized"));

    // A Pod's host copy carries a token bound to it, kplex's address and CA.
    k(&tenant, &["run", "web", "--image=nginx"]);
    let pod_uid = get(&tenant, &["pod", "web"])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let ns = "kplex-team-a-default";
    let copy = eventually("the Pod on the host", || {
        items(&s.host, &["-n", ns, "pods"]).into_iter().next()
    });
    let container = &copy["spec"]["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        env.contains(&("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&("KUBERNETES_SERVICE_PORT".into(), s.kplex.port.to_string())),
        "{env:?}"
    );
    let mounts = container["volumeMounts"].to_string();
    assert!(
        mounts.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "{mounts}"
    );
    assert!(copy["spec"]["hostAliases"]
        .to_string()
        .contains("kubernetes.default.svc"));
    let secret = get(
        &s.host,
        &["-n", ns, "secret", &format!("kplex-token-{pod_uid}")],
    );
    let decode = |field: &str| {
        let o = std::process::Command::new("base64")
            .arg("-d")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        o.stdin
            .as_ref()
            .unwrap()
            .write_all(secret["data"][field].as_str().unwrap().as_bytes())
            .unwrap();
        String::from_utf8(o.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(decode("namespace"), "default");
    assert_eq!(decode("ca.crt"), std::fs::read_to_string(&ca).unwrap());
    let pod_token = decode("token");
    // What the Pod's in-cluster client does: its own VC answers.
    let in_pod = token_kubeconfig(s.dir.path(), "in-pod", &server, &ca, &pod_token);
    assert_eq!(names(&items(&in_pod, &["pods"])), ["web"]);

    // Once the Pod is gone, so are its token and the Secret holding it.
    k(&tenant, &["delete", "pod", "web", "--wait=true"]);
    assert!(k_fails(&in_pod, &["get", "pods"]).contains("Unauthorized"));
    eventually("the token Secret to go", || {
        items(
            &s.host,
            &["-n", ns, "secrets", "-l", "tenancy.kplex.dev/vc"],
        )
        .is_empty()
        .then_some(())
    });
    // And a ServiceAccount's token dies with the ServiceAccount.
    k(&tenant, &["create", "serviceaccount", "robot"]);
    let robot = k(&tenant, &["create", "token", "robot"]).trim().to_owned();
    let as_robot = token_kubeconfig(s.dir.path(), "robot", &server, &ca, &robot);
    assert!(k(&as_robot, &["auth", "whoami"]).contains("system:serviceaccount:default:robot"));
    k(&tenant, &["delete", "serviceaccount", "robot"]);
    assert!(k_fails(&as_robot, &["get", "pods"]).contains("Unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_follows_its_first_pod_to_the_host_and_outlives_it() {
    let s = setup();
    let tenant = s.tenant("team-a");
    let ns = "kplex-team-a-default";
    let manifest = s.dir.path().join("claim.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n  storageClassName: fast\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: unused}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    )
    .unwrap();
    k(&tenant, &["create", "-f", manifest.to_str().unwrap()]);
    k(
        &tenant,
        &[
            "run",
            "db",
            "--image=postgres",
            "--overrides",
            r#"{"spec":{"volumes":[{"name":"d","persistentVolumeClaim":{"claimName":"data"}}],"containers":[{"name":"db","image":"postgres","volumeMounts":[{"name":"d","mountPath":"/data"}]}]}}"#,
        ],
    );
    let copy = eventually("the claim on the host", || {
        found(&s.host, &["-n", ns, "pvc", "data"])
    });
    assert_eq!(copy["spec"]["storageClassName"], "fast");
    assert_eq!(copy["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(copy["metadata"]["labels"]["tenancy.kplex.dev/vc"], "team-a");
    // Only claims a Pod uses go to the host.
    let on_host = names(&items(&s.host, &["-n", ns, "pvc"]));
    assert_eq!(on_host, ["data"]);
    // The host binds it; the tenant sees it bound.
    k(
        &s.host,
        &[
            "-n",
            ns,
            "patch",
            "pvc",
            "data",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{"storage":"1Gi"}}}"#,
        ],
    );
    eventually("the tenant's claim to be Bound", || {
        let claim = get(&tenant, &["pvc", "data"]);
        (claim["status"]["phase"] == "Bound").then_some(())
    });
    // The Pod goes; the data stays.
    k(&tenant, &["delete", "pod", "db", "--wait=true"]);
    assert_eq!(names(&items(&s.host, &["-n", ns, "pvc"])), ["data"]);
    // The claim goes: so does its copy, then the tenant's claim.
    k(&tenant, &["delete", "pvc", "data", "--wait=true"]);
    assert!(items(&s.host, &["-n", ns, "pvc"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_host_says_about_a_pod_the_tenant_reads_in_its_events() {
    let s = setup();
    let tenant = s.tenant("team-a");
    let ns = "kplex-team-a-default";
    k(&tenant, &["run", "web", "--image=nginx"]);
    let copy = eventually("the Pod on the host", || {
        items(&s.host, &["-n", ns, "pods"]).into_iter().next()
    });
    // The host's kubelet reports on its Pod.
    let event = s.dir.path().join("event.json");
    std::fs::write(
        &event,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.pulling", "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": "web", "namespace": ns,
                "uid": copy["metadata"]["uid"], "fieldPath": "spec.containers{web}"},
            "reason": "Pulling", "message": "Pulling image \"nginx\"", "type": "Normal", "count": 1,
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
            "source": {"component": "kubelet", "host": "node-1"},
        })
        .to_string(),
    )
    .unwrap();
    k(&s.host, &["create", "-f", event.to_str().unwrap()]);
    let pod_uid = get(&tenant, &["pod", "web"])["metadata"]["uid"].clone();
    let seen = eventually("the tenant's Event", || {
        items(&tenant, &["events"])
            .into_iter()
            .find(|e| e["reason"] == "Pulling")
    });
    assert_eq!(seen["involvedObject"]["name"], "web");
    assert_eq!(seen["involvedObject"]["namespace"], "default");
    assert_eq!(seen["involvedObject"]["uid"], pod_uid);
    assert_eq!(seen["source"]["component"], "kubelet");
    let described = k(&tenant, &["describe", "pod", "web"]);
    assert!(described.contains("Pulling image \"nginx\""), "{described}");
    // A later count follows.
    k(
        &s.host,
        &[
            "-n",
            ns,
            "patch",
            "event",
            "web.pulling",
            "--type=merge",
            "-p",
            r#"{"count":3}"#,
        ],
    );
    eventually("the count to follow", || {
        let e = get(&tenant, &["event", "web.pulling"]);
        (e["count"] == 3).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingresses_and_budgets_go_to_the_host_with_their_secrets() {
    let s = setup();
    let tenant = s.tenant("team-a");
    let ns = "kplex-team-a-default";
    let manifest = s.dir.path().join("edge.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: web-tls}\ntype: kubernetes.io/tls\ndata: {tls.crt: Y2VydA==, tls.key: a2V5}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, annotations: {nginx.ingress.kubernetes.io/server-snippet: 'return 200;', team: shop}}\nspec:\n  ingressClassName: nginx\n  tls: [{hosts: [shop.example], secretName: web-tls}]\n  rules:\n  - host: shop.example\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n---\napiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec:\n  minAvailable: 1\n  selector: {matchLabels: {app: web}}\n",
    )
    .unwrap();
    k(&tenant, &["create", "-f", manifest.to_str().unwrap()]);
    let ingress = eventually("the Ingress on the host", || {
        found(&s.host, &["-n", ns, "ingress", "web"])
    });
    let backend = &ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"];
    assert_eq!(backend["name"], "web");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    // Configuration snippets never reach a shared ingress controller.
    let annotations = &ingress["metadata"]["annotations"];
    assert!(annotations
        .get("nginx.ingress.kubernetes.io/server-snippet")
        .is_none());
    assert_eq!(annotations["team"], "shop");
    // Its TLS Secret went with it.
    let secret = eventually("the TLS Secret on the host", || {
        found(&s.host, &["-n", ns, "secret", "web-tls"])
    });
    assert_eq!(secret["data"]["tls.key"], "a2V5");
    let budget = eventually("the budget on the host", || {
        found(&s.host, &["-n", ns, "pdb", "web"])
    });
    let vc_uid = s.admin_get(&["virtualcluster", "team-a"])["metadata"]["uid"].clone();
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"]["tenancy.kplex.dev/vc-uid"],
        vc_uid
    );
    assert_eq!(budget["spec"]["minAvailable"], 1);
    // The host's load balancer and budget status come back.
    k(
        &s.host,
        &[
            "-n",
            ns,
            "patch",
            "ingress",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.7"}]}}}"#,
        ],
    );
    k(
        &s.host,
        &[
            "-n",
            ns,
            "patch",
            "pdb",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"currentHealthy":2,"desiredHealthy":1,"disruptionsAllowed":1,"expectedPods":2}}"#,
        ],
    );
    eventually("the tenant to see the host's status", || {
        let ingress = get(&tenant, &["ingress", "web"]);
        let budget = get(&tenant, &["pdb", "web"]);
        (ingress["status"]["loadBalancer"]["ingress"][0]["ip"] == "203.0.113.7"
            && budget["status"]["disruptionsAllowed"] == 1)
            .then_some(())
    });
    // Drift is put back; deletes reach the host.
    k(
        &s.host,
        &[
            "-n",
            ns,
            "patch",
            "pdb",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"minAvailable":0}}"#,
        ],
    );
    eventually("the budget to be put back", || {
        (get(&s.host, &["-n", ns, "pdb", "web"])["spec"]["minAvailable"] == 1).then_some(())
    });
    k(&tenant, &["delete", "ingress", "web", "--wait=true"]);
    k(&tenant, &["delete", "pdb", "web", "--wait=true"]);
    assert!(items(&s.host, &["-n", ns, "ingresses"]).is_empty());
    assert!(items(&s.host, &["-n", ns, "pdb"]).is_empty());
    eventually("the TLS Secret to go with its Ingress", || {
        items(
            &s.host,
            &["-n", ns, "secrets", "-l", "tenancy.kplex.dev/vc"],
        )
        .is_empty()
        .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_is_reported_on_its_record_and_on_the_pods_that_wait() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let tenant = tenant_kubeconfig(&kplex, dir.path(), "team-a", "admin");
    // A host whose API server is not there (a port nothing listens on).
    let port = kplex_e2e::free_port();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\nusers:\n- name: u\n  user: {{token: t}}\n"
    );
    let file = dir.path().join("gone.kubeconfig");
    std::fs::write(&file, kubeconfig).unwrap();
    let o = std::process::Command::new(kplex_bin())
        .args(["host", "add", "gone", "--default", "--kubeconfig"])
        .arg(&file)
        .arg("--admin-kubeconfig")
        .arg(kplex.kubeconfig())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let host = eventually("the host's record to say it is unreachable", || {
        let o = admin(&kplex, &["get", "hostcluster", "gone", "-o", "json"]);
        let host: Value = serde_json::from_slice(&o.stdout).ok()?;
        (host["status"]["reachable"] == false
            && host["status"]["lastError"]
                .as_str()
                .is_some_and(|e| !e.is_empty()))
        .then_some(host)
    });
    assert_eq!(host["status"]["conditions"][0]["type"], "Reachable");
    assert_eq!(host["status"]["conditions"][0]["status"], "False");
    // A Pod meanwhile waits, and says for what; nothing is lost.
    k(&tenant, &["run", "web", "--image=nginx"]);
    let message = eventually("the Pod to say its host is unreachable", || {
        let pod = get(&tenant, &["pod", "web"]);
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .and_then(|c| c["message"].as_str().map(str::to_owned))
    });
    assert!(message.contains("\"gone\" is not reachable"), "{message}");
    assert_eq!(get(&tenant, &["pod", "web"])["status"]["phase"], "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_waits_for_a_missing_secret_and_gets_it_once_it_exists() {
    let s = setup();
    let tenant = s.tenant("team-a");
    let ns = "kplex-team-a-default";
    // The Secret does not exist yet: the Pod still goes to the host (its
    // kubelet holds it in ContainerCreating, as any cluster does).
    k(
        &tenant,
        &[
            "run",
            "app",
            "--image=nginx",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"app","image":"nginx","env":[{"name":"PASSWORD","valueFrom":{"secretKeyRef":{"name":"late","key":"password"}}}]}]}}"#,
        ],
    );
    eventually("the Pod on the host", || {
        (items(&s.host, &["-n", ns, "pods"]).len() == 1).then_some(())
    });
    assert!(items(
        &s.host,
        &[
            "-n",
            ns,
            "secrets",
            "-l",
            "tenancy.kplex.dev/vc",
            "--field-selector=metadata.name=late"
        ]
    )
    .is_empty());
    assert_eq!(get(&tenant, &["pod", "app"])["status"]["phase"], "Pending");
    // Once the tenant makes it, the host has it too.
    k(
        &tenant,
        &[
            "create",
            "secret",
            "generic",
            "late",
            "--from-literal=password=s3cret",
        ],
    );
    let secret = eventually("the Secret on the host", || {
        found(&s.host, &["-n", ns, "secret", "late"])
    });
    assert_eq!(secret["data"]["password"], "czNjcmV0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_vc_does_not_hold_back_another_vcs_pod() {
    use futures::{StreamExt, TryStreamExt};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};

    let Setup { dir, kplex, host } = setup();
    for vc in ["noisy", "quiet"] {
        create_vc(&kplex, dir.path(), vc);
    }
    let noisy = tenant_kubeconfig(&kplex, dir.path(), "noisy", "admin");
    let quiet = tenant_kubeconfig(&kplex, dir.path(), "quiet", "admin");
    // With the syncer away, the noisy VC piles up 300 Pods, then the quiet
    // one makes one.
    let kplex = kplex.restart(&["--syncer=false"]);
    let pod = |name: String| -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}))
        .unwrap()
    };
    let noisy_pods: Api<Pod> = Api::default_namespaced(client_of(&noisy).await);
    futures::stream::iter(0..300)
        .map(|i| {
            let api = noisy_pods.clone();
            let p = pod(format!("flood-{i}"));
            async move { api.create(&PostParams::default(), &p).await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let quiet_pods: Api<Pod> = Api::default_namespaced(client_of(&quiet).await);
    quiet_pods
        .create(&PostParams::default(), &pod("one".into()))
        .await
        .unwrap();

    // The syncer comes back to both at once; the host's Pods are counted
    // as they arrive.
    let host_pods: Api<Pod> = Api::all(client_of(&host).await);
    let rv = host_pods
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let _kplex = kplex.restart(&[]);
    // (From before the restart: the server keeps its history.)
    let host_pods: Api<Pod> = Api::all(client_of(&host).await);
    let mut events = host_pods
        .watch(
            &WatchParams::default()
                .labels("tenancy.kplex.dev/vc-uid")
                .timeout(120),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    let mut noisy_before = 0;
    loop {
        let Some(event) = events.try_next().await.unwrap() else {
            panic!("the watch ended before the quiet VC's Pod arrived");
        };
        let WatchEvent::Added(p) = event else {
            continue;
        };
        match p.metadata.namespace.as_deref() {
            Some("kplex-quiet-default") => break,
            Some("kplex-noisy-default") => noisy_before += 1,
            _ => {}
        }
    }
    eprintln!("the quiet VC's Pod arrived after {noisy_before} of the noisy VC's 300");
    // Round-robin across VCs: the quiet VC's one Pod waits a few turns, not
    // behind the whole flood.
    assert!(
        noisy_before < 100,
        "the quiet VC's Pod came after {noisy_before} of the noisy VC's"
    );
}
