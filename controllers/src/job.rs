//! The Job controller (and the TTL-after-finished one): runs Pods until
//! `completions` succeed (NonIndexed) or every index does (Indexed), at
//! most `parallelism` at a time; fails the Job past `backoffLimit` or
//! `activeDeadlineSeconds`; suspends and resumes; reports the conditions
//! `kubectl wait --for=condition=complete` reads (SuccessCriteriaMet then
//! Complete, FailureTarget then Failed). Finished Pods are counted through
//! kube's tracking finalizer, so a Pod deleted after it finished is still
//! counted once, never twice. A finished Job with `ttlSecondsAfterFinished`
//! is deleted when it expires.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use kube::ResourceExt;
use serde_json::json;

use crate::cache::ObjectKey;
use crate::client::Propagation;
use crate::pods;
use crate::replicaset::{api_message, claim_pods, Selector, BURST};
use crate::{Ctx, Error, Outcome};

/// The finalizer that keeps a Job's Pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// An Indexed Job Pod's index.
pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

fn finished_condition(job: &Job) -> Option<&JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.annotations().get(INDEX_ANNOTATION)?.parse().ok()
}

/// Indexes as kube writes `completedIndexes`: `0-2,4`.
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((first, last)) if i == last + 1 => Some((first, i)),
            Some((first, last)) => {
                out.push(span(first, last));
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((first, last)) = run {
        out.push(span(first, last));
    }
    out.join(",")
}

fn span(first: i32, last: i32) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// Parses `completedIndexes`.
pub fn parse_indexes(text: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let now = pods::time(pods::now());
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// The Pod of `template` for the Job (and its index).
fn pod_for(job: &Job, template: &PodTemplateSpec, index: Option<i32>) -> Pod {
    let owner = pods::controller_ref(job);
    let ns = job.namespace().unwrap_or_default();
    let prefix = match index {
        Some(i) => format!("{}-{i}-", job.name_any()),
        None => format!("{}-", job.name_any()),
    };
    let mut pod = pods::from_template(template, owner, &ns, None, &prefix);
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.into());
    if let Some(i) = index {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX_ANNOTATION.into(), i.to_string());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(INDEX_ANNOTATION.into(), i.to_string());
        if let Some(spec) = pod.spec.as_mut() {
            spec.hostname = Some(format!("{}-{i}", job.name_any()));
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{INDEX_ANNOTATION}']"),
                    }),
                    ..Default::default()
                }),
            };
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.env.get_or_insert_with(Vec::new).push(env.clone());
            }
        }
    }
    pod
}

