//! A VC's isolation policy (`spec.isolation`), through kubectl: every
//! escape a tenant tries is refused at `kubectl apply` with the rule
//! named and nothing stored (the attack list below: pod security, network
//! attachments, huge pages, quota evasion); a compliant Pod's host copy
//! runs hardened in the VC's pool with its granted networks; the VC's
//! quota counts across all its namespaces and through updates; the host
//! namespaces are walled and carry the quota; the admin changes the
//! policy at run time, new Pods meet the new policy, Pods already placed
//! keep running and are reported, and a Pod that got past admission is
//! not placed and says why.
//!
//! The host is a VC of the same kplex, as in the syncer's tests.

use std::path::{Path, PathBuf};

use kplex_e2e::{
    admin, create_vc_with, eventually, get, items, k, k_fails, stderr, tenant_kubeconfig, Hosted,
    Kplex,
};
use serde_json::{json, Value};

/// Writes `object` as a JSON manifest in `dir`.
fn manifest(dir: &Path, name: &str, object: &Value) -> PathBuf {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_vec_pretty(object).unwrap()).unwrap();
    file
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn annotated_pod(name: &str, annotations: Value, spec: Value) -> Value {
    let mut p = pod(name, spec);
    p["metadata"]["annotations"] = annotations;
    p
}

fn c(security: Value) -> Value {
    json!([{"name": "c", "image": "nginx", "securityContext": security}])
}

/// The policy of the VC the attacks run in: the defaults, plus one granted
/// network (so there is something to misuse) and one huge page size.
const ATTACKED: &str = r#"{isolation: {networks: [{alias: data, namespace: telco, name: sriov-a}], hugePageSizes: [2Mi]}}"#;

/// The attack list: what a tenant tries, and the rule the refusal names.
fn attacks() -> Vec<(&'static str, Value, &'static str)> {
    let plain = || json!([{"name": "c", "image": "nginx"}]);
    vec![
        (
            "host-network",
            pod("a1", json!({"hostNetwork": true, "containers": plain()})),
            "host namespaces (hostNetwork=true)",
        ),
        (
            "host-pid",
            pod("a2", json!({"hostPID": true, "containers": plain()})),
            "host namespaces (hostPID=true)",
        ),
        (
            "host-ipc",
            pod("a3", json!({"hostIPC": true, "containers": plain()})),
            "host namespaces (hostIPC=true)",
        ),
        (
            "host-users",
            pod("a4", json!({"hostUsers": true, "containers": plain()})),
            "hostUsers (pod must not set hostUsers=true",
        ),
        (
            "privileged",
            pod("a5", json!({"containers": c(json!({"privileged": true}))})),
            "privileged (container \"c\" must not set securityContext.privileged=true)",
        ),
        (
            "privileged-init",
            pod(
                "a6",
                json!({"initContainers": [{"name": "init", "image": "busybox", "securityContext": {"privileged": true}}], "containers": plain()}),
            ),
            "privileged (container \"init\"",
        ),
        (
            "cap-sys-admin",
            pod(
                "a7",
                json!({"containers": c(json!({"capabilities": {"add": ["SYS_ADMIN"]}}))}),
            ),
            "non-default capabilities (container \"c\" must not include \"SYS_ADMIN\"",
        ),
        (
            "cap-net-raw",
            pod(
                "a8",
                json!({"containers": c(json!({"capabilities": {"add": ["NET_RAW"]}}))}),
            ),
            "non-default capabilities",
        ),
        (
            "cap-chown",
            pod(
                "a9",
                json!({"containers": c(json!({"capabilities": {"add": ["CHOWN"]}}))}),
            ),
            "unrestricted capabilities",
        ),
        (
            "cap-all",
            pod(
                "a10",
                json!({"containers": c(json!({"capabilities": {"add": ["ALL"]}}))}),
            ),
            "non-default capabilities",
        ),
        (
            "host-path-root",
            pod(
                "a11",
                json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": plain()}),
            ),
            "hostPath volumes (volume \"root\")",
        ),
        (
            "host-path-runtime-socket",
            pod(
                "a12",
                json!({"volumes": [{"name": "sock", "hostPath": {"path": "/run/containerd/containerd.sock"}}], "containers": plain()}),
            ),
            "hostPath volumes",
        ),
        (
            "host-port",
            pod(
                "a13",
                json!({"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
            ),
            "hostPort (container \"c\" uses hostPort 80)",
        ),
        (
            "apparmor-unconfined",
            pod(
                "a14",
                json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}, "containers": plain()}),
            ),
            "forbidden AppArmor profile",
        ),
        (
            "apparmor-annotation",
            annotated_pod(
                "a15",
                json!({"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
                json!({"containers": plain()}),
            ),
            "forbidden AppArmor profile",
        ),
        (
            "selinux-type",
            pod(
                "a16",
                json!({"containers": c(json!({"seLinuxOptions": {"type": "spc_t"}}))}),
            ),
            "seLinuxOptions",
        ),
        (
            "selinux-user",
            pod(
                "a17",
                json!({"securityContext": {"seLinuxOptions": {"user": "system_u"}}, "containers": plain()}),
            ),
            "seLinuxOptions",
        ),
        (
            "proc-unmasked",
            pod(
                "a18",
                json!({"containers": c(json!({"procMount": "Unmasked"}))}),
            ),
            "procMount",
        ),
        (
            "seccomp-unconfined-pod",
            pod(
                "a19",
                json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}, "containers": plain()}),
            ),
            "seccompProfile (pod must not set",
        ),
        (
            "seccomp-unconfined-container",
            pod(
                "a20",
                json!({"containers": c(json!({"seccompProfile": {"type": "Unconfined"}}))}),
            ),
            "seccompProfile (container \"c\"",
        ),
        (
            "sysctl-kernel",
            pod(
                "a21",
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}, "containers": plain()}),
            ),
            "forbidden sysctls (kernel.msgmax)",
        ),
        (
            "sysctl-net-core",
            pod(
                "a22",
                json!({"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}, "containers": plain()}),
            ),
            "forbidden sysctls",
        ),
        (
            "windows-host-process",
            pod(
                "a23",
                json!({"containers": c(json!({"windowsOptions": {"hostProcess": true}}))}),
            ),
            "hostProcess",
        ),
        (
            "nfs-volume",
            pod(
                "a24",
                json!({"volumes": [{"name": "n", "nfs": {"server": "10.0.0.1", "path": "/"}}], "containers": plain()}),
            ),
            "restricted volume types (volume \"n\" uses restricted volume type \"nfs\")",
        ),
        (
            "iscsi-volume",
            pod(
                "a25",
                json!({"volumes": [{"name": "i", "iscsi": {"targetPortal": "10.0.0.1:3260", "iqn": "iqn.2001-04.com.example:storage", "lun": 0}}], "containers": plain()}),
            ),
            "restricted volume types",
        ),
        (
            "escalation",
            pod(
                "a26",
                json!({"containers": c(json!({"allowPrivilegeEscalation": true}))}),
            ),
            "allowPrivilegeEscalation != false",
        ),
        (
            "ungranted-network",
            annotated_pod(
                "a27",
                json!({"k8s.v1.cni.cncf.io/networks": "other"}),
                json!({"containers": plain()}),
            ),
            "network \"other\" is not granted",
        ),
        (
            "host-nad-by-namespace",
            annotated_pod(
                "a28",
                json!({"k8s.v1.cni.cncf.io/networks": "telco/sriov-a"}),
                json!({"containers": plain()}),
            ),
            "without a namespace",
        ),
        (
            "another-vcs-network",
            annotated_pod(
                "a29",
                json!({"k8s.v1.cni.cncf.io/networks": "kplex-b-default/data@net1"}),
                json!({"containers": plain()}),
            ),
            "without a namespace",
        ),
        (
            "network-json-namespace",
            annotated_pod(
                "a30",
                json!({"k8s.v1.cni.cncf.io/networks": "[{\"name\": \"sriov-a\", \"namespace\": \"telco\"}]"}),
                json!({"containers": plain()}),
            ),
            "without a namespace",
        ),
        (
            "network-malformed",
            annotated_pod(
                "a31",
                json!({"k8s.v1.cni.cncf.io/networks": "[{\"name\": "}),
                json!({"containers": plain()}),
            ),
            "network attachments",
        ),
        (
            "huge-pages-size",
            pod(
                "a32",
                json!({"containers": [{"name": "c", "image": "x", "resources": {"limits": {"hugepages-1Gi": "1Gi", "memory": "1Gi"}}}]}),
            ),
            "huge pages of size 1Gi are not allowed",
        ),
        (
            "huge-pages-alone",
            pod(
                "a33",
                json!({"containers": [{"name": "c", "image": "x", "resources": {"limits": {"hugepages-2Mi": "4Mi"}}}]}),
            ),
            "HugePages require cpu or memory",
        ),
        (
            "node-port",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"}, "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}]}}),
            "exceeded quota: virtual cluster \"attacked\", requested: services.nodeports=1",
        ),
        (
            "load-balancer",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "selector": {"app": "x"}, "ports": [{"port": 80}]}}),
            "exceeded quota",
        ),
    ]
}

