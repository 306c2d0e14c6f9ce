//! What the peer benches share: distlock against other Rust lock crates, on the same server,
//! with the same workloads, in the same run.
//!
//! This package is not published and no library crate depends on it, so the peers (and their
//! dependencies: a second fred, the `redis` crate, sqlx with native-tls) never enter distlock's
//! own dependency graph. Its benches:
//!
//! - `peers_redis`: distlock's Redis provider, the raw fred floor, `rslock` and
//!   `distributed-lock-redis`;
//! - `peers_mysql`: distlock's MySQL provider, the raw SQL floors and `distributed-lock-mysql`.
//!
//! `cargo bench -p distlock-peer-benches` (or `cargo xtask bench`) runs them against the servers
//! of `DISTLOCK_TEST_REDIS_URL` and `DISTLOCK_TEST_MYSQL_URL`; docs/benchmarks.md has the figures.

use std::collections::HashMap;
use std::sync::Mutex;

use lock_testkit::bench::{self, fmt_dur, rate, Contender, DISTINCT_TASKS, HOT_TASKS};

/// What a lock crate hands back on acquisition (a guard, a handle), kept by key until the
/// release of a [`Cycle`](lock_testkit::bench::Cycle), which gets only the key and the owner.
pub struct Held<H>(Mutex<HashMap<String, H>>);

impl<H> Default for Held<H> {
    fn default() -> Self {
        Held(Mutex::new(HashMap::new()))
    }
}

impl<H> Held<H> {
    /// Keeps `handle` as the holder of `key`.
    pub fn put(&self, key: &str, handle: H) {
        let previous = self.0.lock().expect("held map").insert(key.to_owned(), handle);
        assert!(previous.is_none(), "{key} acquired twice at once: the lock did not exclude");
    }

    /// Takes back the holder of `key`.
    pub fn take(&self, key: &str) -> H {
        self.0.lock().expect("held map").remove(key).expect("released a key that is not held")
    }
}

/// The raw floors' pause between two tries on a busy key: 0.5 to 1.5 ms, uniform. A peer that
/// offers no waiting of its own is polled with it.
pub use lock_testkit::floors::poll_pause;

/// How many cycles [`summary`] runs of each workload.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    /// Cycles of the uncontended throughput run (a tenth of it again as warm-up).
    pub uncontended: u64,
    /// Cycles whose acquire and release latencies are measured one by one (in 20 rounds).
    pub latencies: usize,
    /// Cycles of each task of the distinct-keys workload (in each of 7 rounds).
    pub distinct_per_task: u64,
    /// Cycles of each task of the hot-key workload.
    pub hot_per_task: u64,
}

/// Prints the summary table of a peer bench (one row per contender, the same columns for every
/// backend): throughput of the three workloads, latency percentiles and, for contenders with a
/// counter, the acquire requests each hot-key acquisition cost.
pub async fn summary(heading: &str, all: Vec<Contender>, rounds: Rounds) {
    println!("\n## summary ({heading})");
    println!(
        "| contender | uncontended cycles/s | acquire p50 | release p50 | {DISTINCT_TASKS} tasks distinct keys cycles/s | {HOT_TASKS} tasks hot key cycles/s | hand-over p50 | hand-over mean | hand-over p99 | acquire requests per hot-key acquisition |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    // Warm-up.
    for ct in &all {
        bench::uncontended(&*ct.cycle, &ct.uncontended_key(), rounds.uncontended / 10).await;
    }
    // Latencies and distinct keys in turns (20 rounds of latencies, 7 of distinct keys, the
    // median of those), so that the machine's and the server's drifting speed weighs on every
    // contender alike.
    let refs = all.iter().collect::<Vec<_>>();
    let latencies = bench::interleaved_latencies(&refs, 20, rounds.latencies / 20).await;
    let distinct = bench::interleaved_distinct_keys(&refs, DISTINCT_TASKS, 7, rounds.distinct_per_task).await;
    for ((ct, (acq, rel)), dk) in all.iter().zip(latencies).zip(distinct) {
        let (cy, u) = (&ct.cycle, ct.uncontended_key());
        let un = bench::uncontended(&**cy, &u, rounds.uncontended).await;
        let before = ct.count();
        let hk = bench::hot_key(cy.clone(), &ct.hot_key(), HOT_TASKS, rounds.hot_per_task).await;
        let per_acq = match (before, ct.count()) {
            (Some(b), Some(a)) => format!("{:.2}", (a - b) as f64 / hk.acquisitions as f64),
            _ => "n/a".to_string(),
        };
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            ct.name,
            rate(rounds.uncontended, un),
            fmt_dur(acq.quantile(0.5)),
            fmt_dur(rel.quantile(0.5)),
            dk,
            rate(hk.acquisitions, hk.elapsed),
            fmt_dur(hk.handoff.quantile(0.5)),
            fmt_dur(hk.handoff.mean()),
            fmt_dur(hk.handoff.quantile(0.99)),
            per_acq,
        );
    }
}
