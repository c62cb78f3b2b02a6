//! The shared controllers, through plain kubectl in VCs: Deployments roll
//! out, back and away; Jobs complete; StatefulSets make ordered Pods and
//! their claims; DaemonSets follow Nodes; EndpointSlices follow ready Pods;
//! quotas refuse; the garbage collector honours propagation policies; two
//! VCs never touch each other's objects; a restart makes no duplicates.
//!
//! Nothing runs Pods here: a stand-in kubelet (`kplex_e2e::kubelet`)
//! writes their status through the API, as the test decides.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kplex_e2e::kubelet::{client_of, FakeKubelet, Fate};
use kplex_e2e::{
    create_vc, create_vc_with, eventually, get, items, k, k_fails, tenant_kubeconfig, Kplex,
};
use kube::ResourceExt;
use serde_json::Value;

/// A kplex with its controllers, and VCs with their tenants' kubeconfigs.
struct Setup {
    dir: tempfile::TempDir,
    _kplex: Kplex,
    configs: Vec<PathBuf>,
}

fn setup(vcs: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start(&dir.path().join("data"));
    let configs = vcs
        .iter()
        .map(|vc| {
            create_vc(&kplex, dir.path(), vc);
            tenant_kubeconfig(&kplex, dir.path(), vc, "admin")
        })
        .collect();
    Setup {
        dir,
        _kplex: kplex,
        configs,
    }
}

fn images(kc: &Path, selector: &str) -> Vec<String> {
    let mut images: Vec<String> = items(kc, &["pods", "-l", selector])
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    images.sort();
    images
}