#[test]
fn every_escape_is_refused_at_apply_with_the_rule_named_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    // With the shared controllers: a Deployment's Pods meet the policy too.
    let kplex = Kplex::start(&dir.path().join("data"));
    create_vc_with(&kplex, dir.path(), "attacked", ATTACKED);
    let tenant = tenant_kubeconfig(&kplex, dir.path(), "attacked", "admin");
    let list = attacks();
    assert!(
        list.len() >= 30,
        "the attack list holds {} attempts",
        list.len()
    );
    let mut through = Vec::new();
    for (name, object, rule) in &list {
        let file = manifest(dir.path(), name, object);
        let mut args = vec!["--kubeconfig", tenant.to_str().unwrap(), "apply", "-f"];
        args.push(file.to_str().unwrap());
        let o = kplex_e2e::kubectl(&args);
        if o.status.success() {
            through.push(*name);
            continue;
        }
        let err = stderr(&o);
        assert!(
            err.contains(rule),
            "{name}: refused, but not naming {rule:?}: {err}"
        );
    }
    assert!(through.is_empty(), "attempts that got through: {through:?}");
    assert!(items(&tenant, &["pods"]).is_empty(), "nothing was stored");
    assert!(
        items(&tenant, &["services"])
            .iter()
            .all(|s| s["metadata"]["name"] == "kubernetes"),
        "no Service was stored"
    );
    // Pod security is refused as kube-apiserver's PodSecurity words it.
    let file = manifest(
        dir.path(),
        "both",
        &pod(
            "both",
            json!({
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": c(json!({"privileged": true}))}),
        ),
    );
    let err = k_fails(&tenant, &["create", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("pods \"both\" is forbidden: violates PodSecurity \"restricted\": privileged (container \"c\" must not set securityContext.privileged=true), hostPath volumes (volume \"root\")"),
        "{err}"
    );
    // An update cannot sneak a node port in either.
    k(
        &tenant,
        &["create", "service", "clusterip", "web", "--tcp=80:8080"],
    );
    let err = k_fails(
        &tenant,
        &[
            "patch",
            "service",
            "web",
            "-p",
            r#"{"spec":{"type":"NodePort"}}"#,
        ],
    );
    assert!(err.contains("exceeded quota"), "{err}");
    assert_eq!(
        get(&tenant, &["service", "web"])["spec"]["type"],
        "ClusterIP"
    );
    // A Deployment whose Pods would escape gets none.
    let file = manifest(
        dir.path(),
        "deploy",
        &json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "escape"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "escape"}},
            "template": {"metadata": {"labels": {"app": "escape"}},
                "spec": {"hostPID": true, "containers": [{"name": "c", "image": "nginx"}]}}}}),
    );
    k(&tenant, &["apply", "-f", file.to_str().unwrap()]);
    let failed = eventually("the ReplicaSet's FailedCreate event", || {
        items(
            &tenant,
            &["events", "--field-selector", "reason=FailedCreate"],
        )
        .into_iter()
        .next()
    });
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("violates PodSecurity \"restricted\": host namespaces (hostPID=true)"),
        "{failed}"
    );
    assert!(items(&tenant, &["pods"]).is_empty());
    // And what the default policy is for passes it as it is.
    k(&tenant, &["run", "web", "--image=nginx"]);
    k(&tenant, &["get", "pod", "web"]);
}

