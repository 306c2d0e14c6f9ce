//! Runs uncontended lock/unlock cycles against MySQL or MariaDB, through the provider or as
//! the raw statements the bench compares it with, for counting the client's instructions per
//! cycle with a tool that counts them (the count does not depend on the machine's load; the
//! server's work is not in it):
//!
//! ```sh
//! cargo build --release -p lock-mysql --example client_cycles
//! valgrind --tool=callgrind target/release/examples/client_cycles distlock 1000
//! ```
//!
//! Modes: `distlock` (the provider), `raw` (`INSERT` + `DELETE`) or `fenced` (a kept row taken
//! and freed by two `UPDATE`s, the least a fenced lock costs) or `guarded` (the same two under
//! the provider's per-statement guard on MariaDB, `SET STATEMENT ... FOR`). Divide the difference of two
//! runs' totals (say 1,000 and 2,000 cycles) by the difference of their cycles. An optional
//! third argument runs that many tasks, each cycling on a key of its own (the benches'
//! distinct-key workload; the cycles are shared out between them). Without valgrind, the same
//! runs give the client's and the server's CPU per cycle (`/usr/bin/time`, and the server's
//! `/proc/<pid>/stat` before and after). The server comes from `DISTLOCK_TEST_MYSQL_URL`
//! (default `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;

use lock_core::{LockOptions, LockProvider};
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::bench::{in_tasks, BoxError as Error};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

const TABLE: &str = "distlock_client_cycles";
const RAW: &str = "distlock_client_cycles_raw";
const OWNER: &str = "cycles-owner";

/// `cycles` lock/unlock cycles on `key` in the way `mode` names.
async fn cycle(
    mode: &str,
    provider: &MySqlLockProvider,
    pool: &MySqlPool,
    key: &str,
    cycles: u64,
) -> Result<(), Error> {
    match mode {
        "distlock" => {
            let opts = LockOptions::new(key, OWNER).no_wait();
            for _ in 0..cycles {
                provider.lock(&opts).await?;
                provider.unlock(key, OWNER).await?;
            }
        }
        "raw" => {
            let insert = format!(
                "INSERT INTO `{RAW}` (lock_key, owner, depth, acquired_at, expires_at)
                 VALUES (?, ?, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 30 SECOND)"
            );
            let delete = format!("DELETE FROM `{RAW}` WHERE lock_key = ? AND owner = ?");
            for _ in 0..cycles {
                sqlx::query(&insert).bind(key.as_bytes()).bind(OWNER.as_bytes()).execute(pool).await?;
                sqlx::query(&delete).bind(key.as_bytes()).bind(OWNER.as_bytes()).execute(pool).await?;
            }
        }
        "fenced" | "guarded" => {
            // `guarded`: the same statements under the guard the provider puts in front of
            // each of its statements on MariaDB.
            let g = if mode == "guarded" {
                "SET STATEMENT max_statement_time = 5.000000, innodb_lock_wait_timeout = 6, \
                 sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION' FOR "
            } else {
                ""
            };
            sqlx::query(&format!(
                "INSERT INTO `{RAW}` (lock_key, owner, depth, acquired_at, expires_at)
                 VALUES (?, '', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
            ))
            .bind(key.as_bytes())
            .execute(pool)
            .await?;
            let take = format!(
                "{g}UPDATE `{RAW}` SET owner = ?, depth = 1,
                        generation = generation + 1 + 0 * LAST_INSERT_ID(generation + 1),
                        acquired_at = UTC_TIMESTAMP(6), expires_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND
                 WHERE lock_key = ? AND (depth = 0 OR expires_at <= UTC_TIMESTAMP(6))"
            );
            let free = format!(
                "{g}UPDATE `{RAW}` SET depth = 0, owner = '' WHERE lock_key = ? AND owner = ? AND depth = 1"
            );
            for _ in 0..cycles {
                let took =
                    sqlx::query(&take).bind(OWNER.as_bytes()).bind(key.as_bytes()).execute(pool).await?;
                assert_eq!(took.rows_affected(), 1, "fenced take of a held key");
                std::hint::black_box(took.last_insert_id());
                sqlx::query(&free).bind(key.as_bytes()).bind(OWNER.as_bytes()).execute(pool).await?;
            }
        }
        other => return Err(format!("unknown mode {other:?}: distlock, raw, fenced or guarded").into()),
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "distlock".into());
    let cycles: u64 = args.next().map_or(Ok(1_000), |n| n.parse())?;
    let tasks: u32 = args.next().map_or(Ok(1), |n| n.parse())?;
    let url = std::env::var("DISTLOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let tasks = tasks.max(1);
        let pool = MySqlPoolOptions::new().max_connections(tasks + 2).connect(&url).await?;
        let config = MySqlLockConfig::default().table_name(TABLE);
        let provider = Arc::new(MySqlLockProvider::from_pool(pool.clone(), config).await?);
        for sql in [format!("DROP TABLE IF EXISTS `{RAW}`"), format!("CREATE TABLE `{RAW}` LIKE `{TABLE}`")] {
            sqlx::query(&sql).execute(&pool).await?;
        }
        in_tasks(u64::from(tasks), cycles, |t, n| {
            let (mode, provider, pool) = (mode.clone(), provider.clone(), pool.clone());
            async move { cycle(&mode, &provider, &pool, &format!("cycles:{t}"), n).await }
        })
        .await?;
        provider.close().await?;
        Ok::<_, Error>(())
    })?;
    Ok(())
}
