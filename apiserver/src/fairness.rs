//! Fair request scheduling between VCs: kube-apiserver's API Priority and
//! Fairness, with each VC as a flow.
//!
//! Every authenticated request (health and version aside) takes a seat of
//! its **priority level** before it is served: `system` (kplex's own
//! controllers and syncer), `admin` (the admin API), `tenant` (a VC's
//! requests) and `lists` (every LIST and every watch that starts with the
//! current state, whoever asks: the heavy work). A level
//! has a fixed number of seats; while they are all taken, requests wait in
//! their **flow**'s queue (a VC by UID, a system component by name, the
//! admin), and a freed seat goes to the flow that has been served least so
//! far, counted in cost: a request costs one, and a LIST one more per
//! 16 KiB it answered (start-time fair queuing: a flow that comes back
//! from idle starts level with the others, not ahead). A flow's queue is
//! bounded and a wait is bounded: past either, the request gets 429
//! `TooManyRequests` with `Retry-After`, as kube-apiserver's APF answers.
//!
//! Heavy work runs on a runtime of its own (`kplex-lists` threads, half
//! the cores), so the encoding of a large list (or of a watch's first
//! events: its stream lives there) never holds the workers that answer
//! small requests.
//!
//! Nothing is kept per idle VC: a flow exists while it has requests queued
//! or being served. `/metrics` shows each level's seats in use, queue,
//! dispatches, rejections and waits (not per VC: cardinality).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use kplex_certs::{Identity, Scope};
use kplex_registry::ApiError;
use serde_json::json;

/// A priority level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// kplex's own system components.
    System = 0,
    /// The admin API.
    Admin = 1,
    /// A VC's requests (LISTs aside).
    Tenant = 2,
    /// Heavy requests of tenants and the admin (LISTs, watches from the
    /// current state).
    Lists = 3,
    /// Heavy requests of kplex's own components: a level of their own, so
    /// a tenants' flood never starves their relists.
    SystemLists = 4,
}

impl Level {
    const ALL: [Level; 5] = [
        Level::System,
        Level::Admin,
        Level::Tenant,
        Level::Lists,
        Level::SystemLists,
    ];

    /// Whether it is a level of heavy work (run on the LIST runtime).
    pub fn is_heavy(self) -> bool {
        matches!(self, Level::Lists | Level::SystemLists)
    }

    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Admin => "admin",
            Level::Tenant => "tenant",
            Level::Lists => "lists",
            Level::SystemLists => "system-lists",
        }
    }
}

/// How many requests each level serves at once, and how long and how many
/// may wait.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seats of each level, by [`Level`] as index.
    pub seats: [usize; 5],
    /// Requests one flow may have waiting in a level.
    pub queue_per_flow: usize,
    /// The longest a request waits for a seat.
    pub max_wait: Duration,
    /// Threads running LISTs.
    pub list_threads: usize,
}

impl Default for Config {
    fn default() -> Config {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            // Light requests are mostly waits on storage (a write's
            // commit): many seats, so commits batch; heavy ones are CPU.
            seats: [
                256,
                64,
                256 * cores.max(2) / 2,
                2 * cores.max(2),
                2 * cores.max(2),
            ],
            queue_per_flow: 128,
            max_wait: Duration::from_secs(4),
            list_threads: (cores / 2).max(1),
        }
    }
}

/// Extra cost of a LIST per this many bytes answered.
const COST_BYTES: u64 = 16 * 1024;

/// Upper bounds of the wait histogram, in seconds.
const WAIT_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0];

/// See the module documentation.
pub struct Fairness {
    levels: [Queue; 5],
    lists: tokio::runtime::Handle,
}

struct Queue {
    owner: Weak<Fairness>,
    level: Level,
    seats: usize,
    queue_per_flow: usize,
    max_wait: Duration,
    state: Mutex<State>,
    dispatched: AtomicU64,
    rejected_full: AtomicU64,
    rejected_wait: AtomicU64,
    waits: Mutex<([u64; WAIT_BUCKETS.len()], f64, u64)>,
}

#[derive(Default)]
struct State {
    in_use: usize,
    waiting: usize,
    /// The start tag of the last dispatch: a new flow starts here.
    now: u64,
    flows: HashMap<Arc<str>, Flow>,
    next_id: u64,
}

