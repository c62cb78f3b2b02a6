//! The host clusters VCs' Pods run on: records under
//! `/kplex/system/hostclusters/<name>`, each holding the host's kubeconfig
//! (which only system components read back; the admin API shows its
//! server), whether it is the default host, and the status the syncer
//! reports (reachable, server version, node count, last error).
//!
//! A VC is placed on `spec.hostCluster`, or on the default host when that
//! is unset. A host with VCs placed on it cannot be removed.

use std::sync::Arc;

use bytes::Bytes;
use kplex_storage::{KeyPrefix, RangeRequest, Store, StoreError, SystemKeyspace};
use serde_json::{json, Value};

use crate::virtualclusters::{store_error, validate_name, VirtualCluster, GROUP, VERSION};
use kplex_registry::ApiError;

/// The kind.
pub const KIND: &str = "HostCluster";
/// The resource.
pub const PLURAL: &str = "hostclusters";

/// The host clusters, backed by the system keyspace.
#[derive(Clone)]
pub struct HostClusters {
    store: Arc<dyn Store>,
}

/// The server URL a kubeconfig's current context (or first cluster) names.
pub fn kubeconfig_server(kubeconfig: &str) -> Result<String, String> {
    let config: Value = kplex_registry::yaml::to_json(kubeconfig.as_bytes())
        .map_err(|e| format!("the kubeconfig is not YAML: {e}"))?;
    let current = config["current-context"].as_str().unwrap_or_default();
    let contexts = config["contexts"].as_array().cloned().unwrap_or_default();
    let cluster_name = contexts
        .iter()
        .find(|c| c["name"].as_str() == Some(current))
        .and_then(|c| c["context"]["cluster"].as_str())
        .map(str::to_owned);
    let clusters = config["clusters"].as_array().cloned().unwrap_or_default();
    let cluster = match &cluster_name {
        Some(name) => clusters
            .iter()
            .find(|c| c["name"].as_str() == Some(name.as_str())),
        None => clusters.first(),
    };
    cluster
        .and_then(|c| c["cluster"]["server"].as_str())
        .filter(|s| s.starts_with("https://") || s.starts_with("http://"))
        .map(str::to_owned)
        .ok_or_else(|| "the kubeconfig names no cluster with an http(s) server".to_owned())
}

/// The object as the admin API serves it: the kubeconfig replaced by the
/// server it names.
pub fn redacted(mut object: Value) -> Value {
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(Value::String(kubeconfig)) = spec.remove("kubeconfig") {
            if let Ok(server) = kubeconfig_server(&kubeconfig) {
                spec.insert("server".into(), json!(server));
            }
        }
    }
    object
}

/// Whether `vc` is placed on host `name`, given the default host.
pub fn placed_on(vc: &VirtualCluster, name: &str, default: Option<&str>) -> bool {
    match vc.object()["spec"]["hostCluster"]
        .as_str()
        .filter(|h| !h.is_empty())
    {
        Some(host) => host == name,
        None => default == Some(name),
    }
}

fn is_default(object: &Value) -> bool {
    object["spec"]["default"].as_bool() == Some(true)
}

impl HostClusters {
    /// The host clusters on `store`.
    pub fn new(store: Arc<dyn Store>) -> HostClusters {
        HostClusters { store }
    }

    fn key(name: &str) -> Result<kplex_storage::Key, ApiError> {
        SystemKeyspace::key(&[PLURAL, name]).map_err(store_error)
    }

    /// The prefix of every record (for watches).
    pub fn prefix() -> Result<KeyPrefix, ApiError> {
        SystemKeyspace::prefix(&[PLURAL]).map_err(store_error)
    }

