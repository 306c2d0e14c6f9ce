//! Benchmark workloads shared by every backend's criterion bench and by `cargo xtask bench`,
//! and the `main` every bench runs.
//!
//! Each workload is written against a [`Cycle`]: "acquire, then release" on one key. The lock
//! providers are one implementation ([`ProviderCycle`]); a bench adds the raw client of its
//! backend (or `tokio::sync::Mutex`) as another, so both run the same workload in the same
//! process and the same run.
//!
//! A bench file names its [`Contender`]s and its summary table and hands them to [`main`]:
//!
//! ```ignore
//! fn main() {
//!     lock_testkit::bench::main(Spec::new("redis"), contenders(), summary);
//! }
//! ```
//!
//! [`main`] runs, on a runtime of two worker threads, criterion's groups
//! (`"{title} uncontended lock+unlock"`, `"{title} 32 tasks distinct keys"` and
//! `"{title} 16 tasks hot key"`, one function per contender) and then, under `cargo bench`
//! only, the summary. `cargo test --all-targets` runs each bench once as a smoke test,
//! without `--bench` and so without the summary.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use lock_core::{LockOptions, LockProvider, WaitPolicy};

pub mod waits;

/// Tasks of the distinct-keys workload, each on a key of its own.
pub const DISTINCT_TASKS: usize = 32;

/// Tasks of the hot-key workload, all on one key.
pub const HOT_TASKS: usize = 16;

/// One thing a bench measures: a name for its rows, its [`Cycle`], where its keys live and,
/// optionally, a count of the requests it sent.
pub struct Contender {
    /// Name in criterion's output and the summary's rows.
    pub name: &'static str,
    /// What is measured.
    pub cycle: Arc<dyn Cycle>,
    prefix: String,
    counter: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl Contender {
    /// A contender whose keys have no prefix.
    pub fn new(name: &'static str, cycle: Arc<dyn Cycle>) -> Self {
        Contender { name, cycle, prefix: String::new(), counter: None }
    }

    /// Puts this contender's keys under `prefix`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Attaches a counter of the requests this contender sent (acquire round trips,
    /// statements, ...), which the summary may read before and after a workload.
    pub fn counted(mut self, counter: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.counter = Some(Box::new(counter));
        self
    }

    /// The counter's value now; `None` without a counter.
    pub fn count(&self) -> Option<u64> {
        self.counter.as_ref().map(|c| c())
    }

    /// The key of the uncontended workload.
    pub fn uncontended_key(&self) -> String {
        format!("{}u", self.prefix)
    }

    /// The key prefix of the distinct-keys workload (task `i` uses `{prefix}{i}`).
    pub fn distinct_prefix(&self) -> String {
        format!("{}d/", self.prefix)
    }

    /// The key of the hot-key workload.
    pub fn hot_key(&self) -> String {
        format!("{}hot", self.prefix)
    }
}

/// How [`main`] runs a backend's bench.
#[derive(Debug, Clone)]
pub struct Spec {
    title: &'static str,
    measurement_time: Duration,
    sample_size: Option<usize>,
    hot_key_group: bool,
}

impl Spec {
    /// Groups named after `title` (empty: the bare workload names), 1 s of warm-up and 3 s of
    /// measurement per function, criterion's default sample size, every workload.
    pub fn new(title: &'static str) -> Self {
        Spec { title, measurement_time: Duration::from_secs(3), sample_size: None, hot_key_group: true }
    }

    /// Measurement time per function.
    pub fn measurement_time(mut self, time: Duration) -> Self {
        self.measurement_time = time;
        self
    }

    /// Samples per function, for backends too slow for criterion's default of 100.
    pub fn sample_size(mut self, samples: usize) -> Self {
        self.sample_size = Some(samples);
        self
    }

    /// Leaves the hot-key workload out of criterion's groups (a summary may still run it).
    pub fn without_hot_key_group(mut self) -> Self {
        self.hot_key_group = false;
        self
    }

    fn group(&self, workload: &str) -> String {
        if self.title.is_empty() {
            workload.to_string()
        } else {
            format!("{} {workload}", self.title)
        }
    }
}

/// The runtime every bench runs on: two worker threads, timers and I/O.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("bench runtime")
}

