//! A VC's subresources and resources that are not the generic store's
//! plain CRUD: Pod bindings (and the top-level `bindings`), evictions,
//! scale, the syncer's Service addresses, and `componentstatuses`.

use super::*;

/// `pods/<name>/binding`: a scheduler (or the syncer, for the Node a host
/// placed the Pod on) assigns the Pod to a Node, once.
pub(super) async fn bind(
    store: &GenericStore,
    t: &Target<'_>,
    name: &str,
    req: &Request,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let body = req.json_body()?;
    if body["kind"].as_str().is_some_and(|k| k != "Binding") {
        return Err(ApiError::bad_request(format!(
            "the body is a {}, not a Binding",
            body["kind"].as_str().unwrap_or_default()
        )));
    }
    let node = body["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("Binding", name, "target.name", "Required value"))?
        .to_owned();
    if body["target"]["kind"].as_str().is_some_and(|k| k != "Node") {
        return Err(ApiError::invalid(
            "Binding",
            name,
            "target.kind",
            "must be empty or \"Node\"",
        ));
    }
    let assign = |pod: &mut Value| {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(conflict_binding(name, "the pod is being deleted"));
        }
        match pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            Some(bound) => Err(conflict_binding(
                name,
                &format!("pod {name} is already assigned to node \"{bound}\""),
            )),
            None => {
                pod["spec"]["nodeName"] = json!(node);
                let conditions = pod["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut conditions: Vec<Value> = conditions
                    .into_iter()
                    .filter(|c| c["type"] != "PodScheduled")
                    .collect();
                conditions.push(json!({"type": "PodScheduled", "status": "True",
                    "lastProbeTime": null, "lastTransitionTime": crate::virtualclusters::now()}));
                pod["status"]["conditions"] = Value::Array(conditions);
                Ok(())
            }
        }
    };
    if dry_run {
        let mut pod = store.get(t.info, t.namespace, name).await?;
        assign(&mut pod)?;
    } else {
        store
            .server_update(t.info, t.namespace, name, assign)
            .await?;
    }
    Ok(created_status())
}

/// The top-level `bindings` (the older spelling of `pods/<name>/binding`):
/// the Binding's name is the Pod's.
pub(super) async fn bind_named(
    catalog: &Catalog,
    store: &GenericStore,
    t: &Target<'_>,
    req: &Request,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    if req.method != Method::POST || t.name.is_some() || t.namespace.is_none() {
        return Err(method_not_allowed(&req.method));
    }
    let body = req.json_body()?;
    let pod = body["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("Binding", "", "metadata.name", "Required value"))?;
    let pods = Target {
        info: catalog.find("", "v1", "pods").expect("catalogued"),
        namespace: t.namespace,
        name: Some(pod),
        sub: Some("binding"),
    };
    bind(store, &pods, pod, req, dry_run).await
}

/// `componentstatuses` (deprecated since Kubernetes 1.19, still listed by
/// `kubectl get cs`): what the server can say of its parts. kplex reports
/// its storage, read at once; the scheduler and controller-manager a
/// cluster would list are not a VC's own (Pods are placed by the syncer,
/// the shared controllers serve every VC), so they are not reported.
pub(super) async fn component_statuses(
    store: &GenericStore,
    t: &Target<'_>,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let params = req.params();
    let watching = matches!(params.get("watch"), Some("true" | "1"));
    if req.method != Method::GET || watching {
        // Nothing to watch: kube-apiserver serves get and list only.
        return Err(method_not_allowed(&req.method));
    }
    kplex_registry::warnings::add("v1 ComponentStatus is deprecated in v1.19+");
    let condition = match store.store().current_revision().await {
        Ok(_) => json!({"type": "Healthy", "status": "True", "message": "{\"health\":\"true\"}"}),
        Err(e) => json!({"type": "Healthy", "status": "False", "error": e.to_string()}),
    };
    let storage = json!({
        "kind": "ComponentStatus",
        "apiVersion": "v1",
        "metadata": {"name": STORAGE_COMPONENT, "creationTimestamp": null},
        "conditions": [condition],
    });
    match t.name {
        Some(STORAGE_COMPONENT) if req.wants_table() => Ok(ok(render_table(t.info, &[storage]))),
        Some(STORAGE_COMPONENT) => Ok(ok(storage)),
        Some(name) => Err(ApiError::not_found(format!(
            "componentstatuses \"{name}\" not found"
        ))),
        None => Ok(list_response(t.info, req, json!({}), vec![storage])),
    }
}

/// The one component `componentstatuses` reports.
const STORAGE_COMPONENT: &str = "storage";

/// `services/<name>/clusterip` (system credentials only): the syncer gives
/// a tenant's Service the ClusterIP(s) and node ports its host copy got,
/// so the address the tenant sees is the one that routes from its Pods.
/// Body: `{"clusterIP": …, "clusterIPs": […], "nodePorts": [per port]}`.
pub(super) async fn set_addresses(
    store: &GenericStore,
    t: &Target<'_>,
    name: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let body = req.json_body()?;
    let ip = body["clusterIP"]
        .as_str()
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| ApiError::invalid("Service", name, "clusterIP", "Required value"))?
        .to_owned();
    let ips = match body.get("clusterIPs") {
        Some(Value::Array(ips)) if ips.iter().all(Value::is_string) => Value::Array(ips.clone()),
        _ => json!([ip]),
    };
    let node_ports: Vec<Option<i64>> = body["nodePorts"]
        .as_array()
        .map(|ports| ports.iter().map(Value::as_i64).collect())
        .unwrap_or_default();
    let object = store
        .server_update(t.info, t.namespace, name, |service| {
            service["spec"]["clusterIP"] = json!(ip);
            service["spec"]["clusterIPs"] = ips.clone();
            if let Some(ports) = service["spec"]["ports"].as_array_mut() {
                for (port, node_port) in ports.iter_mut().zip(&node_ports) {
                    if let Some(n) = node_port {
                        port["nodePort"] = json!(n);
                    }
                }
            }
            Ok(())
        })
        .await?;
    Ok(ok(object))
}

