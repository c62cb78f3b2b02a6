//! RBAC inside a VC, through kubectl over real HTTPS: bindings grant what
//! their roles hold and nothing else, `kubectl auth can-i` answers from
//! them, nobody grants what they do not hold, the default roles are there
//! without being stored, and one VC's bindings mean nothing in another.

use std::path::Path;

use kplex_e2e::{
    create_vc, eventually, k, k_fails, kubectl, stdout, tenant_kubeconfig, user_kubeconfig, Kplex,
};

/// `kubectl auth can-i` as `kc`: yes (exit 0) or no (exit 1).
fn can_i(kc: &Path, args: &[&str]) -> bool {
    let mut all = vec!["--kubeconfig", kc.to_str().unwrap(), "auth", "can-i"];
    all.extend_from_slice(args);
    let o = kubectl(&all);
    let answer = stdout(&o);
    match o.status.code() {
        Some(0) => assert!(answer.starts_with("yes"), "{answer}"),
        Some(1) => assert!(
            answer.starts_with("no"),
            "can-i {args:?}: {answer} {}",
            kplex_e2e::stderr(&o)
        ),
        other => panic!("kubectl auth can-i {args:?} exited {other:?}: {answer}"),
    }
    o.status.success()
}

/// Waits until `kc` may do `args` (a binding's change reaches the
/// server's policy through its watch of RBAC objects).
fn until_allowed(kc: &Path, args: &[&str]) {
    eventually(&format!("can-i {args:?}"), || can_i(kc, args).then_some(()));
}

fn apply(kc: &Path, dir: &Path, name: &str, manifest: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, manifest).unwrap();
    k(kc, &["apply", "-f", path.to_str().unwrap()])
}

const READER: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: cm-reader
  namespace: dev
