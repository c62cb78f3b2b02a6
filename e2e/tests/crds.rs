//! CustomResourceDefinitions inside a VC, through kubectl and a kube-rs
//! `Controller` over real HTTPS: a VC's CRD serves its resource in that VC
//! only, with its schema enforced, its columns, subresources and
//! server-side apply; two VCs hold conflicting CRDs of one group; deleting
//! a CRD deletes its objects.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kplex_e2e::{create_vc, eventually, k, k_fails, tenant_kubeconfig, Kplex};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;

fn widgets_crd(size_max: u32, extra_version: bool) -> String {
    let beta = if extra_version {
        "  - name: v1beta1\n    served: true\n    storage: false\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n"
    } else {
        ""
    };
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wd], categories: [all]}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    additionalPrinterColumns:
    - {{name: Size, type: integer, jsonPath: .spec.size}}
    - {{name: Color, type: string, jsonPath: .spec.color}}
    - {{name: Ready, type: boolean, jsonPath: .status.ready}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {{type: integer, minimum: 1, maximum: {size_max}}}
              color: {{type: string, enum: [red, blue], default: red}}
              name: {{type: string, pattern: '^[a-z]+$'}}
              port: {{x-kubernetes-int-or-string: true}}
              tags:
                type: array
                x-kubernetes-list-type: set
                items: {{type: string}}
              labels:
                type: object
                additionalProperties: {{type: string}}
          status:
            type: object
            properties:
              ready: {{type: boolean}}
{beta}"
    )
}

fn apply(kc: &Path, dir: &Path, name: &str, manifest: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, manifest).unwrap();
    k(kc, &["apply", "-f", path.to_str().unwrap()])
}

/// Waits for the widgets CRD to be Established, as a user would.
fn established(kc: &Path) {
    k(
        kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=20s",
        ],
    );
}

fn write(dir: &Path, name: &str, manifest: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, manifest).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_vcs_crd_serves_its_resource_with_its_schema_columns_and_subresources() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    create_vc(&kplex, d, "team-b");
    let a = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    let b = tenant_kubeconfig(&kplex, d, "team-b", "bob");

    apply(&a, d, "crd.yaml", &widgets_crd(10, true));
    established(&a);
    let crd: serde_json::Value =
        serde_json::from_str(&k(&a, &["get", "crd", "widgets.example.com", "-o", "json"])).unwrap();
    let conditions = crd["status"]["conditions"].to_string();
    assert!(
        conditions.contains("NamesAccepted") && conditions.contains("Established"),
        "{conditions}"
    );
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "WidgetList");
    assert_eq!(crd["status"]["storedVersions"], serde_json::json!(["v1"]));

    // Served in its VC only: discovery, api-resources, explain.
    let resources = k(&a, &["api-resources", "--api-group=example.com"]);
    assert!(
        resources.contains("widgets") && resources.contains("wd"),
        "{resources}"
    );
    assert!(!k(&b, &["api-resources"]).contains("example.com"));
    assert!(k_fails(&b, &["get", "widgets"]).contains("doesn't have a resource type"));
    // Nor does another VC's OpenAPI document carry its schema.
    assert!(k_fails(&b, &["explain", "widget"]).contains("widget"));
    assert!(!k(&b, &["get", "--raw", "/openapi/v3"]).contains("example.com"));
    let explained = k(&a, &["explain", "widget.spec"]);
    assert!(
        explained.contains("size") && explained.contains("color"),
        "{explained}"
    );

    // Objects: pruned, defaulted, shown with the columns.
    let widget = "apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: default}
