//! Redis backend against raw fred (the floor), same workloads, same server, same run.
//!
//! `cargo bench -p lock-redis --bench redis` (or `cargo xtask bench`), against
//! `DISTLOCK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The floor is the textbook
//! Redis lock with no extras: `SET key owner NX PX ttl` to acquire (polling every ~1 ms while
//! busy) and an `EVALSHA` compare-and-delete to release. A second floor is the least a lock
//! with fencing tokens costs: one script that sets the lock `NX PX` and, when it did, `INCR`s a
//! counter for the token (no time floor, no re-entry, no hold start), and the same release.
//! After criterion's groups a summary
//! prints throughput, hand-over percentiles and, for the hot key, how many acquire round trips
//! each acquisition cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, SetOptions};
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::bench::{
    self, fmt_dur, rate, BoxFut, Contender, Cycle, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS,
};
use lock_testkit::env::redis_url;

const POOL_SIZE: usize = 4;

/// The textbook single-instance Redis lock on a fred pool of the same size.
struct RawFred {
    pool: Pool,
    release: Script,
    attempts: AtomicU64,
}

const RAW_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl RawFred {
    async fn connect() -> RawFred {
        let config = fred::types::config::Config::from_url(&redis_url()).expect("redis URL");
        let pool = Builder::from_config(config).build_pool(POOL_SIZE).expect("pool");
        pool.init().await.expect("connect to redis");
        let release = Script::from_lua(RAW_RELEASE);
        release.load(pool.next()).await.expect("script load");
        RawFred { pool, release, attempts: AtomicU64::new(0) }
    }
}

impl Cycle for RawFred {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            loop {
                self.attempts.fetch_add(1, Ordering::Relaxed);
                let set: Option<String> = self
                    .pool
                    .set(key, owner, Some(Expiration::PX(30_000)), Some(SetOptions::NX), false)
                    .await
                    .expect("SET NX PX");
                if set.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(500 + fastrand::u64(..1000))).await;
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _: i64 = self.release.evalsha(self.pool.next(), key, owner).await.expect("EVALSHA release");
        })
    }
}

const RAW_FENCED_ACQUIRE: &str =
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end return 0";

/// The least a fenced lock costs: one script for the lock and its token.
struct RawFenced {
    raw: Arc<RawFred>,
    acquire: Script,
}

impl RawFenced {
    async fn connect(raw: Arc<RawFred>) -> RawFenced {
        let acquire = Script::from_lua(RAW_FENCED_ACQUIRE);
        acquire.load(raw.pool.next()).await.expect("script load");
        RawFenced { raw, acquire }
    }
}

impl Cycle for RawFenced {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let fence = format!("{key}:fence");
            loop {
                self.raw.attempts.fetch_add(1, Ordering::Relaxed);
                let token: i64 = self
                    .acquire
                    .evalsha(self.raw.pool.next(), vec![key, fence.as_str()], vec![owner, "30000"])
                    .await
                    .expect("EVALSHA fenced acquire");
                if token > 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(500 + fastrand::u64(..1000))).await;
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        self.raw.release(key, owner)
    }
}

/// Each contender counts its acquire round trips, and has a key prefix of its own in this
/// run: the raw floor's plain keys and the provider's keys never meet.
async fn contenders() -> Option<Vec<Contender>> {
    let provider = RedisLockProvider::connect(RedisConfig::new(redis_url()).pool_size(POOL_SIZE))
        .await
        .expect("connect to redis");
    let raw = Arc::new(RawFred::connect().await);
    let fenced = Arc::new(RawFenced::connect(Arc::new(RawFred::connect().await)).await);
    let (counted, raw_counted, fenced_counted) = (provider.clone(), raw.clone(), fenced.clone());
    let run = format!("distlock-bench/{:08x}/", fastrand::u32(..));
    Some(vec![
        Contender::new("distlock redis", Arc::new(ProviderCycle::new(Arc::new(provider))))
            .prefix(format!("{run}distlock-redis/"))
            .counted(move || counted.acquire_attempts()),
        Contender::new("raw fred SET NX PX", raw)
            .prefix(format!("{run}raw-fred/"))
            .counted(move || raw_counted.attempts.load(Ordering::Relaxed)),
        Contender::new("raw fred fenced script", fenced)
            .prefix(format!("{run}raw-fenced/"))
            .counted(move || fenced_counted.raw.attempts.load(Ordering::Relaxed)),
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
