//! The Kubernetes API inside a VC, driven with the real kubectl.

use std::path::Path;
use std::time::Duration;

use kplex_e2e::{
    create_vc, kubectl, stderr, stdout, tenant_kubeconfig, user_kubeconfig, Kplex, KubectlStream,
};

fn k(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
    all.extend_from_slice(args);
    kubectl(&all)
}

fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let o = k(kubeconfig, args);
    assert!(o.status.success(), "kubectl {args:?}: {}", stderr(&o));
    stdout(&o)
}

fn fails_with(kubeconfig: &Path, args: &[&str], want: &str) {
    let o = k(kubeconfig, args);
    assert!(!o.status.success(), "kubectl {args:?} must fail");
    assert!(
        stderr(&o).contains(want),
        "kubectl {args:?}: {}",
        stderr(&o)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

const MANIFEST: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web
  namespace: demo
  labels: {app: web}
data:
  greeting: hello
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: db
  namespace: demo
  labels: {app: db}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: demo
  labels: {app: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx}]
";

struct Setup {
    _dir: tempfile::TempDir,
    kplex: Kplex,
    path: std::path::PathBuf,
}

fn setup(vcs: &[&str]) -> (Setup, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let mut configs = Vec::new();
    for vc in vcs {
        create_vc(&kplex, dir.path(), vc);
        configs.push(tenant_kubeconfig(&kplex, dir.path(), vc, "alice"));
    }
    let path = dir.path().to_owned();
    (
        Setup {
            _dir: dir,
            kplex,
            path,
        },
        configs,
    )
}

#[test]
fn kubectl_manages_objects_inside_a_virtual_cluster() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let ns = ok(kc, &["get", "namespaces", "-o", "name"]);
    for default in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(&format!("namespace/{default}")), "{ns}");
    }
    let manifest = write(&s.path, "manifest.yaml", MANIFEST);
    ok(kc, &["create", "-f", &manifest]);

    let table = ok(kc, &["-n", "demo", "get", "configmaps"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "DATA", "AGE"]);
    let cm: serde_json::Value =
        serde_json::from_str(&ok(kc, &["-n", "demo", "get", "cm", "web", "-o", "json"])).unwrap();
    assert_eq!(cm["data"]["greeting"], "hello");
    assert_eq!(cm["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert!(
        cm["metadata"].get("generation").is_none(),
        "ConfigMaps have no generation"
    );
    let deploy: serde_json::Value = serde_json::from_str(&ok(
        kc,
        &["-n", "demo", "get", "deploy", "web", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(deploy["metadata"]["generation"], 1);
    assert_eq!(
        ok(
            kc,
            &[
                "-n",
                "demo",
                "get",
                "cm",
                "web",
                "-o",
                "jsonpath={.data.greeting}"
            ]
        ),
        "hello"
    );

    // Selectors.
    assert_eq!(
        ok(
            kc,
            &["-n", "demo", "get", "cm", "-l", "app=web", "-o", "name"]
        )
        .trim(),
        "configmap/web"
    );
    assert_eq!(
        ok(
            kc,
            &["-n", "demo", "get", "cm", "-l", "app!=web", "-o", "name"]
        )
        .trim(),
        "configmap/db"
    );
    assert_eq!(
        ok(
            kc,
            &[
                "-n",
                "demo",
                "get",
                "cm",
                "-l",
                "app in (db,web)",
                "-o",
                "name"
            ]
        )
        .lines()
        .count(),
        2
    );
    assert_eq!(
        ok(
            kc,
            &[
                "get",
                "cm",
                "-A",
                "--field-selector",
                "metadata.name=db",
                "-o",
                "name"
            ]
        )
        .trim(),
        "configmap/db"
    );
    fails_with(
        kc,
        &["-n", "demo", "get", "cm", "--field-selector", "spec.nope=x"],
        "field label not supported",
    );
    fails_with(
        kc,
        &["-n", "demo", "get", "cm", "-l", "a b c"],
        "unable to parse",
    );

    // Errors a user meets.
    fails_with(kc, &["create", "-f", &manifest], "AlreadyExists");
    fails_with(kc, &["-n", "demo", "get", "cm", "missing"], "NotFound");
    let bad = write(
        &s.path,
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name, namespace: demo}\n",
    );
    fails_with(kc, &["create", "-f", &bad], "is invalid");
    let orphan = write(
        &s.path,
        "orphan.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: nowhere}\n",
    );
    fails_with(
        kc,
        &["create", "-f", &orphan],
        "namespaces \"nowhere\" not found",
    );

    // kubectl validates strictly by default: unknown fields are refused;
    // malformed values and bad YAML too. Without validation the unknown field
    // is dropped, as the built-in types drop it.
    let unknown = write(
        &s.path,
        "unknown.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: u, namespace: demo}\nbogus: 1\n",
    );
    fails_with(kc, &["create", "-f", &unknown], "unknown field \"bogus\"");
    ok(kc, &["create", "--validate=false", "-f", &unknown]);
    assert!(!ok(kc, &["-n", "demo", "get", "cm", "u", "-o", "json"]).contains("bogus"));
    // --validate=warn: dropped, and kubectl prints the server's warning.
    let warned = write(
        &s.path,
        "warned.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w, namespace: demo}\nbogus: 1\n",
    );
    let o = k(kc, &["create", "--validate=warn", "-f", &warned]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Warning: unknown field \"bogus\""),
        "{}",
        stderr(&o)
    );
    let malformed = write(&s.path, "malformed.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: m, namespace: demo}\nspec: {replicas: three}\n");
    fails_with(
        kc,
        &["create", "-f", &malformed],
        "cannot be handled as a Deployment",
    );
    let broken = write(
        &s.path,
        "broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n",
    );
    fails_with(
        kc,
        &["create", "-f", &broken],
        "error converting YAML to JSON",
    );

    // Replace (PUT): applies with the current resourceVersion, 409 with a stale one.
    let current = ok(kc, &["-n", "demo", "get", "cm", "web", "-o", "json"]);
    let mut edited: serde_json::Value = serde_json::from_str(&current).unwrap();
    edited["data"]["greeting"] = "bonjour".into();
    let edited_file = write(&s.path, "edited.json", &edited.to_string());
    ok(kc, &["replace", "-f", &edited_file]);
    assert_eq!(
        ok(
            kc,
            &[
                "-n",
                "demo",
                "get",
                "cm",
                "web",
                "-o",
                "jsonpath={.data.greeting}"
            ]
        ),
        "bonjour"
    );
    fails_with(
        kc,
        &["replace", "-f", &edited_file],
        "the object has been modified",
    );

    // Delete, and a namespace takes its contents with it.
    ok(kc, &["-n", "demo", "delete", "cm", "db"]);
    fails_with(kc, &["-n", "demo", "get", "cm", "db"], "NotFound");
    // A server-side dry run (DeleteOptions in the body) deletes nothing.
    ok(
        kc,
        &[
            "-n",
            "demo",
            "delete",
            "configmap",
            "web",
            "--dry-run=server",
        ],
    );
    ok(kc, &["-n", "demo", "get", "configmap", "web"]);
    ok(kc, &["delete", "namespace", "demo"]);
    // The namespaces every cluster has may not be deleted, not even in a dry run.
    for ns in ["default", "kube-system", "kube-public"] {
        fails_with(
            kc,
            &["delete", "namespace", ns],
            "this namespace may not be deleted",
        );
    }
    fails_with(
        kc,
        &["delete", "namespace", "default", "--dry-run=server"],
        "this namespace may not be deleted",
    );
    assert_eq!(ok(kc, &["get", "cm,deploy", "-A", "-o", "name"]).trim(), "");
    // Aggregated discovery: a fresh cache fills from /api and /apis alone.
    let cache = s.path.join("discovery-cache");
    let cache_flag = format!("--cache-dir={}", cache.display());
    let o = k(kc, &["api-resources", "-o", "name", "-v=6", &cache_flag]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    // Each kubectl's log line of a request: `verb="GET" url="…"` (1.33
    // on), or `GET https://… 200 OK` (before).
    let fetched: Vec<&str> = log
        .lines()
        .filter_map(|l| match l.split_once("verb=\"GET\"") {
            Some(_) => l.split("url=\"").nth(1),
            None => l.split("] GET ").nth(1),
        })
        .filter_map(|url| url.split(['?', ' ']).next())
        .filter_map(|url| url.split("/clusters/team-a").nth(1))
        .collect();
    assert_eq!(fetched, ["/api", "/apis"], "{log}");
    let resources = stdout(&o);
    for r in [
        "configmaps",
        "deployments.apps",
        "cronjobs.batch",
        "leases.coordination.k8s.io",
    ] {
        assert!(
            resources.lines().any(|l| l == r),
            "{r} missing from {resources}"
        );
    }
    drop(s.kplex);
}

#[test]
fn two_virtual_clusters_hold_the_same_names_without_seeing_each_other() {
    let (s, configs) = setup(&["team-a", "team-b"]);
    let (a, b) = (&configs[0], &configs[1]);
    for (kc, value) in [(a, "from-a"), (b, "from-b")] {
        let file = write(
            &s.path,
            &format!("{value}.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared, namespace: default}}\ndata: {{owner: {value}}}\n"),
        );
        ok(kc, &["create", "-f", &file]);
    }
    assert_eq!(
        ok(a, &["get", "cm", "shared", "-o", "jsonpath={.data.owner}"]),
        "from-a"
    );
    assert_eq!(
        ok(b, &["get", "cm", "shared", "-o", "jsonpath={.data.owner}"]),
        "from-b"
    );
    assert_eq!(
        ok(a, &["get", "cm", "-A", "-o", "name"]).trim(),
        "configmap/shared"
    );
    ok(a, &["delete", "cm", "shared"]);
    assert_eq!(
        ok(b, &["get", "cm", "shared", "-o", "jsonpath={.data.owner}"]),
        "from-b"
    );
    // A's credential pointed at B's URL is refused.
    let o = kubectl(&[
        "--kubeconfig",
        a.to_str().unwrap(),
        "--server",
        &format!("{}/clusters/team-b", s.kplex.server()),
        "get",
        "cm",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Forbidden"), "{}", stderr(&o));
    // Deleting VC A leaves B whole.
    let admin = s.kplex.kubeconfig();
    assert!(kubectl(&[
        "--kubeconfig",
        admin.to_str().unwrap(),
        "delete",
        "vc",
        "team-a"
    ])
    .status
    .success());
    assert_eq!(
        ok(b, &["get", "cm", "shared", "-o", "jsonpath={.data.owner}"]),
        "from-b"
    );
}

#[test]
fn lists_paginate_and_forged_continue_tokens_are_refused() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let mut docs = String::new();
    for i in 0..7 {
        docs.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}, namespace: default}}\n"
        ));
    }
    ok(kc, &["create", "-f", &write(&s.path, "many.yaml", &docs)]);
    // kubectl fetches in pages of two and stitches them together.
    let names = ok(kc, &["get", "cm", "--chunk-size=2", "-o", "name"]);
    assert_eq!(names.lines().count(), 7, "{names}");
    // The same in kubectl's default output, which pages through Tables.
    let rows = ok(kc, &["get", "cm", "--chunk-size=2", "--no-headers"]);
    assert_eq!(rows.lines().count(), 7, "{rows}");
    let page: serde_json::Value = serde_json::from_str(&ok(
        kc,
        &[
            "get",
            "--raw",
            "/clusters/team-a/api/v1/namespaces/default/configmaps?limit=3",
        ],
    ))
    .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["metadata"]["continue"].as_str().is_some());
    for forged in ["garbage", "eyJydiI6MSwibnMiOiIuLiIsIm5hbWUiOiJ4In0"] {
        let o = k(kc, &["get", "--raw", &format!("/clusters/team-a/api/v1/namespaces/default/configmaps?limit=3&continue={forged}")]);
        assert!(!o.status.success(), "{forged}");
        assert!(stderr(&o).contains("continue"), "{}", stderr(&o));
    }
}