    /// Registers host `name` with `spec` (`kubeconfig`, `default`). A new
    /// default host takes over from the previous one.
    pub async fn create(&self, name: &str, spec: Value) -> Result<Value, ApiError> {
        validate_name(name).map_err(|mut e| {
            e.message = e.message.replace("VirtualCluster", KIND);
            e
        })?;
        let kubeconfig = spec["kubeconfig"]
            .as_str()
            .ok_or_else(|| ApiError::invalid(KIND, name, "spec.kubeconfig", "Required value"))?;
        kubeconfig_server(kubeconfig)
            .map_err(|e| ApiError::invalid(KIND, name, "spec.kubeconfig", &e))?;
        if !matches!(spec.get("default"), None | Some(Value::Bool(_))) {
            return Err(ApiError::invalid(
                KIND,
                name,
                "spec.default",
                "must be true or false",
            ));
        }
        let object = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": KIND,
            "metadata": {
                "name": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": crate::virtualclusters::now(),
            },
            "spec": {"kubeconfig": kubeconfig, "default": is_default(&json!({"spec": spec}))},
            "status": {"reachable": false, "conditions": []},
        });
        let kv = match self
            .store
            .create(&Self::key(name)?, Bytes::from(object.to_string()))
            .await
        {
            Ok(kv) => kv,
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(ApiError::already_exists(&format!("{PLURAL}.{GROUP}"), name))
            }
            Err(e) => return Err(store_error(e)),
        };
        if is_default(&object) {
            self.only_default(name).await?;
        }
        Ok(with_revision(object, kv.mod_revision.get()))
    }

    /// Registers host `name` as the default with `kubeconfig`, or gives an
    /// existing host of that name this kubeconfig and makes it the default
    /// (`kplex serve --host-kubeconfig`).
    pub async fn register_default(&self, name: &str, kubeconfig: &str) -> Result<Value, ApiError> {
        let spec = json!({"kubeconfig": kubeconfig, "default": true});
        match self.create(name, spec).await {
            Err(e) if e.reason == "AlreadyExists" => {
                kubeconfig_server(kubeconfig)
                    .map_err(|e| ApiError::invalid(KIND, name, "spec.kubeconfig", &e))?;
                let kubeconfig = kubeconfig.to_owned();
                let object = self
                    .modify(name, move |o| {
                        o["spec"]["kubeconfig"] = json!(kubeconfig);
                        o["spec"]["default"] = json!(true);
                    })
                    .await?;
                self.only_default(name).await?;
                Ok(object)
            }
            other => other,
        }
    }

    /// Makes `name` the only default host.
    async fn only_default(&self, name: &str) -> Result<(), ApiError> {
        for other in self.list().await?.0 {
            let other_name = other["metadata"]["name"].as_str().unwrap_or_default();
            if other_name != name && is_default(&other) {
                self.modify(other_name, |o| o["spec"]["default"] = json!(false))
                    .await?;
            }
        }
        Ok(())
    }

    /// The host named `name`, as stored (with its kubeconfig).
    pub async fn get(&self, name: &str) -> Result<Option<Value>, ApiError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        let kv = self
            .store
            .get(&Self::key(name)?)
            .await
            .map_err(store_error)?;
        kv.map(|kv| decode(&kv)).transpose()
    }

    /// Every host, in name order, with the revision of the read.
    pub async fn list(&self) -> Result<(Vec<Value>, u64), ApiError> {
        let range = self
            .store
            .range(RangeRequest::prefix(Self::prefix()?))
            .await
            .map_err(store_error)?;
        let hosts = range.kvs.iter().map(decode).collect::<Result<_, _>>()?;
        Ok((hosts, range.revision.get()))
    }

    /// The default host's name, if there is one.
    pub async fn default_host(&self) -> Result<Option<String>, ApiError> {
        Ok(self
            .list()
            .await?
            .0
            .iter()
            .find(|h| is_default(h))
            .and_then(|h| h["metadata"]["name"].as_str().map(str::to_owned)))
    }

    /// Replaces the status of host `name` (what the syncer reports).
    pub async fn set_status(&self, name: &str, status: Value) -> Result<Value, ApiError> {
        if !status.is_object() {
            return Err(ApiError::invalid(KIND, name, "status", "must be an object"));
        }
        self.modify(name, move |o| o["status"] = status.clone())
            .await
    }

    /// Reads, changes and writes back host `name`, again if another write
    /// raced it.
    async fn modify(&self, name: &str, change: impl Fn(&mut Value)) -> Result<Value, ApiError> {
        let key = Self::key(name)?;
        loop {
            let Some(kv) = self.store.get(&key).await.map_err(store_error)? else {
                return Err(ApiError::not_found_object(KIND, GROUP, name));
            };
            let mut object = decode(&kv)?;
            change(&mut object);
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            match self
                .store
                .update(&key, Bytes::from(object.to_string()), kv.mod_revision)
                .await
            {
                Ok(kv) => return Ok(with_revision(object, kv.mod_revision.get())),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found_object(KIND, GROUP, name))
                }
                Err(e) => return Err(store_error(e)),
            }
        }
    }

    /// Removes host `name`, unless a VC of `vcs` is placed on it.
    pub async fn delete(&self, name: &str, vcs: &[Arc<VirtualCluster>]) -> Result<Value, ApiError> {
        let key = Self::key(name)?;
        let Some(kv) = self.store.get(&key).await.map_err(store_error)? else {
            return Err(ApiError::not_found_object(KIND, GROUP, name));
        };
        let host = decode(&kv)?;
        let default = self.default_host().await?;
        let mut placed: Vec<&str> = vcs
            .iter()
            .filter(|vc| placed_on(vc, name, default.as_deref()))
            .map(|vc| vc.name())
            .collect();
        if !placed.is_empty() {
            placed.sort_unstable();
            return Err(ApiError {
                code: hyper::StatusCode::CONFLICT,
                reason: "Conflict",
                message: format!(
                    "host cluster \"{name}\" cannot be removed: virtual clusters are placed on it: {}",
                    placed.join(", ")
                ),
                details: None,
            });
        }
        match self.store.delete(&key, kv.mod_revision).await {
            Ok(_) => Ok(host),
            Err(StoreError::NotFound { .. }) => Err(ApiError::not_found_object(KIND, GROUP, name)),
            Err(StoreError::Conflict { .. }) => {
                Err(ApiError::conflict(&format!("{PLURAL}.{GROUP}"), name))
            }
            Err(e) => Err(store_error(e)),
        }
    }
}

