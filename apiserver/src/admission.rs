//! Admission of a VC's creates: its ResourceQuotas.
//!
//! As kube-apiserver's ResourceQuota admission: an object whose usage
//! (`kplex_api::quota::usage`) would take a quota of its namespace past
//! `hard` is refused with 403 `exceeded quota: <quota>, requested: …,
//! used: …, limited: …`; a Pod that leaves a limited compute resource
//! unstated is refused (`failed quota: <quota>: must specify …`); a quota
//! whose usage the controller has not yet counted refuses what it limits
//! (`status unknown for quota`). An admitted object's usage is added to
//! each quota's `status.used` before the object is stored (a write guarded
//! by the quota's revision, retried when it races), so concurrent creates
//! cannot both take the last unit. The quota controller's recount settles
//! `used` to the truth afterwards (a create that fails after admission is
//! given back then).

use std::collections::BTreeMap;

use kplex_api::quantity::{self, Milli};
use kplex_registry::generic::{GenericStore, ListOptions, WriteOptions};
use kplex_registry::{ApiError, Catalog, ResourceInfo};
use serde_json::{json, Value};

/// Charges for a write attempts at most this many times when quotas race.
const ATTEMPTS: usize = 8;

fn amounts(map: &Value) -> BTreeMap<String, Milli> {
    map.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), quantity::parse(v.as_str()?)?)))
        .collect()
}

fn listing(resources: &[(&String, Milli)]) -> String {
    resources
        .iter()
        .map(|(name, q)| format!("{name}={}", quantity::format(*q)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Admits `object` (of `info`, to be created in `ns`) against the
/// namespace's quotas, charging them for it unless `dry_run`.
pub async fn admit_create(
    store: &GenericStore,
    catalog: &Catalog,
    info: &ResourceInfo,
    ns: &str,
    object: &Value,
    dry_run: bool,
) -> Result<(), ApiError> {
    let usage = kplex_api::quota::usage(&info.group, &info.plural, object);
    if usage.is_empty() {
        return Ok(());
    }
    let Some(quotas) = catalog.find("", "v1", "resourcequotas") else {
        return Ok(());
    };
    let name = object["metadata"]["name"]
        .as_str()
        .or(object["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    let forbidden = |why: String| {
        ApiError::forbidden(format!(
            "{} \"{name}\" is forbidden: {why}",
            info.qualified()
        ))
    };
    for _ in 0..ATTEMPTS {
        let page = store
            .list(quotas, Some(ns), &ListOptions::default())
            .await?;
        let mut charges: Vec<(Value, Value)> = Vec::new();
        for quota in page.items {
            let quota_name = quota["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let hard = amounts(&quota["spec"]["hard"]);
            if !kplex_api::quota::touches(&hard, &usage) {
                continue;
            }
            if (info.group.as_str(), info.plural.as_str()) == ("", "pods") {
                let unstated = kplex_api::quota::unstated(object, &hard);
                if !unstated.is_empty() {
                    return Err(forbidden(kplex_api::quota::unstated_refusal(
                        &quota_name,
                        &unstated,
                    )));
                }
            }
            let used = amounts(&quota["status"]["used"]);
            let limited: Vec<&String> = usage.keys().filter(|k| hard.contains_key(*k)).collect();
            let unknown: Vec<&String> = limited
                .iter()
                .copied()
                .filter(|k| !used.contains_key(*k))
                .collect();
            if !unknown.is_empty() {
                let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
                return Err(forbidden(format!(
                    "status unknown for quota: {quota_name}, resources: {}",
                    names.join(",")
                )));
            }
            let exceeded: Vec<&String> = limited
                .iter()
                .copied()
                .filter(|k| used[*k] + usage[*k] > hard[*k])
                .collect();
            if !exceeded.is_empty() {
                let requested: Vec<(&String, Milli)> =
                    exceeded.iter().map(|k| (*k, usage[*k])).collect();
                let in_use: Vec<(&String, Milli)> =
                    exceeded.iter().map(|k| (*k, used[*k])).collect();
                let limits: Vec<(&String, Milli)> =
                    exceeded.iter().map(|k| (*k, hard[*k])).collect();
                return Err(forbidden(format!(
                    "exceeded quota: {quota_name}, requested: {}, used: {}, limited: {}",
                    listing(&requested),
                    listing(&in_use),
                    listing(&limits)
                )));
            }
            let mut charged = quota.clone();
            for key in limited {
                charged["status"]["used"][key] = json!(quantity::format(used[key] + usage[key]));
            }
            charges.push((quota, charged));
        }
        if dry_run {
            return Ok(());
        }
        let mut raced = false;
        for (quota, charged) in charges {
            let quota_name = quota["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let write = WriteOptions {
                status: true,
                ..Default::default()
            };
            match store
                .update(quotas, Some(ns), &quota_name, charged, write)
                .await
            {
                Ok(_) => {}
                // Another write took the quota meanwhile: count again.
                Err(e) if e.reason == "Conflict" => {
                    raced = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if !raced {
            return Ok(());
        }
    }
    Err(ApiError::conflict(
        "resourcequotas",
        "the namespace's quotas",
    ))
}
