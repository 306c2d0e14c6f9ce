//! Redis backend against raw fred (the floor), same workloads, same server, same run.
//!
//! `cargo bench -p lock-redis --bench redis` (or `cargo xtask bench`), against
//! `DISTLOCK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The floor is the textbook
//! Redis lock with no extras: `SET key owner NX PX ttl` to acquire (polling every ~1 ms while
//! busy) and an `EVALSHA` compare-and-delete to release. After criterion's groups a summary
//! prints throughput, hand-over percentiles and, for the hot key, how many acquire round trips
//! each acquisition cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, SetOptions};
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::bench::{self, fmt_dur, rate, BoxFut, Cycle, ProviderCycle};
use lock_testkit::env::redis_url;

const POOL_SIZE: usize = 4;
const DISTINCT_TASKS: usize = 32;
const HOT_TASKS: usize = 16;

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

/// A contender with its acquire round-trip counter.
struct Contender {
    name: &'static str,
    cycle: Arc<dyn Cycle>,
    attempts: Box<dyn Fn() -> u64>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn contenders() -> Vec<Contender> {
    let provider = RedisLockProvider::connect(RedisConfig::new(redis_url()).pool_size(POOL_SIZE))
        .await
        .expect("connect to redis");
    let raw = Arc::new(RawFred::connect().await);
    let counted = provider.clone();
    let raw_counted = raw.clone();
    vec![
        Contender {
            name: "distlock redis",
            cycle: Arc::new(ProviderCycle::new(Arc::new(provider))),
            attempts: Box::new(move || counted.acquire_attempts()),
        },
        Contender {
            name: "raw fred SET NX PX",
            cycle: raw,
            attempts: Box::new(move || raw_counted.attempts.load(Ordering::Relaxed)),
        },
    ]
}

/// Key prefix of this run: the raw floor's plain keys and the provider's keys never meet.
fn prefix(contender: &str) -> String {
    format!("distlock-bench/{:08x}/{}/", fastrand::u32(..), contender.replace(' ', "-"))
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let all = rt.block_on(contenders());

    let mut g = c.benchmark_group("redis uncontended lock+unlock");
    g.throughput(Throughput::Elements(1));
    for ct in &all {
        let key = format!("{}u", prefix(ct.name));
        g.bench_function(ct.name, |b| {
            b.to_async(&rt).iter_custom(|n| {
                let key = key.clone();
                async move { bench::uncontended(&*ct.cycle, &key, n).await }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("redis 32 tasks distinct keys");
    g.throughput(Throughput::Elements(DISTINCT_TASKS as u64));
    for ct in &all {
        let p = format!("{}d/", prefix(ct.name));
        g.bench_function(ct.name, |b| {
            b.to_async(&rt).iter_custom(|n| bench::distinct_keys(ct.cycle.clone(), &p, DISTINCT_TASKS, n))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("redis 16 tasks hot key");
    g.throughput(Throughput::Elements(HOT_TASKS as u64));
    for ct in &all {
        let key = format!("{}hot", prefix(ct.name));
        g.bench_function(ct.name, |b| {
            b.to_async(&rt).iter_custom(|n| {
                let key = key.clone();
                async move { bench::hot_key(ct.cycle.clone(), &key, HOT_TASKS, n).await.elapsed }
            })
        });
    }
    g.finish();
}

/// Throughput, latency percentiles and attempts per acquisition, printed for docs/benchmarks.md.
fn summary() {
    let rt = runtime();
    rt.block_on(async {
        println!("\n## summary (2 worker threads, pool of {POOL_SIZE} connections, {})", redis_url());
        println!("| contender | uncontended cycles/s | acquire p50 | release p50 | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over mean | hand-over p99 | hot-key acquire round trips per acquisition |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for ct in contenders().await {
            const N: u64 = 10_000;
            let p = prefix(ct.name);
            let u = format!("{p}u");
            bench::uncontended(&*ct.cycle, &u, N / 10).await; // warm-up
            let un = bench::uncontended(&*ct.cycle, &u, N).await;
            let (acq, rel) = bench::uncontended_latencies(&*ct.cycle, &u, 5_000).await;
            let dk =
                bench::distinct_keys(ct.cycle.clone(), &format!("{p}d/"), DISTINCT_TASKS, N / DISTINCT_TASKS as u64)
                    .await;
            let before = (ct.attempts)();
            let hk = bench::hot_key(ct.cycle.clone(), &format!("{p}hot"), HOT_TASKS, 200).await;
            let per_acq = ((ct.attempts)() - before) as f64 / hk.acquisitions as f64;
            println!(
                "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {:.2} |",
                ct.name,
                rate(N, un),
                fmt_dur(acq.quantile(0.5)),
                fmt_dur(rel.quantile(0.5)),
                rate(N, dk),
                rate(hk.acquisitions, hk.elapsed),
                fmt_dur(hk.handoff.quantile(0.5)),
                fmt_dur(hk.handoff.mean()),
                fmt_dur(hk.handoff.quantile(0.99)),
                per_acq,
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