struct Flow {
    /// The cost served so far (from the level's `now` when it came).
    served: u64,
    queue: VecDeque<Waiter>,
    running: usize,
}

struct Waiter {
    id: u64,
    granted: tokio::sync::oneshot::Sender<Grant>,
}

/// A seat handed to a waiting request. Until the request claims it, it
/// goes back when dropped: a request whose client went away just as its
/// turn came (its future dropped with the grant still in the channel)
/// leaks no seat.
struct Grant {
    owner: Weak<Fairness>,
    level: Level,
    flow: Arc<str>,
    claimed: bool,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if !self.claimed {
            if let Some(fairness) = self.owner.upgrade() {
                fairness.levels[self.level as usize].release(&self.flow, true, 0);
            }
        }
    }
}

/// A seat, given back when dropped; [`Seat::charge`] adds to its flow's
/// cost what the request turned out to cost.
pub struct Seat {
    queue: Option<(Arc<Fairness>, Level)>,
    flow: Arc<str>,
    tracked: bool,
    extra: u64,
    /// How long the request waited for it.
    pub waited: Duration,
}

impl Seat {
    /// Charges the flow for a response of `bytes` (LISTs: one more per
    /// 16 KiB).
    pub fn charge(&mut self, bytes: u64) {
        if matches!(&self.queue, Some((_, level)) if level.is_heavy()) {
            self.extra += bytes / COST_BYTES;
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some((fairness, level)) = self.queue.take() {
            fairness.levels[level as usize].release(&self.flow, self.tracked, self.extra);
        }
    }
}

/// How long a heavy body's reader may leave a chunk untaken before the
/// body gives its seat back.
pub const STALLED: Duration = Duration::from_secs(1);

/// A VC that stores at most this much (every object of every kind, as
/// counted for its limits) cannot answer a LIST heavier than a few GETs:
/// its LISTs and watches are light work, served with its other requests.
pub const LIGHT_VC_BYTES: u64 = 128 * 1024;

/// The client's side of [`Fairness::produce`]: the chunks as they come,
/// ended with the one marked last.
struct Produced {
    rx: tokio::sync::mpsc::Receiver<(hyper::body::Frame<bytes::Bytes>, bool)>,
    ended: bool,
}

impl hyper::body::Body for Produced {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|next| {
            next.map(|(frame, last)| {
                self.ended = last;
                Ok(frame)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

/// Whether a request is heavy work: a LIST, or a watch that starts with
/// the current state (`resourceVersion` unset or `0`, or
/// `sendInitialEvents=true`: every object first, as ADDED events).
pub fn is_heavy(verb: &str, query: &str) -> bool {
    match verb {
        "list" => true,
        "watch" => {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let get = |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.as_str())
            };
            matches!(get("sendInitialEvents"), Some("true" | "1"))
                || matches!(get("resourceVersion"), None | Some("" | "0"))
        }
        _ => false,
    }
}

/// Which level and flow a request belongs to (`heavy`: see [`is_heavy`]).
pub fn classify(caller: &Identity, heavy: bool) -> (Level, Arc<str>) {
    let flow: Arc<str> = match &caller.scope {
        Scope::VirtualCluster { uid } => uid.as_str().into(),
        Scope::System { component } => format!("system:{component}").into(),
        Scope::Admin => "admin".into(),
    };
    let level = match (&caller.scope, heavy) {
        (Scope::System { .. }, true) => Level::SystemLists,
        (_, true) => Level::Lists,
        (Scope::VirtualCluster { .. }, false) => Level::Tenant,
        (Scope::System { .. }, false) => Level::System,
        (Scope::Admin, false) => Level::Admin,
    };
    (level, flow)
}

impl Fairness {
    /// A scheduler with `config` (its LIST runtime started).
    pub fn new(config: &Config) -> Result<Arc<Fairness>, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.list_threads)
            .thread_name("kplex-lists")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the LIST runtime: {e}"))?;
        // It lives as long as the process (a runtime may not be dropped
        // from async code).
        let lists = Box::leak(Box::new(runtime)).handle().clone();
        let queue = |level: Level, owner: Weak<Fairness>| Queue {
            owner,
            level,
            seats: config.seats[level as usize].max(1),
            queue_per_flow: config.queue_per_flow,
            max_wait: config.max_wait,
            state: Mutex::default(),
            dispatched: AtomicU64::new(0),
            rejected_full: AtomicU64::new(0),
            rejected_wait: AtomicU64::new(0),
            waits: Mutex::new(([0; WAIT_BUCKETS.len()], 0.0, 0)),
        };
        Ok(Arc::new_cyclic(|owner| Fairness {
            levels: Level::ALL.map(|level| queue(level, owner.clone())),
            lists,
        }))
    }