/// A bench's `main`: builds the contenders on [`runtime`] (`None`: the bench is skipped, having
/// said why), runs criterion's groups, and under `cargo bench` hands the contenders to
/// `summary`, which prints the bench's table.
pub fn main<S, F>(spec: Spec, contenders: impl Future<Output = Option<Vec<Contender>>>, summary: S)
where
    S: FnOnce(Vec<Contender>) -> F,
    F: Future<Output = ()>,
{
    let rt = runtime();
    let Some(all) = rt.block_on(contenders) else { return };
    let mut c =
        Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(spec.measurement_time);
    if let Some(n) = spec.sample_size {
        c = c.sample_size(n);
    }
    let mut c = c.configure_from_args();
    groups(&mut c, &rt, &spec, &all);
    c.final_summary();
    // `cargo test --all-targets` runs benches once as smoke tests, without `--bench`.
    if std::env::args().any(|a| a == "--bench") {
        rt.block_on(summary(all));
    }
}

/// Criterion's groups: one per workload, one function per contender.
fn groups(c: &mut Criterion, rt: &tokio::runtime::Runtime, spec: &Spec, all: &[Contender]) {
    let mut g = c.benchmark_group(spec.group("uncontended lock+unlock"));
    g.throughput(Throughput::Elements(1));
    for ct in all {
        let key = ct.uncontended_key();
        g.bench_function(ct.name, |b| b.to_async(rt).iter_custom(|n| uncontended(&*ct.cycle, &key, n)));
    }
    g.finish();

    let mut g = c.benchmark_group(spec.group(&format!("{DISTINCT_TASKS} tasks distinct keys")));
    g.throughput(Throughput::Elements(DISTINCT_TASKS as u64));
    for ct in all {
        let prefix = ct.distinct_prefix();
        g.bench_function(ct.name, |b| {
            b.to_async(rt).iter_custom(|n| distinct_keys(ct.cycle.clone(), &prefix, DISTINCT_TASKS, n))
        });
    }
    g.finish();

    if !spec.hot_key_group {
        return;
    }
    let mut g = c.benchmark_group(spec.group(&format!("{HOT_TASKS} tasks hot key")));
    g.throughput(Throughput::Elements(HOT_TASKS as u64));
    for ct in all {
        let key = ct.hot_key();
        g.bench_function(ct.name, |b| {
            b.to_async(rt).iter_custom(|n| {
                let key = key.clone();
                async move { hot_key(ct.cycle.clone(), &key, HOT_TASKS, n).await.elapsed }
            })
        });
    }
    g.finish();
}

/// A boxed future, so that [`Cycle`] stays object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One thing that can be locked and unlocked by key: a provider, a raw client, a mutex.
pub trait Cycle: Send + Sync + 'static {
    /// Acquires `key` for `owner`, waiting as long as it takes.
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()>;
    /// Releases `key` held by `owner`.
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()>;
}

/// [`Cycle`] over any [`LockProvider`].
pub struct ProviderCycle {
    provider: Arc<dyn LockProvider>,
    ttl: Duration,
}

impl ProviderCycle {
    /// Wraps a provider; leases last 30 s.
    pub fn new(provider: Arc<dyn LockProvider>) -> Self {
        ProviderCycle { provider, ttl: Duration::from_secs(30) }
    }
}

impl Cycle for ProviderCycle {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let o = LockOptions::new(key, owner)
                .ttl(self.ttl)
                .wait(WaitPolicy::deadline(Duration::from_secs(60)));
            self.provider.lock(&o).await.expect("bench lock");
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move { self.provider.unlock(key, owner).await.expect("bench unlock") })
    }
}

/// `iters` sequential acquire+release cycles on one key from one task; returns the elapsed time.
pub async fn uncontended(c: &dyn Cycle, key: &str, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        c.acquire(key, "bench-owner").await;
        c.release(key, "bench-owner").await;
    }
    start.elapsed()
}

/// Latencies of `iters` uncontended acquisitions and releases, measured one by one.
pub async fn uncontended_latencies(c: &dyn Cycle, key: &str, iters: usize) -> (Latencies, Latencies) {
    let mut acq = Vec::with_capacity(iters);
    let mut rel = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        c.acquire(key, "bench-owner").await;
        acq.push(t.elapsed());
        let t = Instant::now();
        c.release(key, "bench-owner").await;
        rel.push(t.elapsed());
    }
    (Latencies::new(acq), Latencies::new(rel))
}