#[test]
fn kubectl_get_watch_sees_a_change_made_by_another_client() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let cm = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\n")
    };
    // An object that exists before kubectl starts: its list prints it, and
    // its watch starts from the list's resourceVersion, so the object is
    // not printed again — the next row is the next change.
    ok(
        kc,
        &["create", "-f", &write(&s.path, "b.yaml", &cm("before"))],
    );
    let watcher = KubectlStream::spawn(&["--kubeconfig", kc.to_str().unwrap(), "get", "cm", "-w"]);
    // kubectl's default output is a table, as against a real cluster: a
    // header, then a row per object.
    let mut seen = Vec::new();
    while !seen
        .last()
        .is_some_and(|l: &String| l.starts_with("before "))
    {
        seen.push(
            watcher
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("kubectl -w printed only {seen:?}")),
        );
    }
    assert!(
        seen.iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NAME", "DATA", "AGE"]),
        "no table header in {seen:?}"
    );
    ok(
        kc,
        &["create", "-f", &write(&s.path, "w.yaml", &cm("watched"))],
    );
    let line = watcher.next_line("the watched configmap");
    assert!(line.starts_with("watched "), "{line}");
    ok(kc, &["delete", "cm", "watched"]);
}

#[test]
fn apply_label_annotate_and_every_patch_type_work_like_a_real_cluster() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let manifest = write(&s.path, "manifest.yaml", MANIFEST);
    let first = ok(kc, &["apply", "-f", &manifest]);
    assert!(first.contains("deployment.apps/web created"), "{first}");
    let second = ok(kc, &["apply", "-f", &manifest]);
    assert_eq!(second.matches("unchanged").count(), 4, "{second}");
    // Edit one container's image and re-apply: a strategic merge patch.
    let edited = write(
        &s.path,
        "edited.yaml",
        &MANIFEST.replace("image: nginx", "image: nginx:1.27"),
    );
    let third = ok(kc, &["apply", "-f", &edited]);
    assert!(third.contains("deployment.apps/web configured"), "{third}");
    let jp = |args: &[&str]| ok(kc, args);
    assert_eq!(
        jp(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.metadata.generation}"
        ]),
        "nginx:1.27 2"
    );

    ok(kc, &["-n", "demo", "label", "cm", "web", "tier=front"]);
    ok(kc, &["-n", "demo", "annotate", "cm", "web", "note=hi"]);
    assert_eq!(
        jp(&[
            "-n",
            "demo",
            "get",
            "cm",
            "web",
            "-o",
            "jsonpath={.metadata.labels.tier} {.metadata.annotations.note}"
        ]),
        "front hi"
    );
    ok(kc, &["-n", "demo", "label", "cm", "web", "tier-"]);
    assert_eq!(
        jp(&["-n", "demo", "get", "cm", "-l", "tier", "-o", "name"]).trim(),
        ""
    );

    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "web",
            "--type=merge",
            "-p",
            r#"{"data":{"x":"1"}}"#,
        ],
    );
    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/data/y","value":"2"}]"#,
        ],
    );
    assert_eq!(
        jp(&[
            "-n",
            "demo",
            "get",
            "cm",
            "web",
            "-o",
            "jsonpath={.data.greeting}{.data.x}{.data.y}"
        ]),
        "hello12"
    );
    // Strategic (kubectl's default): the container list merges by name.
    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}"#,
        ],
    );
    assert_eq!(
        jp(&[
            "-n",
            "demo",
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name}"
        ]),
        "web sidecar"
    );
    // A failing JSON patch test op, and a patch that renames: refused, nothing changed.
    fails_with(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"test","path":"/data/x","value":"no"}]"#,
        ],
        "could not be applied",
    );
    fails_with(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "web",
            "--type=merge",
            "-p",
            r#"{"metadata":{"name":"other"}}"#,
        ],
        "immutable",
    );
    assert_eq!(
        jp(&["-n", "demo", "get", "cm", "web", "-o", "jsonpath={.data.x}"]),
        "1"
    );
    // dryRun changes nothing.
    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "cm",
            "web",
            "--dry-run=server",
            "--type=merge",
            "-p",
            r#"{"data":{"x":"dry"}}"#,
        ],
    );
    assert_eq!(
        jp(&["-n", "demo", "get", "cm", "web", "-o", "jsonpath={.data.x}"]),
        "1"
    );
}