spec: {size: 3, port: http, tags: [a, b], labels: {x: one}}
";
    apply(&a, d, "w1.yaml", widget);
    let table = k(&a, &["get", "widgets"]);
    assert!(
        table.starts_with("NAME") && table.contains("SIZE") && table.contains("COLOR"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("w1") && l.contains(" 3 ") && l.contains("red")),
        "{table}"
    );
    assert!(k(&a, &["get", "all", "-o", "name"]).contains("widget.example.com/w1"));
    // Unknown fields: refused by kubectl's strict validation, pruned when
    // the client asks for no validation.
    let extra = write(d, "extra.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 2, extra: x}\n");
    assert!(k_fails(&a, &["create", "-f", &extra]).contains("unknown field \"spec.extra\""));
    k(&a, &["create", "-f", &extra, "--validate=false"]);
    let w2: serde_json::Value =
        serde_json::from_str(&k(&a, &["get", "widget", "w2", "-o", "json"])).unwrap();
    assert!(w2["spec"].get("extra").is_none(), "{}", w2["spec"]);

    // An invalid object is refused with each field's path, and not stored.
    for (spec, field, says) in [
        ("{size: big}", "spec.size", "must be of type integer"),
        ("{size: 11}", "spec.size", "less than or equal to 10"),
        (
            "{color: green, size: 1}",
            "spec.color",
            "Unsupported value: \"green\"",
        ),
        ("{size: 1, name: 'No'}", "spec.name", "should match"),
        ("{size: 1, port: [1]}", "spec.port", "integer or string"),
        ("{size: 1, tags: [a, a]}", "spec.tags[1]", "Duplicate value"),
        (
            "{size: 1, labels: {x: 1}}",
            "spec.labels.x",
            "must be of type string",
        ),
        ("{color: red}", "spec.size", "Required value"),
    ] {
        let bad = write(
            d,
            "bad.yaml",
            &format!(
                "apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: bad}}\nspec: {spec}\n"
            ),
        );
        let refused = k_fails(&a, &["create", "-f", &bad]);
        assert!(
            refused.contains("is invalid") && refused.contains(field) && refused.contains(says),
            "{spec}: {refused}"
        );
    }
    assert!(k_fails(&a, &["get", "widget", "bad"]).contains("NotFound"));

    // The status subresource: a write to the object keeps status, one to
    // /status changes only status; spec changes move the generation.
    k(
        &a,
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"ready":true}}"#,
        ],
    );
    k(
        &a,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":4},"status":{"ready":false}}"#,
        ],
    );
    let w1: serde_json::Value =
        serde_json::from_str(&k(&a, &["get", "widget", "w1", "-o", "json"])).unwrap();
    assert_eq!(w1["status"]["ready"], true);
    assert_eq!(w1["spec"]["size"], 4);
    assert_eq!(w1["metadata"]["generation"], 2);

    // Server-side apply with two managers, and the conflict.
    let applied = |manager: &str, size: u32, force: bool| {
        let path = write(d, "ssa.yaml", &format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w3, namespace: default}}\nspec: {{size: {size}}}\n"));
        let mut args = vec![
            "apply",
            "--server-side",
            "--field-manager",
            manager,
            "-f",
            path.as_str(),
        ];
        if force {
            args.push("--force-conflicts");
        }
        let mut all = vec!["--kubeconfig", a.to_str().unwrap()];
        all.extend_from_slice(&args);
        kplex_e2e::kubectl(&all)
    };
    assert!(applied("alice", 2, false).status.success());
    let conflict = applied("bob", 5, false);
    assert!(!conflict.status.success());
    assert!(
        kplex_e2e::stderr(&conflict).contains("conflict with \"alice\""),
        "{}",
        kplex_e2e::stderr(&conflict)
    );
    assert!(applied("bob", 5, true).status.success());

    // The other served version reads the same objects.
    let beta = k(&a, &["get", "widgets.v1beta1.example.com", "-o", "name"]);
    assert!(beta.contains("w1") && beta.contains("w3"), "{beta}");

    // Another VC installs a conflicting CRD of the same group: each VC
    // validates by its own.
    // Once the write is answered, the resource is served (no wait).
    apply(&b, d, "crd-b.yaml", &widgets_crd(100, false));
    let big = write(
        d,
        "big.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: big}\nspec: {size: 50}\n",
    );
    k(&b, &["create", "-f", &big]);
    assert!(k_fails(&a, &["create", "-f", &big]).contains("less than or equal to 10"));
    assert!(!k(&a, &["get", "widgets", "-o", "name"]).contains("big"));

    // A dry run of the CRD's deletion deletes nothing.
    k(
        &a,
        &["delete", "crd", "widgets.example.com", "--dry-run=server"],
    );
    assert!(k(&a, &["get", "widgets", "-o", "name"]).contains("w1"));
    // Its scope is what its objects' keys are made of: it cannot change.
    let scoped = k_fails(
        &a,
        &[
            "patch",
            "crd",
            "widgets.example.com",
            "--type=merge",
            "-p",
            r#"{"spec":{"scope":"Cluster"}}"#,
        ],
    );
    assert!(
        scoped.contains("spec.scope") && scoped.contains("immutable"),
        "{scoped}"
    );

    // Deleting the CRD deletes its objects: a new one starts empty.
    k(&a, &["delete", "crd", "widgets.example.com"]);
    apply(&a, d, "crd.yaml", &widgets_crd(10, true));
    established(&a);
    eventually("the resource served again", || {
        let mut all = vec!["--kubeconfig", a.to_str().unwrap()];
        all.extend_from_slice(&["get", "widgets", "-o", "name"]);
        let o = kplex_e2e::kubectl(&all);
        o.status.success().then(|| kplex_e2e::stdout(&o))
    })
    .is_empty()
    .then_some(())
    .expect("the deleted CRD's objects are gone");
    assert!(k(&b, &["get", "widgets", "-o", "name"]).contains("big"));
}

