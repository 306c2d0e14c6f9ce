//! distlock's MySQL provider against `distributed-lock-mysql` and the raw SQL floors: same
//! server, same workloads, same run.
//!
//! `cargo bench -p distlock-peer-benches --bench peers_mysql` (or `cargo xtask bench`); server
//! from `DISTLOCK_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`). The contenders,
//! each on a pool of [`POOL`] connections of its own:
//!
//! - `distlock mysql`: [`MySqlLockProvider`] on the table [`TABLE`];
//! - `raw INSERT+DELETE` and `GET_LOCK/RELEASE_LOCK`: the floors of lock-mysql's own bench
//!   (`lock_testkit::floors::mysql`), the first on a table of the provider's shape,
//!   [`RAW_TABLE`];
//! - `distributed-lock-mysql`: `MySqlLockProvider::create_lock` and `acquire` with a timeout
//!   (`GET_LOCK(name, timeout)`: the server queues the waiter), the handle's `release`.
//!
//! Every key is under a prefix drawn for this run, so `GET_LOCK` names (global to the server)
//! meet no other run's. As in lock-mysql's bench, the hot key is measured by the summary only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use distlock_peer_benches::{summary, Held, Rounds};
use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider as _};
use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::bench::{self, BoxFut, Contender, Cycle, ProviderCycle, Spec};
use lock_testkit::env::mysql_url;
use lock_testkit::floors::mysql::{GetLock, RawInsertDelete};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

/// distlock's table in this bench (lock-mysql's own bench uses other names).
const TABLE: &str = "distlock_peers_bench";
/// The raw floor's table, of the provider's shape.
const RAW_TABLE: &str = "distlock_peers_bench_raw";
/// Connections of each contender's pool (as in lock-mysql's bench: every task gets one, and
/// `GET_LOCK` holds one per held lock).
const POOL: u32 = 34;

/// `distributed-lock-mysql`: a lock object per acquisition, `acquire` with a timeout as its
/// docs show, the handle (which holds the connection) kept until release.
struct DistributedLockMySql {
    provider: distributed_lock_mysql::MySqlLockProvider,
    held: Held<distributed_lock_mysql::MySqlLockHandle>,
}

impl Cycle for DistributedLockMySql {
    fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let lock = self.provider.create_lock(key);
            let handle =
                lock.acquire(Some(Duration::from_secs(60))).await.expect("distributed-lock-mysql acquire");
            self.held.put(key, handle);
        })
    }
    fn release<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            self.held.take(key).release().await.expect("distributed-lock-mysql release");
        })
    }
}

/// Counts the releases that go through a cycle, so that a statement counter can be reduced to
/// the statements that went into acquiring.
struct CountReleases<C> {
    inner: C,
    releases: AtomicU64,
}

impl<C: Cycle> Cycle for CountReleases<C> {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        self.inner.acquire(key, owner)
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        self.releases.fetch_add(1, Ordering::Relaxed);
        self.inner.release(key, owner)
    }
}

async fn pool() -> MySqlPool {
    MySqlPoolOptions::new().max_connections(POOL).connect(&mysql_url()).await.expect("connect to mysql")
}

async fn contenders() -> Option<Vec<Contender>> {
    let pool = pool().await;
    // Both tables fresh, in the provider's current schema.
    sqlx::query(&format!("DROP TABLE IF EXISTS `{TABLE}`")).execute(&pool).await.expect("drop table");
    let config = MySqlLockConfig::default().table_name(TABLE);
    let provider = Arc::new(MySqlLockProvider::from_pool(pool.clone(), config).await.expect("provider"));
    for sql in
        [format!("DROP TABLE IF EXISTS `{RAW_TABLE}`"), format!("CREATE TABLE `{RAW_TABLE}` LIKE `{TABLE}`")]
    {
        sqlx::query(&sql).execute(&pool).await.expect("raw table");
    }
    let dlm = distributed_lock_mysql::MySqlLockProvider::builder()
        .pool(self::pool().await)
        .build()
        .await
        .expect("distributed-lock-mysql provider");
    let distlock = Arc::new(CountReleases {
        inner: ProviderCycle::new(provider.clone() as Arc<dyn LockProvider>),
        releases: AtomicU64::new(0),
    });
    let counted = distlock.clone();
    let run = format!("distlock-peers/{:08x}/", fastrand::u32(..));
    Some(vec![
        Contender::new("distlock mysql", distlock)
            .prefix(format!("{run}distlock/"))
            .counted(move || provider.statements_sent() - counted.releases.load(Ordering::Relaxed)),
        Contender::new("raw INSERT+DELETE", Arc::new(RawInsertDelete::new(self::pool().await, RAW_TABLE)))
            .prefix(format!("{run}raw/")),
        Contender::new("GET_LOCK/RELEASE_LOCK", Arc::new(GetLock::new(self::pool().await)))
            .prefix(format!("{run}get-lock/")),
        Contender::new(
            "distributed-lock-mysql",
            Arc::new(DistributedLockMySql { provider: dlm, held: Held::default() }),
        )
        .prefix(format!("{run}distributed-lock-mysql/")),
    ])
}

fn main() {
    let heading = format!("2 worker threads, pools of {POOL}");
    let rounds = Rounds { uncontended: 2_000, latencies: 2_000, distinct_per_task: 200, hot_per_task: 40 };
    let spec = Spec::new("mysql peers").measurement_time(Duration::from_secs(4)).without_hot_key_group();
    bench::main(spec, contenders(), |all| async move { summary(&heading, all, rounds).await });
}
