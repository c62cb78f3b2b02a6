//! `kplex vc …` against a running server.

mod support;

use std::process::{Command, Output};

use support::{kubectl, stderr, stdout, Kplex};

fn kplex_vc(kplex: &Kplex, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kplex"))
        .arg("vc")
        .args(args)
        .arg("--kubeconfig")
        .arg(kplex.kubeconfig())
        .output()
        .unwrap()
}

#[test]
fn the_cli_creates_lists_issues_credentials_for_and_deletes_vcs() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start_api_only(&dir.path().join("data"));
    let admin_file = dir.path().join("team-a.kubeconfig");
    let o = kplex_vc(
        &kplex,
        &["create", "team-a", "-o", admin_file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("/clusters/team-a"), "{}", stdout(&o));
    // The written kubeconfig is the VC's cluster-admin, and private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&admin_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ns = kubectl(&[
        "--kubeconfig",
        admin_file.to_str().unwrap(),
        "get",
        "ns",
        "-o",
        "name",
    ]);
    assert!(stdout(&ns).contains("namespace/default"), "{}", stderr(&ns));

    let list = kplex_vc(&kplex, &["list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).lines().any(|l| l.starts_with("team-a ")),
        "{}",
        stdout(&list)
    );

    let issued = kplex_vc(
        &kplex,
        &["kubeconfig", "team-a", "--user", "bob", "--group", "dev"],
    );
    assert!(issued.status.success(), "{}", stderr(&issued));
    let bob = dir.path().join("bob.kubeconfig");
    std::fs::write(&bob, &issued.stdout).unwrap();
    // bob is who his kubeconfig says, and may do only what bindings give
    // him (none yet).
    let whoami = kubectl(&["--kubeconfig", bob.to_str().unwrap(), "auth", "whoami"]);
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    assert!(stdout(&whoami).contains("bob"), "{}", stdout(&whoami));
    let denied = kubectl(&[
        "--kubeconfig",
        bob.to_str().unwrap(),
        "get",
        "cm",
        "-A",
        "-o",
        "name",
    ]);
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains("User \"bob\" cannot list resource \"configmaps\""),
        "{}",
        stderr(&denied)
    );

    let dup = kplex_vc(&kplex, &["create", "team-a"]);
    assert!(!dup.status.success());
    assert!(stderr(&dup).contains("AlreadyExists"), "{}", stderr(&dup));
    let bad = kplex_vc(&kplex, &["kubeconfig", "no-such-vc", "--user", "x"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("NotFound"), "{}", stderr(&bad));

    let del = kplex_vc(&kplex, &["delete", "team-a"]);
    assert!(del.status.success(), "{}", stderr(&del));
    assert!(!stdout(&kplex_vc(&kplex, &["list"])).contains("team-a"));
    // Its credentials stopped working with it.
    let after = kubectl(&["--kubeconfig", bob.to_str().unwrap(), "get", "cm"]);
    assert!(stderr(&after).contains("Forbidden"), "{}", stderr(&after));
}