#[test]
fn a_bad_crd_is_refused_with_its_causes() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    let a = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    let crd = |name: &str, group: &str, versions: &str| {
        format!("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {name}}}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{plural: things, kind: Thing}}\n  versions:\n{versions}")
    };
    let typed = "  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object}\n";
    for (manifest, says) in [
        (crd("wrong.example.com", "example.com", typed), "must be spec.names.plural+\".\"+spec.group"),
        (crd("things.storage.k8s.io", "storage.k8s.io", typed), "built-in API"),
        (crd("things.example.com", "example.com", "  - {name: v1, served: true, storage: false, schema: {openAPIV3Schema: {type: object}}}\n"), "exactly one version marked as storage version"),
        (crd("things.example.com", "example.com", "  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, properties: {spec: {properties: {a: {type: string}}}}}}}\n"), "properties[spec].type: Required value"),
        (crd("things.example.com", "example.com", "  - {name: v1, served: true, storage: true}\n"), "schemas are required"),
    ] {
        let path = write(d, "bad-crd.yaml", &manifest);
        let refused = k_fails(&a, &["create", "-f", &path]);
        assert!(refused.contains("is invalid") && refused.contains(says), "{says}: {refused}");
    }
    assert!(k(&a, &["get", "crds", "-o", "name"]).is_empty());
    // A second CRD of the group may not take the first's kind.
    let first = write(
        d,
        "first.yaml",
        &crd("things.example.com", "example.com", typed),
    );
    k(&a, &["create", "-f", &first]);
    let second =
        crd("gizmos.example.com", "example.com", typed).replace("plural: things", "plural: gizmos");
    let second = write(d, "second.yaml", &second);
    let refused = k_fails(&a, &["create", "-f", &second]);
    assert!(
        refused.contains("spec.names.kind")
            && refused.contains("already in use by \"things.example.com\""),
        "{refused}"
    );
    // A keyword kplex does not enforce is stored, and the client told.
    let any_of = crd("looses.example.com", "example.com", "  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec:\n            type: object\n            properties: {a: {type: string, format: email}}\n")
        .replace("plural: things, kind: Thing", "plural: looses, kind: Loose");
    let any_of = write(d, "loose.yaml", &any_of);
    let o = kplex_e2e::kubectl(&["--kubeconfig", a.to_str().unwrap(), "create", "-f", &any_of]);
    assert!(o.status.success(), "{}", kplex_e2e::stderr(&o));
    assert!(
        kplex_e2e::stderr(&o).contains("does not enforce"),
        "{}",
        kplex_e2e::stderr(&o)
    );
    // A CEL rule too expensive to run is refused when the CRD is written.
    let costly = crd("costlies.example.com", "example.com", "  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          tags: {type: array, items: {type: string}}\n        x-kubernetes-validations: [{rule: 'self.tags.all(x, self.tags.all(y, x == y))'}]\n")
        .replace("plural: things, kind: Thing", "plural: costlies, kind: Costly");
    let costly = write(d, "costly.yaml", &costly);
    let refused = k_fails(&a, &["create", "-f", &costly]);
    assert!(
        refused.contains("estimated rule cost exceeds budget"),
        "{refused}"
    );
}

const RULES_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gauges.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gauges, kind: Gauge}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - {rule: 'self.min <= self.max', message: 'min may not exceed max'}
            properties:
              min: {type: integer}
              max: {type: integer}
              level:
                type: integer
                x-kubernetes-validations:
                - {rule: 'self >= oldSelf', message: 'level may not go down'}