/// What a subresource create (binding, eviction) answers.
fn created_status() -> Response<Body> {
    json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

fn conflict_binding(name: &str, message: &str) -> ApiError {
    ApiError {
        code: StatusCode::CONFLICT,
        reason: "Conflict",
        message: format!("Operation cannot be fulfilled on pods/binding \"{name}\": {message}"),
        details: None,
    }
}

/// `pods/<name>/eviction`: the Pod is deleted, with the Eviction's delete
/// options, unless a PodDisruptionBudget selecting it allows no disruption
/// now (429, as kube-apiserver answers; the budget's allowance is taken
/// down by one when it does allow). A finished Pod is not guarded.
pub(super) async fn evict(
    catalog: &Catalog,
    store: &GenericStore,
    t: &Target<'_>,
    name: &str,
    req: &Request,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let body = if req.body.is_empty() {
        json!({})
    } else {
        req.json_body()?
    };
    if body["kind"].as_str().is_some_and(|k| k != "Eviction") {
        return Err(ApiError::bad_request("the body is not an Eviction"));
    }
    if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options = DeleteOptions::from_body(body.get("deleteOptions"), dry_run)?;
    let pod = store.get(t.info, t.namespace, name).await?;
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if let Some(budgets) = catalog
        .find("policy", "v1", "poddisruptionbudgets")
        .filter(|_| !finished)
    {
        let page = store
            .list(budgets, t.namespace, &ListOptions::default())
            .await?;
        let guarding: Vec<&Value> = page
            .items
            .iter()
            .filter(|b| {
                kplex_registry::selectors::takes(&b["spec"]["selector"], &pod["metadata"]["labels"])
            })
            .collect();
        if guarding.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(budget) = guarding.first() {
            let budget_name = budget["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let refused = || ApiError {
                code: StatusCode::TOO_MANY_REQUESTS,
                reason: "TooManyRequests",
                message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                details: Some(Box::new(json!({"causes": [{"reason": "DisruptionBudget",
                    "message": format!("The disruption budget {budget_name} needs {} healthy pods and has {} currently",
                        budget["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                        budget["status"]["currentHealthy"].as_i64().unwrap_or(0))}]}))),
            };
            if budget["status"]["disruptionsAllowed"].as_i64().unwrap_or(0) < 1 {
                return Err(refused());
            }
            if !dry_run {
                store
                    .server_update(budgets, t.namespace, &budget_name, |b| {
                        let allowed = b["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
                        if allowed < 1 {
                            return Err(refused());
                        }
                        b["status"]["disruptionsAllowed"] = json!(allowed - 1);
                        b["status"]["disruptedPods"][name] = json!(crate::virtualclusters::now());
                        Ok(())
                    })
                    .await?;
            }
        }
    }
    store.delete(t.info, t.namespace, name, &options).await?;
    Ok(created_status())
}

/// The `scale` subresource: an `autoscaling/v1` Scale view of `spec.replicas`.
pub(super) async fn scale(
    store: &GenericStore,
    t: &Target<'_>,
    name: &str,
    req: &Request,
    write: WriteOptions,
) -> Result<Response<Body>, ApiError> {
    let object = match req.method {
        Method::GET => store.get(t.info, t.namespace, name).await?,
        Method::PUT | Method::PATCH => {
            let current = store.get(t.info, t.namespace, name).await?;
            let requested = if req.method == Method::PUT {
                req.json_body()?
            } else {
                let kind = kplex_registry::patch::PatchType::from_media_type(&req.media_type())?;
                kplex_registry::patch::apply(&scale_of(&current), kind, &req.body)?
            };
            let replicas = requested["spec"]["replicas"]
                .as_i64()
                .filter(|r| (0..=i64::from(i32::MAX)).contains(r))
                .ok_or_else(|| {
                    ApiError::field(
                        "Scale.autoscaling",
                        name,
                        "spec.replicas",
                        &format!(
                            "Invalid value: {}: must be greater than or equal to 0",
                            requested["spec"]["replicas"]
                        ),
                    )
                })?;
            let mut patch = json!({"spec": {"replicas": replicas}});
            if let Some(rv) = requested["metadata"]["resourceVersion"].as_str() {
                patch["metadata"] = json!({"resourceVersion": rv});
            }
            let body = serde_json::to_vec(&patch).expect("JSON");
            let write = WriteOptions {
                status: false,
                ..write.clone()
            };
            store
                .patch(
                    t.info,
                    t.namespace,
                    name,
                    kplex_registry::patch::PatchType::Merge,
                    &body,
                    write,
                )
                .await?
        }
        ref method => {
            return Err(ApiError {
                code: StatusCode::METHOD_NOT_ALLOWED,
                reason: "MethodNotAllowed",
                message: format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
                details: None,
            })
        }
    };
    Ok(ok(scale_of(&object)))
}

fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    let selector = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector,
        },
    })
}
