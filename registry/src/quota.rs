//! Per-VC limits on what all tenants share, so one tenant cannot take it
//! from the others. So far: open watches. Each watch holds a subscriber, a
//! task and its buffers until it ends; without a cap one VC could open them
//! until the process runs out of memory or file descriptors.
//!
//! A VC's count exists only while it has a watch open: idle VCs cost
//! nothing here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::error::ApiError;

/// Open watches per VC, and the most one VC may hold unless its own
/// limit says otherwise.
pub struct WatchLimits {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// One open watch of a VC; dropping it (the watch ended) frees the slot.
#[must_use]
pub struct WatchPermit {
    limits: Arc<WatchLimits>,
    vc: String,
}

/// Open watches a VC may hold unless `kplex serve` is told otherwise.
pub const DEFAULT_MAX_WATCHES_PER_VC: usize = 1000;

impl Default for WatchLimits {
    fn default() -> WatchLimits {
        WatchLimits::new(DEFAULT_MAX_WATCHES_PER_VC)
    }
}

impl WatchLimits {
    pub fn new(max: usize) -> WatchLimits {
        WatchLimits {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The limit of a VC that sets none.
    pub fn default_max(&self) -> usize {
        self.max
    }

    /// Watches `vc` holds open.
    pub fn open(&self, vc: &str) -> usize {
        self.open
            .lock()
            .expect("watch limits")
            .get(vc)
            .copied()
            .unwrap_or(0)
    }

    /// A slot for one more watch of `vc`, or a 429 (with `Retry-After`, as
    /// kube-apiserver's priority and fairness answers) when it has the default.
    pub fn acquire(self: &Arc<Self>, vc: &str) -> Result<WatchPermit, ApiError> {
        self.acquire_within(vc, self.max)
    }

    /// [`WatchLimits::acquire`] with the VC's own limit.
    pub fn acquire_within(self: &Arc<Self>, vc: &str, max: usize) -> Result<WatchPermit, ApiError> {
        let mut open = self.open.lock().expect("watch limits");
        if open.get(vc).copied().unwrap_or(0) >= max {
            return Err(ApiError {
                code: http::StatusCode::TOO_MANY_REQUESTS,
                reason: "TooManyRequests",
                message: format!(
                    "too many watches open in this virtual cluster (at most {max}), please try again later"
                ),
                details: Some(Box::new(json!({"retryAfterSeconds": 1}))),
            });
        }
        *open.entry(vc.to_owned()).or_default() += 1;
        Ok(WatchPermit {
            limits: self.clone(),
            vc: vc.to_owned(),
        })
    }

    /// VCs with a watch open.
    pub fn vcs(&self) -> usize {
        self.open.lock().expect("watch limits").len()
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("watch limits");
        if let Some(count) = open.get_mut(&self.vc) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.vc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vc_at_its_limit_is_refused_and_others_are_not() {
        let limits = Arc::new(WatchLimits::new(2));
        let a1 = limits.acquire("a").unwrap();
        let _a2 = limits.acquire("a").unwrap();
        let refused = limits.acquire("a").err().unwrap();
        assert_eq!(refused.code, http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after(), Some(1));
        let _b = limits.acquire("b").unwrap();
        drop(a1);
        let _a3 = limits.acquire("a").unwrap();
        assert_eq!(limits.vcs(), 2);
    }

    #[test]
    fn an_idle_vc_holds_no_entry() {
        let limits = Arc::new(WatchLimits::new(5));
        drop(limits.acquire("a").unwrap());
        assert_eq!(limits.vcs(), 0);
        // Nor does a refused one.
        let none = Arc::new(WatchLimits::new(0));
        assert!(none.acquire("a").is_err());
        assert_eq!(none.vcs(), 0);
    }
}
