//! PostgreSQL backend against the raw SQL doing the minimal equivalent, same server, same run:
//! - raw INSERT + DELETE on a table of the same shape (busy = unique violation, retried with
//!   the same backoff schedule the provider uses);
//! - `pg_advisory_lock` / `pg_advisory_unlock` (connection-bound; the connection is held while
//!   locked).
//!
//! The summary adds the hot key taken by two providers at once (separate pools and listeners:
//! two processes as far as the lock is concerned), with the acquire attempts each acquisition
//! cost and how many wake-ups came by NOTIFY, and then the same across two real processes: the
//! bench runs itself twice as a child (`DISTLOCK_BENCH_HOT_CHILD`), each child with a provider
//! and half the tasks, started together, and adds up the attempts they counted.
//!
//! `cargo bench -p lock-postgres --bench postgres` (or `cargo xtask bench`); server from
//! `DISTLOCK_TEST_POSTGRES_URL` (default `postgres://distlock@127.0.0.1:5432/distlock`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lock_core::raw::Backoff;
use lock_core::{LockProvider, WaitPolicy};
use lock_postgres::{PgLockConfig, PgLockProvider};
use lock_testkit::bench::{
    self, fmt_dur, rate, BoxFut, Contender, Cycle, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS,
};
use lock_testkit::env::postgres_url;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Postgres;

const TABLE: &str = "distlock_bench";
const RAW_TABLE: &str = "distlock_bench_raw";
/// Pool of the provider and the raw client. The server's `max_connections` (100 by default)
/// must hold every pool of the run at once.
const POOL: u32 = 16;
/// Pool of `pg_advisory_lock`, which holds a connection per held lock: one per task.
const ADVISORY_POOL: u32 = 34;

/// INSERT to acquire (a unique violation means busy), DELETE to release.
struct RawInsertDelete {
    pool: PgPool,
}

impl Cycle for RawInsertDelete {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO \"{RAW_TABLE}\" (lock_key, id, owner, depth, last_op, acquired_at, expires_at)
                 VALUES ($1, 1, $2, 1, 4, clock_timestamp(), clock_timestamp() + INTERVAL '30 seconds')"
            );
            let mut backoff = Backoff::new(&WaitPolicy::deadline(Duration::from_secs(60)));
            loop {
                match sqlx::query(&sql).bind(key).bind(owner).execute(&self.pool).await {
                    Ok(_) => return,
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        tokio::time::sleep(backoff.next_delay().expect("raw lock timed out")).await;
                    }
                    Err(e) => panic!("raw insert: {e}"),
                }
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            sqlx::query(&format!("DELETE FROM \"{RAW_TABLE}\" WHERE lock_key = $1 AND owner = $2"))
                .bind(key)
                .bind(owner)
                .execute(&self.pool)
                .await
                .expect("raw delete");
        })
    }
}

/// `pg_advisory_lock` holds the lock on a connection, which stays checked out until
/// `pg_advisory_unlock`.
struct AdvisoryLock {
    pool: PgPool,
    held: Mutex<HashMap<String, PoolConnection<Postgres>>>,
}

impl Cycle for AdvisoryLock {
    fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.expect("connection");
            sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut *conn)
                .await
                .expect("pg_advisory_lock");
            self.held.lock().unwrap().insert(key.to_owned(), conn);
        })
    }
    fn release<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut conn = self.held.lock().unwrap().remove(key).expect("held connection");
            let done: bool = sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut *conn)
                .await
                .expect("pg_advisory_unlock");
            assert!(done, "pg_advisory_unlock of a lock not held");
        })
    }
}

/// Two providers on one table; task `owner-N` goes through provider N % 2.
struct TwoProviders([Arc<PgLockProvider>; 2]);

impl TwoProviders {
    fn of(&self, owner: &str) -> &PgLockProvider {
        let n: usize = owner.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        &self.0[n % 2]
    }
}

impl Cycle for TwoProviders {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let o = lock_core::LockOptions::new(key, owner)
                .ttl(Duration::from_secs(30))
                .wait(WaitPolicy::deadline(Duration::from_secs(60)));
            self.of(owner).lock(&o).await.expect("bench lock");
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move { self.of(owner).unlock(key, owner).await.expect("bench unlock") })
    }
}

async fn provider(max_connections: u32) -> PgLockProvider {
    let config = PgLockConfig::default().table_name(TABLE).max_connections(max_connections);
    PgLockProvider::connect(&postgres_url(), config).await.expect("provider")
}