#[test]
fn tables_scale_and_status_subresources_behave_like_a_real_cluster() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let extra = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: demo}\nspec:\n  containers: [{name: c, image: busybox}]\n";
    ok(
        kc,
        &[
            "apply",
            "-f",
            &write(&s.path, "all.yaml", &format!("{MANIFEST}{extra}")),
        ],
    );
    let wide = ok(kc, &["-n", "demo", "get", "pods,deploy,svc", "-o", "wide"]);
    let headers: Vec<Vec<&str>> = wide
        .split("\n\n")
        .map(|block| {
            block
                .lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect()
        })
        .collect();
    assert_eq!(
        headers[0],
        [
            "NAME",
            "READY",
            "STATUS",
            "RESTARTS",
            "AGE",
            "IP",
            "NODE",
            "NOMINATED",
            "NODE",
            "READINESS",
            "GATES"
        ]
    );
    assert_eq!(
        headers[1],
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ]
    );
    assert_eq!(
        headers[2],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    assert!(
        wide.contains("80/TCP") && wide.contains("app=web") && wide.contains("Pending"),
        "{wide}"
    );

    // scale goes through the scale subresource.
    ok(
        kc,
        &["-n", "demo", "scale", "deployment", "web", "--replicas=3"],
    );
    assert_eq!(
        ok(
            kc,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas} {.metadata.generation}"
            ]
        ),
        "3 2"
    );
    let scale: serde_json::Value = serde_json::from_str(&ok(
        kc,
        &[
            "get",
            "--raw",
            "/clusters/team-a/apis/apps/v1/namespaces/demo/deployments/web/scale",
        ],
    ))
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    fails_with(
        kc,
        &[
            "-n",
            "demo",
            "get",
            "--raw",
            "/clusters/team-a/api/v1/namespaces/demo/configmaps/web/scale",
        ],
        "NotFound",
    );

    // status is written through /status only; the main resource keeps it.
    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":3,"readyReplicas":2}}"#,
        ],
    );
    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "--type=merge",
            "-p",
            r#"{"status":{"readyReplicas":9},"spec":{"replicas":4}}"#,
        ],
    );
    assert_eq!(
        ok(
            kc,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas} {.status.readyReplicas}"
            ]
        ),
        "4 2"
    );
    assert!(ok(kc, &["-n", "demo", "get", "deploy", "web"]).contains("2/4"));
    // A status write cannot change the spec.
    ok(
        kc,
        &[
            "-n",
            "demo",
            "patch",
            "deploy",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":7}}"#,
        ],
    );
    assert_eq!(
        ok(
            kc,
            &[
                "-n",
                "demo",
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "4"
    );
}

#[test]
fn sigterm_ends_open_watches_and_the_server_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let kc = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let watcher = KubectlStream::spawn(&[
        "--kubeconfig",
        kc.to_str().unwrap(),
        "get",
        "ns",
        "-w",
        "-o",
        "name",
    ]);
    // The list arrives first; then the watch is open.
    assert_eq!(watcher.next_line("the namespace list"), "namespace/default");
    // The drain limit is 30 s; an open watch must not hold shutdown that long.
    let started = std::time::Instant::now();
    let status = kplex.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn finalizers_hold_deletion_and_namespaces_terminate_until_empty() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: doomed, finalizers: [example.com/hold]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: free, namespace: doomed}\n";
    ok(kc, &["create", "-f", &write(&s.path, "ns.yaml", manifest)]);

    // An object with a finalizer is only marked.
    ok(
        kc,
        &["-n", "doomed", "delete", "cm", "held", "--wait=false"],
    );
    let held = ok(
        kc,
        &[
            "-n",
            "doomed",
            "get",
            "cm",
            "held",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
    );
    assert!(held.ends_with('Z'), "deletionTimestamp set: {held:?}");

    // The namespace turns Terminating: free content goes, held content stays.
    ok(kc, &["delete", "namespace", "doomed", "--wait=false"]);
    assert_eq!(
        ok(
            kc,
            &["get", "ns", "doomed", "-o", "jsonpath={.status.phase}"]
        ),
        "Terminating"
    );
    assert_eq!(
        ok(kc, &["-n", "doomed", "get", "cm", "-o", "name"]).trim(),
        "configmap/held"
    );
    let late = write(
        &s.path,
        "late.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: doomed}\n",
    );
    fails_with(kc, &["create", "-f", &late], "is being terminated");

    // Removing the last finalizer removes the object, and with it the namespace.
    ok(
        kc,
        &[
            "-n",
            "doomed",
            "patch",
            "cm",
            "held",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    );
    fails_with(kc, &["-n", "doomed", "get", "cm", "held"], "NotFound");
    fails_with(kc, &["get", "ns", "doomed"], "NotFound");
}

#[test]
fn resource_versions_select_the_past_and_watch_list_ends_with_a_bookmark() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let cm = |name: &str, v: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\ndata: {{v: \"{v}\"}}\n")
    };
    ok(
        kc,
        &["create", "-f", &write(&s.path, "a.yaml", &cm("a", "1"))],
    );
    let base = "/clusters/team-a/api/v1/namespaces/default/configmaps";
    let before: serde_json::Value = serde_json::from_str(&ok(kc, &["get", "--raw", base])).unwrap();
    let rv = before["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(
        kc,
        &["replace", "-f", &write(&s.path, "a2.yaml", &cm("a", "2"))],
    );
    ok(
        kc,
        &["create", "-f", &write(&s.path, "b.yaml", &cm("b", "1"))],
    );

    // Exact: the list as it was at that resourceVersion.
    let past: serde_json::Value = serde_json::from_str(&ok(
        kc,
        &[
            "get",
            "--raw",
            &format!("{base}?resourceVersion={rv}&resourceVersionMatch=Exact"),
        ],
    ))
    .unwrap();
    assert_eq!(past["metadata"]["resourceVersion"], rv.as_str());
    let items = past["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["data"]["v"], "1");
    // (A resourceVersion from the future is a 504 after a wait, with
    // Retry-After, which kubectl retries ten times: the kube-rs test checks
    // it, asking once.)
    fails_with(
        kc,
        &[
            "get",
            "--raw",
            &format!("{base}?resourceVersion=abc&resourceVersionMatch=Exact"),
        ],
        "invalid resourceVersion",
    );

    // Watch-list: the current objects, then a bookmark marking their end.
    let stream = ok(
        kc,
        &[
            "get",
            "--raw",
            &format!("{base}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"),
        ],
    );
    let events: Vec<serde_json::Value> = stream
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"], "{stream}");
    let mark = &events[2]["object"]["metadata"];
    assert_eq!(mark["annotations"]["k8s.io/initial-events-end"], "true");
    assert!(
        mark["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > rv.parse::<u64>().unwrap()
    );
}

#[test]
fn kubectl_explain_reads_the_vcs_openapi() {
    let (_s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let explained = ok(kc, &["explain", "deployment.spec.template"]);
    assert!(explained.contains("KIND:       Deployment"), "{explained}");
    assert!(explained.contains("<PodTemplateSpec>"), "{explained}");
    assert!(
        explained.contains("FIELDS:") && explained.contains("spec\t<PodSpec>"),
        "{explained}"
    );
    let pods = ok(kc, &["explain", "pods.spec.containers.image"]);
    assert!(pods.contains("Container image name"), "{pods}");
    fails_with(kc, &["explain", "deployment.spec.nonsense"], "nonsense");
}

#[test]
fn auth_whoami_and_can_i_answer_for_the_callers_own_credential() {
    let (s, configs) = setup(&["team-a"]);
    let alice = &configs[0];
    let bob = user_kubeconfig(&s.kplex, &s.path, "team-a", "bob", &["dev"]);
    let whoami: serde_json::Value =
        serde_json::from_str(&ok(alice, &["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "alice");
    assert_eq!(
        whoami["status"]["userInfo"]["groups"],
        serde_json::json!(["system:masters", "system:authenticated"])
    );
    let bob_is: serde_json::Value =
        serde_json::from_str(&ok(&bob, &["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(bob_is["status"]["userInfo"]["username"], "bob");
    assert_eq!(
        bob_is["status"]["userInfo"]["groups"],
        serde_json::json!(["dev", "system:authenticated"])
    );

    // The VC's cluster-admin may do anything; bob, bound to nothing, may
    // discover the API and ask about himself only.
    assert_eq!(
        ok(alice, &["auth", "can-i", "delete", "deployments"]).trim(),
        "yes"
    );
    let denied = k(&bob, &["auth", "can-i", "delete", "deployments"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(stdout(&denied).starts_with("no"), "{}", stdout(&denied));
    assert_eq!(
        ok(&bob, &["auth", "can-i", "get", "/version"]).trim(),
        "yes"
    );
    let metrics = k(&bob, &["auth", "can-i", "get", "/metrics"]);
    assert_eq!(metrics.status.code(), Some(1));
    assert!(stdout(&metrics).starts_with("no"), "{}", stdout(&metrics));
    let list = ok(alice, &["auth", "can-i", "--list"]);
    assert!(list.contains("*.*") && list.contains("[*]"), "{list}");
    let list = ok(&bob, &["auth", "can-i", "--list"]);
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io")
            && list.contains("[/apis/*]")
            && !list.contains("*.*"),
        "{list}"
    );

    // Reviews are answered, not stored: there is nothing to get.
    fails_with(
        alice,
        &["get", "selfsubjectaccessreviews"],
        "does not allow this method",
    );
    // A review that asks nothing is invalid.
    let empty = write(
        &s.path,
        "empty-review.json",
        r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{}}"#,
    );
    fails_with(
        alice,
        &["create", "-f", &empty],
        "exactly one of nonResourceAttributes or resourceAttributes",
    );
    let resources = ok(alice, &["api-resources", "--verbs=create", "-o", "name"]);
    assert!(
        resources.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{resources}"
    );
}

#[test]
fn secret_string_data_and_immutable_configmaps_behave_like_a_real_cluster() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let manifest = write(
        &s.path,
        "secret.yaml",
        "apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
data: {user: YWxpY2U=}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: frozen}
immutable: true
data: {k: v}
",
    );
    ok(kc, &["apply", "-f", &manifest]);
    // stringData is write-only: merged into data as base64, never stored.
    let secret: serde_json::Value =
        serde_json::from_str(&ok(kc, &["get", "secret", "creds", "-o", "json"])).unwrap();
    assert_eq!(secret["data"]["password"], "czNjcmV0");
    assert_eq!(secret["data"]["user"], "YWxpY2U=");
    assert!(secret.get("stringData").is_none(), "{secret}");
    fails_with(
        kc,
        &[
            "patch",
            "secret",
            "creds",
            "--type=merge",
            "-p",
            r#"{"type":"kubernetes.io/tls"}"#,
        ],
        "field is immutable",
    );
    // An immutable ConfigMap keeps its data; its labels may change.
    for patch in [r#"{"data":{"k":"changed"}}"#, r#"{"immutable":false}"#] {
        fails_with(
            kc,
            &["patch", "configmap", "frozen", "--type=merge", "-p", patch],
            "field is immutable when `immutable` is set",
        );
    }
    ok(kc, &["label", "configmap", "frozen", "tier=gold"]);
    assert_eq!(
        ok(
            kc,
            &["get", "configmap", "frozen", "-o", "jsonpath={.data.k}"]
        ),
        "v"
    );
}

#[test]
fn updates_keep_what_a_real_cluster_keeps_immutable() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let manifest = |selector: &str, claim_size: &str| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: {selector}}}}}
  template:
    metadata: {{labels: {{app: {selector}}}}}
    spec: {{containers: [{{name: web, image: nginx}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec: {{containers: [{{name: db, image: postgres}}]}}
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: {claim_size}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tool}}
spec:
  containers: [{{name: tool, image: busybox}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: once}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: once, image: busybox}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: scratch}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"
        )
    };
    let first = write(&s.path, "first.yaml", &manifest("web", "1Gi"));
    ok(kc, &["apply", "-f", &first]);

    // A Deployment's selector is fixed (kubectl words the refusal from the
    // Status's details, as against a real cluster).
    let moved = write(&s.path, "moved.yaml", &manifest("web2", "1Gi"));
    fails_with(
        kc,
        &["apply", "-f", &moved],
        r#"The Deployment "web" is invalid: spec.selector: Invalid value: {"matchLabels":{"app":"web2"}}: field is immutable"#,
    );
    // A StatefulSet's claim templates are fixed; it still scales.
    let grown = write(&s.path, "grown.yaml", &manifest("web", "5Gi"));
    fails_with(
        kc,
        &["apply", "-f", &grown],
        "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
    );
    ok(kc, &["scale", "statefulset/db", "--replicas=3"]);
    // (That apply rolled the Deployment back to its manifest; rolling it
    // forward changes its template only.)
    ok(kc, &["set", "image", "deployment/web", "web=nginx:1.27"]);
    // A Pod changes its image and gains tolerations, nothing else.
    ok(kc, &["set", "image", "pod/tool", "tool=busybox:1.36"]);
    ok(
        kc,
        &[
            "patch",
            "pod",
            "tool",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/tolerations","value":[{"key":"gpu","operator":"Exists"}]}]"#,
        ],
    );
    fails_with(
        kc,
        &[
            "patch",
            "pod",
            "tool",
            "-p",
            r#"{"spec":{"nodeSelector":{"zone":"b"}}}"#,
        ],
        "spec: Forbidden: pod updates may not change fields other than",
    );
    // A Job's template is fixed once it may run.
    fails_with(
        kc,
        &["set", "image", "job/once", "once=busybox:1.36"],
        "spec.template: Invalid value",
    );
    // An unbound claim's spec is fixed (a storage class may be assigned once).
    fails_with(
        kc,
        &[
            "patch",
            "pvc",
            "scratch",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}"#,
        ],
        "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
    );
    ok(
        kc,
        &[
            "patch",
            "pvc",
            "scratch",
            "-p",
            r#"{"spec":{"storageClassName":"fast"}}"#,
        ],
    );
    // What was refused was not written.
    let read = |what: &str, path: &str| ok(kc, &["get", what, "-o", &format!("jsonpath={path}")]);
    assert_eq!(
        read("deploy/web", "{.spec.selector.matchLabels.app}"),
        "web"
    );
    assert_eq!(
        read("deploy/web", "{.spec.template.spec.containers[0].image}"),
        "nginx:1.27"
    );
    assert_eq!(
        read(
            "sts/db",
            "{.spec.volumeClaimTemplates[0].spec.resources.requests.storage}"
        ),
        "1Gi"
    );
    assert_eq!(read("sts/db", "{.spec.replicas}"), "3");
    assert_eq!(
        read("pod/tool", "{.spec.containers[0].image}"),
        "busybox:1.36"
    );
    assert_eq!(read("pod/tool", "{.spec.nodeSelector}"), "");
    assert_eq!(
        read("job/once", "{.spec.template.spec.containers[0].image}"),
        "busybox"
    );
    assert_eq!(
        read("pvc/scratch", "{.spec.resources.requests.storage}"),
        "1Gi"
    );
}