fn with_revision(mut object: Value, revision: u64) -> Value {
    object["metadata"]["resourceVersion"] = json!(revision.to_string());
    object
}

fn decode(kv: &kplex_storage::KeyValue) -> Result<Value, ApiError> {
    let object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt host record {}: {e}", kv.key)))?;
    Ok(with_revision(object, kv.mod_revision.get()))
}

/// Host clusters as a Table: NAME SERVER DEFAULT REACHABLE VERSION NODES AGE.
pub fn table(objects: &[Value]) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let created = o["metadata"]["creationTimestamp"].as_str().unwrap_or("");
            json!({
                "cells": [
                    o["metadata"]["name"], o["spec"]["server"], o["spec"]["default"],
                    o["status"]["reachable"], o["status"]["serverVersion"].as_str().unwrap_or(""),
                    o["status"]["nodeCount"].as_i64().unwrap_or(0),
                    kplex_registry::table::age(created),
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    let column = |name: &str, kind: &str, description: &str| json!({"name": name, "type": kind, "format": if name == "Name" {"name"} else {""}, "description": description, "priority": 0});
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": [
            column("Name", "string", "Name of the host cluster"),
            column("Server", "string", "The host's API server"),
            column("Default", "boolean", "Whether VCs without spec.hostCluster are placed here"),
            column("Reachable", "boolean", "Whether the syncer reaches the host"),
            column("Version", "string", "The host's Kubernetes version"),
            column("Nodes", "integer", "The host's nodes"),
            column("Age", "string", "Time since registration"),
        ],
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: a\n  cluster: {server: 'https://a:6443'}\n- name: b\n  cluster: {server: 'https://b:6443'}\ncontexts:\n- name: b\n  context: {cluster: b, user: u}\nusers:\n- name: u\n  user: {token: secret}\n";

    #[test]
    fn the_server_is_the_current_contexts() {
        assert_eq!(kubeconfig_server(KUBECONFIG).unwrap(), "https://b:6443");
        assert!(kubeconfig_server("clusters: []").is_err());
        assert!(kubeconfig_server("{{{").is_err());
    }

    #[test]
    fn the_served_object_has_no_kubeconfig() {
        let object = json!({"spec": {"kubeconfig": KUBECONFIG, "default": true}});
        let served = redacted(object);
        assert!(served["spec"].get("kubeconfig").is_none());
        assert_eq!(served["spec"]["server"], "https://b:6443");
        assert!(!served.to_string().contains("secret"));
    }
}
