//! Turns for writes that allocate values unique within a VC (a Service's
//! ClusterIP and NodePorts): from reading what the VC's other objects hold
//! until the write is stored, one write of the VC at a time, so two objects
//! never get the same value. Within one process: several kplex replicas on
//! one etcd do not share turns. An entry exists only while a write holds or
//! awaits it: idle VCs cost nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Per-VC turns for service writes, within this process. An entry exists
/// only while a write holds or awaits it: idle VCs cost nothing.
#[derive(Debug, Default)]
pub struct AllocationLocks {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A VC's turn; the next waiting write goes when it is dropped.
#[must_use]
pub struct AllocationTurn {
    locks: Arc<AllocationLocks>,
    vc: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl AllocationLocks {
    /// Waits for `vc`'s turn.
    pub async fn turn(self: &Arc<Self>, vc: &str) -> AllocationTurn {
        let lock = self
            .held
            .lock()
            .expect("allocation locks")
            .entry(vc.to_owned())
            .or_default()
            .clone();
        let turn = lock.clone().lock_owned().await;
        AllocationTurn {
            locks: self.clone(),
            vc: vc.to_owned(),
            lock,
            turn: Some(turn),
        }
    }

    /// VCs with a write holding or awaiting its turn.
    pub fn len(&self) -> usize {
        self.held.lock().expect("allocation locks").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for AllocationTurn {
    fn drop(&mut self) {
        drop(self.turn.take());
        let mut held = self.locks.held.lock().expect("allocation locks");
        // The map's reference and ours: nobody else holds or awaits it.
        // (Others clone it only under `held`, which we hold.)
        if Arc::strong_count(&self.lock) == 2 {
            held.remove(&self.vc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allocation_turns_are_taken_one_at_a_time_per_vc_and_leave_nothing_behind() {
        use std::future::Future;
        use std::task::{Context, Poll};
        let locks = Arc::new(AllocationLocks::default());
        let first = locks.turn("vc-a").await;
        // Another VC is not held up.
        let other = locks.turn("vc-b").await;
        let mut second = Box::pin(locks.turn("vc-a"));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(second.as_mut().poll(&mut cx).is_pending(), "vc-a is taken");
        drop(first);
        let Poll::Ready(second) = second.as_mut().poll(&mut cx) else {
            panic!("vc-a's turn must pass on when the first is dropped");
        };
        assert_eq!(locks.len(), 2);
        drop(second);
        drop(other);
        assert!(locks.is_empty(), "idle VCs keep no lock");
    }
}