#[test]
fn server_side_apply_tracks_field_owners_and_refuses_conflicts() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let deployment = |replicas: u32, labels: &str| {
        format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{{labels}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: nginx}}]}}
"
        )
    };
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["get", "-o", "json", "--show-managed-fields"];
        all.extend_from_slice(args);
        serde_json::from_str(&ok(kc, &all)).unwrap()
    };
    let first = write(&s.path, "v1.yaml", &deployment(1, "app: web, tier: front"));
    // A missing object is created by the apply.
    assert!(ok(kc, &["apply", "--server-side", "-f", &first]).contains("serverside-applied"));
    let live = json(&["deployment", "web"]);
    let managed = live["metadata"]["managedFields"].as_array().unwrap();
    assert_eq!(managed.len(), 1, "{managed:?}");
    assert_eq!(managed[0]["manager"], "kubectl");
    assert_eq!(managed[0]["operation"], "Apply");
    assert_eq!(managed[0]["fieldsType"], "FieldsV1");
    let fields = &managed[0]["fieldsV1"];
    assert!(fields["f:spec"]["f:replicas"].is_object(), "{fields}");
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"]["f:image"]
            .is_object(),
        "{fields}"
    );
    // Applying the same configuration again changes nothing.
    ok(kc, &["apply", "--server-side", "-f", &first]);
    assert_eq!(
        json(&["deployment", "web"])["metadata"]["resourceVersion"],
        live["metadata"]["resourceVersion"]
    );

    // Another manager takes spec.replicas; applying a different value is a
    // conflict naming it, and changes nothing.
    ok(
        kc,
        &[
            "patch",
            "deployment",
            "web",
            "--field-manager=autoscaler",
            "-p",
            r#"{"spec":{"replicas":3}}"#,
        ],
    );
    fails_with(
        kc,
        &["apply", "--server-side", "-f", &first],
        r#"Apply failed with 1 conflict: conflict with "autoscaler" using apps/v1: .spec.replicas"#,
    );
    assert_eq!(json(&["deployment", "web"])["spec"]["replicas"], 3);
    // The same value is shared ownership, not a conflict.
    let three = write(&s.path, "v3.yaml", &deployment(3, "app: web, tier: front"));
    ok(kc, &["apply", "--server-side", "-f", &three]);
    // Forced, the apply takes the field over.
    ok(
        kc,
        &["apply", "--server-side", "--force-conflicts", "-f", &first],
    );
    let live = json(&["deployment", "web"]);
    assert_eq!(live["spec"]["replicas"], 1);
    let managers: Vec<&str> = live["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["fieldsV1"]["f:spec"]["f:replicas"].is_object())
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["kubectl"]);

    // A label this manager stops applying goes; one another manager set stays.
    ok(kc, &["label", "deployment", "web", "owner=ops"]);
    let fewer = write(&s.path, "fewer.yaml", &deployment(1, "app: web"));
    ok(kc, &["apply", "--server-side", "-f", &fewer]);
    let labels = &json(&["deployment", "web"])["metadata"]["labels"];
    assert_eq!(labels, &serde_json::json!({"app": "web", "owner": "ops"}));
}

