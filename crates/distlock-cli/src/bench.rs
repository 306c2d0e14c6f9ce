//! `distlock bench`: the standard lock workloads against the configured backend, so that a
//! user measures their own deployment (network, server, configuration) the way the project's
//! benches measure the reference machine.
//!
//! Workloads, each run for `--duration` through the same provider an application gets from
//! the configuration (every layer included):
//!
//! - **uncontended**: one task, one key: `lock`, then `unlock`, again and again;
//! - **distinct**: `--distinct-tasks` tasks, each cycling on a key of its own (throughput);
//! - **hot**: `--hot-tasks` tasks cycling on one key; *hand-over* is the time from the holder
//!   calling `unlock` to the next waiter holding the lock, over the acquisitions that waited.
//!
//! Every key is under `--prefix` plus a run id, so a run never touches another application's
//! locks and two runs never meet; every lock taken is released before the command ends. A
//! failed lock operation is counted and ends its task; the exit status is then 1.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use distlock::{LockConfig, LockError, LockManager, LockOptions, LockProvider, WaitPolicy};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Most tasks one workload may run.
const MAX_TASKS: usize = 10_000;
/// Shortest and longest run of one workload.
const DURATION_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3_600));
/// How long an acquisition may wait beyond the workload's end (hot key: behind every other
/// task) before it counts as failed.
const WAIT_GRACE: Duration = Duration::from_secs(60);

/// The workloads `distlock bench` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Workload {
    /// One task on one key.
    Uncontended,
    /// Many tasks, each on its own key.
    Distinct,
    /// Many tasks on one key.
    Hot,
}

/// Options of `distlock bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Workloads to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Workload::Uncontended, Workload::Distinct, Workload::Hot])]
    workloads: Vec<Workload>,
    /// How long each workload runs, e.g. `5s`, `1m`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Tasks of the distinct-keys workload.
    #[arg(long, default_value_t = 32)]
    distinct_tasks: usize,
    /// Tasks of the hot-key workload.
    #[arg(long, default_value_t = 16)]
    hot_tasks: usize,
    /// Lease of every acquisition.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Key prefix of the run's locks; a run id is appended.
    #[arg(long, default_value = "distlock-bench/")]
    prefix: String,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// Refuses what cannot make a sensible run, before any server is touched.
    fn validate(&self) -> distlock::Result<()> {
        if self.workloads.is_empty() {
            return Err(LockError::invalid("workloads", "name at least one: uncontended, distinct, hot"));
        }
        let (min, max) = DURATION_RANGE;
        if self.duration < min || self.duration > max {
            return Err(LockError::invalid(
                "duration",
                format!("{:?} is outside {min:?}..={max:?}", self.duration),
            ));
        }
        for (what, tasks) in [("distinct-tasks", self.distinct_tasks), ("hot-tasks", self.hot_tasks)] {
            if !(1..=MAX_TASKS).contains(&tasks) {
                return Err(LockError::invalid(what, format!("{tasks} is outside 1..={MAX_TASKS}")));
            }
        }
        // The TTL and the keys go through the provider's own checks; one probe key here makes
        // a bad prefix fail before the run starts instead of in every task.
        let probe = LockOptions::new(format!("{}0/probe", self.prefix), "distlock-bench").ttl(self.ttl);
        match probe.validate() {
            Err(LockError::InvalidArgument { what: "key", why }) => Err(LockError::invalid("prefix", why)),
            other => other,
        }
    }
}

/// What one workload measured.
#[derive(Debug, Serialize)]
struct Outcome {
    workload: Workload,
    tasks: usize,
    /// Lock + unlock cycles completed.
    cycles: u64,
    elapsed_secs: f64,
    cycles_per_sec: f64,
    acquire_p50_us: Option<f64>,
    acquire_p99_us: Option<f64>,
    release_p50_us: Option<f64>,
    /// Hot key only: acquisitions that waited for a release.
    handovers: u64,
    handover_p50_us: Option<f64>,
    handover_p99_us: Option<f64>,
    /// Failed lock operations (each ends its task).
    errors: u64,
    /// The first failure, if any.
    first_error: Option<String>,
}

/// The whole run, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report<'a> {
    provider: &'a str,
    prefix: &'a str,
    duration_secs: f64,
    ttl_secs: f64,
    workloads: &'a [Outcome],
}

