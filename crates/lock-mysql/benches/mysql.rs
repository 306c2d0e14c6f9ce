//! MySQL backend against the raw SQL doing the minimal equivalent, same server, same run:
//! - raw INSERT + DELETE on a table of the same shape (busy = duplicate key, retried with the
//!   same backoff schedule the provider uses);
//! - raw fenced UPDATEs: the least a lock with fencing tokens costs on InnoDB, where a new
//!   `AUTO_INCREMENT` row per acquisition cannot give ordered tokens (the id is drawn before the
//!   duplicate-key check) and a key's row therefore stays: one `UPDATE` takes a free or expired
//!   row and counts its generation up (the token, read back through `LAST_INSERT_ID`), one
//!   `UPDATE` frees it. No re-entry, no hold start, no lost-answer undo, no statement guard;
//! - `GET_LOCK` / `RELEASE_LOCK` (connection-bound; the connection is held while locked).
//!
//! `cargo bench -p lock-mysql --bench mysql` (or `cargo xtask bench`); server from
//! `DISTLOCK_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::raw::Backoff;
use lock_core::{LockProvider, WaitPolicy};
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::bench::{
    self, fmt_dur, rate, BoxFut, Contender, Cycle, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS,
};
use lock_testkit::env::mysql_url;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::MySql;

const TABLE: &str = "distlock_bench";
const RAW_TABLE: &str = "distlock_bench_raw";
const FENCED_TABLE: &str = "distlock_bench_fenced";
const POOL: u32 = 34;

/// INSERT to acquire (a duplicate key means busy), DELETE to release.
struct RawInsertDelete {
    pool: MySqlPool,
}

impl Cycle for RawInsertDelete {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO `{RAW_TABLE}` (lock_key, owner, depth, acquired_at, expires_at)
                 VALUES (?, ?, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 30 SECOND)"
            );
            let mut backoff = Backoff::new(&WaitPolicy::deadline(Duration::from_secs(60)));
            loop {
                match sqlx::query(&sql).bind(key.as_bytes()).bind(owner.as_bytes()).execute(&self.pool).await
                {
                    Ok(_) => return,
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        tokio::time::sleep(backoff.next_delay().expect("raw lock timed out")).await;
                    }
                    // InnoDB can report a deadlock between concurrent inserts and deletes of
                    // one key; the statement did nothing and is simply repeated (as the
                    // provider does).
                    Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40001") => {}
                    Err(e) => panic!("raw insert: {e}"),
                }
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            sqlx::query(&format!("DELETE FROM `{RAW_TABLE}` WHERE lock_key = ? AND owner = ?"))
                .bind(key.as_bytes())
                .bind(owner.as_bytes())
                .execute(&self.pool)
                .await
                .expect("raw delete");
        })
    }
}

/// One `UPDATE` takes the key's row (created free the first time), one frees it.
struct RawFencedUpdate {
    pool: MySqlPool,
}

impl Cycle for RawFencedUpdate {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let take = format!(
                "UPDATE `{FENCED_TABLE}` SET owner = ?, depth = 1,
                        generation = generation + 1 + 0 * LAST_INSERT_ID(generation + 1),
                        acquired_at = UTC_TIMESTAMP(6), expires_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND
                 WHERE lock_key = ? AND (depth = 0 OR expires_at <= UTC_TIMESTAMP(6))"
            );
            let mut backoff = Backoff::new(&WaitPolicy::deadline(Duration::from_secs(60)));
            loop {
                let done = sqlx::query(&take)
                    .bind(owner.as_bytes())
                    .bind(key.as_bytes())
                    .execute(&self.pool)
                    .await
                    .expect("raw fenced take");
                if done.rows_affected() == 1 {
                    std::hint::black_box(done.last_insert_id());
                    return;
                }
                let created = sqlx::query(&format!(
                    "INSERT IGNORE INTO `{FENCED_TABLE}` (lock_key, owner, depth, acquired_at, expires_at)
                     VALUES (?, '', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
                ))
                .bind(key.as_bytes())
                .execute(&self.pool)
                .await
                .expect("raw fenced row");
                if created.rows_affected() == 0 {
                    tokio::time::sleep(backoff.next_delay().expect("raw fenced lock timed out")).await;
                }
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            sqlx::query(&format!(
                "UPDATE `{FENCED_TABLE}` SET depth = 0, owner = '' WHERE lock_key = ? AND owner = ? AND depth = 1"
            ))
            .bind(key.as_bytes())
            .bind(owner.as_bytes())
            .execute(&self.pool)
            .await
            .expect("raw fenced release");
        })
    }
}