/// The provider counts the statements it sends; every contender's keys are under `bench/`.
async fn contenders() -> Option<Vec<Contender>> {
    let pool = PgPoolOptions::new().max_connections(POOL).connect(&postgres_url()).await.expect("connect");
    // Both tables fresh, in the provider's current schema.
    for sql in [
        format!("DROP TABLE IF EXISTS \"{TABLE}\""),
        format!("DROP TABLE IF EXISTS \"{TABLE}_waits\""),
        format!("DROP SEQUENCE IF EXISTS \"{TABLE}_ids\""),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect("drop table");
    }
    let provider = Arc::new(provider(POOL).await);
    // The raw table has exactly the provider's shape.
    for sql in [
        format!("DROP TABLE IF EXISTS \"{RAW_TABLE}\""),
        format!("CREATE TABLE \"{RAW_TABLE}\" (LIKE \"{TABLE}\" INCLUDING ALL) WITH (fillfactor = 50)"),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect("raw table");
    }
    let al_pool =
        PgPoolOptions::new().max_connections(ADVISORY_POOL).connect(&postgres_url()).await.expect("connect");
    let counted = provider.clone();
    Some(vec![
        Contender::new("distlock postgres", Arc::new(ProviderCycle::new(provider as Arc<dyn LockProvider>)))
            .prefix("bench/")
            .counted(move || counted.acquire_attempts()),
        Contender::new("raw INSERT+DELETE", Arc::new(RawInsertDelete { pool })).prefix("bench/"),
        Contender::new(
            "pg_advisory_lock/unlock",
            Arc::new(AdvisoryLock { pool: al_pool, held: Mutex::default() }),
        )
        .prefix("bench/"),
    ])
}

/// Throughput, latency percentiles and attempts per acquisition, for docs/benchmarks.md.
async fn summary(all: Vec<Contender>) {
    println!("\n## summary (2 worker threads, pools of {POOL}, {ADVISORY_POOL} for advisory locks)");
    println!("| contender | acquire p50 | release p50 | uncontended cycles/s | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut per_acq = None;
    for ct in &all {
        bench::uncontended(&*ct.cycle, &ct.uncontended_key(), 200).await; // warm-up
    }
    // Latencies in turns (20 rounds of 100 cycles per contender): the WAL flush of each commit
    // dominates them, and its time swings by tens of percent from one second to the next.
    let latencies = bench::interleaved_latencies(&all.iter().collect::<Vec<_>>(), 20, 100).await;
    // Distinct keys in turns too: 7 rounds of 32 tasks x 100 cycles, the median round.
    let distinct =
        bench::interleaved_distinct_keys(&all.iter().collect::<Vec<_>>(), DISTINCT_TASKS, 7, 100).await;
    for ((ct, (acq, rel)), dk) in all.iter().zip(latencies).zip(distinct) {
        let (cy, u) = (&ct.cycle, ct.uncontended_key());
        let un = bench::uncontended(&**cy, &u, 2_000).await;
        let before = ct.count();
        let hk = bench::hot_key(cy.clone(), &ct.hot_key(), HOT_TASKS, 40).await;
        if let (Some(before), Some(after)) = (before, ct.count()) {
            per_acq = Some((after - before) as f64 / hk.acquisitions as f64);
        }
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            ct.name,
            fmt_dur(acq.quantile(0.5)),
            fmt_dur(rel.quantile(0.5)),
            rate(2_000, un),
            dk,
            rate(hk.acquisitions, hk.elapsed),
            fmt_dur(hk.handoff.quantile(0.5)),
            fmt_dur(hk.handoff.quantile(0.99)),
        );
    }
    if let Some(s) = per_acq {
        println!("\ndistlock postgres, 16 tasks on one hot key, one provider: {s:.2} acquire attempts per acquisition");
    }
    // A new key for every lock (a workflow engine locking one key per execution): the
    // provider's acquisitions all take the upsert's insert, never the short take-over.
    for ct in all.iter().take(2) {
        let fresh = format!("{}fresh/{}/", ct.distinct_prefix(), fastrand::u32(..));
        let (mut acq, mut rel) = (Vec::new(), Vec::new());
        for i in 0..2_000 {
            let key = format!("{fresh}{i}");
            let t = std::time::Instant::now();
            ct.cycle.acquire(&key, "bench-owner").await;
            acq.push(t.elapsed());
            let t = std::time::Instant::now();
            ct.cycle.release(&key, "bench-owner").await;
            rel.push(t.elapsed());
        }
        let (acq, rel) = (bench::Latencies::new(acq), bench::Latencies::new(rel));
        println!(
            "{}, a new key per cycle: acquire p50 {} p99 {}, release p50 {}",
            ct.name,
            fmt_dur(acq.quantile(0.5)),
            fmt_dur(acq.quantile(0.99)),
            fmt_dur(rel.quantile(0.5)),
        );
    }
    // The hot key across two providers: releases in one wake the other's waiters by NOTIFY.
    // The contenders' pools go first: the server's connections are limited.
    drop(all);
    let two = TwoProviders([Arc::new(provider(POOL / 2).await), Arc::new(provider(POOL / 2).await)]);
    let attempts = |t: &TwoProviders| t.0.iter().map(|p| p.acquire_attempts()).sum::<u64>();
    let notified = |t: &TwoProviders| t.0.iter().map(|p| p.wake_notifications()).sum::<u64>();
    let handed = |t: &TwoProviders| t.0.iter().map(|p| p.handovers()).sum::<u64>();
    let two = Arc::new(two);
    bench::hot_key(two.clone(), "bench/two/hot", HOT_TASKS, 5).await; // warm-up
    let (a0, n0, h0) = (attempts(&two), notified(&two), handed(&two));
    let hk = bench::hot_key(two.clone(), "bench/two/hot", HOT_TASKS, 40).await;
    let (a, n, h) = (attempts(&two) - a0, notified(&two) - n0, handed(&two) - h0);
    println!(
        "distlock postgres, 16 tasks on one hot key, two providers (8 tasks each): {:.2} acquire attempts per \
         acquisition, {:.0} cycles/s, hand-over p50 {} p99 {}, {n} wake-ups by NOTIFY and {h} locks handed over \
         within a provider for {} acquisitions",
        a as f64 / hk.acquisitions as f64,
        rate(hk.acquisitions, hk.elapsed),
        fmt_dur(hk.handoff.quantile(0.5)),
        fmt_dur(hk.handoff.quantile(0.99)),
        hk.acquisitions,
    );
    drop(two);
    tokio::task::spawn_blocking(two_processes).await.expect("two processes");
}