/// Takes the tracking finalizer off `pod`.
async fn release(ctx: &Ctx, key: &ObjectKey, pod: &Pod) -> Result<(), Error> {
    let finalizers: Vec<String> = pod
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != TRACKING_FINALIZER)
        .cloned()
        .collect();
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pod.metadata.resource_version}});
    match api.merge(&pod.name_any(), &patch).await {
        Ok(written) => {
            ctx.pods.upsert(&key.vc, written);
            Ok(())
        }
        Err(e) if e.is_status(404) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn write_status(
    ctx: &Ctx,
    key: &ObjectKey,
    job: &Job,
    status: JobStatus,
) -> Result<(), Error> {
    if job.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut updated = job.clone();
    updated.status = Some(status);
    let api = ctx.clients.vc::<Job>(&key.vc, key.namespace.as_deref());
    let written = api.replace_status(&key.name, &updated).await?;
    ctx.jobs.upsert(&key.vc, written);
    Ok(())
}

/// Reconciles one Job.
pub async fn reconcile(ctx: &Arc<Ctx>, key: &ObjectKey) -> Outcome {
    let Some(job) = ctx.jobs.get(key) else {
        return Ok(None);
    };
    let spec = job.spec.clone().unwrap_or_default();
    let owner = pods::controller_ref(job.as_ref());
    let uid = owner.uid.clone();
    let deleting = job.metadata.deletion_timestamp.is_some();
    let selector = spec.selector.clone().unwrap_or_default();
    let claimed = claim_pods(ctx, key, &owner, &Selector::Labels(&selector), deleting).await?;
    let mut status = job.status.clone().unwrap_or_default();
    let holds = |p: &Pod| p.finalizers().iter().any(|f| f == TRACKING_FINALIZER);
    // Counting, step 1: finished Pods still held are recorded as uncounted.
    let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
    let mut recorded: BTreeSet<String> = uncounted
        .succeeded
        .iter()
        .chain(uncounted.failed.iter())
        .flatten()
        .cloned()
        .collect();
    let mut newly = false;
    for pod in claimed.iter().filter(|p| holds(p)) {
        let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        let done = match phase(pod) {
            Some("Succeeded") => Some(true),
            Some("Failed") => Some(false),
            // Deleted before it finished: a failure.
            _ if pod.metadata.deletion_timestamp.is_some() => Some(false),
            _ => None,
        };
        if let Some(succeeded) = done {
            if recorded.insert(pod_uid.clone()) {
                let list = if succeeded {
                    &mut uncounted.succeeded
                } else {
                    &mut uncounted.failed
                };
                list.get_or_insert_with(Vec::new).push(pod_uid);
                newly = true;
            }
        }
    }
    if newly {
        status.uncounted_terminated_pods = Some(uncounted);
        write_status(ctx, key, &job, status).await?;
        return Ok(Some(Duration::ZERO));
    }
    // Step 2: recorded Pods let go, then counted.
    let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
    for pod in claimed
        .iter()
        .filter(|p| holds(p) && recorded.contains(p.metadata.uid.as_deref().unwrap_or_default()))
    {
        release(ctx, key, pod).await?;
    }
    if !recorded.is_empty() {
        let succeeded_now = uncounted.succeeded.clone().unwrap_or_default();
        let failed_now = uncounted.failed.clone().unwrap_or_default();
        for pod in claimed
            .iter()
            .filter(|p| succeeded_now.contains(p.metadata.uid.as_ref().unwrap_or(&String::new())))
        {
            if let Some(i) = index_of(pod) {
                completed.insert(i);
            }
        }
        status.succeeded = Some(status.succeeded.unwrap_or(0) + succeeded_now.len() as i32);
        status.failed = Some(status.failed.unwrap_or(0) + failed_now.len() as i32);
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods::default());
        if spec.completion_mode.as_deref() == Some("Indexed") {
            status.completed_indexes = Some(format_indexes(&completed));
            status.succeeded = Some(completed.len() as i32);
        }
    }
    let active: Vec<Arc<Pod>> = claimed
        .iter()
        .filter(|p| pods::is_active(p))
        .cloned()
        .collect();
    let api = ctx.clients.vc::<Pod>(&key.vc, key.namespace.as_deref());
    let remove_active = |pods: Vec<Arc<Pod>>| {
        let api = &api;
        async move {
            for pod in pods {
                release(ctx, key, &pod).await?;
                api.delete(
                    &pod.name_any(),
                    Propagation::Background,
                    pod.metadata.uid.as_deref(),
                )
                .await?;
                ctx.pods.remove_deleted(
                    &ObjectKey::new(&key.vc, key.namespace.as_deref(), &pod.name_any()),
                    pod.metadata.uid.as_deref(),
                );
            }
            Ok::<(), Error>(())
        }
    };
    if let Some(finished) = finished_condition(&job) {
        let finished_at = status
            .completion_time
            .clone()
            .or_else(|| finished.last_transition_time.clone());
        write_status(ctx, key, &job, status).await?;
        return after_finish(ctx, key, &job, finished_at).await;
    }
    if deleting {
        write_status(ctx, key, &job, status).await?;
        return Ok(None);
    }
    let now = pods::now();
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let suspended = spec.suspend == Some(true);
    if suspended {
        remove_active(active.clone()).await?;
        if !conditions
            .iter()
            .any(|c| c.type_ == "Suspended" && c.status == "True")
        {
            conditions.retain(|c| c.type_ != "Suspended");
            conditions.push(condition("Suspended", "JobSuspended", "Job suspended"));
        }
        status.active = Some(0);
        status.ready = Some(0);
        write_status(ctx, key, &job, status).await?;
        return Ok(None);
    }
    if let Some(c) = conditions
        .iter_mut()
        .find(|c| c.type_ == "Suspended" && c.status == "True")
    {
        *c = condition("Suspended", "JobResumed", "Job resumed");
        c.status = "False".into();
        status.start_time = None;
    }
    let start = status
        .start_time
        .get_or_insert_with(|| pods::time(now))
        .clone();
    let failed = status.failed.unwrap_or(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let deadline_left = spec
        .active_deadline_seconds
        .map(|d| start.0.as_second() + d - now.as_second());
    let failure = if failed > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ))
    } else if deadline_left.is_some_and(|left| left <= 0) {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        ))
    } else {
        None
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let succeeded = status.succeeded.unwrap_or(0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let done = match spec.completions {
        Some(completions) if indexed => completed.len() as i32 >= completions,
        Some(completions) => succeeded >= completions,
        // A work queue: done once one succeeded and none runs.
        None => succeeded > 0 && active.is_empty(),
    };
    if let Some((reason, message)) = failure {
        remove_active(active).await?;
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.push(condition("FailureTarget", reason, message));
        conditions.push(condition("Failed", reason, message));
        status.active = Some(0);
        status.ready = Some(0);
        ctx.events.warning(key, "Job", &uid, reason, message);
        write_status(ctx, key, &job, status).await?;
        return Ok(None);
    }
    if done {
        remove_active(active).await?;
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ));
        conditions.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        ));
        status.completion_time = Some(pods::time(now));
        status.active = Some(0);
        status.ready = Some(0);
        ctx.events
            .normal(key, "Job", &uid, "Completed", "Job completed");
        write_status(ctx, key, &job, status).await?;
        return Ok(None);
    }
    // Pods to run now.
    let template = spec.template.clone();
    let mut created = 0;
    let mut refused = None;
    if indexed {
        let completions = spec.completions.unwrap_or(1);
        let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        let pending: Vec<i32> = (0..completions)
            .filter(|i| !completed.contains(i) && !running.contains(i))
            .take((parallelism - active.len() as i32).max(0) as usize)
            .collect();
        for index in pending {
            match api.create(&pod_for(&job, &template, Some(index))).await {
                Ok(pod) => {
                    created += 1;
                    ctx.events.normal(
                        key,
                        "Job",
                        &uid,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.name_any()),
                    );
                    ctx.pods.upsert(&key.vc, pod);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    } else {
        let want = match spec.completions {
            Some(completions) => parallelism.min(completions - succeeded),
            None if succeeded > 0 => active.len() as i32,
            None => parallelism,
        };
        let missing = (want - active.len() as i32).clamp(0, BURST as i32);
        for _ in 0..missing {
            match api.create(&pod_for(&job, &template, None)).await {
                Ok(pod) => {
                    created += 1;
                    ctx.events.normal(
                        key,
                        "Job",
                        &uid,
                        "SuccessfulCreate",
                        &format!("Created pod: {}", pod.name_any()),
                    );
                    ctx.pods.upsert(&key.vc, pod);
                }
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    }
    if let Some(e) = &refused {
        ctx.events.warning(
            key,
            "Job",
            &uid,
            "FailedCreate",
            &format!("Error creating: {}", api_message(e)),
        );
    }
    let active_now = ctx
        .pods
        .controlled_by(&key.vc, &uid)
        .into_iter()
        .filter(|p| pods::is_active(p))
        .collect::<Vec<_>>();
    status.active = Some(active_now.len() as i32);
    status.ready = Some(active_now.iter().filter(|p| pods::is_ready(p)).count() as i32);
    status.terminating = Some(
        claimed
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && !matches!(phase(p), Some("Succeeded" | "Failed"))
            })
            .count() as i32,
    );
    if status.succeeded.is_none() {
        status.succeeded = Some(0);
    }
    if status.failed.is_none() {
        status.failed = Some(0);
    }
    write_status(ctx, key, &job, status).await?;
    if refused.is_some() {
        return Ok(Some(Duration::from_secs(10)));
    }
    let _ = created;
    Ok(deadline_left.map(|left| Duration::from_secs(left.max(0) as u64 + 1)))
}

/// A finished Job: its leftover tracking finalizers go, and with
/// `ttlSecondsAfterFinished` it is deleted once that passes.
async fn after_finish(
    ctx: &Ctx,
    key: &ObjectKey,
    job: &Job,
    finished_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Outcome {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    for pod in ctx.pods.controlled_by(&key.vc, &uid) {
        if pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER) {
            release(ctx, key, &pod).await?;
        }
    }
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(None);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let finished = finished_at.map_or(0, |t| t.0.as_second());
    let left = finished + i64::from(ttl) - pods::now().as_second();
    if left > 0 {
        return Ok(Some(Duration::from_secs(left as u64)));
    }
    ctx.clients
        .vc::<Job>(&key.vc, key.namespace.as_deref())
        .delete(&key.name, Propagation::Foreground, Some(&uid))
        .await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_read_and_write_as_kube_spells_them() {
        let set: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("").is_empty());
    }
}
