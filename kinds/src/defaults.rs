//! Defaulting: the values kube-apiserver fills in when it decodes an object
//! (its `SetDefaults_*` functions), for the fields a user reads back — a
//! Deployment's rolling-update strategy, a container's pull policy, a pod's
//! restart and DNS policies. Applied on every write, as kube-apiserver
//! applies them on every decode, so a stored object always carries them and
//! `kubectl get -o yaml` shows what a real cluster shows. Services are
//! `services.rs`' (their defaults come with allocation).

use serde_json::{json, Value};

/// A Secret's `stringData` is write-only: its entries go into `data`
/// (base64, replacing entries of the same key) and it is never stored.
fn merge_string_data(secret: &mut Value) {
    use base64::Engine;
    let Some(map) = secret.as_object_mut() else {
        return;
    };
    let Some(Value::Object(plain)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    for (key, value) in plain {
        if let Some(text) = value.as_str() {
            data[key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
}

/// Fills in the kind's defaults.
pub fn apply(group: &str, kind: &str, object: &mut Value) {
    if (group, kind) == ("", "Namespace") {
        // Every namespace is labelled with its name, as kube-apiserver
        // labels it (NetworkPolicies select namespaces by it).
        if let Some(name) = object["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
        {
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        return;
    }
    if (group, kind) == ("", "Secret") {
        set(object, "type", json!("Opaque"));
        merge_string_data(object);
        return;
    }
    if (group, kind) == ("", "Service") && !object["status"]["loadBalancer"].is_object() {
        // What a Service reads back before any load balancer reports
        // (informers and `kubectl get -o yaml` see it on a real cluster).
        object["status"]["loadBalancer"] = json!({});
    }
    if group == "rbac.authorization.k8s.io" && kind.ends_with("Binding") {
        // A User or Group subject is of the RBAC group unless it says.
        for subject in object["subjects"].as_array_mut().into_iter().flatten() {
            if matches!(subject["kind"].as_str(), Some("User" | "Group"))
                && subject["apiGroup"].as_str().is_none_or(str::is_empty)
            {
                subject["apiGroup"] = json!("rbac.authorization.k8s.io");
            }
        }
        return;
    }
    if (group, kind) == ("", "PodTemplate") {
        if object["template"]["spec"].is_object() {
            pod_spec(&mut object["template"]["spec"]);
        }
        return;
    }
    let Some(spec) = object.get_mut("spec").filter(|s| s.is_object()) else {
        return;
    };
    match (group, kind) {
        ("", "Pod") => pod_spec(spec),
        ("", "PersistentVolumeClaim") => set(spec, "volumeMode", json!("Filesystem")),
        ("apps", "Deployment") => {
            set(spec, "replicas", json!(1));
            set(spec, "revisionHistoryLimit", json!(10));
            set(spec, "progressDeadlineSeconds", json!(600));
            let strategy = &mut spec["strategy"];
            set(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                set(
                    &mut strategy["rollingUpdate"],
                    "maxUnavailable",
                    json!("25%"),
                );
                set(&mut strategy["rollingUpdate"], "maxSurge", json!("25%"));
            }
            template(spec);
        }
        ("", "ReplicationController") => {
            set(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "ReplicaSet") => {
            set(spec, "replicas", json!(1));
            template(spec);
        }
        ("apps", "StatefulSet") => {
            set(spec, "replicas", json!(1));
            set(spec, "podManagementPolicy", json!("OrderedReady"));
            set(spec, "revisionHistoryLimit", json!(10));
            let strategy = &mut spec["updateStrategy"];
            set(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                set(&mut strategy["rollingUpdate"], "partition", json!(0));
            }
            let retention = &mut spec["persistentVolumeClaimRetentionPolicy"];
            set(retention, "whenDeleted", json!("Retain"));
            set(retention, "whenScaled", json!("Retain"));
            template(spec);
        }
        ("apps", "DaemonSet") => {
            set(spec, "revisionHistoryLimit", json!(10));
            let strategy = &mut spec["updateStrategy"];
            set(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                set(&mut strategy["rollingUpdate"], "maxUnavailable", json!(1));
                set(&mut strategy["rollingUpdate"], "maxSurge", json!(0));
            }
            template(spec);
        }
        ("batch", "Job") => job_spec(spec),
        ("batch", "CronJob") => {
            set(spec, "concurrencyPolicy", json!("Allow"));
            set(spec, "suspend", json!(false));
            set(spec, "successfulJobsHistoryLimit", json!(3));
            set(spec, "failedJobsHistoryLimit", json!(1));
            if spec["jobTemplate"]["spec"].is_object() {
                job_spec(&mut spec["jobTemplate"]["spec"]);
            }
        }
        _ => {}
    }
}

/// A Job's generated selector, as kube-apiserver makes it on create
/// (unless `manualSelector`): the Job's UID, also put on its template's
/// labels with the Job's name, so its Pods and no other Job's match.
pub fn job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == true || !job["spec"].is_object() {
        return;
    }
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    let spec = &mut job["spec"];
    spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let template = &mut spec["template"];
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    let labels = &mut template["metadata"]["labels"];
    labels["batch.kubernetes.io/controller-uid"] = uid.clone();
    labels["batch.kubernetes.io/job-name"] = name.clone();
    labels["controller-uid"] = uid;
    labels["job-name"] = name;
}

/// Sets `field` of `object` unless it holds a value (an absent object
/// becomes one).
fn set(object: &mut Value, field: &str, value: Value) {
    if !object.is_object() {
        *object = json!({});
    }
    if object[field].is_null() {
        object[field] = value;
    }
}

fn template(spec: &mut Value) {
    if spec["template"]["spec"].is_object() {
        pod_spec(&mut spec["template"]["spec"]);
    }
}

fn job_spec(spec: &mut Value) {
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    set(spec, "parallelism", json!(1));
    set(spec, "backoffLimit", json!(6));
    set(spec, "completionMode", json!("NonIndexed"));
    set(spec, "suspend", json!(false));
    set(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    template(spec);
}

fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "securityContext", json!({}));
    set(spec, "enableServiceLinks", json!(true));
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            container_defaults(container);
        }
    }
}

fn container_defaults(container: &mut Value) {
    set(
        container,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    set(container, "terminationMessagePolicy", json!("File"));
    set(container, "resources", json!({}));
    if container["imagePullPolicy"].is_null() {
        container["imagePullPolicy"] =
            json!(pull_policy(container["image"].as_str().unwrap_or("")));
    }
    for port in container["ports"].as_array_mut().into_iter().flatten() {
        set(port, "protocol", json!("TCP"));
    }
}

/// `Always` for `:latest` or an untagged image, `IfNotPresent` otherwise
/// (a digest pins the image).
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    match name.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// A Pod's QoS class: `Guaranteed` when every container (init containers
/// too) limits CPU and memory and requests what it limits, `BestEffort`
/// when none requests or limits either, `Burstable` otherwise.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|list| spec[*list].as_array())
        .flatten()
        .collect();
    let compute = ["cpu", "memory"];
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for container in &containers {
        let requests = &container["resources"]["requests"];
        let limits = &container["resources"]["limits"];
        for resource in compute {
            let (request, limit) = (&requests[resource], &limits[resource]);
            any |= !request.is_null() || !limit.is_null();
            // An unset request is the limit (kube's defaulting).
            let request = if request.is_null() { limit } else { request };
            if limit.is_null() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(group: &str, plural: &str, mut object: Value) -> Value {
        let catalog = crate::catalog::shared();
        let info = catalog.find(group, "v1", plural).unwrap();
        apply(&info.group, &info.kind, &mut object);
        object
    }

    #[test]
    fn a_service_reads_back_an_empty_load_balancer_status() {
        let s = defaulted("", "services", json!({"spec": {"ports": [{"port": 80}]}}));
        assert_eq!(s["status"], json!({"loadBalancer": {}}));
        let reported =
            json!({"spec": {}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}});
        assert_eq!(
            defaulted("", "services", reported.clone())["status"],
            reported["status"]
        );
    }

    #[test]
    fn a_deployment_reads_back_as_a_real_cluster_writes_it() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "a", "image": "nginx"},
                {"name": "b", "image": "registry:5000/team/app:1.2", "ports": [{"containerPort": 80}]},
                {"name": "c", "image": "app@sha256:abc"},
            ]}}}}),
        );
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        let pulls: Vec<&Value> = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["imagePullPolicy"])
            .collect();
        assert_eq!(
            pulls,
            [
                &json!("Always"),
                &json!("IfNotPresent"),
                &json!("IfNotPresent")
            ]
        );
        assert_eq!(pod["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(
            pod["containers"][0]["terminationMessagePath"],
            "/dev/termination-log"
        );
    }

    #[test]
    fn set_values_are_kept_and_recreate_gets_no_rolling_update() {
        let d = defaulted(
            "apps",
            "deployments",
            json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"},
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x:latest", "imagePullPolicy": "Never"}]}}}}),
        );
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Never");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Never"
        );
    }

    #[test]
    fn jobs_and_cronjobs() {
        let j = defaulted(
            "batch",
            "jobs",
            json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure", "containers": []}}}}),
        );
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "OnFailure");
        let only_parallel = defaulted(
            "batch",
            "jobs",
            json!({"spec": {"parallelism": 3, "template": {"spec": {}}}}),
        );
        assert!(
            only_parallel["spec"]["completions"].is_null(),
            "a work queue has no completions"
        );
        let c = defaulted(
            "batch",
            "cronjobs",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {}}}}}}),
        );
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["jobTemplate"]["spec"]["backoffLimit"], 6);
    }

    #[test]
    fn a_pods_qos_class_follows_its_resources() {
        let spec =
            |resources: Value| json!({"containers": [{"name": "c", "resources": resources}]});
        assert_eq!(qos_class(&spec(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(json!({"requests": {"cpu": "1"}}))),
            "Burstable"
        );
        let same = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(
            qos_class(&spec(json!({"requests": same, "limits": same}))),
            "Guaranteed"
        );
        assert_eq!(qos_class(&spec(json!({"limits": same}))), "Guaranteed");
        assert_eq!(
            qos_class(&spec(
                json!({"requests": {"cpu": "1", "memory": "512Mi"}, "limits": same})
            )),
            "Burstable"
        );
    }
}
