//! What the API benchmark reads off its processes: resident memory, CPU
//! time (the kplex process, its store writer, the client), and two runs
//! alternated so that the machine's drift falls on both sides alike.

use std::future::Future;

use crate::support::{Profile, Stats};

/// Resident memory of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// CPU time (user + system) of a process, or of those of its threads whose
/// name starts with `thread`, in seconds.
pub fn cpu_seconds(pid: u32, thread: Option<&str>) -> f64 {
    fn of(stat: &str) -> f64 {
        // Fields after the parenthesised name: utime and stime are 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0 // USER_HZ
    }
    let Some(thread) = thread else {
        return of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap());
    };
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("stat")).ok())
        .filter(|stat| stat.contains(&format!("({thread}")))
        .map(|stat| of(&stat))
        .sum()
}

/// CPU used so far by the kplex process, its store's writer thread, this
/// (client) process and this process's raw store writer.
#[derive(Clone, Copy)]
pub struct Cpu {
    pub kplex: f64,
    pub kplex_writer: f64,
    pub bench: f64,
    pub bench_writer: f64,
}

/// The store writer thread's name as the kernel keeps it (15 characters).
pub const WRITER_THREAD: &str = "kplex-store-wri";

impl Cpu {
    pub fn now(kplex: u32) -> Cpu {
        let me = std::process::id();
        Cpu {
            kplex: cpu_seconds(kplex, None),
            kplex_writer: cpu_seconds(kplex, Some(WRITER_THREAD)),
            bench: cpu_seconds(me, None),
            bench_writer: cpu_seconds(me, Some(WRITER_THREAD)),
        }
    }

    /// Microseconds per operation of each counter since `before`.
    pub fn per_op(self, before: Cpu, ops: usize) -> Cpu {
        let us = |a: f64, b: f64| (a - b) * 1e6 / ops as f64;
        Cpu {
            kplex: us(self.kplex, before.kplex),
            kplex_writer: us(self.kplex_writer, before.kplex_writer),
            bench: us(self.bench, before.bench),
            bench_writer: us(self.bench_writer, before.bench_writer),
        }
    }
}

impl Cpu {
    /// The mean of several runs' figures.
    pub fn mean(runs: &[Cpu]) -> Cpu {
        let n = runs.len().max(1) as f64;
        let sum = |f: fn(&Cpu) -> f64| runs.iter().map(f).sum::<f64>() / n;
        Cpu {
            kplex: sum(|c| c.kplex),
            kplex_writer: sum(|c| c.kplex_writer),
            bench: sum(|c| c.bench),
            bench_writer: sum(|c| c.bench_writer),
        }
    }
}

/// Runs `f` and returns its result with the CPU it cost per operation.
pub async fn with_cpu<T>(kplex: u32, ops: usize, f: impl Future<Output = T>) -> (T, Cpu) {
    let before = Cpu::now(kplex);
    let out = f.await;
    (out, Cpu::now(kplex).per_op(before, ops))
}

/// Two runs alternated over four rounds (ABBA: neither always first),
/// each side's best throughput and its mean CPU: this machine's drift
/// between runs is of the size being measured. Each side is named for
/// its profile (`KPLEX_BENCH_PERF_OP`), of the first round's run, of the
/// process given.
pub async fn alternated<A, B, FA, FB>(
    a: (&str, u32, A),
    b: (&str, u32, B),
) -> ((Stats, Cpu), (Stats, Cpu))
where
    A: Fn() -> FA,
    B: Fn() -> FB,
    FA: Future<Output = (Stats, Cpu)>,
    FB: Future<Output = (Stats, Cpu)>,
{
    async fn once<F: Future<Output = (Stats, Cpu)>>(
        round: usize,
        (op, pid): (&str, u32),
        f: F,
    ) -> (Stats, Cpu) {
        let profile = (round == 0).then(|| Profile::start_for(op, pid));
        let out = f.await;
        drop(profile);
        out
    }
    let best = |kept: Option<Stats>, new: Stats| match kept {
        Some(kept) if kept.throughput() >= new.throughput() => kept,
        _ => new,
    };
    let (mut a_best, mut b_best) = (None, None);
    let (mut a_cpu, mut b_cpu) = (Vec::new(), Vec::new());
    for round in 0..4 {
        let ((a_run, a_used), (b_run, b_used)) = if round % 2 == 0 {
            let a_out = once(round, (a.0, a.1), (a.2)()).await;
            (a_out, once(round, (b.0, b.1), (b.2)()).await)
        } else {
            let b_out = once(round, (b.0, b.1), (b.2)()).await;
            (once(round, (a.0, a.1), (a.2)()).await, b_out)
        };
        a_best = Some(best(a_best, a_run));
        b_best = Some(best(b_best, b_run));
        a_cpu.push(a_used);
        b_cpu.push(b_used);
    }
    (
        (a_best.unwrap(), Cpu::mean(&a_cpu)),
        (b_best.unwrap(), Cpu::mean(&b_cpu)),
    )
}
