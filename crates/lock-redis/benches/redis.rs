//! Redis backend against raw fred (the floor), same workloads, same server, same run.
//!
//! `cargo bench -p lock-redis --bench redis` (or `cargo xtask bench`), against
//! `DISTLOCK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The floor is the textbook
//! Redis lock with no extras: `SET key owner NX PX ttl` to acquire (polling every ~1 ms while
//! busy) and an `EVALSHA` compare-and-delete to release. A second floor is the least a lock
//! with fencing tokens costs: one script that sets the lock `NX PX` and, when it did, `INCR`s a
//! counter for the token (no time floor, no re-entry, no hold start), and the same release
//! (both `lock_testkit::floors::redis`'s). After criterion's groups a summary
//! prints throughput, hand-over percentiles and, for the hot key, how many acquire round trips
//! each acquisition cost.

use std::sync::Arc;

use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::bench::{self, fmt_dur, rate, Contender, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS};
use lock_testkit::env::redis_url;
use lock_testkit::floors::redis::{RawFenced, RawFred};

const POOL_SIZE: usize = 4;

/// Each contender counts its acquire round trips, and has a key prefix of its own in this
/// run: the raw floor's plain keys and the provider's keys never meet.
async fn contenders() -> Option<Vec<Contender>> {
    let provider = RedisLockProvider::connect(RedisConfig::new(redis_url()).pool_size(POOL_SIZE))
        .await
        .expect("connect to redis");
    let raw = Arc::new(RawFred::connect(&redis_url(), POOL_SIZE).await);
    let fenced = Arc::new(RawFenced::connect(&redis_url(), POOL_SIZE).await);
    let (counted, raw_counted, fenced_counted) = (provider.clone(), raw.clone(), fenced.clone());
    let run = format!("distlock-bench/{:08x}/", fastrand::u32(..));
    Some(vec![
        Contender::new("distlock redis", Arc::new(ProviderCycle::new(Arc::new(provider))))
            .prefix(format!("{run}distlock-redis/"))
            .counted(move || counted.acquire_attempts()),
        Contender::new("raw fred SET NX PX", raw)
            .prefix(format!("{run}raw-fred/"))
            .counted(move || raw_counted.attempts()),
        Contender::new("raw fred fenced script", fenced)
            .prefix(format!("{run}raw-fenced/"))
            .counted(move || fenced_counted.attempts()),
    ])
}

/// Throughput, latency percentiles and attempts per acquisition, printed for docs/benchmarks.md.
async fn summary(all: Vec<Contender>) {
    println!("\n## summary (2 worker threads, pool of {POOL_SIZE} connections, {})", redis_url());
    println!("| contender | uncontended cycles/s | acquire p50 | release p50 | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over mean | hand-over p99 | hot-key acquire round trips per acquisition |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    const N: u64 = 10_000;
    for ct in &all {
        bench::uncontended(&*ct.cycle, &ct.uncontended_key(), N / 10).await; // warm-up
    }
    // Latencies in turns (20 rounds of 250 cycles per contender), so that the machine's speed
    // drifting during the run weighs on every contender alike.
    let latencies = bench::interleaved_latencies(&all.iter().collect::<Vec<_>>(), 20, 250).await;
    // Distinct keys in turns too: 7 rounds of 32 tasks x 312 cycles, the median round.
    let per_task = N / DISTINCT_TASKS as u64;
    let distinct =
        bench::interleaved_distinct_keys(&all.iter().collect::<Vec<_>>(), DISTINCT_TASKS, 7, per_task).await;
    for ((ct, (acq, rel)), dk) in all.into_iter().zip(latencies).zip(distinct) {
        let (cy, u) = (&ct.cycle, ct.uncontended_key());
        let un = bench::uncontended(&**cy, &u, N).await;
        let before = ct.count().expect("counted");
        let hk = bench::hot_key(cy.clone(), &ct.hot_key(), HOT_TASKS, 200).await;
        let per_acq = (ct.count().expect("counted") - before) as f64 / hk.acquisitions as f64;
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.2} |",
            ct.name,
            rate(N, un),
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

fn main() {
    bench::main(Spec::new("redis"), contenders(), summary);
}
