//! distlock's Redis provider against the other Rust Redis lock crates and the raw fred floor:
//! same server, same workloads, same run.
//!
//! `cargo bench -p distlock-peer-benches --bench peers_redis` (or `cargo xtask bench`), against
//! `DISTLOCK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). The contenders:
//!
//! - `distlock redis`: [`RedisLockProvider`], a pool of [`POOL_SIZE`] connections;
//! - `raw fred SET NX PX`: the floor of lock-redis's own bench (`lock_testkit::floors::redis`):
//!   `SET NX PX` polled every 0.5 to 1.5 ms while busy, an `EVALSHA` compare-and-delete to
//!   release, the same pool;
//! - `rslock`: its `LockManager` on the one server, `acquire` (which loops until it holds the
//!   lock) and `LockGuard::release`, one multiplexed connection (the crate's own);
//! - `distributed-lock-redis`: `RedisLockProvider::create_lock` and the handle's `release`, one
//!   fred 9 client (the crate takes clients, not a pool). Its `acquire` does not wait on a
//!   single server: a busy key answers `Timeout` at once, whatever the timeout given (its
//!   `acquire_single_client`), so the bench polls `try_acquire` with the floor's pause.
//!
//! Every contender's keys are under a prefix of its own in this run. After criterion's groups a
//! summary prints the table of docs/benchmarks.md ("Rust peers, same run").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock_peer_benches::{poll_pause, summary, Held, Rounds};
use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider as _};
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::bench::{self, BoxFut, Contender, Cycle, ProviderCycle, Spec};
use lock_testkit::env::redis_url;
use lock_testkit::floors::redis::RawFred;

/// Connections of distlock's pool and of the raw floor's.
const POOL_SIZE: usize = 4;

/// Lock TTL of every contender (distlock's bench leases last 30 s too).
const TTL: Duration = Duration::from_secs(30);

/// `rslock`: Redlock on one server. Its owner is a random value of its own per acquisition, kept
/// in the guard.
struct Rslock {
    manager: rslock::LockManager,
    held: Held<rslock::LockGuard>,
}

impl Rslock {
    fn new() -> Rslock {
        let mut manager = rslock::LockManager::new(vec![redis_url()]);
        // Its own retry settings, as close to the floor's pause as they go: the default count
        // (3 tries per `lock` call, after which `acquire` calls `lock` again at once) and a delay
        // drawn uniformly from whole milliseconds in 0..3, so 1 ms on average like the floor's.
        // The default delay (up to 200 ms) would measure the setting, not the crate.
        manager.set_retry(3, Duration::from_millis(3));
        Rslock { manager, held: Held::default() }
    }
}

impl Cycle for Rslock {
    fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let guard = self.manager.acquire(key.as_bytes(), TTL).await.expect("rslock acquire");
            self.held.put(key, guard);
        })
    }
    fn release<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move { self.held.take(key).release().await })
    }
}

/// `distributed-lock-redis`: a lock object per acquisition (it draws the owner's lock id), its
/// handle kept until release. The handle refreshes the lease in a task of its own.
struct DistributedLockRedis {
    provider: distributed_lock_redis::RedisLockProvider,
    held: Held<distributed_lock_redis::RedisLockHandle>,
    attempts: AtomicU64,
}

impl Cycle for DistributedLockRedis {
    fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let lock = self.provider.create_lock(key);
            loop {
                self.attempts.fetch_add(1, Ordering::Relaxed);
                if let Some(handle) = lock.try_acquire().await.expect("distributed-lock-redis try_acquire") {
                    self.held.put(key, handle);
                    return;
                }
                poll_pause().await;
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.held.take(key).release().await.expect("distributed-lock-redis release");
        })
    }
}

async fn contenders() -> Option<Vec<Contender>> {
    let provider = RedisLockProvider::connect(RedisConfig::new(redis_url()).pool_size(POOL_SIZE))
        .await
        .expect("connect to redis");
    let raw = Arc::new(RawFred::connect(&redis_url(), POOL_SIZE).await);
    let dlr = Arc::new(DistributedLockRedis {
        provider: distributed_lock_redis::RedisLockProvider::builder()
            .url(redis_url())
            .expiry(TTL)
            .build()
            .await
            .expect("distributed-lock-redis connect"),
        held: Held::default(),
        attempts: AtomicU64::new(0),
    });
    let (counted, raw_counted, dlr_counted) = (provider.clone(), raw.clone(), dlr.clone());
    let run = format!("distlock-peers/{:08x}/", fastrand::u32(..));
    Some(vec![
        Contender::new("distlock redis", Arc::new(ProviderCycle::new(Arc::new(provider))))
            .prefix(format!("{run}distlock-redis/"))
            .counted(move || counted.acquire_attempts()),
        Contender::new("raw fred SET NX PX", raw)
            .prefix(format!("{run}raw-fred/"))
            .counted(move || raw_counted.attempts()),
        Contender::new("rslock", Arc::new(Rslock::new())).prefix(format!("{run}rslock/")),
        Contender::new("distributed-lock-redis", dlr)
            .prefix(format!("{run}distributed-lock-redis/"))
            .counted(move || dlr_counted.attempts.load(Ordering::Relaxed)),
    ])
}

fn main() {
    let heading = format!("2 worker threads, {}; distlock and the floor: pools of {POOL_SIZE}", redis_url());
    let rounds =
        Rounds { uncontended: 10_000, latencies: 5_000, distinct_per_task: 10_000 / 32, hot_per_task: 200 };
    bench::main(
        Spec::new("redis peers"),
        contenders(),
        |all| async move { summary(&heading, all, rounds).await },
    );
}
