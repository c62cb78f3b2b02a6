//! Each VC's request rate (`spec.limits.requestsPerSecond` and
//! `.requestBurst`): a token bucket per VC, refilled at the rate and
//! holding at most the burst. A tenant request that finds it empty is a
//! 429 `TooManyRequests` with `Retry-After` the seconds until a token is
//! back; kubectl and client-go wait that long and retry.
//!
//! A VC has a bucket only while it is not full: a bucket that has refilled
//! is the same as none, and is dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use kplex_registry::ApiError;

/// Requests per second a VC's tenants may make unless its spec or `kplex
/// serve` says otherwise.
pub const DEFAULT_RATE: u32 = 1000;
/// Requests above the rate they may make at once, by default.
pub const DEFAULT_BURST: u32 = 2000;

/// See the module documentation.
pub struct RequestRates {
    /// Rate and burst of VCs whose spec names none.
    pub defaults: (u32, u32),
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Buckets are swept for full ones once the map reaches this size.
    sweep_at: Mutex<usize>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// The VC's limits when it was last used.
    rate: f64,
    burst: f64,
}

impl Default for RequestRates {
    fn default() -> RequestRates {
        RequestRates::new(DEFAULT_RATE, DEFAULT_BURST)
    }
}

impl RequestRates {
    /// Buckets for VCs whose default rate and burst are these.
    pub fn new(rate: u32, burst: u32) -> RequestRates {
        RequestRates {
            defaults: (rate, burst),
            buckets: Mutex::new(HashMap::new()),
            sweep_at: Mutex::new(64),
        }
    }

    /// Takes one token for a request of `vc` (at its limits), or the 429
    /// to answer.
    pub fn admit(&self, vc: &crate::virtualclusters::VirtualCluster) -> Result<(), ApiError> {
        let (rate, burst) = self.limits_of(vc);
        self.take(vc.uid(), rate, burst)
    }

    /// The rate and burst of `vc`: its own, else the defaults. A VC that
    /// sets its rate but no burst may burst to twice its rate.
    pub fn limits_of(&self, vc: &crate::virtualclusters::VirtualCluster) -> (u32, u32) {
        match (vc.limits.requests_per_second, vc.limits.request_burst) {
            (Some(rate), burst) => (rate, burst.unwrap_or(rate.saturating_mul(2))),
            (None, burst) => (self.defaults.0, burst.unwrap_or(self.defaults.1)),
        }
    }

    /// Takes one token of the VC with `uid` (rate per second, burst), or
    /// the 429 to answer.
    pub fn take(&self, uid: &str, rate: u32, burst: u32) -> Result<(), ApiError> {
        let (rate, burst) = (f64::from(rate.max(1)), f64::from(burst.max(1)));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rates lock");
        let bucket = match buckets.get_mut(uid) {
            Some(bucket) => {
                let elapsed = now.duration_since(bucket.at).as_secs_f64();
                bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
                (bucket.at, bucket.rate, bucket.burst) = (now, rate, burst);
                bucket
            }
            None => {
                self.sweep(&mut buckets, now);
                buckets.entry(uid.to_owned()).or_insert(Bucket {
                    tokens: burst,
                    at: now,
                    rate,
                    burst,
                })
            }
        };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
        Err(ApiError {
            code: hyper::StatusCode::TOO_MANY_REQUESTS,
            reason: "TooManyRequests",
            message: format!(
                "this virtual cluster is over its request rate ({} per second, bursts of {}), please try again later",
                rate, burst
            ),
            details: Some(Box::new(serde_json::json!({"retryAfterSeconds": wait}))),
        })
    }

    /// VCs with a bucket (not full).
    pub fn vcs(&self) -> usize {
        self.buckets.lock().expect("rates lock").len()
    }

    /// Drops full buckets once the map has grown to twice what was left
    /// last time (amortized: one sweep per that many new buckets).
    fn sweep(&self, buckets: &mut HashMap<String, Bucket>, now: Instant) {
        let mut sweep_at = self.sweep_at.lock().expect("rates lock");
        if buckets.len() < *sweep_at {
            return;
        }
        buckets.retain(|_, b| !b.full(now));
        *sweep_at = (buckets.len() * 2).max(64);
    }
}

impl Bucket {
    /// Whether it has refilled (as if it were not there).
    fn full(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vc_past_its_burst_waits_and_others_do_not() {
        let rates = RequestRates::default();
        for _ in 0..5 {
            rates.take("a", 1, 5).unwrap();
        }
        let refused = rates.take("a", 1, 5).unwrap_err();
        assert_eq!(refused.code, hyper::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after(), Some(1));
        assert!(
            refused.message.contains("1 per second, bursts of 5"),
            "{}",
            refused.message
        );
        rates.take("b", 1, 5).unwrap();
    }

    #[test]
    fn full_buckets_are_swept() {
        let rates = RequestRates::default();
        for i in 0..200 {
            rates.take(&format!("vc-{i}"), 1_000_000, 1).unwrap();
        }
        // Each refilled within a microsecond: sweeps keep the map small.
        assert!(rates.vcs() < 200, "{}", rates.vcs());
    }
}