";

#[test]
fn cel_rules_of_a_crd_are_enforced_on_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    let a = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    apply(&a, d, "gauges.yaml", RULES_CRD);
    let gauge = |name: &str, min: i64, max: i64, level: i64| {
        write(d, &format!("{name}.yaml"), &format!("apiVersion: example.com/v1\nkind: Gauge\nmetadata: {{name: {name}}}\nspec: {{min: {min}, max: {max}, level: {level}}}\n"))
    };
    let refused = k_fails(&a, &["create", "-f", &gauge("bad", 5, 1, 0)]);
    assert!(
        refused.contains("spec: Invalid value: \"object\": min may not exceed max"),
        "{refused}"
    );
    assert!(k_fails(&a, &["get", "gauge", "bad"]).contains("NotFound"));
    // A transition rule is not asked on create, and is on update.
    k(&a, &["create", "-f", &gauge("g", 1, 5, 3)]);
    let refused = k_fails(
        &a,
        &[
            "patch",
            "gauge",
            "g",
            "--type=merge",
            "-p",
            r#"{"spec":{"level":2}}"#,
        ],
    );
    assert!(
        refused.contains("spec.level") && refused.contains("level may not go down"),
        "{refused}"
    );
    k(
        &a,
        &[
            "patch",
            "gauge",
            "g",
            "--type=merge",
            "-p",
            r#"{"spec":{"level":4}}"#,
        ],
    );
    let g: serde_json::Value =
        serde_json::from_str(&k(&a, &["get", "gauge", "g", "-o", "json"])).unwrap();
    assert_eq!(g["spec"]["level"], 4);
}

/// What the test controller does: marks each Widget ready.
async fn reconcile(
    widget: Arc<DynamicObject>,
    api: Arc<Api<DynamicObject>>,
) -> Result<Action, kube::Error> {
    let name = widget.metadata.name.clone().unwrap_or_default();
    if widget.data["status"]["ready"] != true {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"ready": true}})),
        )
        .await?;
    }
    Ok(Action::await_change())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_rs_controller_reconciles_a_custom_resource_in_a_vc() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path().to_owned();
    create_vc(&kplex, &d, "team-a");
    let a = tenant_kubeconfig(&kplex, &d, "team-a", "alice");
    apply(&a, &d, "crd.yaml", &widgets_crd(10, false));
    established(&a);

    let kubeconfig = kube::config::Kubeconfig::read_from(&a).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("example.com", "v1", "Widget"));
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let shared = Arc::new(api.clone());
    let controller =
        Controller::new_with(api.clone(), watcher::Config::default(), resource.clone())
            .run(
                move |widget, _| reconcile(widget, shared.clone()),
                |_, _, _| Action::requeue(Duration::from_secs(1)),
                Arc::new(()),
            )
            .for_each(|_| async {});
    let controller = tokio::spawn(controller);

    for name in ["one", "two"] {
        let widget = write(&d, "w.yaml", &format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\nspec: {{size: 1}}\n"));
        k(&a, &["create", "-f", &widget]);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = api.list(&Default::default()).await.unwrap();
        if list.items.len() == 2 && list.items.iter().all(|w| w.data["status"]["ready"] == true) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the controller did not mark both ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table = k(&a, &["get", "widgets"]);
    assert!(
        table.lines().filter(|l| l.contains("true")).count() == 2,
        "{table}"
    );
    controller.abort();
}

/// A CRD of gadgets served as v1 and v2, `storage` the one stored.
fn gadgets_crd(versions: &[&str], storage: &str) -> String {
    let versions: String = versions
        .iter()
        .map(|v| {
            format!(
                "  - name: {v}\n    served: true\n    storage: {}\n    schema:\n      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
                *v == storage
            )
        })
        .collect();
    format!(
        "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: gadgets.example.com}}
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: gadgets, singular: gadget, kind: Gadget}}
  versions:
{versions}"
    )
}

/// `gadget/name` read through `version`, as JSON.
fn gadget(kc: &Path, version: &str, name: &str) -> serde_json::Value {
    let resource = format!("gadgets.{version}.example.com");
    serde_json::from_str(&k(kc, &["get", &resource, name, "-o", "json"])).unwrap()
}