/// `GET_LOCK` holds the lock on a connection, which stays checked out until `RELEASE_LOCK`.
struct GetLock {
    pool: MySqlPool,
    held: Mutex<HashMap<String, PoolConnection<MySql>>>,
}

impl Cycle for GetLock {
    fn acquire<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await.expect("connection");
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
                .bind(key)
                .fetch_one(&mut *conn)
                .await
                .expect("GET_LOCK");
            assert_eq!(got, Some(1), "GET_LOCK timed out");
            self.held.lock().unwrap().insert(key.to_owned(), conn);
        })
    }
    fn release<'a>(&'a self, key: &'a str, _owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut conn = self.held.lock().unwrap().remove(key).expect("held connection");
            sqlx::query("SELECT RELEASE_LOCK(?)").bind(key).execute(&mut *conn).await.expect("RELEASE_LOCK");
        })
    }
}

/// The provider counts the statements it sends; every contender's keys are under `bench/`.
async fn contenders() -> Option<Vec<Contender>> {
    let pool = MySqlPoolOptions::new().max_connections(POOL).connect(&mysql_url()).await.expect("connect");
    // Both tables fresh, in the provider's current schema.
    sqlx::query(&format!("DROP TABLE IF EXISTS `{TABLE}`")).execute(&pool).await.expect("drop table");
    let config = MySqlLockConfig::default().table_name(TABLE);
    let provider = Arc::new(MySqlLockProvider::from_pool(pool.clone(), config).await.expect("provider"));
    // The raw table has exactly the provider's shape.
    for sql in [
        format!("DROP TABLE IF EXISTS `{RAW_TABLE}`"),
        format!("CREATE TABLE `{RAW_TABLE}` LIKE `{TABLE}`"),
        format!("DROP TABLE IF EXISTS `{FENCED_TABLE}`"),
        format!("CREATE TABLE `{FENCED_TABLE}` LIKE `{TABLE}`"),
    ] {
        sqlx::query(&sql).execute(&pool).await.expect("raw table");
    }
    let raw_pool =
        MySqlPoolOptions::new().max_connections(POOL).connect(&mysql_url()).await.expect("connect");
    let fenced_pool =
        MySqlPoolOptions::new().max_connections(POOL).connect(&mysql_url()).await.expect("connect");
    let gl_pool = MySqlPoolOptions::new().max_connections(POOL).connect(&mysql_url()).await.expect("connect");
    let counted = provider.clone();
    Some(vec![
        Contender::new("distlock mysql", Arc::new(ProviderCycle::new(provider as Arc<dyn LockProvider>)))
            .prefix("bench/")
            .counted(move || counted.statements_sent()),
        Contender::new("raw INSERT+DELETE", Arc::new(RawInsertDelete { pool: raw_pool })).prefix("bench/"),
        Contender::new("raw fenced UPDATEs", Arc::new(RawFencedUpdate { pool: fenced_pool }))
            .prefix("bench/"),
        Contender::new("GET_LOCK/RELEASE_LOCK", Arc::new(GetLock { pool: gl_pool, held: Mutex::default() }))
            .prefix("bench/"),
    ])
}

/// Throughput, latency percentiles and statements per acquisition, for docs/benchmarks.md.
async fn summary(all: Vec<Contender>) {
    println!("\n## summary (2 worker threads, pools of {POOL})");
    println!("| contender | acquire p50 | release p50 | uncontended cycles/s | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over p99 |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut per_acq = None;
    for ct in &all {
        bench::uncontended(&*ct.cycle, &ct.uncontended_key(), 200).await; // warm-up
    }
    // Latencies in turns (20 rounds of 100 cycles per contender), so that the server's speed
    // drifting during the run (the redo log's flush time) weighs on every contender alike.
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
            // Every cycle has one unlock statement; the rest went into acquiring.
            per_acq = Some((after - before - hk.acquisitions) as f64 / hk.acquisitions as f64);
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
        println!("\ndistlock mysql, 16 tasks on one hot key: {s:.2} statements per acquisition (acquire attempts + reads)");
    }
}

fn main() {
    let spec = Spec::new("mysql").measurement_time(Duration::from_secs(4)).without_hot_key_group();
    bench::main(spec, contenders(), summary);
}