/// [`uncontended_latencies`] of every contender, taken in turns: `rounds` rounds of `per_round`
/// cycles each, the contenders one after the other in every round. A server whose speed drifts
/// during the run (a disk's flush time swinging from one second to the next) then weighs on
/// every contender alike, instead of on whichever ran in its slow seconds.
pub async fn interleaved_latencies(
    contenders: &[&Contender],
    rounds: usize,
    per_round: usize,
) -> Vec<(Latencies, Latencies)> {
    let mut all: Vec<(Vec<Duration>, Vec<Duration>)> =
        contenders.iter().map(|_| Default::default()).collect();
    for _ in 0..rounds {
        for (ct, (acq, rel)) in contenders.iter().zip(&mut all) {
            let key = ct.uncontended_key();
            for _ in 0..per_round {
                let t = Instant::now();
                ct.cycle.acquire(&key, "bench-owner").await;
                acq.push(t.elapsed());
                let t = Instant::now();
                ct.cycle.release(&key, "bench-owner").await;
                rel.push(t.elapsed());
            }
        }
    }
    all.into_iter().map(|(acq, rel)| (Latencies::new(acq), Latencies::new(rel))).collect()
}

/// An error of a measuring program's own work.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shares `cycles` out between `tasks` tasks (at least one), task `t` running `work(t, its
/// share)`, and waits for all of them: the distinct-key workload's shape for programs that
/// measure one contender per run (the backends' `client_cycles` examples). The shares add up
/// to `cycles` exactly (the first `cycles % tasks` tasks run one more), since those programs
/// divide what they count by the cycles asked for. The first error (or panic) is the answer.
pub async fn in_tasks<F, Fut>(tasks: u64, cycles: u64, work: F) -> Result<(), BoxError>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let tasks = tasks.max(1);
    let share = |t: u64| cycles / tasks + u64::from(t < cycles % tasks);
    let all: Vec<_> = (0..tasks).map(|t| tokio::spawn(work(t, share(t)))).collect();
    for task in all {
        task.await??;
    }
    Ok(())
}

/// Distinct-key throughput in turns: `rounds` rounds, each running [`distinct_keys`]
/// (`tasks` tasks, `iters` cycles each) for every contender in turn, starting one contender
/// later each round; the median of each contender's rates, in cycles/s. A single run of a
/// second or less moves by a quarter from one run to the next on a shared machine; in turns,
/// the machine's and the server's drifting speed weighs on every contender alike, and no
/// single round decides.
pub async fn interleaved_distinct_keys(
    contenders: &[&Contender],
    tasks: usize,
    rounds: usize,
    iters: u64,
) -> Vec<f64> {
    let n = contenders.len();
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for i in (0..n).map(|k| (k + round) % n) {
            let ct = contenders[i];
            let took = distinct_keys(ct.cycle.clone(), &ct.distinct_prefix(), tasks, iters).await;
            rates[i].push(rate(tasks as u64 * iters, took));
        }
    }
    rates.into_iter().map(median).collect()
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `tasks` tasks, each on its own key, doing `iters` cycles each; returns the elapsed time.
pub async fn distinct_keys(c: Arc<dyn Cycle>, prefix: &str, tasks: usize, iters: u64) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (c, key, owner) = (c.clone(), format!("{prefix}{t}"), format!("owner-{t}"));
            tokio::spawn(async move {
                for _ in 0..iters {
                    c.acquire(&key, &owner).await;
                    c.release(&key, &owner).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("bench task");
    }
    start.elapsed()
}

/// Result of [`hot_key`].
#[derive(Debug, Clone)]
pub struct HotKey {
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Acquisitions made (tasks x iters).
    pub acquisitions: u64,
    /// For each acquisition that had to wait for a release: time from the holder calling
    /// release to the waiter holding the lock.
    pub handoff: Latencies,
}

/// `tasks` tasks cycling on one key, `iters` cycles each: hand-over latency and throughput.
pub async fn hot_key(c: Arc<dyn Cycle>, key: &str, tasks: usize, iters: u64) -> HotKey {
    let base = Instant::now();
    // Nanoseconds since `base` at which the last holder called release.
    let released_at = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (c, key, owner, released_at) =
                (c.clone(), key.to_owned(), format!("owner-{t}"), released_at.clone());
            tokio::spawn(async move {
                let mut handoffs = Vec::with_capacity(iters as usize);
                for _ in 0..iters {
                    let asked = base.elapsed().as_nanos() as u64;
                    c.acquire(&key, &owner).await;
                    let got = base.elapsed().as_nanos() as u64;
                    let rel = released_at.load(Ordering::SeqCst);
                    if rel > asked {
                        handoffs.push(Duration::from_nanos(got.saturating_sub(rel)));
                    }
                    released_at.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    c.release(&key, &owner).await;
                }
                handoffs
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("bench task"));
    }
    HotKey { elapsed: start.elapsed(), acquisitions: tasks as u64 * iters, handoff: Latencies::new(all) }
}

/// A sorted sample of durations.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts the sample.
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Latencies(v)
    }

    /// Sample size.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `true` for an empty sample.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0.0..=1.0), zero for an empty sample.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.0[i]
    }

    /// Arithmetic mean, zero for an empty sample.
    pub fn mean(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.iter().sum::<Duration>() / self.0.len() as u32
    }
}