#[test]
fn deletecollection_and_per_kind_field_selectors() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let mut docs = String::new();
    for (name, tier) in [("a", "web"), ("b", "web"), ("c", "db")] {
        docs.push_str(&format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default, labels: {{tier: {tier}}}}}\n"));
    }
    docs.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: tls, namespace: default}\ntype: kubernetes.io/tls\ndata: {tls.crt: \"\", tls.key: \"\"}\n");
    docs.push_str("---\napiVersion: v1\nkind: Secret\nmetadata: {name: plain, namespace: default}\ntype: Opaque\n");
    ok(kc, &["create", "-f", &write(&s.path, "docs.yaml", &docs)]);

    // Field selectors a kind supports beyond name and namespace.
    assert_eq!(
        ok(
            kc,
            &[
                "get",
                "secrets",
                "--field-selector",
                "type=kubernetes.io/tls",
                "-o",
                "name"
            ]
        )
        .trim(),
        "secret/tls"
    );
    fails_with(
        kc,
        &["get", "cm", "--field-selector", "type=x"],
        "field label not supported",
    );

    // DELETE on the collection removes what the selector matches, nothing else.
    let deleted: serde_json::Value = serde_json::from_str(&ok(
        kc,
        &[
            "delete",
            "--raw",
            "/clusters/team-a/api/v1/namespaces/default/configmaps?labelSelector=tier%3Dweb",
        ],
    ))
    .unwrap();
    assert_eq!(deleted["items"].as_array().unwrap().len(), 2);
    assert_eq!(ok(kc, &["get", "cm", "-o", "name"]).trim(), "configmap/c");
}