    /// Waits for a seat of `level` for `flow`; 429 when its queue is full
    /// or the wait too long.
    pub async fn seat(self: &Arc<Self>, level: Level, flow: Arc<str>) -> Result<Seat, ApiError> {
        let started = Instant::now();
        let queue = &self.levels[level as usize];
        let tracked = queue.acquire(&flow).await?;
        let waited = started.elapsed();
        queue.observe_wait(waited);
        Ok(Seat {
            queue: Some((self.clone(), level)),
            flow,
            tracked,
            extra: 0,
            waited,
        })
    }

    /// Runs `work` on the LIST runtime.
    pub async fn run_list<F>(&self, work: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        /// Aborts the task when the caller goes (its seat goes with it:
        /// the work must not run on without one).
        struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
        impl<T> Drop for AbortOnDrop<T> {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut task = AbortOnDrop(self.lists.spawn(work));
        match (&mut task.0).await {
            Ok(output) => output,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// A streamed body of heavy work (a LIST written from stored bytes),
    /// produced on the LIST runtime while `seat` is held: chunk by chunk,
    /// at most two ahead of the client, so writing a large list never
    /// holds the workers that answer small requests, and its level's seats
    /// bound how many are written at once. The seat goes back when the
    /// body is written, or the client goes, or the client has not taken a
    /// chunk for [`STALLED`] (a reader that stops must not hold a seat:
    /// the rest is written as it reads, seatless, two chunks at a time).
    /// Each chunk goes with whether it is the last, so that HTTP/2 ends the
    /// stream with it (no empty frame after it).
    pub fn produce<B>(&self, body: B, seat: Seat) -> crate::response::Body
    where
        B: hyper::body::Body<Data = bytes::Bytes, Error = std::convert::Infallible>
            + Send
            + Unpin
            + 'static,
    {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        self.lists.spawn(async move {
            let mut seat = Some(seat);
            let mut body = body;
            while let Some(Ok(frame)) = body.frame().await {
                let last = body.is_end_stream();
                let room = match tokio::time::timeout(STALLED, tx.reserve()).await {
                    Ok(room) => room,
                    Err(_) => {
                        seat = None;
                        tx.reserve().await
                    }
                };
                match room {
                    Ok(room) => room.send((frame, last)),
                    Err(_) => return,
                }
            }
            drop(seat);
        });
        Produced { rx, ended: false }.boxed()
    }

    /// The levels' state in Prometheus' text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let metrics = [
            (
                "apiserver_flowcontrol_nominal_limit_seats",
                "gauge",
                "Seats of the priority level.",
            ),
            (
                "apiserver_flowcontrol_current_executing_seats",
                "gauge",
                "Seats in use.",
            ),
            (
                "apiserver_flowcontrol_current_inqueue_requests",
                "gauge",
                "Requests waiting for a seat.",
            ),
            (
                "apiserver_flowcontrol_dispatched_requests_total",
                "counter",
                "Requests given a seat.",
            ),
            (
                "apiserver_flowcontrol_rejected_requests_total",
                "counter",
                "Requests answered 429, by reason.",
            ),
        ];
        for (name, kind, help) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for queue in &self.levels {
                let level = queue.level.name();
                let (in_use, waiting) = {
                    let state = queue.state.lock().expect("fairness lock");
                    (state.in_use, state.waiting)
                };
                match name {
                    "apiserver_flowcontrol_nominal_limit_seats" => {
                        let _ =
                            writeln!(out, "{name}{{priority_level=\"{level}\"}} {}", queue.seats);
                    }
                    "apiserver_flowcontrol_current_executing_seats" => {
                        let _ = writeln!(out, "{name}{{priority_level=\"{level}\"}} {in_use}");
                    }
                    "apiserver_flowcontrol_current_inqueue_requests" => {
                        let _ = writeln!(out, "{name}{{priority_level=\"{level}\"}} {waiting}");
                    }
                    "apiserver_flowcontrol_dispatched_requests_total" => {
                        let n = queue.dispatched.load(Ordering::Relaxed);
                        let _ = writeln!(out, "{name}{{priority_level=\"{level}\"}} {n}");
                    }
                    _ => {
                        for (reason, counter) in [
                            ("queue-full", &queue.rejected_full),
                            ("time-out", &queue.rejected_wait),
                        ] {
                            let n = counter.load(Ordering::Relaxed);
                            let _ = writeln!(
                                out,
                                "{name}{{priority_level=\"{level}\",reason=\"{reason}\"}} {n}"
                            );
                        }
                    }
                }
            }
        }
        let name = "apiserver_flowcontrol_request_wait_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} How long requests waited for a seat.\n# TYPE {name} histogram"
        );
        for queue in &self.levels {
            let level = queue.level.name();
            let (buckets, sum, count) = *queue.waits.lock().expect("waits lock");
            for (i, le) in WAIT_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{priority_level=\"{level}\",le=\"{le}\"}} {}",
                    buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{priority_level=\"{level}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "{name}_sum{{priority_level=\"{level}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{priority_level=\"{level}\"}} {count}");
        }
        out
    }
}

/// The 429 of a request that found no seat.
fn too_many(level: Level, why: &str) -> ApiError {
    ApiError {
        code: hyper::StatusCode::TOO_MANY_REQUESTS,
        reason: "TooManyRequests",
        message: format!(
            "Too many requests, please try again later ({why} at priority level {})",
            level.name()
        ),
        details: Some(Box::new(json!({"retryAfterSeconds": 1}))),
    }
}

impl Queue {
    /// A seat for `flow`; whether its flow is tracked (a flow is, from
    /// the first time one of its requests waits until it is forgotten).
    async fn acquire(&self, flow: &Arc<str>) -> Result<bool, ApiError> {
        let (id, granted) = {
            let mut state = self.state.lock().expect("fairness lock");
            let now = state.now;
            if state.in_use < self.seats && state.waiting == 0 {
                // Uncontended: no flow state unless it is tracked already.
                state.in_use += 1;
                self.dispatched.fetch_add(1, Ordering::Relaxed);
                let tracked = match state.flows.get_mut(flow) {
                    Some(entry) => {
                        entry.running += 1;
                        entry.served = entry.served.max(now) + 1;
                        true
                    }
                    None => false,
                };
                return Ok(tracked);
            }
            let entry = state.flows.entry(flow.clone()).or_insert_with(|| Flow {
                served: now,
                queue: VecDeque::new(),
                running: 0,
            });
            if entry.queue.len() >= self.queue_per_flow {
                self.rejected_full.fetch_add(1, Ordering::Relaxed);
                return Err(too_many(self.level, "its queue is full"));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state
                .flows
                .get_mut(flow)
                .expect("the flow just found")
                .queue
                .push_back(Waiter { id, granted: tx });
            state.waiting += 1;
            (id, rx)
        };
        // A request whose client goes away while it waits leaves the queue
        // (it must not count against its flow's queue, nor be dispatched).
        struct Leave<'a> {
            queue: &'a Queue,
            flow: &'a Arc<str>,
            id: u64,
            armed: bool,
        }
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                if self.armed {
                    self.queue.leave(self.flow, self.id);
                }
            }
        }
        let mut leave = Leave {
            queue: self,
            flow,
            id,
            armed: true,
        };
        let mut granted = granted;
        let waited = tokio::time::timeout(self.max_wait, &mut granted).await;
        leave.armed = false;
        match waited {
            Ok(Ok(mut grant)) => {
                grant.claimed = true;
                Ok(true)
            }
            _ => {
                if self.leave(flow, id) {
                    self.rejected_wait.fetch_add(1, Ordering::Relaxed);
                    return Err(too_many(self.level, "no seat came in time"));
                }
                // Dispatched as the wait ran out: the seat is ours.
                match granted.try_recv() {
                    Ok(mut grant) => {
                        grant.claimed = true;
                        Ok(true)
                    }
                    Err(_) => Err(too_many(self.level, "no seat came in time")),
                }
            }
        }
    }

