//! Memory backend against `tokio::sync::Mutex` (the floor), same workloads, same run.
//!
//! `cargo bench -p lock-memory --bench memory` (or `cargo xtask bench`). After criterion's
//! groups, a summary with throughput and hand-over percentiles is printed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lock_memory::MemoryLockProvider;
use lock_testkit::bench::{
    self, fmt_dur, rate, BoxFut, Contender, Cycle, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS,
};
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

fn keys() -> impl Iterator<Item = String> {
    (0..DISTINCT_TASKS).map(|i| format!("d/{i}")).chain(["u".to_string(), "hot".to_string()])
}

async fn contenders() -> Option<Vec<Contender>> {
    Some(vec![
        Contender::new("distlock memory", Arc::new(ProviderCycle::new(Arc::new(MemoryLockProvider::new())))),
        Contender::new("tokio::sync::Mutex", Arc::new(TokioMutexCycle::new(keys()))),
    ])
}

/// Throughput and latency percentiles, printed for docs/benchmarks.md.
async fn summary(all: Vec<Contender>) {
    println!("\n## summary (2 worker threads)");
    println!("| contender | uncontended cycles/s | acquire p50 | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over p99 |");
    println!("|---|---|---|---|---|---|---|");
    for ct in all {
        const N: u64 = 200_000;
        let (cy, u) = (&ct.cycle, ct.uncontended_key());
        bench::uncontended(&**cy, &u, N / 10).await; // warm-up
        let un = bench::uncontended(&**cy, &u, N).await;
        let (acq, _) = bench::uncontended_latencies(&**cy, &u, 20_000).await;
        let dk = bench::distinct_keys(
            cy.clone(),
            &ct.distinct_prefix(),
            DISTINCT_TASKS,
            N / DISTINCT_TASKS as u64,
        )
        .await;
        let hk = bench::hot_key(cy.clone(), &ct.hot_key(), HOT_TASKS, 5_000).await;
        println!(
            "| {} | {:.0} | {} | {:.0} | {:.0} | {} | {} |",
            ct.name,
            rate(N, un),
            fmt_dur(acq.quantile(0.5)),
            rate(N, dk),
            rate(hk.acquisitions, hk.elapsed),
            fmt_dur(hk.handoff.quantile(0.5)),
            fmt_dur(hk.handoff.quantile(0.99)),
        );
    }
}

fn main() {
    bench::main(Spec::new(""), contenders(), summary);
}