/// Formats a duration with a unit that keeps 3 significant digits.
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Operations per second.
pub fn rate(ops: u64, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_sample() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(l.quantile(0.5), Duration::from_micros(51));
        assert_eq!(l.quantile(0.0), Duration::from_micros(1));
        assert_eq!(l.quantile(1.0), Duration::from_micros(100));
        assert_eq!(l.mean(), Duration::from_nanos(50_500));
        assert_eq!(Latencies::default().quantile(0.5), Duration::ZERO);
        assert_eq!(fmt_dur(Duration::from_nanos(1_500)), "1.50 µs");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    /// Records which contender ran, in order, and how many cycles on which keys.
    struct Recorder {
        id: usize,
        log: Arc<std::sync::Mutex<Vec<(usize, String)>>>,
    }

    impl Cycle for Recorder {
        fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
            Box::pin(async move { self.log.lock().unwrap().push((self.id, key.to_string())) })
        }
        fn release<'a>(&'a self, _key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn in_tasks_shares_the_cycles_out_and_reports_the_first_error() {
        let done = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = done.clone();
        in_tasks(4, 20, move |t, n| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((t, n));
                Ok(())
            }
        })
        .await
        .unwrap();
        let mut done = done.lock().unwrap().clone();
        done.sort();
        assert_eq!(done, [(0, 5), (1, 5), (2, 5), (3, 5)]);
        let uneven = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = uneven.clone();
        in_tasks(3, 10, move |t, n| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((t, n));
                Ok(())
            }
        })
        .await
        .unwrap();
        let mut uneven = uneven.lock().unwrap().clone();
        uneven.sort();
        assert_eq!(uneven, [(0, 4), (1, 3), (2, 3)], "every cycle asked for is run");
        let failed = in_tasks(0, 3, |t, n| async move {
            assert_eq!((t, n), (0, 3), "no task count means one task with every cycle");
            Err::<(), BoxError>("the server went away".into())
        })
        .await;
        assert_eq!(failed.unwrap_err().to_string(), "the server went away");
    }

    #[tokio::test]
    async fn distinct_keys_run_in_turns_on_each_contenders_own_keys() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let all: Vec<Contender> = (0..3)
            .map(|id| {
                Contender::new("recorder", Arc::new(Recorder { id, log: log.clone() }))
                    .prefix(format!("c{id}/"))
            })
            .collect();
        let rates = interleaved_distinct_keys(&all.iter().collect::<Vec<_>>(), 2, 3, 5).await;
        assert_eq!(rates.len(), 3);
        assert!(rates.iter().all(|r| *r > 0.0), "{rates:?}");
        let log = log.lock().unwrap();
        // 3 rounds x 3 contenders x 2 tasks x 5 cycles, each contender on its own keys.
        assert_eq!(log.len(), 90);
        for (id, key) in log.iter() {
            assert!(key.starts_with(&all[*id].distinct_prefix()), "{id} used {key}");
        }
        // Runs in turns, one contender later each round: 0 1 2, 1 2 0, 2 0 1.
        let order: Vec<usize> = log.chunks(10).map(|c| c[0].0).collect();
        assert_eq!(order, [0, 1, 2, 1, 2, 0, 2, 0, 1]);
    }
}