    /// Takes waiter `id` of `flow` out of the queue; whether it was there.
    fn leave(&self, flow: &Arc<str>, id: u64) -> bool {
        let mut state = self.state.lock().expect("fairness lock");
        let left = state.flows.get_mut(flow).and_then(|f| {
            let at = f.queue.iter().position(|w| w.id == id)?;
            f.queue.remove(at)
        });
        if left.is_none() {
            return false;
        }
        state.waiting -= 1;
        self.forget_if_idle(&mut state, flow);
        if state.waiting == 0 {
            Self::contention_over(&mut state);
        }
        true
    }

    /// No one waits any more: what flows were served during the contention
    /// no longer counts. The idle are forgotten, the running start level
    /// (a flow kept tracked would otherwise pay for every uncontended
    /// request while untracked ones pay nothing, and fall behind).
    fn contention_over(state: &mut State) {
        let now = state.now;
        state.flows.retain(|_, f| f.running > 0);
        for f in state.flows.values_mut() {
            f.served = now;
        }
    }

    fn release(&self, flow: &Arc<str>, tracked: bool, extra: u64) {
        let mut state = self.state.lock().expect("fairness lock");
        state.in_use -= 1;
        if let Some(f) = state.flows.get_mut(flow) {
            if tracked {
                f.running -= 1;
            }
            f.served += extra;
        }
        self.forget_if_idle(&mut state, flow);
        self.dispatch(&mut state);
        if state.in_use == 0 && state.waiting == 0 {
            // Nobody served, nobody waiting: no history worth keeping.
            state.flows.clear();
            state.now = 0;
        }
    }