/// Runs `f` (blocking kubectl work) beside the async stand-in kubelet.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_rolls_back_scales_and_goes_with_its_children() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    let _kubelet = FakeKubelet::start(client_of(&kc).await, |_| Fate::Ready);
    blocking(move || {
        k(
            &kc,
            &[
                "create",
                "deployment",
                "web",
                "--image=nginx:1.26",
                "--replicas=3",
            ],
        );
        let status = k(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        assert!(status.contains("successfully rolled out"), "{status}");
        let d = get(&kc, &["deploy", "web"]);
        assert_eq!(d["status"]["availableReplicas"], 3);
        assert_eq!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        let conditions: Vec<(&str, &str)> = d["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["reason"].as_str().unwrap()))
            .collect();
        assert!(
            conditions.contains(&("Available", "MinimumReplicasAvailable")),
            "{conditions:?}"
        );
        assert!(
            conditions.contains(&("Progressing", "NewReplicaSetAvailable")),
            "{conditions:?}"
        );
        let rs = items(&kc, &["rs", "-l", "app=web"]);
        assert_eq!(rs.len(), 1);
        let hash = rs[0]["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(rs[0]["metadata"]["name"], format!("web-{hash}"));
        for pod in items(&kc, &["pods", "-l", "app=web"]) {
            assert_eq!(
                pod["metadata"]["labels"]["pod-template-hash"],
                hash.as_str()
            );
            assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        }

        // An image change rolls.
        k(&kc, &["set", "image", "deploy/web", "nginx=nginx:1.27"]);
        k(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        eventually("only new pods", || {
            (images(&kc, "app=web") == ["nginx:1.27"; 3]).then_some(())
        });
        let history = k(&kc, &["rollout", "history", "deploy/web"]);
        assert!(
            history.contains("1 ") && history.contains("2 "),
            "{history}"
        );
        let old: Vec<Value> = items(&kc, &["rs", "-l", "app=web"]);
        assert_eq!(old.len(), 2);

        // Undo returns to the first template, as revision 3.
        k(&kc, &["rollout", "undo", "deploy/web"]);
        k(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        eventually("old image back", || {
            (images(&kc, "app=web") == ["nginx:1.26"; 3]).then_some(())
        });
        let d = get(&kc, &["deploy", "web"]);
        assert_eq!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "3"
        );
        assert_eq!(
            items(&kc, &["rs", "-l", "app=web"]).len(),
            2,
            "the old set is reused"
        );

        // Scale up and down.
        k(&kc, &["scale", "deploy/web", "--replicas=5"]);
        eventually("5 ready", || {
            (get(&kc, &["deploy", "web"])["status"]["readyReplicas"] == 5).then_some(())
        });
        k(&kc, &["scale", "deploy/web", "--replicas=1"]);
        eventually("1 pod", || {
            (items(&kc, &["pods", "-l", "app=web"]).len() == 1).then_some(())
        });
        k(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);

        // Pause holds a template change back; resume rolls it.
        k(&kc, &["rollout", "pause", "deploy/web"]);
        k(&kc, &["set", "image", "deploy/web", "nginx=nginx:1.28"]);
        eventually("the paused condition", || {
            let d = get(&kc, &["deploy", "web"]);
            let paused = d["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["reason"] == "DeploymentPaused");
            paused.then_some(())
        });
        assert_eq!(images(&kc, "app=web"), ["nginx:1.26"]);
        k(&kc, &["rollout", "resume", "deploy/web"]);
        k(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        eventually("the resumed rollout", || {
            (images(&kc, "app=web") == ["nginx:1.28"]).then_some(())
        });

        // Restart makes a new ReplicaSet of the same template.
        k(&kc, &["rollout", "restart", "deploy/web"]);
        k(&kc, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        assert_eq!(items(&kc, &["rs", "-l", "app=web"]).len(), 4);

        // Deleting the Deployment takes its ReplicaSets and Pods.
        k(&kc, &["delete", "deploy", "web"]);
        eventually("children gone", || {
            (items(&kc, &["rs"]).is_empty() && items(&kc, &["pods"]).is_empty()).then_some(())
        });
        let events = k(&kc, &["get", "events"]);
        assert!(
            events.contains("ScalingReplicaSet") && events.contains("SuccessfulCreate"),
            "{events}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_or_fail_and_kubectl_wait_sees_it() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    // Pods of Jobs named `bad…` fail; the rest succeed.
    let _kubelet = FakeKubelet::start(client_of(&kc).await, |pod: &Pod| {
        if pod
            .labels()
            .get("job-name")
            .is_some_and(|j| j.starts_with("bad"))
        {
            Fate::Fail
        } else {
            Fate::Succeed
        }
    });
    let dir = s.dir.path().to_owned();
    blocking(move || {
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: twice}\nspec:\n  completions: 2\n  parallelism: 1\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox}]\n";
        let file = dir.join("job.yaml");
        std::fs::write(&file, job).unwrap();
        k(&kc, &["create", "-f", file.to_str().unwrap()]);
        let waited = k(&kc, &["wait", "--for=condition=complete", "job/twice", "--timeout=60s"]);
        assert!(waited.contains("condition met"), "{waited}");
        let j = get(&kc, &["job", "twice"]);
        assert_eq!(j["status"]["succeeded"], 2);
        assert!(j["status"]["completionTime"].is_string());
        let uid = j["metadata"]["uid"].as_str().unwrap();
        assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
        let pods = items(&kc, &["pods", "-l", "job-name=twice"]);
        assert_eq!(pods.len(), 2, "finished Pods stay");
        for pod in &pods {
            assert!(pod["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()), "counted, then released");
        }
        let table = k(&kc, &["get", "job", "twice"]);
        assert!(table.contains("Complete") && table.contains("2/2"), "{table}");

        // Past its backoff limit a Job fails.
        k(&kc, &["create", "job", "bad", "--image=busybox", "--", "false"]);
        k(&kc, &["patch", "job", "bad", "--type=merge", "-p", "{\"spec\":{\"backoffLimit\":1}}"]);
        let waited = k(&kc, &["wait", "--for=condition=failed", "job/bad", "--timeout=60s"]);
        assert!(waited.contains("condition met"), "{waited}");
        let j = get(&kc, &["job", "bad"]);
        let failed = j["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap().clone();
        assert_eq!(failed["reason"], "BackoffLimitExceeded");
        assert!(j["status"]["failed"].as_i64().unwrap() >= 2);

        // Indexed: each index once.
        let indexed = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: indexed}\nspec:\n  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: c, image: busybox}]\n";
        std::fs::write(&file, indexed).unwrap();
        k(&kc, &["create", "-f", file.to_str().unwrap()]);
        k(&kc, &["wait", "--for=condition=complete", "job/indexed", "--timeout=60s"]);
        assert_eq!(get(&kc, &["job", "indexed"])["status"]["completedIndexes"], "0-2");
        let mut indexes: Vec<String> = items(&kc, &["pods", "-l", "job-name=indexed"])
            .iter()
            .map(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap().to_owned())
            .collect();
        indexes.sort();
        assert_eq!(indexes, ["0", "1", "2"]);

        // A finished Job with a TTL goes.
        k(&kc, &["patch", "job", "twice", "--type=merge", "-p", "{\"spec\":{\"ttlSecondsAfterFinished\":0}}"]);
        eventually("the expired job gone", || {
            items(&kc, &["jobs"]).iter().all(|j| j["metadata"]["name"] != "twice").then_some(())
        });
    })
    .await;
}

/// Marks one Pod with `fate`.
async fn mark(client: &kube::Client, ns: &str, name: &str, fate: Fate) {
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let pod = api.get(name).await.unwrap();
    kplex_e2e::kubelet::set_fate(client, &pod, fate)
        .await
        .unwrap();
}

fn pod_names(kc: &Path, selector: &str) -> Vec<String> {
    let mut names: Vec<String> = items(kc, &["pods", "-l", selector])
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_makes_ordered_pods_and_their_claims() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    let client = client_of(&kc).await;
    let file = s.dir.path().join("sts.yaml");
    std::fs::write(&file, "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  replicas: 3\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: postgres}]}\n  volumeClaimTemplates:\n  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}\n").unwrap();
    let kc2 = kc.clone();
    blocking(move || k(&kc2, &["create", "-f", file.to_str().unwrap()])).await;
    for ordinal in 0..3 {
        let name = format!("db-{ordinal}");
        let kc2 = kc.clone();
        let names = blocking(move || {
            eventually(&format!("{name} made"), || {
                let names = pod_names(&kc2, "app=db");
                names.contains(&name).then_some(names)
            })
        })
        .await;
        // Only up to this ordinal: the next waits for this one to be ready.
        assert_eq!(names.len(), ordinal + 1, "{names:?}");
        let pod = get(&kc, &["pod", &format!("db-{ordinal}")]);
        assert_eq!(pod["spec"]["hostname"], format!("db-{ordinal}"));
        assert_eq!(pod["spec"]["subdomain"], "db");
        assert_eq!(
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            ordinal.to_string()
        );
        let volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .unwrap()
            .clone();
        assert_eq!(
            volume["persistentVolumeClaim"]["claimName"],
            format!("data-db-{ordinal}")
        );
        mark(&client, "default", &format!("db-{ordinal}"), Fate::Ready).await;
    }
    let kc2 = kc.clone();
    blocking(move || {
        eventually("3 ready", || {
            (get(&kc2, &["sts", "db"])["status"]["readyReplicas"] == 3).then_some(())
        });
        let claims: Vec<String> = items(&kc2, &["pvc"])
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(claims, ["data-db-0", "data-db-1", "data-db-2"]);
        let sts = get(&kc2, &["sts", "db"]);
        assert_eq!(
            sts["status"]["currentRevision"],
            sts["status"]["updateRevision"]
        );
        assert!(items(&kc2, &["controllerrevisions"]).len() == 1);
        // Scaling down takes the highest ordinal first; claims stay.
        k(&kc2, &["scale", "sts", "db", "--replicas=1"]);
        eventually("db-2 gone first", || {
            let names = pod_names(&kc2, "app=db");
            (!names.contains(&"db-2".to_owned())).then_some(names)
        });
        eventually("one left", || {
            (pod_names(&kc2, "app=db") == ["db-0"]).then_some(())
        });
        assert_eq!(items(&kc2, &["pvc"]).len(), 3, "claims are retained");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonsets_run_one_pod_per_matching_node() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    let dir = s.dir.path().to_owned();
    blocking(move || {
        let node = |name: &str, pool: &str| {
            let file = dir.join(format!("{name}.yaml"));
            std::fs::write(&file, format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{pool: {pool}}}}}\n")).unwrap();
            k(&kc, &["create", "-f", file.to_str().unwrap()]);
        };
        let file = dir.join("ds.yaml");
        std::fs::write(&file, "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec:\n      nodeSelector: {pool: a}\n      containers: [{name: agent, image: busybox}]\n").unwrap();
        k(&kc, &["create", "-f", file.to_str().unwrap()]);
        // No Nodes, no Pods.
        eventually("observed", || (get(&kc, &["ds", "agent"])["status"]["observedGeneration"] == 1).then_some(()));
        assert!(items(&kc, &["pods"]).is_empty());
        node("n1", "a");
        node("n2", "b");
        let pinned = |p: &Value| {
            p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let pods = eventually("a pod on n1", || {
            let pods = items(&kc, &["pods", "-l", "app=agent"]);
            (pods.len() == 1).then_some(pods)
        });
        assert_eq!(pinned(&pods[0]), "n1");
        node("n3", "a");
        let mut nodes: Vec<String> = eventually("pods on n1 and n3", || {
            let pods = items(&kc, &["pods", "-l", "app=agent"]);
            (pods.len() == 2).then_some(pods)
        })
        .iter()
        .map(pinned)
        .collect();
        nodes.sort();
        assert_eq!(nodes, ["n1", "n3"]);
        assert_eq!(get(&kc, &["ds", "agent"])["status"]["desiredNumberScheduled"], 2);
        // A Node leaving the pool loses its Pod.
        k(&kc, &["label", "node", "n3", "pool=b", "--overwrite"]);
        eventually("back to one", || (items(&kc, &["pods", "-l", "app=agent"]).len() == 1).then_some(()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_ready_pods() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    let client = client_of(&kc).await;
    let kc2 = kc.clone();
    let manual = s.dir.path().join("manual.yaml");
    std::fs::write(
        &manual,
        "apiVersion: v1\nkind: Service\nmetadata: {name: manual}\nspec: {ports: [{port: 80}]}\n",
    )
    .unwrap();
    blocking(move || {
        k(
            &kc2,
            &[
                "create",
                "deployment",
                "web",
                "--image=nginx",
                "--replicas=2",
                "--port=8080",
            ],
        );
        k(
            &kc2,
            &[
                "expose",
                "deployment",
                "web",
                "--port=80",
                "--target-port=8080",
            ],
        );
        k(&kc2, &["create", "-f", manual.to_str().unwrap()]);
        eventually("2 pods", || {
            (pod_names(&kc2, "app=web").len() == 2).then_some(())
        });
    })
    .await;
    let names = pod_names(&kc, "app=web");
    mark(&client, "default", &names[0], Fate::Ready).await;
    let kc2 = kc.clone();
    let first = names[0].clone();
    blocking(move || {
        let slice = eventually("one ready endpoint", || {
            let slices = items(
                &kc2,
                &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            );
            let slice = slices.first()?.clone();
            let ready: Vec<&Value> = slice["endpoints"]
                .as_array()?
                .iter()
                .filter(|e| e["conditions"]["ready"] == true)
                .collect();
            (ready.len() == 1).then_some(slice)
        });
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["ports"][0]["port"], 8080);
        assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
        let ready = slice["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["conditions"]["ready"] == true)
            .unwrap()
            .clone();
        assert_eq!(ready["targetRef"]["name"], first.as_str());
        let ep = get(&kc2, &["endpoints", "web"]);
        assert_eq!(ep["subsets"][0]["addresses"].as_array().unwrap().len(), 1);
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
        // A Service without a selector is left alone.
        assert!(items(
            &kc2,
            &["endpointslices", "-l", "kubernetes.io/service-name=manual"]
        )
        .is_empty());
    })
    .await;
    mark(&client, "default", &names[1], Fate::Ready).await;
    let kc2 = kc.clone();
    blocking(move || {
        eventually("two ready endpoints", || {
            let ep = get(&kc2, &["endpoints", "web"]);
            (ep["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(2)).then_some(())
        });
        // A Pod that goes leaves the slice.
        let gone = pod_names(&kc2, "app=web")[0].clone();
        k(&kc2, &["delete", "pod", &gone]);
        eventually("the deleted pod's endpoint gone", || {
            let slices = items(
                &kc2,
                &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            );
            let names: Vec<&str> = slices.first()?["endpoints"]
                .as_array()?
                .iter()
                .filter_map(|e| e["targetRef"]["name"].as_str())
                .collect();
            (!names.contains(&gone.as_str())).then_some(())
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_refuses_the_pod_past_its_limit() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    blocking(move || {
        k(&kc, &["create", "namespace", "shop"]);
        k(&kc, &["-n", "shop", "create", "quota", "small", "--hard=pods=2,count/configmaps=10"]);
        eventually("usage counted", || {
            let q = get(&kc, &["-n", "shop", "quota", "small"]);
            (q["status"]["used"]["pods"] == "0").then_some(())
        });
        k(&kc, &["-n", "shop", "run", "one", "--image=busybox"]);
        k(&kc, &["-n", "shop", "run", "two", "--image=busybox"]);
        let refused = k_fails(&kc, &["-n", "shop", "run", "three", "--image=busybox"]);
        assert!(
            refused.contains("pods \"three\" is forbidden: exceeded quota: small, requested: pods=1, used: pods=2, limited: pods=2"),
            "{refused}"
        );
        assert!(items(&kc, &["-n", "shop", "pods"]).len() == 2, "nothing stored");
        // A Pod deleted gives its unit back.
        k(&kc, &["-n", "shop", "delete", "pod", "one"]);
        eventually("usage recounted", || {
            (get(&kc, &["-n", "shop", "quota", "small"])["status"]["used"]["pods"] == "1").then_some(())
        });
        k(&kc, &["-n", "shop", "run", "three", "--image=busybox"]);
        // A Deployment whose Pods the quota refuses says so, and does not spin.
        k(&kc, &["-n", "shop", "create", "deployment", "web", "--image=nginx"]);
        let d = eventually("ReplicaFailure", || {
            let d = get(&kc, &["-n", "shop", "deploy", "web"]);
            d["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "ReplicaFailure").cloned()
        });
        assert_eq!(d["reason"], "FailedCreate");
        assert!(d["message"].as_str().unwrap().contains("exceeded quota"), "{d}");
        let events = k(&kc, &["-n", "shop", "get", "events"]);
        assert!(events.contains("FailedCreate"), "{events}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vcs_controllers_never_touch_each_others_objects() {
    let s = setup(&["team-a", "team-b"]);
    let (a, b) = (s.configs[0].clone(), s.configs[1].clone());
    let _ka = FakeKubelet::start(client_of(&a).await, |_| Fate::Ready);
    let dir = s.dir.path().to_owned();
    blocking(move || {
        // The same names in both; B's Pods are never made ready.
        k(&a, &["create", "deployment", "web", "--image=nginx", "--replicas=2"]);
        k(&b, &["create", "deployment", "web", "--image=nginx", "--replicas=3"]);
        k(&a, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        eventually("B's 3 pods", || (pod_names(&b, "app=web").len() == 3).then_some(()));
        let rs_uid = |kc: &Path| items(kc, &["rs"])[0]["metadata"]["uid"].as_str().unwrap().to_owned();
        let (a_rs, b_rs) = (rs_uid(&a), rs_uid(&b));
        for (kc, owner) in [(&a, &a_rs), (&b, &b_rs)] {
            for pod in items(kc, &["pods"]) {
                assert_eq!(&pod["metadata"]["ownerReferences"][0]["uid"], owner.as_str());
            }
        }
        let b_ready = get(&b, &["deploy", "web"])["status"]["readyReplicas"].as_i64().unwrap_or(0);
        assert_eq!(b_ready, 0, "A's kubelet made none of B's pods ready");
        // An owner reference to another VC's object finds no owner here:
        // the object is collected in its own VC, the other VC's is untouched.
        let a_deploy_uid = get(&a, &["deploy", "web"])["metadata"]["uid"].as_str().unwrap().to_owned();
        let file = dir.join("cm.yaml");
        std::fs::write(&file, format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: {a_deploy_uid}}}]\n")).unwrap();
        k(&b, &["create", "-f", file.to_str().unwrap()]);
        eventually("the stray collected", || {
            items(&b, &["cm"]).iter().all(|c| c["metadata"]["name"] != "stray").then_some(())
        });
        assert_eq!(get(&a, &["deploy", "web"])["metadata"]["uid"], a_deploy_uid.as_str());
        // Deleting A's Deployment leaves B's.
        k(&a, &["delete", "deploy", "web"]);
        eventually("A's pods gone", || pod_names(&a, "app=web").is_empty().then_some(()));
        assert_eq!(pod_names(&b, "app=web").len(), 3);
        assert_eq!(items(&b, &["rs"]).len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_honours_propagation_policies() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    let file = s.dir.path().join("rs.yaml");
    std::fs::write(&file, "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: solo}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: solo}}\n  template:\n    metadata: {labels: {app: solo}}\n    spec: {containers: [{name: c, image: nginx}]}\n").unwrap();
    blocking(move || {
        k(&kc, &["create", "-f", file.to_str().unwrap()]);
        eventually("2 pods", || {
            (pod_names(&kc, "app=solo").len() == 2).then_some(())
        });
        // Orphan: the ReplicaSet goes, its Pods stay without their owner.
        k(&kc, &["delete", "rs", "solo", "--cascade=orphan"]);
        eventually("the replicaset gone", || {
            items(&kc, &["rs"]).is_empty().then_some(())
        });
        let pods = items(&kc, &["pods", "-l", "app=solo"]);
        assert_eq!(pods.len(), 2, "orphaned pods stay");
        for pod in pods {
            assert!(
                pod["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(|r| r.is_empty()),
                "{pod}"
            );
        }

        // Foreground: the Deployment waits for its children, then goes.
        k(
            &kc,
            &[
                "create",
                "deployment",
                "fg",
                "--image=nginx",
                "--replicas=2",
            ],
        );
        eventually("2 pods", || {
            (pod_names(&kc, "app=fg").len() == 2).then_some(())
        });
        k(&kc, &["delete", "deploy", "fg", "--cascade=foreground"]);
        eventually("all gone", || {
            (items(&kc, &["deploy"]).is_empty()
                && items(&kc, &["rs", "-l", "app=fg"]).is_empty()
                && pod_names(&kc, "app=fg").is_empty())
            .then_some(())
        });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_resume_after_a_restart_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kplex = Kplex::start(&data);
    create_vc(&kplex, dir.path(), "team-a");
    let kc = tenant_kubeconfig(&kplex, dir.path(), "team-a", "admin");
    let kc2 = kc.clone();
    blocking(move || {
        k(
            &kc2,
            &[
                "create",
                "deployment",
                "web",
                "--image=nginx",
                "--replicas=4",
            ],
        );
        eventually("4 pods", || {
            (pod_names(&kc2, "app=web").len() == 4).then_some(())
        });
    })
    .await;
    // Mid-rollout (nothing is ready), the server stops and starts again.
    let kplex = kplex.restart(&[]);
    let _kubelet = FakeKubelet::start(client_of(&kc).await, |_| Fate::Ready);
    let kc2 = kc.clone();
    blocking(move || {
        k(&kc2, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        assert_eq!(pod_names(&kc2, "app=web").len(), 4, "no duplicates");
        assert_eq!(items(&kc2, &["rs"]).len(), 1);
        k(&kc2, &["set", "image", "deploy/web", "nginx=nginx:2"]);
        k(&kc2, &["rollout", "status", "deploy/web", "--timeout=60s"]);
        eventually("4 new pods", || {
            (images(&kc2, "app=web") == ["nginx:2"; 4]).then_some(())
        });
    })
    .await;
    drop(kplex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_vc_does_not_hold_back_another_vcs_deployment() {
    let s = setup(&["noisy", "victim"]);
    let (noisy, victim) = (
        client_of(&s.configs[0]).await,
        client_of(&s.configs[1]).await,
    );
    use k8s_openapi::api::apps::v1::Deployment;
    let deployment = |name: &str| -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
        }))
        .unwrap()
    };
    let flood: kube::Api<Deployment> = kube::Api::default_namespaced(noisy.clone());
    const FLOOD: usize = 300;
    futures::future::join_all((0..FLOOD).map(|i| {
        let (flood, d) = (flood.clone(), deployment(&format!("f{i}")));
        async move { flood.create(&Default::default(), &d).await.unwrap() }
    }))
    .await;
    let started = Instant::now();
    let victims: kube::Api<Deployment> = kube::Api::default_namespaced(victim.clone());
    victims
        .create(&Default::default(), &deployment("mine"))
        .await
        .unwrap();
    let pods: kube::Api<Pod> = kube::Api::default_namespaced(victim);
    let flood_pods: kube::Api<Pod> = kube::Api::default_namespaced(noisy);
    loop {
        let mine = pods.list(&Default::default()).await.unwrap().items.len();
        if mine == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the victim's pod never came"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flooded = flood_pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .len();
    // Served in turn with the flood, not after it.
    assert!(
        flooded < FLOOD,
        "the victim waited for the whole flood ({flooded} of {FLOOD} done first)"
    );
    eprintln!(
        "victim's pod after {:?}; the flood had {flooded} of {FLOOD}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cronjob_starts_its_job_at_the_next_minute() {
    let s = setup(&["team-a"]);
    let kc = s.configs[0].clone();
    blocking(move || {
        k(
            &kc,
            &[
                "create",
                "cronjob",
                "tick",
                "--image=busybox",
                "--schedule=* * * * *",
                "--",
                "true",
            ],
        );
        k(
            &kc,
            &[
                "patch",
                "cronjob",
                "tick",
                "--type=merge",
                "-p",
                "{\"spec\":{\"concurrencyPolicy\":\"Forbid\",\"timeZone\":\"Europe/Paris\"}}",
            ],
        );
        let uid = get(&kc, &["cronjob", "tick"])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();
        // Within a minute and a bit, the scheduled Job appears.
        let deadline = Instant::now() + Duration::from_secs(75);
        let job = loop {
            let jobs = items(&kc, &["jobs"]);
            if let Some(job) = jobs.into_iter().next() {
                break job;
            }
            assert!(Instant::now() < deadline, "no job within 75 s");
            std::thread::sleep(Duration::from_millis(250));
        };
        let name = job["metadata"]["name"].as_str().unwrap();
        let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
        let scheduled = job["metadata"]["annotations"]
            ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .unwrap();
        // RFC 3339 in the CronJob's zone, on a whole minute.
        assert_eq!(&scheduled[16..19], ":00", "on a whole minute: {scheduled}");
        assert!(
            scheduled.ends_with("+01:00") || scheduled.ends_with("+02:00"),
            "in Paris time: {scheduled}"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
        assert!(minutes > 29_000_000, "minutes since the epoch: {minutes}");
        let cj = eventually("the schedule recorded", || {
            let cj = get(&kc, &["cronjob", "tick"]);
            cj["status"]["lastScheduleTime"].is_string().then_some(cj)
        });
        let active = cj["status"]["active"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(active.len(), 1, "{cj}");
        // Suspended: no more.
        k(
            &kc,
            &[
                "patch",
                "cronjob",
                "tick",
                "--type=merge",
                "-p",
                "{\"spec\":{\"suspend\":true}}",
            ],
        );
        let table = k(&kc, &["get", "cronjob", "tick"]);
        assert!(table.contains("True"), "{table}");
    })
    .await;
}

const WIDGETS: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
";

/// Creates `widget/name` in `kc`'s VC; its UID.
fn widget(kc: &Path, dir: &Path, name: &str) -> String {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        format!("apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: {name}}}\n"),
    )
    .unwrap();
    k(kc, &["create", "-f", file.to_str().unwrap()]);
    get(kc, &["widget", name])["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Creates ConfigMap `name` owned by `owner` (kind, name, UID).
fn owned_configmap(kc: &Path, dir: &Path, name: &str, owner: (&str, &str, &str)) {
    let (kind, owner_name, uid) = owner;
    let api_version = if kind == "Widget" {
        "example.com/v1"
    } else {
        "v1"
    };
    let file = dir.join(format!("cm-{name}.json"));
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": [
            {"apiVersion": api_version, "kind": kind, "name": owner_name, "uid": uid}]},
    });
    std::fs::write(&file, cm.to_string()).unwrap();
    k(kc, &["create", "-f", file.to_str().unwrap()]);
}

fn configmap_gone(kc: &Path, name: &str) -> Option<()> {
    let names: Vec<String> = items(kc, &["configmaps"])
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    (!names.iter().any(|n| n == name)).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garbage_collector_follows_custom_resource_owners() {
    let s = setup(&["team-a", "team-b"]);
    let (a, b) = (s.configs[0].clone(), s.configs[1].clone());
    let d = s.dir.path().to_owned();
    blocking(move || {
        let crd = d.join("widgets.yaml");
        std::fs::write(&crd, WIDGETS).unwrap();
        for kc in [&a, &b] {
            k(kc, &["apply", "-f", crd.to_str().unwrap()]);
        }
        // A dependent of a live custom resource stays: the collector has
        // looked at it once a dependent queued after it is collected.
        let w1 = widget(&a, &d, "w1");
        owned_configmap(&a, &d, "of-w1", ("Widget", "w1", &w1));
        let ghost = "00000000-0000-0000-0000-000000000000";
        owned_configmap(&a, &d, "probe", ("ConfigMap", "ghost", ghost));
        eventually("the probe collected", || configmap_gone(&a, "probe"));
        assert!(configmap_gone(&a, "of-w1").is_none(), "of-w1 was collected");

        // Background: the owner goes, then its dependent.
        k(&a, &["delete", "widget", "w1"]);
        eventually("of-w1 collected", || configmap_gone(&a, "of-w1"));

        // Foreground: the owner waits for its dependent, then goes.
        let w2 = widget(&a, &d, "w2");
        owned_configmap(&a, &d, "of-w2", ("Widget", "w2", &w2));
        k(
            &a,
            &[
                "delete",
                "widget",
                "w2",
                "--cascade=foreground",
                "--wait=false",
            ],
        );
        eventually("w2 and of-w2 gone", || {
            (configmap_gone(&a, "of-w2").is_some() && items(&a, &["widgets"]).is_empty())
                .then_some(())
        });

        // Owners are looked up in the dependent's VC: team-b's w1 is not
        // team-a's (another UID), so team-b's dependent of team-a's goes.
        let w3 = widget(&a, &d, "w3");
        widget(&b, &d, "w3");
        owned_configmap(&b, &d, "of-a-w3", ("Widget", "w3", &w3));
        eventually("team-b's dependent collected", || {
            configmap_gone(&b, "of-a-w3")
        });

        // The CRD goes with its objects, and their dependents follow.
        owned_configmap(&a, &d, "of-w3", ("Widget", "w3", &w3));
        k(&a, &["delete", "crd", "widgets.example.com"]);
        eventually("of-w3 collected", || configmap_gone(&a, "of-w3"));
    })
    .await;
}

/// The collector's watch of a VC's custom resources is the platform's: it
/// takes none of the VC's own watch limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collectors_watches_take_none_of_a_vcs_watch_limit() {
    let dir = tempfile::tempdir().unwrap();
    let kplex = Kplex::start(&dir.path().join("data"));
    create_vc_with(&kplex, dir.path(), "tight", "{limits: {watches: 1}}");
    let kc = tenant_kubeconfig(&kplex, dir.path(), "tight", "admin");
    let d = dir.path().to_owned();
    blocking(move || {
        let crd = d.join("widgets.yaml");
        std::fs::write(&crd, WIDGETS).unwrap();
        k(&kc, &["apply", "-f", crd.to_str().unwrap()]);
        // The collector watches the VC's widgets: a dependent of a deleted
        // one is collected.
        let w = widget(&kc, &d, "w");
        owned_configmap(&kc, &d, "of-w", ("Widget", "w", &w));
        k(&kc, &["delete", "widget", "w"]);
        eventually("of-w collected", || configmap_gone(&kc, "of-w"));
        // The tenant's one watch is still its own.
        let events = k(
            &kc,
            &[
                "get",
                "--raw",
                "/apis/example.com/v1/namespaces/default/widgets?watch=1&timeoutSeconds=1",
            ],
        );
        assert!(!events.contains("TooManyRequests"), "{events}");
    })
    .await;
    drop(kplex);
}
