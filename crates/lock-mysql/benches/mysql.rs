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
//! The floors are `lock_testkit::floors::mysql`'s. `cargo bench -p lock-mysql --bench mysql`
//! (or `cargo xtask bench`); server from `DISTLOCK_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::bench::{self, fmt_dur, rate, Contender, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS};
use lock_testkit::env::mysql_url;
use lock_testkit::floors::mysql::{GetLock, RawFencedUpdate, RawInsertDelete};
use sqlx::mysql::MySqlPoolOptions;

const TABLE: &str = "distlock_bench";
const RAW_TABLE: &str = "distlock_bench_raw";
const FENCED_TABLE: &str = "distlock_bench_fenced";
const POOL: u32 = 34;

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
        Contender::new("raw INSERT+DELETE", Arc::new(RawInsertDelete::new(raw_pool, RAW_TABLE)))
            .prefix("bench/"),
        Contender::new("raw fenced UPDATEs", Arc::new(RawFencedUpdate::new(fenced_pool, FENCED_TABLE)))
            .prefix("bench/"),
        Contender::new("GET_LOCK/RELEASE_LOCK", Arc::new(GetLock::new(gl_pool))).prefix("bench/"),
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