    /// Gives free seats to the waiting flows served least.
    fn dispatch(&self, state: &mut State) {
        while state.in_use < self.seats && state.waiting > 0 {
            let Some(next) = state
                .flows
                .iter()
                .filter(|(_, f)| !f.queue.is_empty())
                .min_by_key(|(_, f)| f.served)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let now = state.now;
            let flow = state.flows.get_mut(&next).expect("the flow just found");
            let waiter = flow.queue.pop_front().expect("a waiting request");
            state.waiting -= 1;
            let start = flow.served.max(now);
            let grant = Grant {
                owner: self.owner.clone(),
                level: self.level,
                flow: next.clone(),
                claimed: false,
            };
            if let Err(mut grant) = waiter.granted.send(grant) {
                // It gave up a moment ago: the seat stays free (and the
                // grant must not give back what it never took).
                grant.claimed = true;
                self.forget_if_idle(state, &next);
                continue;
            }
            flow.running += 1;
            flow.served = start + 1;
            state.now = start;
            state.in_use += 1;
            self.dispatched.fetch_add(1, Ordering::Relaxed);
            // Idle flows the clock has caught up with owe nothing more.
            state
                .flows
                .retain(|_, f| f.running > 0 || !f.queue.is_empty() || f.served > start);
            if state.waiting == 0 {
                Self::contention_over(state);
            }
        }
    }

    /// Forgets an idle flow, unless it was served ahead of the others: it
    /// is kept (a few bytes) until the clock catches up, so a VC that
    /// stops and starts again cannot shed what it cost.
    fn forget_if_idle(&self, state: &mut State, flow: &Arc<str>) {
        let now = state.now;
        if state
            .flows
            .get(flow)
            .is_some_and(|f| f.running == 0 && f.queue.is_empty() && f.served <= now)
        {
            state.flows.remove(flow);
        }
    }

