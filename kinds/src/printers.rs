//! Table columns per kind, as `kubectl get` shows them (kube-apiserver's
//! printers). Kinds without a row here print NAME and AGE.

use serde_json::{json, Value};

use kplex_registry::resource::Column;
use kplex_registry::table::age;

fn col(name: &str, priority: u8, cell: fn(&Value) -> Value) -> Column {
    Column::new(name, priority, cell)
}

fn str_or(v: &Value, default: &str) -> Value {
    json!(v.as_str().unwrap_or(default))
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn count(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    }
}

fn selector_string(v: &Value) -> String {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into())
}

fn containers(o: &Value) -> &[Value] {
    o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn join(items: impl Iterator<Item = String>) -> Value {
    let v: Vec<String> = items.collect();
    json!(if v.is_empty() {
        "<none>".to_owned()
    } else {
        v.join(",")
    })
}

fn pod_ready(o: &Value) -> Value {
    let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
    let ready = o["status"]["containerStatuses"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
    json!(format!("{ready}/{total}"))
}

fn pod_status(o: &Value) -> Value {
    if o["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    let waiting = o["status"]["containerStatuses"].as_array().and_then(|s| {
        s.iter()
            .find_map(|c| c["state"]["waiting"]["reason"].as_str().map(str::to_owned))
    });
    json!(waiting.unwrap_or_else(|| o["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_owned()))
}

fn pod_restarts(o: &Value) -> Value {
    json!(o["status"]["containerStatuses"].as_array().map_or(0, |s| s
        .iter()
        .map(|c| int(&c["restartCount"]))
        .sum::<i64>()))
}

fn service_ports(o: &Value) -> Value {
    join(
        o["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let port = int(&p["port"]);
                let proto = p["protocol"].as_str().unwrap_or("TCP");
                match p["nodePort"].as_i64() {
                    Some(node) => format!("{port}:{node}/{proto}"),
                    None => format!("{port}/{proto}"),
                }
            }),
    )
}

/// The addresses a load balancer reports in `status.loadBalancer.ingress`.
fn lb_addresses(o: &Value) -> Vec<String> {
    o["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i["ip"]
                .as_str()
                .or(i["hostname"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

fn external_ip(o: &Value) -> Value {
    let from_lb = lb_addresses(o).into_iter();
    let explicit = o["spec"]["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.as_str().map(str::to_owned));
    let all: Vec<String> = explicit.chain(from_lb).collect();
    if all.is_empty() {
        let pending = o["spec"]["type"] == "LoadBalancer";
        return json!(if pending { "<pending>" } else { "<none>" });
    }
    json!(all.join(","))
}

fn node_status(o: &Value) -> Value {
    let ready = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready");
    let mut status = match ready.and_then(|c| c["status"].as_str()) {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value) -> Value {
    join(
        o["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| {
                k.strip_prefix("node-role.kubernetes.io/")
                    .map(str::to_owned)
            }),
    )
}

fn node_address(o: &Value, kind: &str) -> Value {
    let found = o["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == kind)
        .and_then(|a| a["address"].as_str());
    json!(found.unwrap_or("<none>"))
}

/// A binding's subjects of one kind, comma-separated (`ns/name` for
/// ServiceAccounts).
fn subjects(o: &Value, kind: &str) -> Value {
    join(
        o["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] == kind)
            .map(|s| {
                let name = s["name"].as_str().unwrap_or("");
                match s["namespace"].as_str() {
                    Some(ns) if kind == "ServiceAccount" => format!("{ns}/{name}"),
                    _ => name.to_owned(),
                }
            }),
    )
}

/// The kind's columns between NAME and AGE (and the wide ones after AGE).
pub fn columns(group: &str, plural: &str) -> Vec<Column> {
    match (group, plural) {
        ("", "componentstatuses") => vec![
            col("Status", 0, |o| {
                let healthy = o["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Healthy" && c["status"] == "True");
                json!(if healthy { "Healthy" } else { "Unhealthy" })
            }),
            col("Message", 0, |o| str_or(&o["conditions"][0]["message"], "")),
            col("Error", 0, |o| str_or(&o["conditions"][0]["error"], "")),
        ],
        ("", "pods") => vec![
            col("Ready", 0, pod_ready),
            col("Status", 0, pod_status),
            col("Restarts", 0, pod_restarts),
            col("IP", 1, |o| str_or(&o["status"]["podIP"], "<none>")),
            col("Node", 1, |o| str_or(&o["spec"]["nodeName"], "<none>")),
            col("Nominated Node", 1, |o| {
                str_or(&o["status"]["nominatedNodeName"], "<none>")
            }),
            col("Readiness Gates", 1, |_| json!("<none>")),
        ],
        ("", "namespaces") => vec![col("Status", 0, |o| str_or(&o["status"]["phase"], ""))],
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => vec![
            col("Role", 0, |o| {
                let r = &o["roleRef"];
                json!(format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or("")
                ))
            }),
            col("Users", 1, |o| subjects(o, "User")),
            col("Groups", 1, |o| subjects(o, "Group")),
            col("ServiceAccounts", 1, |o| subjects(o, "ServiceAccount")),
        ],
        ("", "events") => vec![
            col("Last Seen", 0, |o| {
                let last = o["lastTimestamp"]
                    .as_str()
                    .or(o["eventTime"].as_str())
                    .or(o["metadata"]["creationTimestamp"].as_str());
                json!(last.map_or("<unknown>".to_owned(), age))
            }),
            col("Type", 0, |o| str_or(&o["type"], "")),
            col("Reason", 0, |o| str_or(&o["reason"], "")),
            col("Object", 0, |o| {
                let i = &o["involvedObject"];
                json!(format!(
                    "{}/{}",
                    i["kind"].as_str().unwrap_or("").to_lowercase(),
                    i["name"].as_str().unwrap_or("")
                ))
            }),
            col("Subobject", 1, |o| {
                str_or(&o["involvedObject"]["fieldPath"], "")
            }),
            col("Source", 1, |o| str_or(&o["source"]["component"], "")),
            col("Message", 0, |o| str_or(&o["message"], "")),
            col("First Seen", 1, |o| {
                json!(o["firstTimestamp"]
                    .as_str()
                    .map_or("<unknown>".to_owned(), age))
            }),
            col("Count", 1, |o| json!(o["count"].as_i64().unwrap_or(1))),
            col("Name", 1, |o| o["metadata"]["name"].clone()),
        ],
        ("events.k8s.io", "events") => vec![
            col("Last Seen", 0, |o| {
                json!(o["deprecatedLastTimestamp"]
                    .as_str()
                    .or(o["eventTime"].as_str())
                    .map_or("<unknown>".to_owned(), age))
            }),
            col("Type", 0, |o| str_or(&o["type"], "")),
            col("Reason", 0, |o| str_or(&o["reason"], "")),
            col("Object", 0, |o| {
                let r = &o["regarding"];
                json!(format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or("").to_lowercase(),
                    r["name"].as_str().unwrap_or("")
                ))
            }),
            col("Message", 0, |o| str_or(&o["note"], "")),
            col("Name", 1, |o| o["metadata"]["name"].clone()),
        ],
        ("", "nodes") => vec![
            col("Status", 0, node_status),
            col("Roles", 0, node_roles),
            col("Version", 0, |o| {
                str_or(&o["status"]["nodeInfo"]["kubeletVersion"], "")
            })
            .after_age(),
            col("Internal-IP", 1, |o| node_address(o, "InternalIP")),
            col("External-IP", 1, |o| node_address(o, "ExternalIP")),
            col("OS-Image", 1, |o| {
                str_or(&o["status"]["nodeInfo"]["osImage"], "<unknown>")
            }),
            col("Kernel-Version", 1, |o| {
                str_or(&o["status"]["nodeInfo"]["kernelVersion"], "<unknown>")
            }),
            col("Container-Runtime", 1, |o| {
                str_or(
                    &o["status"]["nodeInfo"]["containerRuntimeVersion"],
                    "<unknown>",
                )
            }),
        ],
        ("", "replicationcontrollers") => vec![
            col("Desired", 0, |o| json!(int(&o["spec"]["replicas"]))),
            col("Current", 0, |o| json!(int(&o["status"]["replicas"]))),
            col("Ready", 0, |o| json!(int(&o["status"]["readyReplicas"]))),
            col("Containers", 1, |o| {
                join(
                    containers(o)
                        .iter()
                        .filter_map(|c| c["name"].as_str().map(str::to_owned)),
                )
            }),
            col("Images", 1, |o| {
                join(
                    containers(o)
                        .iter()
                        .filter_map(|c| c["image"].as_str().map(str::to_owned)),
                )
            }),
            col("Selector", 1, |o| {
                json!(selector_string(&o["spec"]["selector"]))
            }),
        ],
        ("", "podtemplates") => vec![
            col("Containers", 0, |o| {
                join(
                    o["template"]["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["name"].as_str().map(str::to_owned)),
                )
            }),
            col("Images", 0, |o| {
                join(
                    o["template"]["spec"]["containers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["image"].as_str().map(str::to_owned)),
                )
            }),
            col("Pod Labels", 0, |o| {
                json!(selector_string(&o["template"]["metadata"]["labels"]))
            }),
        ],
        ("apps", "controllerrevisions") => vec![
            col("Controller", 0, |o| {
                let owner = o["metadata"]["ownerReferences"]
                    .as_array()
                    .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
                json!(owner.map_or("<none>".to_owned(), |r| format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or("").to_lowercase().to_owned()
                        + "."
                        + r["apiVersion"]
                            .as_str()
                            .unwrap_or("")
                            .split('/')
                            .next()
                            .unwrap_or(""),
                    r["name"].as_str().unwrap_or("")
                )))
            }),
            col("Revision", 0, |o| json!(int(&o["revision"]))),
        ],
        ("discovery.k8s.io", "endpointslices") => vec![
            col("AddressType", 0, |o| str_or(&o["addressType"], "")),
            col("Ports", 0, |o| {
                let ports: Vec<String> = o["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| int(&p["port"]).to_string())
                    .collect();
                json!(if ports.is_empty() {
                    "<unset>".to_owned()
                } else {
                    ports.join(",")
                })
            }),
            col("Endpoints", 0, |o| {
                let addresses: Vec<String> = o["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| {
                        e["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str().map(str::to_owned))
                    })
                    .collect();
                json!(match addresses.len() {
                    0 => "<unset>".to_owned(),
                    n if n > 3 => format!("{} + {} more...", addresses[..3].join(","), n - 3),
                    _ => addresses.join(","),
                })
            }),
        ],
        ("autoscaling", "horizontalpodautoscalers") => vec![
            col("Reference", 0, |o| {
                let target = &o["spec"]["scaleTargetRef"];
                json!(format!(
                    "{}/{}",
                    target["kind"].as_str().unwrap_or(""),
                    target["name"].as_str().unwrap_or("")
                ))
            }),
            col("Targets", 0, |o| {
                json!(
                    if o["spec"]["metrics"].as_array().is_none_or(|m| m.is_empty()) {
                        "<none>"
                    } else {
                        "<unknown>"
                    }
                )
            }),
            col("MinPods", 0, |o| {
                json!(o["spec"]["minReplicas"].as_i64().unwrap_or(1))
            }),
            col("MaxPods", 0, |o| json!(int(&o["spec"]["maxReplicas"]))),
            col("Replicas", 0, |o| {
                json!(int(&o["status"]["currentReplicas"]))
            }),
        ],
        ("", "services") => vec![
            col("Type", 0, |o| str_or(&o["spec"]["type"], "ClusterIP")),
            col("Cluster-IP", 0, |o| {
                str_or(&o["spec"]["clusterIP"], "<none>")
            }),
            col("External-IP", 0, external_ip),
            col("Port(s)", 0, service_ports),
            col("Selector", 1, |o| {
                json!(selector_string(&o["spec"]["selector"]))
            }),
        ],
        ("", "configmaps") => vec![col("Data", 0, |o| {
            json!(count(&o["data"]) + count(&o["binaryData"]))
        })],
        ("", "secrets") => vec![
            col("Type", 0, |o| str_or(&o["type"], "Opaque")),
            col("Data", 0, |o| json!(count(&o["data"]))),
        ],
        ("", "serviceaccounts") => vec![col("Secrets", 0, |o| json!(count(&o["secrets"])))],
        ("", "endpoints") => vec![col("Endpoints", 0, |o| {
            join(o["subsets"].as_array().into_iter().flatten().flat_map(|s| {
                let ports: Vec<i64> = s["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| int(&p["port"]))
                    .collect();
                s["addresses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(move |a| {
                        let ip = a["ip"].as_str().unwrap_or("").to_owned();
                        ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                    })
                    .collect::<Vec<_>>()
            }))
        })],
        ("", "persistentvolumeclaims") => vec![
            col("Status", 0, |o| str_or(&o["status"]["phase"], "Pending")),
            col("Volume", 0, |o| str_or(&o["spec"]["volumeName"], "")),
            col("Capacity", 0, |o| {
                str_or(&o["status"]["capacity"]["storage"], "")
            }),
            col("Access Modes", 0, |o| {
                join(
                    o["status"]["accessModes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| {
                            m.as_str().map(|m| match m {
                                "ReadWriteOnce" => "RWO".to_owned(),
                                "ReadOnlyMany" => "ROX".to_owned(),
                                "ReadWriteMany" => "RWX".to_owned(),
                                "ReadWriteOncePod" => "RWOP".to_owned(),
                                other => other.to_owned(),
                            })
                        }),
                )
            }),
            col("StorageClass", 0, |o| {
                str_or(&o["spec"]["storageClassName"], "<unset>")
            }),
        ],
        ("apps", "deployments") => vec![
            col("Ready", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["readyReplicas"]),
                    int(&o["spec"]["replicas"])
                ))
            }),
            col("Up-to-date", 0, |o| {
                json!(int(&o["status"]["updatedReplicas"]))
            }),
            col("Available", 0, |o| {
                json!(int(&o["status"]["availableReplicas"]))
            }),
            col("Containers", 1, |o| {
                join(
                    containers(o)
                        .iter()
                        .filter_map(|c| c["name"].as_str().map(str::to_owned)),
                )
            }),
            col("Images", 1, |o| {
                join(
                    containers(o)
                        .iter()
                        .filter_map(|c| c["image"].as_str().map(str::to_owned)),
                )
            }),
            col("Selector", 1, |o| {
                json!(selector_string(&o["spec"]["selector"]["matchLabels"]))
            }),
        ],
        ("apps", "replicasets") => vec![
            col("Desired", 0, |o| json!(int(&o["spec"]["replicas"]))),
            col("Current", 0, |o| json!(int(&o["status"]["replicas"]))),
            col("Ready", 0, |o| json!(int(&o["status"]["readyReplicas"]))),
        ],
        ("apps", "statefulsets") => vec![col("Ready", 0, |o| {
            json!(format!(
                "{}/{}",
                int(&o["status"]["readyReplicas"]),
                int(&o["spec"]["replicas"])
            ))
        })],
        ("apps", "daemonsets") => vec![
            col("Desired", 0, |o| {
                json!(int(&o["status"]["desiredNumberScheduled"]))
            }),
            col("Current", 0, |o| {
                json!(int(&o["status"]["currentNumberScheduled"]))
            }),
            col("Ready", 0, |o| json!(int(&o["status"]["numberReady"]))),
            col("Up-to-date", 0, |o| {
                json!(int(&o["status"]["updatedNumberScheduled"]))
            }),
            col("Available", 0, |o| {
                json!(int(&o["status"]["numberAvailable"]))
            }),
            col("Node Selector", 0, |o| {
                json!(selector_string(
                    &o["spec"]["template"]["spec"]["nodeSelector"]
                ))
            }),
        ],
        ("batch", "jobs") => vec![
            col("Status", 0, |o| {
                let holds = |t: &str| {
                    o["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == t && c["status"] == "True")
                };
                let status = [
                    "Complete",
                    "Failed",
                    "Suspended",
                    "FailureTarget",
                    "SuccessCriteriaMet",
                ]
                .into_iter()
                .find(|t| holds(t))
                .unwrap_or("Running");
                json!(status)
            }),
            col("Completions", 0, |o| {
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["succeeded"]),
                    o["spec"]["completions"].as_i64().unwrap_or(1)
                ))
            }),
        ],
        ("batch", "cronjobs") => vec![
            col("Schedule", 0, |o| str_or(&o["spec"]["schedule"], "")),
            col("Timezone", 0, |o| str_or(&o["spec"]["timeZone"], "<none>")),
            col("Suspend", 0, |o| {
                json!(if o["spec"]["suspend"] == true {
                    "True"
                } else {
                    "False"
                })
            }),
            col("Active", 0, |o| json!(count(&o["status"]["active"]))),
            col("Last Schedule", 0, |o| {
                json!(o["status"]["lastScheduleTime"]
                    .as_str()
                    .map_or("<none>".to_owned(), age))
            }),
        ],
        ("networking.k8s.io", "ingresses") => vec![
            col("Class", 0, |o| {
                str_or(&o["spec"]["ingressClassName"], "<none>")
            }),
            col("Hosts", 0, |o| {
                let hosts: Vec<String> = o["spec"]["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["host"].as_str().map(str::to_owned))
                    .collect();
                json!(if hosts.is_empty() {
                    "*".to_owned()
                } else {
                    hosts.join(",")
                })
            }),
            col("Address", 0, |o| json!(lb_addresses(o).join(","))),
            col("Ports", 0, |o| {
                json!(
                    if o["spec"]["tls"].as_array().is_some_and(|t| !t.is_empty()) {
                        "80, 443"
                    } else {
                        "80"
                    }
                )
            }),
        ],
        ("networking.k8s.io", "networkpolicies") => {
            vec![col("Pod-Selector", 0, |o| {
                json!(selector_string(&o["spec"]["podSelector"]["matchLabels"]))
            })]
        }
        ("coordination.k8s.io", "leases") => vec![col("Holder", 0, |o| {
            str_or(&o["spec"]["holderIdentity"], "")
        })],
        ("policy", "poddisruptionbudgets") => vec![
            col("Min Available", 0, |o| {
                json!(o["spec"]["minAvailable"]
                    .as_i64()
                    .map(|v| v.to_string())
                    .or(o["spec"]["minAvailable"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "N/A".into()))
            }),
            col("Max Unavailable", 0, |o| {
                json!(o["spec"]["maxUnavailable"]
                    .as_i64()
                    .map(|v| v.to_string())
                    .or(o["spec"]["maxUnavailable"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "N/A".into()))
            }),
            col("Allowed Disruptions", 0, |o| {
                json!(int(&o["status"]["disruptionsAllowed"]))
            }),
        ],
        _ => Vec::new(),
    }
}
