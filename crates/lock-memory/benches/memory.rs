//! Memory backend against `tokio::sync::Mutex` (the floor), same workloads, same run.
//!
//! `cargo bench -p lock-memory --bench memory` (or `cargo xtask bench`). After criterion's
//! groups, a summary with throughput and hand-over percentiles is printed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use lock_memory::MemoryLockProvider;
use lock_testkit::bench::{self, fmt_dur, rate, BoxFut, Cycle, ProviderCycle};
use tokio::sync::OwnedMutexGuard;

/// `tokio::sync::Mutex` per key behind the [`Cycle`] interface: the guard is parked in a slot
/// that only its holder touches (one uncontended std mutex lock per operation).
struct TokioMutexCycle {
    slots: HashMap<String, Slot>,
}

/// A key's mutex and the parked guard of its holder.
type Slot = (Arc<tokio::sync::Mutex<()>>, Mutex<Option<OwnedMutexGuard<()>>>);

impl TokioMutexCycle {
    fn new(keys: impl IntoIterator<Item = String>) -> Self {
        TokioMutexCycle { slots: keys.into_iter().map(|k| (k, (Arc::default(), Mutex::new(None)))).collect() }
    }
}

impl Cycle for TokioMutexCycle {
    fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let (m, slot) = &self.slots[key];
            let g = m.clone().lock_owned().await;
            *slot.lock().unwrap() = Some(g);
        })
    }
    fn release<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.slots[key].1.lock().unwrap().take();
        })
    }
}

const DISTINCT_TASKS: usize = 32;
const HOT_TASKS: usize = 16;

fn keys() -> impl Iterator<Item = String> {
    (0..DISTINCT_TASKS).map(|i| format!("d/{i}")).chain(["u".to_string(), "hot".to_string()])
}

fn contenders() -> Vec<(&'static str, Arc<dyn Cycle>)> {
    vec![
        ("distlock memory", Arc::new(ProviderCycle::new(Arc::new(MemoryLockProvider::new())))),
        ("tokio::sync::Mutex", Arc::new(TokioMutexCycle::new(keys()))),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let all = rt.block_on(async { contenders() });

    let mut g = c.benchmark_group("uncontended lock+unlock");
    g.throughput(Throughput::Elements(1));
    for (name, cy) in &all {
        g.bench_function(*name, |b| b.to_async(&rt).iter_custom(|n| bench::uncontended(&**cy, "u", n)));
    }
    g.finish();

    let mut g = c.benchmark_group("32 tasks distinct keys");
    g.throughput(Throughput::Elements(DISTINCT_TASKS as u64));
    for (name, cy) in &all {
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|n| bench::distinct_keys(cy.clone(), "d/", DISTINCT_TASKS, n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("16 tasks hot key");
    g.throughput(Throughput::Elements(HOT_TASKS as u64));
    for (name, cy) in &all {
        g.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter_custom(|n| async move { bench::hot_key(cy.clone(), "hot", HOT_TASKS, n).await.elapsed })
        });
    }
    g.finish();
}

/// Throughput and latency percentiles, printed for docs/benchmarks.md.
fn summary() {
    let rt = runtime();
    rt.block_on(async {
        println!("\n## summary (2 worker threads)");
        println!("| contender | uncontended cycles/s | acquire p50 | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over p99 |");
        println!("|---|---|---|---|---|---|---|");
        for (name, cy) in contenders() {
            const N: u64 = 200_000;
            bench::uncontended(&*cy, "u", N / 10).await; // warm-up
            let un = bench::uncontended(&*cy, "u", N).await;
            let (acq, _) = bench::uncontended_latencies(&*cy, "u", 20_000).await;
            let dk = bench::distinct_keys(cy.clone(), "d/", DISTINCT_TASKS, N / DISTINCT_TASKS as u64).await;
            let hk = bench::hot_key(cy.clone(), "hot", HOT_TASKS, 5_000).await;
            println!(
                "| {name} | {:.0} | {} | {:.0} | {:.0} | {} | {} |",
                rate(N, un),
                fmt_dur(acq.quantile(0.5)),
                rate(N, dk),
                rate(hk.acquisitions, hk.elapsed),
                fmt_dur(hk.handoff.quantile(0.5)),
                fmt_dur(hk.handoff.quantile(0.99)),
            );
        }
    });
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    // `cargo test --all-targets` runs benches once as smoke tests, without `--bench`.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