#[test]
fn the_vc_quota_counts_across_namespaces_and_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc_with(
        &kplex,
        dir.path(),
        "q",
        r#"{isolation: {quota: {hard: {pods: "2", requests.memory: "1Gi"}}}}"#,
    );
    let tenant = tenant_kubeconfig(&kplex, dir.path(), "q", "admin");
    let sized = |name: &str, memory: &str| {
        pod(
            name,
            json!({"containers": [{"name": "c", "image": "nginx",
            "resources": {"requests": {"memory": memory}}}]}),
        )
    };
    // A Pod that leaves a limited resource unstated is refused.
    let file = manifest(
        dir.path(),
        "bare",
        &pod(
            "bare",
            json!({"containers": [{"name": "c", "image": "nginx"}]}),
        ),
    );
    let err = k_fails(&tenant, &["create", "-f", file.to_str().unwrap()]);
    assert!(
        err.contains("failed quota: virtual cluster \"q\": must specify requests.memory for: c"),
        "{err}"
    );
    k(&tenant, &["create", "namespace", "second"]);
    k(&tenant, &["create", "namespace", "third"]);
    let one = manifest(dir.path(), "one", &sized("one", "256Mi"));
    k(&tenant, &["create", "-f", one.to_str().unwrap()]);
    let two = manifest(dir.path(), "two", &sized("two", "256Mi"));
    k(
        &tenant,
        &["create", "-n", "second", "-f", two.to_str().unwrap()],
    );
    // A third Pod, in a third namespace: the VC's quota, not a namespace's.
    let three = manifest(dir.path(), "three", &sized("three", "256Mi"));
    let err = k_fails(
        &tenant,
        &["create", "-n", "third", "-f", three.to_str().unwrap()],
    );
    assert!(
        err.contains("pods \"three\" is forbidden: exceeded quota: virtual cluster \"q\", requested: pods=1, used: pods=2, limited: pods=2"),
        "{err}"
    );
    // Memory counts the same way.
    k(&tenant, &["delete", "pod", "one"]);
    let big = manifest(dir.path(), "big", &sized("big", "900Mi"));
    let err = k_fails(
        &tenant,
        &["create", "-n", "third", "-f", big.to_str().unwrap()],
    );
    assert!(err.contains("requested: requests.memory=900Mi, used: requests.memory=256Mi, limited: requests.memory=1Gi"), "{err}");
    k(
        &tenant,
        &["create", "-n", "third", "-f", three.to_str().unwrap()],
    );
    let vc = serde_json::from_slice::<Value>(
        &admin(&kplex, &["get", "virtualcluster", "q", "-o", "json"]).stdout,
    )
    .unwrap();
    assert_eq!(vc["status"]["quota"]["hard"]["pods"], "2");
    assert_eq!(vc["status"]["quota"]["used"]["pods"], "2");
    assert_eq!(vc["status"]["quota"]["used"]["requests.memory"], "512Mi");
    // This VC's admin opened node ports by leaving them out of its quota.
    k(
        &tenant,
        &["create", "service", "nodeport", "np", "--tcp=80:8080"],
    );
}

#[test]
fn the_admin_changes_policy_at_run_time_and_bad_policies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc_with(&kplex, dir.path(), "p", "{}");
    let vc = |args: &[&str]| admin(&kplex, args);
    // The defaults are written out, and shown wide.
    let o = vc(&["get", "virtualcluster", "p", "-o", "json"]);
    let object: Value = serde_json::from_slice(&o.stdout).unwrap();
    let policy = &object["spec"]["isolation"];
    assert_eq!(policy["podSecurity"], "restricted");
    assert_eq!(policy["userNamespaces"], true);
    assert_eq!(policy["quota"]["hard"]["services.nodeports"], "0");
    let wide = String::from_utf8(vc(&["get", "vc", "p", "-o", "wide"]).stdout).unwrap();
    assert!(
        wide.contains("POD SECURITY") && wide.contains("restricted"),
        "{wide}"
    );
    // Wrong and unknown fields: 422 naming each, nothing changed.
    let o = vc(&[
        "patch",
        "vc",
        "p",
        "--type=merge",
        "-p",
        r#"{"spec":{"isolation":{"podSecurity":"lax","userNamespace":false}}}"#,
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("spec.isolation.podSecurity: Unsupported value: \"lax\""),
        "{err}"
    );
    assert!(
        err.contains("spec.isolation.userNamespace: field not declared in schema"),
        "{err}"
    );
    let o = vc(&["get", "virtualcluster", "p", "-o", "json"]);
    let unchanged: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(unchanged["spec"], object["spec"]);
    // A merge patch, a JSON patch, a server-side apply.
    let o = vc(&[
        "patch",
        "vc",
        "p",
        "--type=merge",
        "-p",
        r#"{"spec":{"isolation":{"podSecurity":"baseline"}}}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vc(&[
        "patch",
        "vc",
        "p",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/isolation/runtimeClassName","value":"kata"}]"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let applied = dir.path().join("p.yaml");
    std::fs::write(&applied, "apiVersion: tenancy.kplex.dev/v1alpha1\nkind: VirtualCluster\nmetadata:\n  name: p\nspec:\n  isolation:\n    podSecurity: privileged\n    userNamespaces: false\n").unwrap();
    let o = vc(&["apply", "--server-side", "-f", applied.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let now: Value =
        serde_json::from_slice(&vc(&["get", "virtualcluster", "p", "-o", "json"]).stdout).unwrap();
    assert_eq!(now["spec"]["isolation"]["podSecurity"], "privileged");
    assert_eq!(now["spec"]["isolation"]["userNamespaces"], false);
    assert_eq!(now["metadata"]["uid"], object["metadata"]["uid"]);
    // The tenant's next Pod meets the new policy at once.
    let tenant = tenant_kubeconfig(&kplex, dir.path(), "p", "admin");
    let file = manifest(
        dir.path(),
        "hostpid",
        &pod(
            "hostpid",
            json!({"hostPID": true, "containers": [{"name": "c", "image": "x"}]}),
        ),
    );
    k(&tenant, &["create", "-f", file.to_str().unwrap()]);
    // The status is the system components' to report, not the admin's.
    let o = vc(&[
        "patch",
        "vc",
        "p",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"conditions":[{"type":"NetworksReady","status":"True"}]}}"#,
    ]);
    assert!(!o.status.success(), "the admin wrote a VC's status");
    // A stale write loses: 409, as any stale update.
    let o = vc(&[
        "patch",
        "vc",
        "p",
        "--type=merge",
        "-p",
        r#"{"metadata":{"resourceVersion":"1"},"spec":{"isolation":{"podSecurity":"baseline"}}}"#,
    ]);
    assert!(
        stderr(&o).contains("the object has been modified"),
        "{}",
        stderr(&o)
    );
}

/// `kubectl get <what> -n <ns> -o json` on the host, if it is there.
fn host_get(host: &Path, ns: &str, what: &[&str]) -> Option<Value> {
    let mut args = vec!["--kubeconfig", host.to_str().unwrap(), "get", "-n", ns];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let o = kplex_e2e::kubectl(&args);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).unwrap())
}