    fn observe_wait(&self, waited: Duration) {
        let secs = waited.as_secs_f64();
        let mut waits = self.waits.lock().expect("waits lock");
        for (i, le) in WAIT_BUCKETS.iter().enumerate() {
            if secs <= *le {
                waits.0[i] += 1;
            }
        }
        waits.1 += secs;
        waits.2 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fairness(seats: usize, queue: usize, wait: Duration) -> Arc<Fairness> {
        Fairness::new(&Config {
            seats: [seats; 5],
            queue_per_flow: queue,
            max_wait: wait,
            list_threads: 1,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_quiet_flow_is_served_before_a_busy_flows_backlog() {
        let f = fairness(1, 100, Duration::from_secs(10));
        let busy: Arc<str> = "noisy".into();
        let first = f.seat(Level::Tenant, busy.clone()).await.unwrap();
        // The noisy VC queues ten more, then the quiet one asks once.
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (f, order, busy) = (f.clone(), order.clone(), busy.clone());
            tasks.spawn(async move {
                let _seat = f.seat(Level::Tenant, busy).await.unwrap();
                order.lock().unwrap().push(format!("noisy-{i}"));
            });
            tokio::task::yield_now().await;
        }
        {
            let (f, order) = (f.clone(), order.clone());
            tasks.spawn(async move {
                let _seat = f.seat(Level::Tenant, "quiet".into()).await.unwrap();
                order.lock().unwrap().push("quiet".into());
            });
        }
        while f.levels[Level::Tenant as usize]
            .state
            .lock()
            .unwrap()
            .waiting
            < 11
        {
            tokio::task::yield_now().await;
        }
        drop(first);
        while tasks.join_next().await.is_some() {}
        let order = order.lock().unwrap();
        let quiet = order.iter().position(|o| o == "quiet").unwrap();
        assert!(
            quiet <= 1,
            "the quiet flow waited behind the backlog: {order:?}"
        );
        assert!(
            f.levels[Level::Tenant as usize]
                .state
                .lock()
                .unwrap()
                .flows
                .is_empty(),
            "no flow kept once idle"
        );
    }

    #[tokio::test]
    async fn a_full_queue_and_a_long_wait_are_429_with_retry_after() {
        let f = fairness(1, 1, Duration::from_millis(50));
        let _held = f.seat(Level::Tenant, "a".into()).await.unwrap();
        let waiting = {
            let f = f.clone();
            tokio::spawn(async move { f.seat(Level::Tenant, "a".into()).await.err() })
        };
        while f.levels[Level::Tenant as usize]
            .state
            .lock()
            .unwrap()
            .waiting
            < 1
        {
            tokio::task::yield_now().await;
        }
        let full = f
            .seat(Level::Tenant, "a".into())
            .await
            .err()
            .expect("queue full");
        assert_eq!(full.code, hyper::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(full.retry_after(), Some(1));
        let timed_out = waiting.await.unwrap().expect("the wait ran out");
        assert_eq!(timed_out.reason, "TooManyRequests");
        // Another level has seats of its own.
        assert!(f.seat(Level::System, "system:syncer".into()).await.is_ok());
        let text = f.prometheus();
        assert!(text.contains("apiserver_flowcontrol_rejected_requests_total{priority_level=\"tenant\",reason=\"queue-full\"} 1"), "{text}");
        assert!(text.contains("apiserver_flowcontrol_rejected_requests_total{priority_level=\"tenant\",reason=\"time-out\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn a_request_dropped_as_its_turn_comes_leaks_no_seat() {
        let f = fairness(1, 100, Duration::from_secs(10));
        let held = f.seat(Level::Tenant, "a".into()).await.unwrap();
        // A waiter whose future is dropped right after its grant is sent,
        // before it ever runs again.
        let mut waiting = Box::pin(f.seat(Level::Tenant, "b".into()));
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(held);
        drop(waiting);
        let state = || {
            let s = f.levels[Level::Tenant as usize].state.lock().unwrap();
            (s.in_use, s.waiting)
        };
        assert_eq!(state(), (0, 0), "the seat came back");
        // And the level still serves.
        let again =
            tokio::time::timeout(Duration::from_secs(1), f.seat(Level::Tenant, "c".into())).await;
        assert!(again.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_waiter_whose_client_left_leaves_the_queue() {
        let f = fairness(1, 1, Duration::from_secs(10));
        let _held = f.seat(Level::Tenant, "a".into()).await.unwrap();
        let mut gone = Box::pin(f.seat(Level::Tenant, "b".into()));
        assert!(futures::poll!(&mut gone).is_pending());
        drop(gone);
        let waiting = f.levels[Level::Tenant as usize]
            .state
            .lock()
            .unwrap()
            .waiting;
        assert_eq!(waiting, 0);
        // Its flow's one place in the queue is free again.
        let mut next = Box::pin(f.seat(Level::Tenant, "b".into()));
        assert!(
            futures::poll!(&mut next).is_pending(),
            "queued, not refused"
        );
    }

    /// A body of `chunks` that knows its end, as a streamed list does.
    struct Chunks(std::collections::VecDeque<bytes::Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>>
        {
            std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(hyper::body::Frame::data(c))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    #[tokio::test]
    async fn a_produced_body_ends_with_its_last_chunk_and_gives_back_its_seat() {
        use http_body_util::BodyExt;
        use hyper::body::Body;
        let f = fairness(1, 10, Duration::from_secs(10));
        let seat = f.seat(Level::Lists, "vc".into()).await.unwrap();
        let chunks = [&b"one"[..], b"two", b"three"].map(bytes::Bytes::from_static);
        let mut body = f.produce(Chunks(chunks.clone().into()), seat);
        for (i, chunk) in chunks.iter().enumerate() {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), chunk);
            // Known at the last chunk, before the body is asked again:
            // HTTP/2 ends the stream in that chunk's frame.
            assert_eq!(body.is_end_stream(), i == chunks.len() - 1, "chunk {i}");
        }
        assert!(body.frame().await.is_none());
        // The producer let go of its seat once the last chunk was out.
        let again =
            tokio::time::timeout(Duration::from_secs(5), f.seat(Level::Lists, "vc".into())).await;
        assert!(again.unwrap().is_ok(), "the seat came back");
    }

    #[test]
    fn lists_and_watches_from_the_current_state_are_heavy() {
        assert!(is_heavy("list", ""));
        assert!(is_heavy("watch", "watch=1"));
        assert!(is_heavy("watch", "watch=1&resourceVersion=0"));
        assert!(is_heavy(
            "watch",
            "watch=1&resourceVersion=7&sendInitialEvents=true"
        ));
        assert!(!is_heavy("watch", "watch=1&resourceVersion=7"));
        assert!(!is_heavy("get", ""));
        assert!(is_heavy(
            "watch",
            "watch=1&resourceVersion=7&sendInitialEvents=1"
        ));
        // The first value counts, as the handler reads it.
        assert!(is_heavy(
            "watch",
            "watch=1&resourceVersion=0&resourceVersion=5"
        ));
        let verb =
            |path: &str, query: &str| crate::metrics::classify(&hyper::Method::GET, path, query).0;
        assert_eq!(verb("/clusters/x/api/v1//pods", ""), "list");
        assert_eq!(verb("/api/v1/pods", "watch=0&watch=1"), "list");
        assert_eq!(verb("/api/v1/pods", "watch=1&watch=0"), "watch");
    }

    #[tokio::test]
    async fn costly_lists_count_against_their_flow() {
        let f = fairness(1, 100, Duration::from_secs(10));
        let waiting = |n: usize| {
            let f = f.clone();
            async move {
                while f.levels[Level::Lists as usize]
                    .state
                    .lock()
                    .unwrap()
                    .waiting
                    < n
                {
                    tokio::task::yield_now().await;
                }
            }
        };
        let queue = |who: &'static str, order: Arc<Mutex<Vec<&'static str>>>| {
            let f = f.clone();
            tokio::spawn(async move {
                let seat = f.seat(Level::Lists, who.into()).await.unwrap();
                order.lock().unwrap().push(who);
                seat
            })
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        // "big" waits for the one seat (so its flow is tracked) and gets it.
        let hold = f.seat(Level::Lists, "hold".into()).await.unwrap();
        let big = queue("big", order.clone());
        waiting(1).await;
        drop(hold);
        let mut seat = big.await.unwrap();
        // Meanwhile "small" asks, then "big" again; "big"'s list answered
        // 1 MiB.
        let small = queue("small", order.clone());
        waiting(1).await;
        let big_again = queue("big", order.clone());
        waiting(2).await;
        seat.charge(1024 * 1024);
        drop(seat);
        drop(small.await.unwrap());
        drop(big_again.await.unwrap());
        // "small" (never served) came first although "big" was waiting too.
        assert_eq!(*order.lock().unwrap(), ["big", "small", "big"]);
    }
}