/// kubectl's `create <kind>` generators and `run` send protobuf bodies: the
/// objects they make read back as the same commands make them on a real
/// cluster.
#[test]
fn kubectl_create_generators_and_run_make_the_objects_they_describe() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let json = |args: &[&str]| -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&ok(kc, &all)).unwrap()
    };
    assert_eq!(
        ok(kc, &["create", "namespace", "shop"]).trim(),
        "namespace/shop created"
    );
    assert_eq!(
        json(&["get", "namespace", "shop"])["status"]["phase"],
        "Active"
    );
    // Every namespace has its default ServiceAccount, as on a real cluster.
    assert_eq!(
        json(&["-n", "shop", "get", "serviceaccount", "default"])["metadata"]["name"],
        "default"
    );
    let n = ["-n", "shop"];
    let run = |args: &[&str]| ok(kc, &[&n[..], args].concat());
    run(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    run(&[
        "create",
        "secret",
        "generic",
        "token",
        "--from-literal=value=s3cr3t",
    ]);
    run(&[
        "create",
        "deployment",
        "web",
        "--image=nginx:1.27",
        "--replicas=0",
        "--port=80",
    ]);
    run(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    run(&[
        "create",
        "job",
        "once",
        "--image=busybox",
        "--",
        "echo",
        "hi",
    ]);
    run(&[
        "create",
        "cronjob",
        "nightly",
        "--image=busybox",
        "--schedule=0 3 * * *",
    ]);
    run(&[
        "create",
        "ingress",
        "web",
        "--rule=shop.example/cart*=web:80",
    ]);
    run(&[
        "create",
        "poddisruptionbudget",
        "web",
        "--selector=app=web",
        "--min-available=50%",
    ]);
    // The Pod comes before the quota: a quota limiting cpu refuses a Pod
    // that requests none (as kube-apiserver's quota admission does).
    run(&[
        "run",
        "debug",
        "--image=busybox",
        "--labels=tier=debug",
        "--env=LEVEL=3",
        "--",
        "sleep",
        "1",
    ]);
    run(&["create", "quota", "small", "--hard=pods=4,cpu=1500m"]);
    run(&["create", "serviceaccount", "robot"]);

    let get = |args: &[&str]| json(&[&n[..], &["get"], args].concat());
    assert_eq!(
        get(&["cm", "settings"])["data"],
        serde_json::json!({"mode": "fast"})
    );
    assert_eq!(get(&["secret", "token"])["data"]["value"], "czNjcjN0");
    let deploy = get(&["deploy", "web"]);
    assert_eq!(deploy["spec"]["replicas"], 0, "an explicit zero is kept");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27");
    assert_eq!(
        container["ports"],
        serde_json::json!([{"containerPort": 80, "protocol": "TCP"}])
    );
    assert!(
        container.get("stdin").is_none() && container.get("workingDir").is_none(),
        "Go's zero values are not stored as values: {container}"
    );
    // Defaults, as a real cluster fills them in.
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["restartPolicy"], "Always",
        "{deploy}"
    );
    assert!(deploy["metadata"]["creationTimestamp"].as_str().is_some());
    let service = get(&["svc", "web"]);
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
    // A cluster IP from the VC's service network, as kubectl shows it.
    let ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10."), "{ip}");
    assert_eq!(service["spec"]["clusterIPs"], serde_json::json!([ip]));
    let row = run(&["get", "svc", "web", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..5],
        ["web", "ClusterIP", &ip, "<none>", "80/TCP"],
        "{row}"
    );
    // kubectl replace without the allocated address keeps it; changing it is refused.
    let mut edited = service.clone();
    edited["spec"].as_object_mut().unwrap().remove("clusterIP");
    edited["spec"].as_object_mut().unwrap().remove("clusterIPs");
    edited["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let file = write(&s.path, "svc.json", &edited.to_string());
    run(&["replace", "-f", &file]);
    assert_eq!(get(&["svc", "web"])["spec"]["clusterIP"], ip.as_str());
    edited["spec"]["clusterIP"] = "10.96.7.7".into();
    let file = write(&s.path, "svc-moved.json", &edited.to_string());
    let o = k(kc, &["-n", "shop", "replace", "-f", &file]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("may not change once set"),
        "{}",
        stderr(&o)
    );
    // Node ports are closed by a VC's default quota; this VC's admin
    // opens them.
    let o = kplex_e2e::admin(
        &s.kplex,
        &[
            "patch",
            "vc",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"isolation":{"quota":{"hard":{"services.nodeports":null}}}}}"#,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A node port is one service's: asking for a held one is refused.
    run(&[
        "create",
        "service",
        "nodeport",
        "edge",
        "--tcp=80",
        "--node-port=30080",
    ]);
    assert_eq!(get(&["svc", "edge"])["spec"]["ports"][0]["nodePort"], 30080);
    let o = k(
        kc,
        &[
            "-n",
            "shop",
            "create",
            "service",
            "nodeport",
            "edge2",
            "--tcp=81",
            "--node-port=30080",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("provided port is already allocated"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        get(&["job", "once"])["spec"]["template"]["spec"]["containers"][0]["command"],
        serde_json::json!(["echo", "hi"])
    );
    assert_eq!(
        get(&["cronjob", "nightly"])["spec"]["schedule"],
        "0 3 * * *"
    );
    let rule = &get(&["ingress", "web"])["spec"]["rules"][0];
    assert_eq!(rule["host"], "shop.example");
    assert_eq!(rule["http"]["paths"][0]["path"], "/cart");
    assert_eq!(rule["http"]["paths"][0]["pathType"], "Prefix");
    assert_eq!(
        rule["http"]["paths"][0]["backend"]["service"]["port"]["number"],
        80
    );
    assert_eq!(get(&["pdb", "web"])["spec"]["minAvailable"], "50%");
    assert_eq!(
        get(&["quota", "small"])["spec"]["hard"],
        serde_json::json!({"cpu": "1500m", "pods": "4"})
    );
    assert!(get(&["sa", "robot"])["metadata"]["uid"].as_str().is_some());
    let pod = get(&["pod", "debug"]);
    assert_eq!(pod["metadata"]["labels"]["tier"], "debug");
    assert_eq!(
        pod["spec"]["containers"][0]["env"],
        serde_json::json!([{"name": "LEVEL", "value": "3"}])
    );
    assert_eq!(
        pod["spec"]["containers"][0]["args"],
        serde_json::json!(["sleep", "1"])
    );

    // kubectl patch --type=strategic merges the container list by name.
    run(&[
        "patch",
        "deploy",
        "web",
        "--type=strategic",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.28"}]}}}}"#,
    ]);
    let containers = &get(&["deploy", "web"])["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1, "{containers}");
    assert_eq!(containers[0]["image"], "nginx:1.28");
    assert_eq!(containers[0]["ports"][0]["containerPort"], 80);

    // A generator's object is validated like any other.
    let o = k(
        kc,
        &["create", "configmap", "Bad_Name", "--from-literal=a=b"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is invalid"), "{}", stderr(&o));
}

/// The value of a gauge on the admin `/metrics` page.
fn gauge(kplex: &Kplex, name: &str) -> u64 {
    let o = kplex_e2e::admin(kplex, &["get", "--raw", "/metrics"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

/// Polls the admin `/metrics` until `name` reads `want` (bounded).
fn wait_for_gauge(kplex: &Kplex, name: &str, want: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = gauge(kplex, name);
        if value == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed {value}, want {want}"
        );
    }
}

#[test]
fn watches_share_one_feed_and_idle_vcs_hold_none() {
    let (s, configs) = setup(&["team-a", "team-b", "idle-1", "idle-2"]);
    let (a, b) = (&configs[0], &configs[1]);
    assert_eq!(gauge(&s.kplex, "kplex_watch_cache_live"), 1);
    // The process-wide watches are the VC registry's index, RBAC's four
    // (roles, cluster roles and their bindings in every VC) and the CRDs'
    // one; VCs add none.
    wait_for_gauge(&s.kplex, "kplex_watch_cache_watchers", 6);
    let base = 6;
    for vc in ["idle-3", "idle-4", "idle-5"] {
        create_vc(&s.kplex, &s.path, vc);
    }
    assert_eq!(
        gauge(&s.kplex, "kplex_watch_cache_watchers"),
        base,
        "idle VCs hold no watch"
    );
    let watch = |kc: &std::path::Path| {
        KubectlStream::spawn(&["--kubeconfig", kc.to_str().unwrap(), "get", "cm", "-w"])
    };
    let (wa, wb) = (watch(a), watch(b));
    wait_for_gauge(&s.kplex, "kplex_watch_cache_watchers", base + 2);
    // The same namespace/name in both VCs, B's first: A's watch must see
    // only its own (one data key), B's only B's (two).
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: same, namespace: default}}\ndata: {{{data}}}\n")
    };
    ok(
        b,
        &[
            "create",
            "-f",
            &write(&s.path, "b.yaml", &cm("x: '1', y: '2'")),
        ],
    );
    ok(
        a,
        &["create", "-f", &write(&s.path, "a.yaml", &cm("x: '1'"))],
    );
    for (watcher, data) in [(&wa, "1"), (&wb, "2")] {
        let line = loop {
            let line = watcher.next_line("the configmap");
            if !line.starts_with("NAME") {
                break line;
            }
        };
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[..2], ["same", data], "{line}");
    }
    drop(wa);
    drop(wb);
    wait_for_gauge(&s.kplex, "kplex_watch_cache_watchers", base);
}

#[test]
fn kubectl_drain_evicts_within_disruption_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    create_vc(&kplex, dir.path(), "team-a");
    let kc = tenant_kubeconfig(&kplex, dir.path(), "team-a", "alice");
    let node = write(
        dir.path(),
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n",
    );
    ok(&kc, &["create", "-f", &node]);
    for pod in ["web-1", "web-2", "solo"] {
        let app = if pod == "solo" { "solo" } else { "web" };
        ok(
            &kc,
            &["run", pod, "--image=nginx", &format!("--labels=app={app}")],
        );
        // The scheduler's part: bound to node-1.
        let binding = write(
            dir.path(),
            "binding.json",
            &format!(
                r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"{pod}"}},"target":{{"kind":"Node","name":"node-1"}}}}"#
            ),
        );
        ok(
            &kc,
            &[
                "create",
                "--raw",
                &format!("/clusters/team-a/api/v1/namespaces/default/pods/{pod}/binding"),
                "-f",
                &binding,
            ],
        );
    }
    // Bound once only.
    let again = write(
        dir.path(),
        "again.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"solo"},"target":{"kind":"Node","name":"node-2"}}"#,
    );
    fails_with(
        &kc,
        &[
            "create",
            "--raw",
            "/clusters/team-a/api/v1/namespaces/default/pods/solo/binding",
            "-f",
            &again,
        ],
        "already assigned",
    );
    let bound = ok(
        &kc,
        &["get", "pod", "solo", "-o", "jsonpath={.spec.nodeName}"],
    );
    assert_eq!(bound, "node-1");

    // A Pod no budget guards is evicted at once.
    let eviction = write(
        dir.path(),
        "eviction.json",
        r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"solo"}}"#,
    );
    ok(
        &kc,
        &[
            "create",
            "--raw",
            "/clusters/team-a/api/v1/namespaces/default/pods/solo/eviction",
            "-f",
            &eviction,
        ],
    );
    fails_with(&kc, &["get", "pod", "solo"], "NotFound");

    // A budget that allows no disruption (none computed yet) holds both.
    ok(
        &kc,
        &[
            "create",
            "poddisruptionbudget",
            "web",
            "--selector=app=web",
            "--min-available=1",
        ],
    );
    fails_with(
        &kc,
        &[
            "drain",
            "node-1",
            "--timeout=1s",
            "--force",
            "--pod-selector=app=web",
        ],
        "violate the pod's disruption budget",
    );
    assert!(ok(
        &kc,
        &[
            "get",
            "node",
            "node-1",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ]
    )
    .contains("true"));
    assert_eq!(ok(&kc, &["get", "pods", "-o", "name"]).lines().count(), 2);
    // It allows one (what the disruption controller would say): one goes,
    // the other stays.
    ok(
        &kc,
        &[
            "patch",
            "pdb",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"disruptionsAllowed":1,"currentHealthy":2,"desiredHealthy":1,"expectedPods":2}}"#,
        ],
    );
    let o = k(
        &kc,
        &[
            "drain",
            "node-1",
            "--timeout=1s",
            "--force",
            "--pod-selector=app=web",
        ],
    );
    assert!(!o.status.success());
    assert_eq!(ok(&kc, &["get", "pods", "-o", "name"]).lines().count(), 1);
    let allowed = ok(
        &kc,
        &[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ],
    );
    assert_eq!(allowed, "0");
}