/// The host copy of `name` in the VC's default namespace.
fn copy_of(host: &Path, vc: &str, name: &str) -> Value {
    let ns = format!("kplex-{vc}-default");
    eventually(&format!("the host copy of {name}"), || {
        host_get(host, &ns, &["pod", name])
    })
}

#[test]
fn a_compliant_pod_runs_hardened_in_its_pool_with_its_networks_behind_walls() {
    let s = Hosted::start();
    let tenant = s.tenant_with(
        "telco",
        r#"{isolation: {runtimeClassName: kata, nodeSelector: {pool: telco}, tolerations: [{key: dedicated, operator: Equal, value: telco, effect: NoSchedule}], networks: [{alias: data, namespace: telco-nets, name: sriov-a, resourceName: intel.com/sriov_a}, {alias: oam, namespace: telco-nets, name: oam-vrf}], defaultNetworks: [oam], quota: {hard: {pods: "5", limits.memory: "1Gi", services.nodeports: "0", requests.intel.com/sriov_a: "1"}}}}"#,
    );
    let file = manifest(
        s.dir.path(),
        "cnf",
        &json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cnf",
            "labels": {"app": "cnf", "tenancy.kplex.dev/vc": "other", "tenancy.kplex.dev/namespace": "kube-system"},
            "annotations": {"k8s.v1.cni.cncf.io/networks": "data@net1",
                "v1.multus-cni.io/default-network": "kplex-other-default/net",
                "tenancy.kplex.dev/object-uid": "forged"}},
        "spec": {"nodeSelector": {"pool": "general", "disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "other-vc", "effect": "NoSchedule"},
                            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}},
                 "namespaces": ["default", "kplex-other-default"]},
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}},
                 "namespaceSelector": {}}]}},
            "containers": [{"name": "c", "image": "nginx", "resources": {"limits": {"memory": "64Mi"}}}]}}),
    );
    k(&tenant, &["create", "-f", file.to_str().unwrap()]);
    let uid = get(&tenant, &["pod", "cnf"])["metadata"]["uid"].clone();
    let copy = copy_of(&s.host, "telco", "cnf");
    let spec = &copy["spec"];
    assert_eq!(spec["hostUsers"], false);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(spec["runtimeClassName"], "kata");
    assert_eq!(
        spec["nodeSelector"],
        json!({"pool": "telco", "disk": "ssd"}),
        "the pool wins"
    );
    // The pool's toleration, the node-condition one; not the tenant's own
    // for another pool.
    let tolerations: Vec<&Value> = spec["tolerations"].as_array().unwrap().iter().collect();
    assert!(tolerations
        .iter()
        .any(|t| t["key"] == "dedicated" && t["value"] == "telco"));
    assert!(tolerations
        .iter()
        .any(|t| t["key"] == "node.kubernetes.io/unreachable"));
    assert!(
        !tolerations.iter().any(|t| t["value"] == "other-vc"),
        "{tolerations:?}"
    );
    // Affinity terms look in the VC's own host namespaces only.
    let terms =
        &spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        terms[0]["namespaces"],
        json!(["kplex-telco-default", "kplex-telco-kplex-other-default"])
    );
    let telco_uid = s.admin_get(&["virtualcluster", "telco"])["metadata"]["uid"].clone();
    assert_eq!(
        terms[1]["namespaceSelector"],
        json!({"matchLabels": {"tenancy.kplex.dev/vc-uid": telco_uid}})
    );
    let meta = &copy["metadata"];
    let networks: Value = serde_json::from_str(
        meta["annotations"]["k8s.v1.cni.cncf.io/networks"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        networks,
        json!([{"name": "oam-vrf", "namespace": "telco-nets"},
               {"name": "sriov-a", "namespace": "telco-nets", "interface": "net1"}])
    );
    assert!(
        meta["annotations"]
            .get("v1.multus-cni.io/default-network")
            .is_none(),
        "{meta}"
    );
    // The SR-IOV device the attachment takes: asked for on the host, and
    // counted by the VC's quota (its one device is taken).
    assert_eq!(
        spec["containers"][0]["resources"]["requests"]["intel.com/sriov_a"],
        "1"
    );
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["intel.com/sriov_a"],
        "1"
    );
    let second = manifest(
        s.dir.path(),
        "cnf2",
        &json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "cnf2", "annotations": {"k8s.v1.cni.cncf.io/networks": "data"}},
        "spec": {"containers": [{"name": "c", "image": "nginx", "resources": {"limits": {"memory": "64Mi"}}}]}}),
    );
    let err = k_fails(&tenant, &["create", "-f", second.to_str().unwrap()]);
    assert!(
        err.contains("exceeded quota: virtual cluster \"telco\", requested: requests.intel.com/sriov_a=1, used: requests.intel.com/sriov_a=1, limited: requests.intel.com/sriov_a=1"),
        "{err}"
    );
    assert_eq!(
        meta["annotations"]["tenancy.kplex.dev/object-uid"], uid,
        "the real UID, not the forged one"
    );
    assert_eq!(meta["labels"]["tenancy.kplex.dev/vc"], "telco");
    assert_eq!(meta["labels"]["tenancy.kplex.dev/namespace"], "default");
    assert_eq!(meta["labels"]["app"], "cnf");
    // The host namespace: walled, the quota and the limits, PodSecurity.
    let host_ns = "kplex-telco-default";
    let on_host = |what: &[&str]| {
        let mut args = vec!["-n", host_ns];
        args.extend_from_slice(what);
        get(&s.host, &args)
    };
    // A wall taken away on the host is put back.
    k(
        &s.host,
        &["-n", host_ns, "delete", "networkpolicy", "kplex-isolation"],
    );
    let wall = eventually("the wall back", || {
        host_get(&s.host, host_ns, &["networkpolicy", "kplex-isolation"])
    });
    assert_eq!(wall["spec"]["podSelector"], json!({}));
    let vc_uid = s.admin_get(&["virtualcluster", "telco"])["metadata"]["uid"].clone();
    let from = &wall["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"]["tenancy.kplex.dev/vc-uid"],
        vc_uid
    );
    assert_eq!(
        from[1]["namespaceSelector"]["matchExpressions"][0]["operator"],
        "DoesNotExist"
    );
    let quota = on_host(&["resourcequota", "kplex-quota"]);
    assert_eq!(quota["spec"]["hard"]["pods"], "5");
    assert_eq!(quota["spec"]["hard"]["services.nodeports"], "0");
    let limits = on_host(&["limitrange", "kplex-limits"]);
    assert_eq!(limits["spec"]["limits"][0]["max"]["memory"], "1Gi");
    let ns = get(&s.host, &["namespace", host_ns]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    // The host has no such networks (no NetworkAttachmentDefinitions at
    // all): the VC's condition says which.
    let networks_ready = || {
        s.admin_get(&["virtualcluster", "telco"])["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "NetworksReady")
            .cloned()
    };
    let condition = eventually("the VC's NetworksReady condition", networks_ready);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "NetworkAttachmentMissing");
    assert!(
        condition["message"].as_str().unwrap().contains(
            "on host cluster \"default\": data (telco-nets/sriov-a), oam (telco-nets/oam-vrf)"
        ),
        "{condition}"
    );
    // An update of the spec keeps what the syncer reported.
    let o = admin(&s.kplex, &["label", "vc", "telco", "tier=gold"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        networks_ready().unwrap()["reason"],
        "NetworkAttachmentMissing"
    );
    // The default policy, as it is: an ordinary root image runs, hardened.
    let plain = s.tenant("plain");
    k(&plain, &["create", "deployment", "web", "--image=nginx"]);
    let pods = eventually("the Deployment's Pod", || {
        let pods = items(&plain, &["pods", "-l", "app=web"]);
        (!pods.is_empty()).then_some(pods)
    });
    let name = pods[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let copy = copy_of(&s.host, "plain", &name);
    assert_eq!(copy["spec"]["hostUsers"], false);
    assert!(copy["spec"].get("runtimeClassName").is_none());
}

#[test]
fn a_pod_past_admission_is_not_placed_and_placed_ones_are_reported_after_a_change() {
    let s = Hosted::start();
    // A VC that may run host-PID Pods, and one placed on a host that is
    // not registered yet (its Pods wait).
    let free = s.tenant_with(
        "free",
        "{isolation: {podSecurity: privileged, userNamespaces: false}}",
    );
    let waiting = s.tenant_with(
        "waiting",
        "{hostCluster: later, isolation: {podSecurity: privileged, userNamespaces: false}}",
    );
    let hostpid = |name: &str| {
        pod(
            name,
            json!({"hostPID": true, "containers": [{"name": "c", "image": "x"}]}),
        )
    };
    let early = manifest(s.dir.path(), "early", &hostpid("early"));
    k(&free, &["create", "-f", early.to_str().unwrap()]);
    let copy = copy_of(&s.host, "free", "early");
    assert_eq!(copy["spec"]["hostPID"], true);
    let ns = get(&s.host, &["namespace", "kplex-free-default"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let sneaky = manifest(s.dir.path(), "sneaky", &hostpid("sneaky"));
    k(&waiting, &["create", "-f", sneaky.to_str().unwrap()]);

    // The admin tightens both.
    let restrict = r#"{"spec":{"isolation":{"podSecurity":"restricted","userNamespaces":true}}}"#;
    let o = admin(
        &s.kplex,
        &["patch", "vc", "free", "--type=merge", "-p", restrict],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = admin(
        &s.kplex,
        &[
            "patch",
            "vc",
            "waiting",
            "--type=merge",
            "-p",
            r#"{"spec":{"hostCluster":null,"isolation":{"podSecurity":"restricted","userNamespaces":true}}}"#,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // New Pods meet the new policy at once.
    let late = manifest(s.dir.path(), "late", &hostpid("late"));
    let err = k_fails(&free, &["create", "-f", late.to_str().unwrap()]);
    assert!(err.contains("host namespaces (hostPID=true)"), "{err}");
    // The Pod already placed keeps running, and is reported.
    let event = eventually("the placed Pod's PolicyViolation event", || {
        items(
            &free,
            &["events", "--field-selector", "involvedObject.name=early"],
        )
        .into_iter()
        .find(|e| e["reason"] == "PolicyViolation")
    });
    assert!(
        event["message"].as_str().unwrap().contains("keeps running"),
        "{event}"
    );
    assert_eq!(event["type"], "Warning");
    copy_of(&s.host, "free", "early");
    // The Pod that got in under the old policy is not placed, and says why.
    let condition = eventually("the refused Pod's condition", || {
        get(&waiting, &["pod", "sneaky"])["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["reason"] == "PolicyViolation")
            .cloned()
    });
    assert_eq!(condition["status"], "False");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("host namespaces (hostPID=true)"),
        "{condition}"
    );
    eventually("the refused Pod's event", || {
        items(
            &waiting,
            &["events", "--field-selector", "involvedObject.name=sneaky"],
        )
        .into_iter()
        .find(|e| e["reason"] == "PolicyViolation")
    });
    assert!(
        host_get(&s.host, "kplex-waiting-default", &["pod", "sneaky"]).is_none(),
        "the refused Pod reached the host"
    );
    // The host namespace follows the VC's level.
    eventually("the host namespace's PodSecurity level", || {
        let ns = get(&s.host, &["namespace", "kplex-free-default"]);
        (ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline").then_some(())
    });
    // The refused Pod can still be deleted (no finalizer left behind).
    k(&waiting, &["delete", "pod", "sneaky", "--wait=true"]);
}

#[test]
fn tenant_network_policies_reach_the_host_confined_to_their_vc() {
    let s = Hosted::start();
    let tenant = s.tenant("np");
    let vc_uid = s.admin_get(&["virtualcluster", "np"])["metadata"]["uid"].clone();
    k(&tenant, &["create", "namespace", "shop"]);
    k(&tenant, &["label", "namespace", "shop", "team=web"]);
    let file = manifest(
        s.dir.path(),
        "allow",
        &json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "web"}}, "podSelector": {"matchLabels": {"role": "fe"}}},
                {"namespaceSelector": {}},
                {"podSelector": {}},
                {"ipBlock": {"cidr": "10.0.0.0/8"}},
            ]}],
            "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "default"]}]}}]}],
        }}),
    );
    k(&tenant, &["apply", "-f", file.to_str().unwrap()]);
    let host_ns = "kplex-np-shop";
    let on_host = |what: &[&str]| host_get(&s.host, host_ns, what);
    let copy = eventually("the NetworkPolicy's copy", || {
        on_host(&["networkpolicy", "allow"])
    });
    let from = &copy["spec"]["ingress"][0]["from"];
    // A selector of the tenant's namespaces selects them only, by their
    // labels as copied onto their host namespaces.
    assert_eq!(
        from[0]["namespaceSelector"]["matchLabels"],
        json!({"ns.tenancy.kplex.dev/team": "web", "tenancy.kplex.dev/vc-uid": vc_uid})
    );
    assert_eq!(
        from[0]["podSelector"],
        json!({"matchLabels": {"role": "fe"}})
    );
    // "Every namespace" is every namespace of the VC.
    assert_eq!(
        from[1]["namespaceSelector"],
        json!({"matchLabels": {"tenancy.kplex.dev/vc-uid": vc_uid}})
    );
    assert_eq!(from[2], json!({"podSelector": {}}));
    assert_eq!(from[3]["ipBlock"]["cidr"], "10.0.0.0/8");
    let egress = &copy["spec"]["egress"][0]["to"][0]["namespaceSelector"];
    assert_eq!(
        egress["matchExpressions"][0]["key"],
        "kubernetes.io.ns.tenancy.kplex.dev/metadata.name"
    );
    assert_eq!(egress["matchLabels"]["tenancy.kplex.dev/vc-uid"], vc_uid);
    assert_eq!(
        copy["spec"]["podSelector"],
        json!({"matchLabels": {"app": "web"}})
    );
    // The host namespace carries the tenant namespace's labels under
    // kplex's prefix, and follows them.
    let labels = |want: &str| {
        eventually(&format!("the host namespace's labels to {want}"), || {
            let o = kplex_e2e::kubectl(&[
                "--kubeconfig",
                s.host.to_str().unwrap(),
                "get",
                "namespace",
                host_ns,
                "-o",
                "json",
            ]);
            let ns: Value = serde_json::from_slice(&o.stdout).ok()?;
            let team = ns["metadata"]["labels"]["ns.tenancy.kplex.dev/team"]
                .as_str()
                .unwrap_or("<none>")
                .to_owned();
            (team == want).then_some(ns)
        })
    };
    let ns = labels("web");
    assert_eq!(
        ns["metadata"]["labels"]["kubernetes.io.ns.tenancy.kplex.dev/metadata.name"],
        "shop"
    );
    assert_eq!(ns["metadata"]["labels"]["tenancy.kplex.dev/vc-uid"], vc_uid);
    k(
        &tenant,
        &["label", "namespace", "shop", "team=api", "--overwrite"],
    );
    labels("api");
    k(&tenant, &["label", "namespace", "shop", "team-"]);
    labels("<none>");
    // A tenant's label cannot pose as kplex's.
    k(
        &tenant,
        &["label", "namespace", "shop", "tenancy.kplex.dev/vc=other"],
    );
    let ns = eventually("the forged label, copied under kplex's prefix only", || {
        let ns = on_host_ns(&s.host, host_ns);
        (ns["metadata"]["labels"]["tenancy.kplex.dev.ns.tenancy.kplex.dev/vc"] == "other")
            .then_some(ns)
    });
    assert_eq!(ns["metadata"]["labels"]["tenancy.kplex.dev/vc"], "np");
    assert_eq!(ns["metadata"]["labels"]["tenancy.kplex.dev/vc-uid"], vc_uid);
    // Drift on the host is put back.
    let o = kplex_e2e::kubectl(&[
        "--kubeconfig",
        s.host.to_str().unwrap(),
        "patch",
        "networkpolicy",
        "allow",
        "-n",
        host_ns,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ingress/0/from/1/namespaceSelector","value":{}}]"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    eventually("the confined selector back", || {
        let copy = on_host(&["networkpolicy", "allow"])?;
        (copy["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchLabels"]
            ["tenancy.kplex.dev/vc-uid"]
            == vc_uid)
            .then_some(())
    });
    // A tenant policy named as the wall does not replace it.
    let wall_file = manifest(
        s.dir.path(),
        "wall",
        &json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "kplex-isolation", "namespace": "shop"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}}),
    );
    k(&tenant, &["apply", "-f", wall_file.to_str().unwrap()]);
    eventually("the tenant told the name is reserved", || {
        items(
            &tenant,
            &[
                "events",
                "-n",
                "shop",
                "--field-selector",
                "reason=NameReserved",
            ],
        )
        .into_iter()
        .next()
    });
    let wall = on_host(&["networkpolicy", "kplex-isolation"]).unwrap();
    assert_eq!(
        wall["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["tenancy.kplex.dev/vc-uid"],
        vc_uid
    );
    assert!(wall["metadata"]["annotations"]
        .get("tenancy.kplex.dev/object-uid")
        .is_none());
    // Deleting the tenant's policy deletes its copy.
    k(&tenant, &["delete", "networkpolicy", "allow", "-n", "shop"]);
    eventually("the copy gone", || {
        on_host(&["networkpolicy", "allow"]).is_none().then_some(())
    });
    k(
        &tenant,
        &["delete", "networkpolicy", "kplex-isolation", "-n", "shop"],
    );
    assert!(
        on_host(&["networkpolicy", "kplex-isolation"]).is_some(),
        "the wall stays"
    );
}