/// Samples and failures of one workload's tasks.
#[derive(Default)]
struct Samples {
    acquire: Vec<Duration>,
    release: Vec<Duration>,
    handover: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn failed(&mut self, e: &LockError) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, other: Samples) {
        self.acquire.extend(other.acquire);
        self.release.extend(other.release);
        self.handover.extend(other.handover);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// The `q` quantile of `samples` (sorted here), in microseconds; `None` when empty.
fn quantile_us(samples: &mut [Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    Some(samples[i].as_secs_f64() * 1e6)
}

/// Runs `distlock bench`.
pub(crate) async fn run(config: LockConfig, args: BenchArgs) -> distlock::Result<ExitCode> {
    args.validate()?;
    let manager = LockManager::new(None, config).await?;
    let provider = manager.lock_provider().clone();
    let prefix = format!("{}{}-{:08x}/", args.prefix, std::process::id(), fastrand::u32(..));
    let show = !args.json && std::io::stderr().is_terminal();
    let mut outcomes = Vec::new();
    for &workload in &args.workloads {
        let bar = progress_bar(show, workload, args.duration);
        let outcome = run_workload(&provider, workload, &args, &prefix, &bar).await;
        bar.finish_and_clear();
        outcomes.push(outcome);
    }
    manager.close().await?;
    let report = Report {
        provider: provider.name(),
        prefix: &prefix,
        duration_secs: args.duration.as_secs_f64(),
        ttl_secs: args.ttl.as_secs_f64(),
        workloads: &outcomes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("the report serializes"));
    } else {
        print!("{}", table(&report));
    }
    let failed = outcomes.iter().any(|o| o.errors > 0);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn progress_bar(show: bool, workload: Workload, duration: Duration) -> ProgressBar {
    let target = if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let bar = ProgressBar::with_draw_target(Some(duration.as_millis() as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {elapsed_precise}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{workload:?}").to_lowercase());
    bar
}

/// Runs one workload's tasks until `args.duration` has passed and gathers what they measured.
async fn run_workload(
    provider: &Arc<dyn LockProvider>,
    workload: Workload,
    args: &BenchArgs,
    prefix: &str,
    bar: &ProgressBar,
) -> Outcome {
    let tasks = match workload {
        Workload::Uncontended => 1,
        Workload::Distinct => args.distinct_tasks,
        Workload::Hot => args.hot_tasks,
    };
    let start = Instant::now();
    let end = start + args.duration;
    // Nanoseconds since `start` at which the hot key's holder last called unlock.
    let released_at = Arc::new(AtomicU64::new(0));
    let cycles = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let key = match workload {
                Workload::Uncontended => format!("{prefix}uncontended"),
                Workload::Distinct => format!("{prefix}distinct/{t}"),
                Workload::Hot => format!("{prefix}hot"),
            };
            let owner = format!("distlock-bench-{}-{t}", std::process::id());
            let opts = LockOptions::new(key.as_str(), owner.as_str())
                .ttl(args.ttl)
                .wait(WaitPolicy::deadline(args.duration + WAIT_GRACE));
            let (provider, released_at, cycles) = (provider.clone(), released_at.clone(), cycles.clone());
            tokio::spawn(async move {
                let mut samples = Samples::default();
                while Instant::now() < end {
                    let asked = start.elapsed().as_nanos() as u64;
                    let t = Instant::now();
                    if let Err(e) = provider.lock(&opts).await {
                        samples.failed(&e);
                        break;
                    }
                    samples.acquire.push(t.elapsed());
                    let got = start.elapsed().as_nanos() as u64;
                    let released = released_at.load(Ordering::SeqCst);
                    if released > asked {
                        samples.handover.push(Duration::from_nanos(got.saturating_sub(released)));
                    }
                    released_at.store(start.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    let t = Instant::now();
                    if let Err(e) = provider.unlock(&key, &owner).await {
                        samples.failed(&e);
                        break;
                    }
                    samples.release.push(t.elapsed());
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
                samples
            })
        })
        .collect();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(start.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut all = Samples::default();
    for h in handles {
        match h.await {
            Ok(samples) => all.merge(samples),
            Err(e) => all.failed(&LockError::Config(format!("bench task failed: {e}"))),
        }
    }
    ticker.abort();
    let elapsed = start.elapsed();
    let cycles = cycles.load(Ordering::Relaxed);
    // Only the hot key has hand-overs worth a figure: elsewhere no task waits for another.
    let hot = workload == Workload::Hot;
    Outcome {
        workload,
        tasks,
        cycles,
        elapsed_secs: elapsed.as_secs_f64(),
        cycles_per_sec: cycles as f64 / elapsed.as_secs_f64(),
        acquire_p50_us: quantile_us(&mut all.acquire, 0.5),
        acquire_p99_us: quantile_us(&mut all.acquire, 0.99),
        release_p50_us: quantile_us(&mut all.release, 0.5),
        handovers: if hot { all.handover.len() as u64 } else { 0 },
        handover_p50_us: if hot { quantile_us(&mut all.handover, 0.5) } else { None },
        handover_p99_us: if hot { quantile_us(&mut all.handover, 0.99) } else { None },
        errors: all.errors,
        first_error: all.first_error,
    }
}

/// A duration given in microseconds, the way the benches print it.
fn fmt_us(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 1_000.0 => format!("{:.2} ms", us / 1_000.0),
        Some(us) => format!("{us:.1} µs"),
    }
}

/// The table the benches print, one row per workload, and the failures below it.
fn table(report: &Report<'_>) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "distlock bench: {} · {:.0?} per workload · keys under `{}`\n\n",
        report.provider,
        Duration::from_secs_f64(report.duration_secs),
        report.prefix
    );
    out.push_str("| workload | tasks | cycles | cycles/s | acquire p50 | acquire p99 | release p50 | hand-over p50 | hand-over p99 | errors |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for o in report.workloads {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            format!("{:?}", o.workload).to_lowercase(),
            o.tasks,
            o.cycles,
            o.cycles_per_sec,
            fmt_us(o.acquire_p50_us),
            fmt_us(o.acquire_p99_us),
            fmt_us(o.release_p50_us),
            fmt_us(o.handover_p50_us),
            fmt_us(o.handover_p99_us),
            o.errors,
        );
    }
    for o in report.workloads {
        if let Some(e) = &o.first_error {
            let _ = writeln!(out, "\n{:?}: {} failed operation(s), the first: {e}", o.workload, o.errors);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(extra.iter().copied())).unwrap().args
    }

    #[test]
    fn defaults_run_every_workload_and_are_valid() {
        let a = args(&[]);
        assert_eq!(a.workloads, [Workload::Uncontended, Workload::Distinct, Workload::Hot]);
        assert_eq!((a.distinct_tasks, a.hot_tasks, a.duration), (32, 16, Duration::from_secs(5)));
        a.validate().unwrap();
        assert_eq!(
            args(&["--workloads", "hot,uncontended"]).workloads,
            [Workload::Hot, Workload::Uncontended]
        );
    }

    #[test]
    fn bad_input_is_refused_naming_the_option() {
        for (extra, what) in [
            (&["--duration", "10ms"][..], "duration"),
            (&["--duration", "2h"], "duration"),
            (&["--hot-tasks", "0"], "hot-tasks"),
            (&["--distinct-tasks", "10001"], "distinct-tasks"),
            (&["--ttl", "0s"], "ttl"),
            (&["--prefix", "bad\0prefix/"], "prefix"),
        ] {
            match args(extra).validate() {
                Err(LockError::InvalidArgument { what: w, .. }) => assert_eq!(w, what, "{extra:?}"),
                other => panic!("{extra:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn quantiles_pick_from_the_sorted_samples() {
        let mut s: Vec<Duration> = [5, 1, 4, 2, 3].iter().map(|&ms| Duration::from_millis(ms)).collect();
        assert_eq!(quantile_us(&mut s, 0.5), Some(3_000.0));
        assert_eq!(quantile_us(&mut s, 0.0), Some(1_000.0));
        assert_eq!(quantile_us(&mut s, 1.0), Some(5_000.0));
        assert_eq!(quantile_us(&mut [], 0.5), None);
        assert_eq!(fmt_us(Some(1_500.0)), "1.50 ms");
        assert_eq!(fmt_us(Some(12.34)), "12.3 µs");
        assert_eq!(fmt_us(None), "-");
    }
}