fn stored_versions(kc: &Path) -> String {
    k(
        kc,
        &[
            "get",
            "crd",
            "gadgets.example.com",
            "-o",
            "jsonpath={.status.storedVersions}",
        ],
    )
}

#[test]
fn a_crds_versions_share_one_storage_and_answer_as_the_version_asked() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    let a = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    apply(&a, d, "gadgets.yaml", &gadgets_crd(&["v1", "v2"], "v1"));
    assert_eq!(stored_versions(&a), r#"["v1"]"#);

    // Written through v2, read through either: each answer names the
    // version asked (conversion None), the object is one.
    let created = k(
        &a,
        &[
            "create",
            "-f",
            &write(
                d,
                "g2.yaml",
                "apiVersion: example.com/v2\nkind: Gadget\nmetadata: {name: g2}\nspec: {x: 1}\n",
            ),
            "-o",
            "jsonpath={.apiVersion}",
        ],
    );
    assert_eq!(created, "example.com/v2");
    let (one, two) = (gadget(&a, "v1", "g2"), gadget(&a, "v2", "g2"));
    assert_eq!(one["apiVersion"], "example.com/v1");
    assert_eq!(two["apiVersion"], "example.com/v2");
    assert_eq!(one["metadata"]["uid"], two["metadata"]["uid"]);
    assert_eq!(one["spec"], serde_json::json!({"x": 1}));
    let listed = k(
        &a,
        &[
            "get",
            "gadgets.v2.example.com",
            "-o",
            "jsonpath={.items[*].apiVersion}",
        ],
    );
    assert_eq!(listed, "example.com/v2");
    // A watch's events too.
    let events = k(
        &a,
        &[
            "get",
            "--raw",
            "/apis/example.com/v2/namespaces/default/gadgets?watch=1&timeoutSeconds=1",
        ],
    );
    let event: serde_json::Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["apiVersion"], "example.com/v2");
    // A patch through v1 leaves it v1's to read, v2's through v2.
    let patched = k(
        &a,
        &[
            "patch",
            "gadgets.v1.example.com",
            "g2",
            "--type=merge",
            "-p",
            r#"{"spec":{"x":2}}"#,
            "-o",
            "json",
        ],
    );
    let patched: serde_json::Value = serde_json::from_str(&patched).unwrap();
    assert_eq!(patched["apiVersion"], "example.com/v1");
    assert_eq!(gadget(&a, "v2", "g2")["spec"]["x"], 2);

    // The storage version moves to v2: storedVersions keeps v1 (objects
    // may still be stored as it), and v1 cannot be dropped until it goes.
    apply(&a, d, "gadgets.yaml", &gadgets_crd(&["v1", "v2"], "v2"));
    assert_eq!(stored_versions(&a), r#"["v1","v2"]"#);
    let dropped = write(d, "v2-only.yaml", &gadgets_crd(&["v2"], "v2"));
    let refused = k_fails(&a, &["apply", "-f", &dropped]);
    assert!(
        refused.contains(
            r#"status.storedVersions[0]: Invalid value: "v1": must appear in spec.versions"#
        ),
        "{refused}"
    );
    assert_eq!(gadget(&a, "v2", "g2")["apiVersion"], "example.com/v2");

    // A storage migration: each object written back unchanged moves to
    // v2 (a new resourceVersion); then v1 may leave storedVersions and
    // the CRD, and the objects read as v2 with v1 gone.
    let before = gadget(&a, "v2", "g2");
    let path = write(d, "g2.json", &before.to_string());
    k(&a, &["replace", "-f", &path]);
    let after = gadget(&a, "v2", "g2");
    assert_ne!(
        before["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    k(
        &a,
        &[
            "patch",
            "crd",
            "gadgets.example.com",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"storedVersions":["v2"]}}"#,
        ],
    );
    k(&a, &["apply", "-f", &dropped]);
    eventually("v1 no longer served", || {
        let mut all = vec!["--kubeconfig", a.to_str().unwrap()];
        all.extend_from_slice(&["get", "gadgets.v1.example.com"]);
        (!kplex_e2e::kubectl(&all).status.success()).then_some(())
    });
    let migrated = gadget(&a, "v2", "g2");
    assert_eq!(migrated["apiVersion"], "example.com/v2");
    assert_eq!(migrated["spec"]["x"], 2);
    assert_eq!(stored_versions(&a), r#"["v2"]"#);
}