fn on_host_ns(host: &Path, name: &str) -> Value {
    get(host, &["namespace", name])
}

#[test]
fn every_escape_written_before_the_policy_is_not_placed_and_says_why() {
    let s = Hosted::start();
    // A VC that allowed everything, placed on a host not registered yet:
    // each escape of the attack list gets in and waits.
    let tenant = s.tenant_with(
        "later",
        "{hostCluster: nowhere, isolation: {podSecurity: privileged, userNamespaces: false, quota: {hard: {}}}}",
    );
    let pods: Vec<(&str, Value, &str)> = attacks()
        .into_iter()
        // (kube-apiserver's own huge page rule holds under any policy)
        .filter(|(name, object, _)| object["kind"] == "Pod" && *name != "huge-pages-alone")
        .collect();
    assert!(pods.len() >= 30, "{} Pods", pods.len());
    for (name, object, _) in &pods {
        let file = manifest(s.dir.path(), name, object);
        k(&tenant, &["create", "-f", file.to_str().unwrap()]);
    }
    // The admin puts the attacked VC's policy on it and places it.
    let policy = json!({"spec": {"hostCluster": null, "isolation": {
        "podSecurity": "restricted", "userNamespaces": true,
        "quota": {"hard": {"services.nodeports": "0"}},
        "networks": [{"alias": "data", "namespace": "telco", "name": "sriov-a"}],
        "hugePageSizes": ["2Mi"]}}});
    let o = admin(
        &s.kplex,
        &[
            "patch",
            "vc",
            "later",
            "--type=merge",
            "-p",
            &policy.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Each is refused by the syncer, naming its rule, and none reaches the host.
    for (name, object, rule) in &pods {
        let pod = object["metadata"]["name"].as_str().unwrap();
        let condition = eventually(&format!("{name} refused by the syncer"), || {
            get(&tenant, &["pod", pod])["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PodScheduled" && c["reason"] == "PolicyViolation")
                .cloned()
        });
        let message = condition["message"].as_str().unwrap();
        assert!(
            message.contains(rule),
            "{name}: {message} does not name {rule:?}"
        );
    }
    let on_host = host_get(&s.host, "kplex-later-default", &["pods"]).unwrap();
    assert_eq!(
        on_host["items"],
        json!([]),
        "a refused Pod reached the host"
    );
}

/// Sets a host Pod's IP, as the host's kubelet would.
fn host_pod_ip(host: &Path, ns: &str, pod: &str, ip: &str) {
    let status = json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
    k(
        host,
        &[
            "-n",
            ns,
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
    );
}

#[test]
fn paths_through_the_hosts_shared_proxies_stay_inside_the_vc() {
    let s = Hosted::start();
    // The host's Node gives Pods addresses from 10.244.0.0/24.
    let node = manifest(
        s.dir.path(),
        "node",
        &json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1"}, "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}}),
    );
    k(&s.host, &["create", "-f", node.to_str().unwrap()]);
    k(
        &s.host,
        &[
            "patch",
            "node",
            "node-1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"addresses":[{"type":"InternalIP","address":"172.18.0.2"}]}}"#,
        ],
    );
    let a = s.tenant("a");
    let b = s.tenant("b");
    k(&a, &["run", "web", "--image=nginx"]);
    k(&a, &["expose", "pod", "web", "--port=80"]);
    k(&b, &["run", "own", "--image=nginx"]);
    copy_of(&s.host, "a", "web");
    copy_of(&s.host, "b", "own");
    host_pod_ip(&s.host, "kplex-a-default", "web", "10.244.0.7");
    host_pod_ip(&s.host, "kplex-b-default", "own", "10.244.0.8");
    for (tenant, pod, ip) in [(&a, "web", "10.244.0.7"), (&b, "own", "10.244.0.8")] {
        eventually(&format!("{pod}'s address in its VC"), || {
            (get(tenant, &["pod", pod])["status"]["podIP"] == ip).then_some(())
        });
    }
    // B's selector-less Service lists A's Pod, an address of the host's
    // Pod range, its own Pod and one outside: only the last two reach the
    // host (a shared ingress controller would follow the others).
    let ext = manifest(
        s.dir.path(),
        "ext",
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"}, "spec": {"ports": [{"port": 80}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"}, "subsets": [{
                "addresses": [{"ip": "10.244.0.7"}, {"ip": "10.244.0.8"}, {"ip": "10.244.0.99"}, {"ip": "192.0.2.10"},
                          {"ip": "::ffff:10.244.0.7"}, {"ip": "172.18.0.2"}, {"ip": "127.0.0.1"},
                          {"ip": "169.254.169.254"}, {"ip": "A_SERVICE_IP"}],
                "ports": [{"port": 80}]}]},
        ]}),
    );
    let a_service = eventually("A's Service on the host", || {
        host_get(&s.host, "kplex-a-default", &["service", "web"])
    });
    let a_ip = a_service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&ext)
        .unwrap()
        .replace("A_SERVICE_IP", &a_ip);
    std::fs::write(&ext, text).unwrap();
    k(&b, &["create", "-f", ext.to_str().unwrap()]);
    let endpoints = eventually("B's Endpoints on the host", || {
        host_get(&s.host, "kplex-b-default", &["endpoints", "ext"])
    });
    let ips: Vec<&str> = endpoints["subsets"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.244.0.8", "192.0.2.10"]);
    // ExternalNames: another VC's Services and Pods, by any form, and
    // addresses are refused; the VC's own Services are where they are on
    // the host; outside names are kept.
    for (name, target) in [
        ("sneak", "web.kplex-a-default.svc.cluster.local"),
        ("short", "web.kplex-a-default"),
        ("pod", "10-244-0-7.kplex-a-default.pod.cluster.local"),
        ("ip", "10.244.0.7"),
        ("mine", "db.default.svc.cluster.local"),
        ("out", "db.example.com"),
    ] {
        k(
            &b,
            &[
                "create",
                "service",
                "externalname",
                name,
                "--external-name",
                target,
            ],
        );
    }
    for name in ["mine", "out"] {
        copy_of_service(&s.host, name);
    }
    assert_eq!(
        copy_of_service(&s.host, "mine")["spec"]["externalName"],
        "db.kplex-b-default.svc.cluster.local"
    );
    assert_eq!(
        copy_of_service(&s.host, "out")["spec"]["externalName"],
        "db.example.com"
    );
    for name in ["sneak", "short", "pod", "ip"] {
        let event = eventually(&format!("{name} refused"), || {
            items(
                &b,
                &[
                    "events",
                    "--field-selector",
                    &format!("involvedObject.name={name},reason=ExternalNameRefused"),
                ],
            )
            .into_iter()
            .next()
        });
        assert!(
            event["message"]
                .as_str()
                .unwrap()
                .starts_with("not copied to the host"),
            "{event}"
        );
        assert!(
            host_get(&s.host, "kplex-b-default", &["service", name]).is_none(),
            "{name} reached the host"
        );
    }
}

