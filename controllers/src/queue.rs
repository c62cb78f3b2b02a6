//! One work queue for every controller and every VC, fair between VCs.
//!
//! Each VC with pending work has its own FIFO; workers take from the VCs in
//! turn (round-robin), and a VC may have at most `per_vc` items in flight,
//! so a VC that queues 10,000 Pods' worth of work cannot delay another
//! VC's single Deployment by more than a turn. As in client-go's work
//! queue, an item is queued at most once, and one added again while it is
//! being worked on is queued again when that work is done (never worked on
//! twice at once). A VC without pending work holds no entry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::Vc;

/// An item of work and the VC it belongs to.
pub trait Work: Clone + Eq + Hash + Send + Sync + 'static {
    /// The VC the work is for.
    fn vc(&self) -> &Vc;
}

struct State<T> {
    queues: HashMap<Vc, VecDeque<T>>,
    /// VCs with queued work, in turn order.
    turns: VecDeque<Vc>,
    queued: HashSet<T>,
    active: HashSet<T>,
    /// Added again while active: queued once the work is done.
    again: HashSet<T>,
    in_flight: HashMap<Vc, usize>,
    /// Items waiting for a delay ([`WorkQueue::add_after`]): when due.
    delayed: HashMap<T, tokio::time::Instant>,
    closed: bool,
}

/// See the module documentation.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    ready: tokio::sync::Notify,
    per_vc: usize,
}

/// Sizes of the queue, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Items waiting.
    pub queued: usize,
    /// Items being worked on.
    pub active: usize,
    /// VCs holding any entry.
    pub vcs: usize,
}

impl<T: Work> WorkQueue<T> {
    /// A queue letting each VC have `per_vc` items in flight.
    pub fn new(per_vc: usize) -> Arc<WorkQueue<T>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queues: HashMap::new(),
                turns: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                in_flight: HashMap::new(),
                delayed: HashMap::new(),
                closed: false,
            }),
            ready: tokio::sync::Notify::new(),
            per_vc: per_vc.max(1),
        })
    }

    /// Queues `item` (once: an item already queued stays where it is).
    pub fn add(&self, item: T) {
        let mut state = self.state.lock().expect("queue lock");
        if state.closed || state.queued.contains(&item) {
            return;
        }
        if state.active.contains(&item) {
            state.again.insert(item);
            return;
        }
        state.queued.insert(item.clone());
        let vc = item.vc().clone();
        let queue = state.queues.entry(vc.clone()).or_default();
        queue.push_back(item);
        if queue.len() == 1 {
            state.turns.push_back(vc);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Queues `item` after `delay`.
    pub fn add_after(self: &Arc<Self>, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let due = tokio::time::Instant::now() + delay;
        {
            // One timer per item: one due sooner already covers this.
            let mut state = self.state.lock().expect("queue lock");
            if state.closed || state.delayed.get(&item).is_some_and(|d| *d <= due) {
                return;
            }
            state.delayed.insert(item.clone(), due);
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            if let Some(queue) = queue.upgrade() {
                let mine = {
                    let mut state = queue.state.lock().expect("queue lock");
                    let mine = state.delayed.get(&item) == Some(&due);
                    if mine {
                        state.delayed.remove(&item);
                    }
                    mine
                };
                if mine {
                    queue.add(item);
                }
            }
        });
    }

    /// The next item, in the next VC's turn that may have one more in
    /// flight; waits while there is none. `None` once closed.
    pub async fn next(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.take()? {
                return Some(item);
            }
            notified.await;
        }
    }

    /// `Some(None)`: nothing to take now; `None`: closed.
    fn take(&self) -> Option<Option<T>> {
        let mut state = self.state.lock().expect("queue lock");
        if state.closed {
            return None;
        }
        for _ in 0..state.turns.len() {
            let vc = state.turns.pop_front().expect("turns is not empty");
            if state.in_flight.get(&vc).copied().unwrap_or(0) >= self.per_vc {
                state.turns.push_back(vc);
                continue;
            }
            let queue = state.queues.get_mut(&vc).expect("a VC in turn has a queue");
            let item = queue.pop_front().expect("a VC in turn has work");
            if queue.is_empty() {
                state.queues.remove(&vc);
            } else {
                state.turns.push_back(vc.clone());
            }
            state.queued.remove(&item);
            state.active.insert(item.clone());
            *state.in_flight.entry(vc).or_default() += 1;
            return Some(Some(item));
        }
        Some(None)
    }

    /// The work on `item` is over; it is queued again if it was added
    /// meanwhile.
    pub fn done(&self, item: &T) {
        let mut state = self.state.lock().expect("queue lock");
        state.active.remove(item);
        let vc = item.vc().clone();
        if let Some(n) = state.in_flight.get_mut(&vc) {
            *n -= 1;
            if *n == 0 {
                state.in_flight.remove(&vc);
            }
        }
        let again = state.again.remove(item);
        drop(state);
        if again {
            self.add(item.clone());
        }
        // A VC that was at its cap may go again.
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Stops handing out work.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.ready.notify_waiters();
    }

    /// Current sizes.
    pub fn stats(&self) -> QueueStats {
        let state = self.state.lock().expect("queue lock");
        let mut vcs: HashSet<&Vc> = state.queues.keys().collect();
        vcs.extend(state.in_flight.keys());
        QueueStats {
            queued: state.queued.len(),
            active: state.active.len(),
            vcs: vcs.len(),
        }
    }
}

