//! Leader election: with several kplex processes on one etcd, the one that
//! holds a Lease in the system cluster's `kube-system` runs the component
//! it names (`kplex-controllers`, `kplex-syncer`). The holder renews it every few seconds; a
//! candidate takes it once it has seen no renewal for the lease duration
//! (measured on its own clock, from when it last saw the record change, as
//! client-go does, so clocks need not agree). A holder that cannot renew in
//! time stops its controllers before another may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kplex_api::names::SYSTEM_NAMESPACE;

use crate::client::Clients;
use crate::{Error, Options};

/// The controllers' Lease.
pub const LEASE: &str = "kplex-controllers";
/// How long a Lease lasts without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);
/// How often the holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long the holder keeps trying to renew before it stops leading.
const RENEW_DEADLINE: Duration = Duration::from_secs(7);
/// How often a candidate tries.
const RETRY_EVERY: Duration = Duration::from_secs(2);

fn now_micro() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// A candidate for the Lease.
struct Candidate {
    clients: Clients,
    lease: String,
    identity: String,
    /// The record as last seen, and when it was seen to change.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Candidate {
    /// Tries once to take or renew the Lease; whether this process holds it.
    async fn try_acquire(&mut self) -> Result<bool, Error> {
        let api = self.clients.system::<Lease>(Some(SYSTEM_NAMESPACE));
        let now = now_micro();
        let mine = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now.clone()),
            lease_transitions: Some(0),
            ..Default::default()
        };
        let Some(current) = api.get_opt(&self.lease).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.clone()),
                    namespace: Some(SYSTEM_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(mine.clone()),
            };
            return match api.create(&lease).await {
                Ok(_) => {
                    self.observed = Some((mine, Instant::now()));
                    Ok(true)
                }
                Err(e) if e.is_status(409) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        // When the record last changed, as this process saw it.
        let seen_at = match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => Instant::now(),
        };
        self.observed = Some((spec.clone(), seen_at));
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(10).max(1) as u64);
        let held_by_other = !holder.is_empty() && holder != self.identity;
        if held_by_other && seen_at.elapsed() < duration {
            return Ok(false);
        }
        let mut next = spec.clone();
        next.holder_identity = Some(self.identity.clone());
        next.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        next.renew_time = Some(now.clone());
        if holder != self.identity {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        let mut lease = current;
        lease.spec = Some(next.clone());
        match api.replace(&self.lease, &lease).await {
            Ok(_) => {
                self.observed = Some((next, Instant::now()));
                Ok(true)
            }
            Err(e) if e.is_status(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown), so another takes over at once.
    async fn release(&mut self) {
        let api = self.clients.system::<Lease>(Some(SYSTEM_NAMESPACE));
        if let Ok(Some(mut lease)) = api.get_opt(&self.lease).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                let _ = api.replace(&self.lease, &lease).await;
            }
        }
    }
}

/// Runs the controllers whenever this process leads, for as long as it
/// runs.
pub async fn run(options: Options) -> Result<(), String> {
    lead(&options.config, &options.identity, LEASE, |lost| {
        crate::run_until(&options, lost)
    })
    .await
}

/// Runs `component` whenever this process holds `lease`, for as long as the
/// process runs; `component` gets a future that resolves when the Lease is
/// lost, and must stop then.
pub async fn lead<F, Fut>(
    config: &kube::Config,
    identity: &str,
    lease: &str,
    component: F,
) -> Result<(), String>
where
    F: Fn(futures::future::BoxFuture<'static, ()>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let clients = Clients::new(config).map_err(|e| e.to_string())?;
    let mut candidate = Candidate {
        clients,
        lease: lease.to_owned(),
        identity: identity.to_owned(),
        observed: None,
    };
    loop {
        match candidate.try_acquire().await {
            Ok(true) => {}
            Ok(false) => {
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, lease, "cannot reach the lease; retrying");
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
        }
        tracing::info!(identity, "leading: {lease} runs here");
        let (lost_tx, lost) = tokio::sync::oneshot::channel::<()>();
        let renew = async {
            let mut last_renewal = Instant::now();
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                match candidate.try_acquire().await {
                    Ok(true) => last_renewal = Instant::now(),
                    Ok(false) => break,
                    Err(e) => tracing::debug!(error = %e, lease, "renewing the lease failed"),
                }
                if last_renewal.elapsed() > RENEW_DEADLINE {
                    break;
                }
            }
            let _ = lost_tx.send(());
        };
        let ran = component(Box::pin(async {
            let _ = lost.await;
        }));
        let (_, ran) = tokio::join!(renew, ran);
        ran?;
        tracing::warn!(identity, "lost the lease: {lease} stopped");
    }
}

/// Releases the controllers' Lease if this process holds it (for a clean
/// shutdown).
pub async fn release(options: &Options) {
    release_lease(&options.config, &options.identity, LEASE).await
}

/// Releases `lease` if this process (`identity`) holds it.
pub async fn release_lease(config: &kube::Config, identity: &str, lease: &str) {
    if let Ok(clients) = Clients::new(config) {
        let mut candidate = Candidate {
            clients,
            lease: lease.to_owned(),
            identity: identity.to_owned(),
            observed: None,
        };
        candidate.release().await;
    }
}
