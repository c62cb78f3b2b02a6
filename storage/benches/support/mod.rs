//! Measuring helpers shared by the benchmarks (storage here; the API server's
//! bench includes this file too): run N operations over C clients, keep each
//! latency, print Markdown rows with the ratio to a baseline.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one side of a comparison measured.
pub struct Stats {
    pub ops: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Stats {
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut l = self.latencies.clone();
        l.sort();
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
    }
}

/// Runs operations `0..total`, spread over `clients` concurrent tasks
/// (task `c` runs `c, c + clients, …`).
pub async fn run<F, Fut>(clients: usize, total: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total / clients + 1);
            for i in (c..total).step_by(clients) {
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Stats {
        ops: total,
        elapsed: start.elapsed(),
        latencies,
    }
}

pub fn scale(n: usize) -> usize {
    let s: f64 = std::env::var("KPLEX_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * s) as usize).max(64)
}

pub fn row(op: &str, clients: usize, ours: &Stats, base: &Stats) {
    println!(
        "| {op} | {clients} | {:.0}/s | {:.2} ms | {:.2} ms | {:.0}/s | {:.2} ms | {:.2} ms | **{:.2}** |",
        ours.throughput(),
        ours.percentile(0.5).as_secs_f64() * 1e3,
        ours.percentile(0.99).as_secs_f64() * 1e3,
        base.throughput(),
        base.percentile(0.5).as_secs_f64() * 1e3,
        base.percentile(0.99).as_secs_f64() * 1e3,
        ours.throughput() / base.throughput(),
    );
}

pub fn header(title: &str, base: &str) {
    println!("\n### {title}\n");
    println!("| op | clients | kplex ops/s | p50 | p99 | {base} ops/s | p50 | p99 | ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
}

/// `perf record` of the kplex process while it lives, when
/// `KPLEX_BENCH_PERF=<output file>` is set (to see where a create's CPU goes).
pub struct Profile(Option<std::process::Child>);

impl Profile {
    pub fn start(pid: u32) -> Profile {
        Profile::start_for("", pid)
    }

    /// A profile of the run named `op` only, when `KPLEX_BENCH_PERF_OP`
    /// names it (a comma-separated list: each run named goes to
    /// `<KPLEX_BENCH_PERF>.<op>`), or the first profiled run when it is
    /// unset.
    pub fn start_for(op: &str, pid: u32) -> Profile {
        let wanted = std::env::var("KPLEX_BENCH_PERF_OP").unwrap_or_default();
        if !(wanted.is_empty() && matches!(op, "" | "create") || wanted.split(',').any(|w| w == op))
        {
            return Profile(None);
        }
        let Ok(mut out) = std::env::var("KPLEX_BENCH_PERF") else {
            return Profile(None);
        };
        if !wanted.is_empty() {
            out = format!("{out}.{op}");
        }
        // `KPLEX_BENCH_PERF_STAT` set: counts (system calls, wakeups, page
        // faults) instead of samples, to compare what two servers ask of
        // the kernel per request.
        if std::env::var_os("KPLEX_BENCH_PERF_STAT").is_some() {
            let events = [
                "task-clock",
                "context-switches",
                "page-faults",
                "sched:sched_wakeup",
                "syscalls:sys_enter_writev",
                "syscalls:sys_enter_recvfrom",
                "syscalls:sys_enter_epoll_wait",
                "syscalls:sys_enter_futex",
                "syscalls:sys_enter_pread64",
            ];
            let child = std::process::Command::new("perf")
                .args(["stat", "-e", &events.join(","), "-o", &out])
                .args(["-p", &pid.to_string()])
                .spawn()
                .expect("perf");
            std::thread::sleep(std::time::Duration::from_millis(500));
            return Profile(Some(child));
        }
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "-g",
                "--call-graph",
            ])
            .args(["dwarf,16384", "-o", &out, "-p", &pid.to_string()])
            .spawn()
            .expect("perf");
        // perf needs a moment to attach; only then does the measured run start.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Profile(Some(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