/// VC b's Service `name` on the host, once there.
fn copy_of_service(host: &Path, name: &str) -> Value {
    eventually(&format!("the host copy of Service {name}"), || {
        host_get(host, "kplex-b-default", &["service", name])
    })
}

fn ingress(name: &str, host: Option<&str>) -> Value {
    let mut rule = json!({"http": {"paths": [{"path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}});
    if let Some(host) = host {
        rule["host"] = json!(host);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name}, "spec": {"rules": [rule]}})
}

#[test]
fn a_host_name_on_the_shared_ingress_controller_is_one_vcs() {
    let s = Hosted::start();
    let a = s.tenant("a");
    let b = s.tenant("b");
    let create = |kc: &Path, object: Value| {
        let file = manifest(
            s.dir.path(),
            object["metadata"]["name"].as_str().unwrap(),
            &object,
        );
        k(kc, &["create", "-f", file.to_str().unwrap()]);
    };
    create(&a, ingress("shop", Some("shop.example.com")));
    eventually("A's Ingress on the host", || {
        host_get(&s.host, "kplex-a-default", &["ingress", "shop"])
    });
    // B claims A's host name, and every host name: neither is copied.
    create(&b, ingress("steal", Some("shop.example.com")));
    create(&b, ingress("catchall", None));
    create(&b, ingress("own", Some("b.example.com")));
    eventually("B's own Ingress on the host", || {
        host_get(&s.host, "kplex-b-default", &["ingress", "own"])
    });
    for (name, why) in [
        (
            "steal",
            "the host name shop.example.com is another virtual cluster's",
        ),
        ("catchall", "without a host would serve every host name"),
    ] {
        let event = eventually(&format!("{name} refused"), || {
            items(
                &b,
                &[
                    "events",
                    "--field-selector",
                    &format!("involvedObject.name={name},reason=NotCopied"),
                ],
            )
            .into_iter()
            .next()
        });
        assert!(event["message"].as_str().unwrap().contains(why), "{event}");
        assert!(
            host_get(&s.host, "kplex-b-default", &["ingress", name]).is_none(),
            "{name} reached the host"
        );
    }
    // A's rule is untouched.
    let shop = host_get(&s.host, "kplex-a-default", &["ingress", "shop"]).unwrap();
    assert_eq!(shop["spec"]["rules"][0]["host"], "shop.example.com");
}

#[test]
fn the_syncer_counts_the_quota_by_what_runs_on_the_host() {
    let s = Hosted::start();
    // Two Pods admitted while the VC waits for a host and has no quota;
    // then a quota of one Pod and a host: one runs, one waits, saying why.
    // (Admission counts the tenant's objects, whose status a tenant can
    // write; the syncer counts the copies that run.)
    let t = s.tenant_with("q", "{hostCluster: later, isolation: {quota: {hard: {}}}}");
    k(&t, &["run", "one", "--image=nginx"]);
    k(&t, &["run", "two", "--image=nginx"]);
    let o = admin(
        &s.kplex,
        &[
            "patch",
            "vc",
            "q",
            "--type=merge",
            "-p",
            r#"{"spec":{"hostCluster":null,"isolation":{"quota":{"hard":{"pods":"1"}}}}}"#,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let held = |name: &str| {
        get(&t, &["pod", name])["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["reason"] == "PolicyViolation")
            .cloned()
    };
    let (placed, waiting, condition) = eventually("one Pod placed, one held by the quota", || {
        let on_host = |name: &str| host_get(&s.host, "kplex-q-default", &["pod", name]).is_some();
        match (on_host("one"), on_host("two"), held("one"), held("two")) {
            (true, false, None, Some(c)) => Some(("one", "two", c)),
            (false, true, Some(c), None) => Some(("two", "one", c)),
            _ => None,
        }
    });
    assert!(
        condition["message"].as_str().unwrap().contains(
            "exceeded quota of the virtual cluster (pods: 1 used on the host, 1 asked, 1 allowed)"
        ),
        "{condition}"
    );
    // Once the placed one is gone, the other runs.
    k(&t, &["delete", "pod", placed, "--wait=false"]);
    copy_of(&s.host, "q", waiting);
}

#[test]
fn a_copy_the_host_refuses_is_told_to_the_tenant() {
    let s = Hosted::start();
    let t = s.tenant("refused");
    k(&t, &["run", "first", "--image=nginx"]);
    copy_of(&s.host, "refused", "first");
    // The host's own quota admits no more Pods in that namespace.
    let quota = manifest(
        s.dir.path(),
        "host-quota",
        &json!({"apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "full", "namespace": "kplex-refused-default"}, "spec": {"hard": {"pods": "1"}}}),
    );
    k(&s.host, &["create", "-f", quota.to_str().unwrap()]);
    k(&t, &["run", "second", "--image=nginx"]);
    let condition = eventually("the host's refusal on the tenant's Pod", || {
        get(&t, &["pod", "second"])["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["reason"] == "HostRefused")
            .cloned()
    });
    assert_eq!(condition["status"], "False");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .starts_with("the host cluster refused the Pod: "),
        "{condition}"
    );
    assert!(host_get(&s.host, "kplex-refused-default", &["pod", "second"]).is_none());
}