/// Consecutive failures per item, while it fails: how long it waits
/// before its next try (100 ms doubling, at most a minute).
pub struct Backoff<T> {
    failures: Mutex<HashMap<T, u32>>,
}

impl<T: Work> Default for Backoff<T> {
    fn default() -> Self {
        Backoff {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Work + std::fmt::Debug> WorkQueue<T> {
    /// `n` workers (see [`WorkQueue::serve`]) until the queue closes.
    pub async fn serve_with<F, Fut>(self: Arc<Self>, n: usize, backoff: Arc<Backoff<T>>, work: F)
    where
        F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Option<Duration>, crate::Error>> + Send + 'static,
    {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..n {
            workers.spawn(self.clone().serve(backoff.clone(), work.clone()));
        }
        while workers.join_next().await.is_some() {}
    }

    /// One worker: takes items until the queue closes, runs `work` on
    /// each, and queues it again as the outcome asks: after the delay it
    /// names; at once after a 409 (a write raced another: read again);
    /// after a growing delay after another failure.
    pub async fn serve<F, Fut>(self: Arc<Self>, backoff: Arc<Backoff<T>>, work: F)
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = Result<Option<Duration>, crate::Error>>,
    {
        while let Some(item) = self.next().await {
            let outcome = work(item.clone()).await;
            let retry = match outcome {
                Ok(after) => {
                    backoff
                        .failures
                        .lock()
                        .expect("failures lock")
                        .remove(&item);
                    after
                }
                Err(e) if e.is_conflict() => Some(Duration::ZERO),
                Err(e) => {
                    let mut failures = backoff.failures.lock().expect("failures lock");
                    let n = failures.entry(item.clone()).or_default();
                    *n = (*n + 1).min(10);
                    let delay = Duration::from_millis(100 << *n).min(Duration::from_secs(60));
                    tracing::debug!(?item, error = %e, ?delay, "work failed; retrying");
                    Some(delay)
                }
            };
            self.done(&item);
            match retry {
                Some(delay) if delay.is_zero() => self.add(item),
                Some(delay) => self.add_after(item, delay),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, Eq, Hash, Debug)]
    struct Item(Vc, u32);

    impl Work for Item {
        fn vc(&self) -> &Vc {
            &self.0
        }
    }

    fn vc(name: &str) -> Vc {
        Vc {
            uid: format!("uid-{name}").into(),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn a_flooding_vc_waits_its_turn_behind_a_quiet_one() {
        let queue = WorkQueue::new(2);
        let (noisy, quiet) = (vc("noisy"), vc("quiet"));
        for i in 0..1000 {
            queue.add(Item(noisy.clone(), i));
        }
        queue.add(Item(quiet.clone(), 0));
        let first = queue.next().await.unwrap();
        let second = queue.next().await.unwrap();
        assert_eq!(first, Item(noisy.clone(), 0));
        assert_eq!(
            second,
            Item(quiet.clone(), 0),
            "the quiet VC is next, not 1000th"
        );
        // The noisy VC is at its cap of 2 in flight: nothing more of it.
        let third = queue.next().await.unwrap();
        assert_eq!(third, Item(noisy.clone(), 1));
        assert_eq!(queue.take(), Some(None));
        queue.done(&first);
        assert_eq!(queue.next().await.unwrap(), Item(noisy.clone(), 2));
    }

    #[tokio::test]
    async fn an_item_is_queued_once_and_never_worked_on_twice_at_once() {
        let queue = WorkQueue::new(10);
        let a = vc("a");
        queue.add(Item(a.clone(), 1));
        queue.add(Item(a.clone(), 1));
        assert_eq!(queue.stats().queued, 1);
        let item = queue.next().await.unwrap();
        queue.add(item.clone());
        assert_eq!(queue.take(), Some(None), "added while active: held back");
        queue.done(&item);
        assert_eq!(queue.next().await.unwrap(), item);
        queue.done(&item);
        assert_eq!(
            queue.stats(),
            QueueStats {
                queued: 0,
                active: 0,
                vcs: 0
            },
            "an idle VC holds no entry"
        );
    }
}