const CLUSTER_KINDS: &str = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: example.com/disk
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: web}
spec: {controller: example.com/ingress}
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: sandboxed}
handler: runsc
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: disk-1}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/disk-1}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: checks}
webhooks:
- name: checks.example.com
  clientConfig: {url: 'https://checks.example.com/'}
  admissionReviewVersions: [v1]
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: mutations}
webhooks:
- name: mutations.example.com
  clientConfig: {url: 'https://mutations.example.com/'}
  admissionReviewVersions: [v1]
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replicas}
spec:
  validations:
  - expression: 'object.spec.replicas <= 5'
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replicas}
spec: {policyName: replicas, validationActions: [Deny]}
---
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata: {name: alice}
spec:
  request: Zm9v
  signerName: example.com/signer
  usages: [client auth]
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {name: batch}
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 5
    limitResponse: {type: Reject}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {name: batch}
spec:
  priorityLevelConfiguration: {name: batch}
---
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: disk.example.com}
spec: {attachRequired: false}
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata: {name: node-1}
spec: {drivers: []}
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttachment
metadata: {name: disk-1-node-1}
spec:
  attacher: disk.example.com
  nodeName: node-1
  source: {persistentVolumeName: disk-1}
---
apiVersion: storage.k8s.io/v1
kind: CSIStorageCapacity
metadata: {name: fast-zone-a, namespace: default}
storageClassName: fast
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: gold}
driverName: disk.example.com
parameters: {iops: \"1000\"}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: extra}
spec: {cidrs: [10.100.0.0/16]}
---
apiVersion: networking.k8s.io/v1
kind: IPAddress
metadata: {name: 10.100.0.50}
spec: {parentRef: {group: \"\", resource: services, name: web, namespace: default}}
---
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: gpu.example.com}
spec:
  selectors: [{cel: {expression: 'device.driver == \"gpu.example.com\"'}}]
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: one-gpu, namespace: default}
spec:
  spec:
    devices:
      requests: [{name: gpu, exactly: {deviceClassName: gpu.example.com}}]
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: gpu-claim, namespace: default}
spec:
  devices:
    requests: [{name: gpu, exactly: {deviceClassName: gpu.example.com}}]