rules:
- apiGroups: [\"\"]
  resources: [configmaps]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: rbac-writer
  namespace: dev
rules:
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bob-reads
  namespace: dev
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: cm-reader
subjects:
- kind: User
  name: bob
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: bob-writes-rbac
  namespace: dev
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: rbac-writer
subjects:
- kind: User
  name: bob
";

#[test]
fn a_user_may_do_what_its_bindings_give_and_grant_no_more_than_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    create_vc(&kplex, d, "team-b");
    let alice = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    let bob = user_kubeconfig(&kplex, d, "team-a", "bob", &["dev"]);
    // Bob of the other VC: the same name and group.
    let other_bob = user_kubeconfig(&kplex, d, "team-b", "bob", &["dev"]);

    // Bound to nothing, bob may discover the API and nothing more.
    assert!(!can_i(&bob, &["list", "configmaps", "-n", "dev"]));
    let refused = k_fails(&bob, &["get", "configmaps", "-n", "dev"]);
    assert!(
        refused.contains(
            "configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"dev\""
        ),
        "{refused}"
    );
    assert!(k(&bob, &["api-resources", "-o", "name"]).contains("deployments.apps"));

    k(&alice, &["create", "namespace", "dev"]);
    k(&alice, &["create", "namespace", "prod"]);
    for ns in ["dev", "prod"] {
        k(
            &alice,
            &[
                "create",
                "configmap",
                "settings",
                "-n",
                ns,
                "--from-literal=a=1",
            ],
        );
    }
    apply(&alice, d, "reader.yaml", READER);
    until_allowed(&bob, &["list", "configmaps", "-n", "dev"]);

    // The admin asks as bob (impersonation); bob may not impersonate.
    assert!(can_i(
        &alice,
        &["list", "configmaps", "-n", "dev", "--as=bob"]
    ));
    assert!(!can_i(
        &alice,
        &["list", "configmaps", "-n", "prod", "--as=bob"]
    ));
    let refused = k_fails(&bob, &["get", "configmaps", "-n", "prod", "--as=alice"]);
    assert!(
        refused.contains("cannot impersonate resource \"users\""),
        "{refused}"
    );

    // What the role holds, where it is bound; nothing else.
    assert!(can_i(&bob, &["get", "configmaps/settings", "-n", "dev"]));
    assert!(!can_i(&bob, &["delete", "configmaps", "-n", "dev"]));
    assert!(!can_i(&bob, &["list", "configmaps", "-n", "prod"]));
    assert!(!can_i(&bob, &["list", "secrets", "-n", "dev"]));
    assert!(k(
        &bob,
        &["get", "configmap", "settings", "-n", "dev", "-o", "name"]
    )
    .contains("settings"));
    let refused = k_fails(&bob, &["delete", "configmap", "settings", "-n", "dev"]);
    assert!(
        refused.contains("configmaps \"settings\" is forbidden: User \"bob\" cannot delete resource \"configmaps\""),
        "{refused}"
    );
    let refused = k_fails(&bob, &["get", "configmaps", "-n", "prod"]);
    assert!(refused.contains("in the namespace \"prod\""), "{refused}");
    let refused = k_fails(&bob, &["get", "namespaces"]);
    assert!(refused.contains("at the cluster scope"), "{refused}");
    // Still there: a refusal changes nothing.
    k(&alice, &["get", "configmap", "settings", "-n", "dev"]);
    // A watch is asked as one too.
    assert!(can_i(&bob, &["watch", "configmaps", "-n", "dev"]));

    // Bob may write roles and bindings in dev, but grant only what he holds.
    k(
        &bob,
        &[
            "create",
            "role",
            "cm-getter",
            "-n",
            "dev",
            "--verb=get",
            "--resource=configmaps",
        ],
    );
    let escalation = k_fails(
        &bob,
        &[
            "create",
            "role",
            "secret-reader",
            "-n",
            "dev",
            "--verb=get",
            "--resource=secrets",
        ],
    );
    assert!(
        escalation.contains("is attempting to grant RBAC permissions not currently held")
            && escalation.contains("Resources:[\"secrets\"]"),
        "{escalation}"
    );
    let escalation = k_fails(
        &bob,
        &[
            "create",
            "rolebinding",
            "bob-admin",
            "-n",
            "dev",
            "--clusterrole=admin",
            "--user=bob",
        ],
    );
    assert!(escalation.contains("not currently held"), "{escalation}");
    // A binding he may make: to a role he holds all of.
    k(
        &bob,
        &[
            "create",
            "rolebinding",
            "carol-gets",
            "-n",
            "dev",
            "--role=cm-getter",
            "--user=carol",
        ],
    );
    // A role that does not exist cannot be bound by him…
    let missing = k_fails(
        &bob,
        &[
            "create",
            "rolebinding",
            "ghost",
            "-n",
            "dev",
            "--role=ghost",
            "--user=bob",
        ],
    );
    assert!(
        missing.contains("roles.rbac.authorization.k8s.io \"ghost\" not found"),
        "{missing}"
    );
    // …and bound by the admin, it is stored and grants nothing.
    k(
        &alice,
        &[
            "create",
            "rolebinding",
            "ghost",
            "-n",
            "dev",
            "--role=ghost",
            "--user=dana",
        ],
    );
    k(&alice, &["get", "rolebinding", "ghost", "-n", "dev"]);
    let dana = user_kubeconfig(&kplex, d, "team-a", "dana", &[]);
    assert!(!can_i(&dana, &["get", "configmaps", "-n", "dev"]));

    // The same user and group in another VC hold nothing there.
    assert!(!can_i(&other_bob, &["list", "configmaps", "-n", "dev"]));
    assert!(k_fails(&other_bob, &["get", "configmaps", "-n", "dev"]).contains("forbidden"));

    // A path spelled with an empty segment is no way around the check.
    for path in [
        "/api//v1/namespaces/prod/configmaps",
        "/api/v1/namespaces//prod/configmaps",
        "/api/v1/namespaces/prod/configmaps/",
    ] {
        let refused = k_fails(&bob, &["get", "--raw", path]);
        assert!(
            refused.contains("NotFound") || refused.contains("not found"),
            "{path}: {refused}"
        );
    }

    // Labelling a role into an aggregation grants what it holds: bob, who
    // may patch cluster roles but holds no secrets, may not.
    k(
        &alice,
        &[
            "create",
            "clusterrole",
            "secrets-admin",
            "--verb=*",
            "--resource=secrets",
        ],
    );
    k(
        &alice,
        &[
            "create",
            "clusterrole",
            "role-labeller",
            "--verb=get,patch,update",
            "--resource=clusterroles",
        ],
    );
    k(
        &alice,
        &[
            "create",
            "clusterrolebinding",
            "bob-labels",
            "--clusterrole=role-labeller",
            "--user=bob",
        ],
    );
    until_allowed(&bob, &["patch", "clusterroles"]);
    let refused = k_fails(
        &bob,
        &[
            "label",
            "clusterrole",
            "secrets-admin",
            "rbac.authorization.k8s.io/aggregate-to-view=true",
        ],
    );
    assert!(refused.contains("not currently held"), "{refused}");
    assert!(!k(&alice, &["get", "clusterrole", "view", "-o", "json"]).contains("\"secrets\""));

    // A binding's role cannot change.
    let changed = k_fails(
        &alice,
        &[
            "patch",
            "rolebinding",
            "bob-reads",
            "-n",
            "dev",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"rbac-writer"}}"#,
        ],
    );
    assert!(changed.contains("cannot change roleRef"), "{changed}");

    // Unbound, bob loses what it gave.
    k(&alice, &["delete", "rolebinding", "bob-reads", "-n", "dev"]);
    eventually("the binding's removal", || {
        (!can_i(&bob, &["list", "configmaps", "-n", "dev"])).then_some(())
    });
}