/// Set in a child of the two-process case to its number; the child runs [`hot_child`].
const HOT_CHILD_ENV: &str = "DISTLOCK_BENCH_HOT_CHILD";
/// The key of the two-process case.
const PROCESS_HOT_KEY: &str = "bench/processes/hot";
/// Cycles per task in the two-process case.
const PROCESS_ITERS: u64 = 40;

/// Gives each process's tasks owners of their own (`hot_key` names its tasks `owner-N` in
/// every process).
struct OwnerPrefix {
    inner: ProviderCycle,
    prefix: String,
}

impl Cycle for OwnerPrefix {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move { self.inner.acquire(key, &format!("{}{owner}", self.prefix)).await })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move { self.inner.release(key, &format!("{}{owner}", self.prefix)).await })
    }
}

/// A child of the two-process case: connects, says `ready`, waits for `go` on stdin, cycles
/// `HOT_TASKS / 2` tasks on the hot key and prints `attempts acquisitions notified elapsed_ns`.
fn hot_child(n: &str) {
    let rt = bench::runtime();
    let provider = Arc::new(rt.block_on(provider(POOL / 2)));
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    let cycle = Arc::new(OwnerPrefix {
        inner: ProviderCycle::new(provider.clone() as Arc<dyn LockProvider>),
        prefix: format!("p{n}-"),
    });
    let (a0, n0) = (provider.acquire_attempts(), provider.wake_notifications());
    let hk = rt.block_on(bench::hot_key(cycle, PROCESS_HOT_KEY, HOT_TASKS / 2, PROCESS_ITERS));
    println!(
        "{} {} {} {}",
        provider.acquire_attempts() - a0,
        hk.acquisitions,
        provider.wake_notifications() - n0,
        hk.elapsed.as_nanos()
    );
    rt.block_on(provider.close()).expect("close");
}

/// The hot key across two real processes: attempts per acquisition, cycles/s, NOTIFY wake-ups.
fn two_processes() {
    let exe = std::env::current_exe().expect("bench binary");
    let mut children: Vec<_> = (0..2)
        .map(|n| {
            Command::new(&exe)
                .env(HOT_CHILD_ENV, n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let mut outs: Vec<_> =
        children.iter_mut().map(|c| BufReader::new(c.stdout.take().expect("stdout"))).collect();
    for out in &mut outs {
        let mut line = String::new();
        out.read_line(&mut line).expect("child ready");
        assert_eq!(line.trim(), "ready", "child did not start");
    }
    let start = Instant::now();
    for child in &mut children {
        writeln!(child.stdin.as_mut().expect("stdin"), "go").expect("go");
    }
    let (mut attempts, mut acquisitions, mut notified) = (0u64, 0u64, 0u64);
    for out in &mut outs {
        let mut line = String::new();
        out.read_line(&mut line).expect("child result");
        let f: Vec<u64> = line.split_whitespace().map(|v| v.parse().expect("child figure")).collect();
        assert_eq!(f.len(), 4, "child result: {line:?}");
        (attempts, acquisitions, notified) = (attempts + f[0], acquisitions + f[1], notified + f[2]);
    }
    let elapsed = start.elapsed();
    for mut child in children {
        assert!(child.wait().expect("child exit").success(), "child failed");
    }
    println!(
        "distlock postgres, 16 tasks on one hot key, two processes (8 tasks each): {:.2} acquire attempts per \
         acquisition, {:.0} cycles/s, {notified} wake-ups by NOTIFY for {acquisitions} acquisitions",
        attempts as f64 / acquisitions as f64,
        rate(acquisitions, elapsed),
    );
}

fn main() {
    if let Ok(n) = std::env::var(HOT_CHILD_ENV) {
        return hot_child(&n);
    }
    let spec = Spec::new("postgres").measurement_time(Duration::from_secs(4)).without_hot_key_group();
    bench::main(spec, contenders(), summary);
}