---
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {name: node-1-gpu}
spec:
  driver: gpu.example.com
  nodeName: node-1
  pool: {name: node-1, generation: 1, resourceSliceCount: 1}
  devices: [{name: gpu-0}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.example.com}
spec:
  group: metrics.example.com
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics, namespace: default}
";

#[test]
fn the_clusters_configuration_kinds_are_served_and_stored() {
    let (s, configs) = setup(&["team-a", "team-b"]);
    let (a, b) = (&configs[0], &configs[1]);
    let manifest = write(&s.path, "cluster-kinds.yaml", CLUSTER_KINDS);
    ok(a, &["apply", "-f", &manifest]);
    let resources = ok(a, &["api-resources", "-o", "name"]);
    let kinds = [
        ("storageclasses.storage.k8s.io", "fast"),
        ("priorityclasses.scheduling.k8s.io", "high"),
        ("ingressclasses.networking.k8s.io", "web"),
        ("runtimeclasses.node.k8s.io", "sandboxed"),
        ("persistentvolumes", "disk-1"),
        (
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            "checks",
        ),
        (
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            "mutations",
        ),
        (
            "validatingadmissionpolicies.admissionregistration.k8s.io",
            "replicas",
        ),
        (
            "validatingadmissionpolicybindings.admissionregistration.k8s.io",
            "replicas",
        ),
        ("certificatesigningrequests.certificates.k8s.io", "alice"),
        (
            "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io",
            "batch",
        ),
        ("flowschemas.flowcontrol.apiserver.k8s.io", "batch"),
        ("csidrivers.storage.k8s.io", "disk.example.com"),
        ("csinodes.storage.k8s.io", "node-1"),
        ("volumeattachments.storage.k8s.io", "disk-1-node-1"),
        ("csistoragecapacities.storage.k8s.io", "fast-zone-a"),
        ("volumeattributesclasses.storage.k8s.io", "gold"),
        ("servicecidrs.networking.k8s.io", "extra"),
        ("ipaddresses.networking.k8s.io", "10.100.0.50"),
        ("deviceclasses.resource.k8s.io", "gpu.example.com"),
        ("resourceclaimtemplates.resource.k8s.io", "one-gpu"),
        ("resourceclaims.resource.k8s.io", "gpu-claim"),
        ("resourceslices.resource.k8s.io", "node-1-gpu"),
        (
            "apiservices.apiregistration.k8s.io",
            "v1beta1.metrics.example.com",
        ),
    ];
    for (resource, name) in kinds {
        assert!(
            resources.lines().any(|l| l == resource),
            "{resource}: {resources}"
        );
        let got = ok(a, &["get", resource, "-A", "-o", "name"]);
        assert!(got.contains(&format!("/{name}\n")), "{resource}: {got}");
        // Each VC has its own: the other VC's list is empty.
        assert_eq!(
            ok(b, &["get", resource, "-A", "-o", "name"]),
            "",
            "{resource}"
        );
    }
    // Short names, as kubectl knows them.
    assert!(ok(a, &["get", "sc", "-o", "name"]).contains("storageclass.storage.k8s.io/fast"));
    assert!(ok(a, &["get", "pc", "-o", "name"]).contains("priorityclass.scheduling.k8s.io/high"));
    // A malformed one is refused with the field, and nothing is stored.
    let bad = write(
        &s.path,
        "bad-pc.yaml",
        "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: bad}\nvalue: high\n",
    );
    fails_with(a, &["apply", "-f", &bad], "PriorityClass");
    fails_with(a, &["get", "priorityclass", "bad"], "NotFound");
}

#[test]
fn componentstatuses_and_the_top_level_bindings_are_served() {
    let (s, configs) = setup(&["team-a"]);
    let kc = &configs[0];
    let resources = ok(kc, &["api-resources", "-o", "name"]);
    for resource in ["componentstatuses", "bindings"] {
        assert!(resources.lines().any(|l| l == resource), "{resources}");
    }
    // `kubectl get cs`: the server's storage, healthy, with the
    // deprecation warning kube-apiserver gives.
    let o = k(kc, &["get", "cs"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("storage") && table.contains("Healthy"),
        "{table}"
    );
    assert!(stderr(&o).contains("v1 ComponentStatus is deprecated"));
    let storage: serde_json::Value = serde_json::from_str(&ok(
        kc,
        &["get", "componentstatus", "storage", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(storage["conditions"][0]["status"], "True");
    fails_with(kc, &["get", "cs", "scheduler"], "NotFound");
    fails_with(kc, &["delete", "cs", "storage"], "not allow");
    fails_with(
        kc,
        &["get", "--raw", "/api/v1/componentstatuses?watch=1"],
        "MethodNotAllowed",
    );

    // A Pod bound through `bindings` (the older spelling of pods/binding).
    ok(kc, &["run", "web", "--image=nginx"]);
    let binding = write(
        &s.path,
        "binding.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"web"},"target":{"kind":"Node","name":"node-1"}}"#,
    );
    ok(kc, &["create", "-f", &binding]);
    assert_eq!(
        ok(
            kc,
            &["get", "pod", "web", "-o", "jsonpath={.spec.nodeName}"]
        ),
        "node-1"
    );
    fails_with(kc, &["create", "-f", &binding], "already assigned");
    let nameless = write(
        &s.path,
        "nameless.json",
        r#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":""},"target":{"kind":"Node","name":"node-1"}}"#,
    );
    fails_with(kc, &["create", "-f", &nameless], "name");
}