const LEASES_VIEW: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: leases-view
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: \"true\"
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch]
";

#[test]
fn the_default_roles_are_in_every_vc_aggregate_and_cannot_be_changed() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    let alice = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    let erin = user_kubeconfig(&kplex, d, "team-a", "erin", &["viewers"]);

    // As kubectl shows them (a Table), one and all.
    let table = k(&alice, &["get", "clusterrole", "view"]);
    assert!(
        table.starts_with("NAME") && table.contains("view"),
        "{table}"
    );
    let roles = k(&alice, &["get", "clusterroles", "-o", "name"]);
    for role in ["cluster-admin", "admin", "edit", "view", "system:discovery"] {
        assert!(
            roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}\n")),
            "{roles}"
        );
    }
    let bindings = k(&alice, &["get", "clusterrolebindings"]);
    assert!(bindings.contains("ClusterRole/cluster-admin"), "{bindings}");
    let view: serde_json::Value =
        serde_json::from_str(&k(&alice, &["get", "clusterrole", "view", "-o", "json"])).unwrap();
    let rules = view["rules"].to_string();
    assert!(
        rules.contains("pods") && !rules.contains("secrets"),
        "{rules}"
    );
    // They are the VC's, not to be changed or deleted.
    assert!(k_fails(&alice, &["delete", "clusterrole", "view"])
        .contains("default of the virtual cluster"));
    assert!(k_fails(
        &alice,
        &[
            "create",
            "clusterrole",
            "edit",
            "--verb=get",
            "--resource=pods"
        ]
    )
    .contains("AlreadyExists"));

    // A role labelled for aggregation extends view (and edit, admin).
    k(
        &alice,
        &[
            "create",
            "clusterrolebinding",
            "viewers",
            "--clusterrole=view",
            "--group=viewers",
        ],
    );
    until_allowed(&erin, &["list", "pods", "-A"]);
    assert!(!can_i(&erin, &["get", "leases.coordination.k8s.io"]));
    let path = d.join("leases.yaml");
    std::fs::write(&path, LEASES_VIEW).unwrap();
    k(&alice, &["apply", "-f", path.to_str().unwrap()]);
    until_allowed(&erin, &["get", "leases.coordination.k8s.io"]);
    let view: serde_json::Value =
        serde_json::from_str(&k(&alice, &["get", "clusterrole", "view", "-o", "json"])).unwrap();
    assert!(
        view["rules"].to_string().contains("leases"),
        "{}",
        view["rules"]
    );
    assert!(!can_i(&erin, &["delete", "pods", "-n", "default"]));
    let labelled = k(
        &alice,
        &[
            "get",
            "clusterroles",
            "-l",
            "rbac.authorization.k8s.io/aggregate-to-view=true",
            "-o",
            "name",
        ],
    );
    assert!(
        labelled.contains("/leases-view")
            && labelled.contains("/system:aggregate-to-view")
            && !labelled.contains("/cluster-admin"),
        "{labelled}"
    );

    // Paged, the list holds the same roles once each, in order, no page
    // over its limit; a watch starts with the defaults too.
    for name in ["aaa-first", "mmm-middle", "zzz-last"] {
        k(
            &alice,
            &[
                "create",
                "clusterrole",
                name,
                "--verb=get",
                "--resource=pods",
            ],
        );
    }
    let whole = k(&alice, &["get", "clusterroles", "-o", "name"]);
    assert!(whole.contains("/aaa-first\n") && whole.contains("/zzz-last\n"));
    assert_eq!(
        k(
            &alice,
            &["get", "clusterroles", "-o", "name", "--chunk-size=2"]
        ),
        whole
    );
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page: serde_json::Value = serde_json::from_str(&k(
            &alice,
            &[
                "get",
                "--raw",
                &format!(
                    "/apis/rbac.authorization.k8s.io/v1/clusterroles?limit=3&continue={token}"
                ),
            ],
        ))
        .unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3, "{}", items.len());
        names.extend(
            items
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => break,
        }
    }
    let listed: Vec<&str> = whole
        .lines()
        .map(|l| l.trim_start_matches("clusterrole.rbac.authorization.k8s.io/"))
        .collect();
    assert_eq!(names, listed);
    let events = k(
        &alice,
        &[
            "get",
            "--raw",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles?watch=1&timeoutSeconds=1",
        ],
    );
    let mut added: Vec<String> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "ADDED")
        .map(|e| e["object"]["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    added.sort();
    assert_eq!(added, listed);
}

/// The status of a TokenReview of `token` for `audiences`, created as `kc`.
fn review_token(kc: &Path, dir: &Path, token: &str, audiences: &[&str]) -> serde_json::Value {
    let review = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    });
    let path = dir.join("review.json");
    std::fs::write(&path, review.to_string()).unwrap();
    let answer = k(kc, &["create", "-f", path.to_str().unwrap(), "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&answer).unwrap()["status"].clone()
}

#[test]
fn a_token_review_authenticates_its_own_vcs_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let d = dir.path();
    create_vc(&kplex, d, "team-a");
    create_vc(&kplex, d, "team-b");
    let alice = tenant_kubeconfig(&kplex, d, "team-a", "alice");
    let other = tenant_kubeconfig(&kplex, d, "team-b", "olga");
    k(&alice, &["create", "serviceaccount", "robot"]);
    let uid = k(
        &alice,
        &["get", "sa", "robot", "-o", "jsonpath={.metadata.uid}"],
    );
    let token = k(&alice, &["create", "token", "robot"]).trim().to_owned();

    // Its own VC knows the token: the ServiceAccount, its UID, its groups
    // and the audience it was issued for (kplex's, none being asked).
    let status = review_token(&alice, d, &token, &[]);
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:robot"
    );
    assert_eq!(status["user"]["uid"], uid.as_str());
    let groups = status["user"]["groups"].to_string();
    for group in [
        "system:serviceaccounts",
        "system:serviceaccounts:default",
        "system:authenticated",
    ] {
        assert!(groups.contains(&format!("\"{group}\"")), "{groups}");
    }
    assert_eq!(
        status["audiences"],
        serde_json::json!(["https://kubernetes.default.svc.cluster.local"])
    );

    // Another VC does not: its answer is an invalid token's, nothing more.
    let elsewhere = review_token(&other, d, &token, &[]);
    assert_ne!(elsewhere["authenticated"], true, "{elsewhere}");
    assert_eq!(elsewhere["error"], "invalid bearer token");
    assert_eq!(elsewhere["user"], serde_json::json!({}));

    // A token for another audience authenticates for that audience only.
    let vault = k(&alice, &["create", "token", "robot", "--audience", "vault"])
        .trim()
        .to_owned();
    assert_ne!(review_token(&alice, d, &vault, &[])["authenticated"], true);
    let for_vault = review_token(&alice, d, &vault, &["vault", "consul"]);
    assert_eq!(for_vault["authenticated"], true, "{for_vault}");
    assert_eq!(for_vault["audiences"], serde_json::json!(["vault"]));

    // Forged, empty, or of a deleted ServiceAccount: not authenticated.
    let mut forged = token.clone();
    forged.pop();
    assert_ne!(review_token(&alice, d, &forged, &[])["authenticated"], true);
    let path = d.join("empty.json");
    std::fs::write(
        &path,
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":""}}"#,
    )
    .unwrap();
    let refused = k_fails(&alice, &["create", "-f", path.to_str().unwrap()]);
    assert!(refused.contains("token is required"), "{refused}");
    k(&alice, &["delete", "serviceaccount", "robot"]);
    let gone = review_token(&alice, d, &token, &[]);
    assert_ne!(gone["authenticated"], true, "{gone}");
    assert!(
        gone["error"].as_str().unwrap().contains("invalidated"),
        "{gone}"
    );

    // Asking takes `create tokenreviews`, which system:auth-delegator holds.
    let bob = user_kubeconfig(&kplex, d, "team-a", "bob", &[]);
    assert!(!can_i(
        &bob,
        &["create", "tokenreviews.authentication.k8s.io"]
    ));
    k(
        &alice,
        &[
            "create",
            "clusterrolebinding",
            "bob-delegates",
            "--clusterrole=system:auth-delegator",
            "--user=bob",
        ],
    );
    until_allowed(&bob, &["create", "tokenreviews.authentication.k8s.io"]);
    assert_ne!(review_token(&bob, d, &token, &[])["authenticated"], true);
}
