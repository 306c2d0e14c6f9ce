//! Measures what MariaDB's per-statement guard (`SET STATEMENT ... FOR`) costs a lock statement,
//! in turns, so that the server's drifting speed weighs on every variant alike:
//!
//! ```sh
//! cargo run --release -p lock-mysql --example statement_latency [rounds]
//! ```
//!
//! Each variant takes and frees one row with two `UPDATE`s (the shape of a fenced lock that
//! keeps its row), with a different prefix in front of both; the provider's own lock and
//! unlock run in the same turns. Prints the p50 of each statement and of the cycle. The server comes from `DISTLOCK_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`).

use std::time::{Duration, Instant};

use lock_core::{LockOptions, LockProvider};
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use sqlx::mysql::MySqlPoolOptions;

const TABLE: &str = "distlock_statement_latency";

fn p50(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(10), |n| n.parse())?;
    let url = std::env::var("DISTLOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let pool = MySqlPoolOptions::new().max_connections(4).connect(&url).await?;
        sqlx::query(&format!("DROP TABLE IF EXISTS `{TABLE}`")).execute(&pool).await?;
        sqlx::query(&format!(
            "CREATE TABLE `{TABLE}` (lock_key VARBINARY(255) NOT NULL PRIMARY KEY, owner VARBINARY(255) NOT NULL,
             depth INT UNSIGNED NOT NULL, generation BIGINT UNSIGNED NOT NULL DEFAULT 0,
             acquired_at DATETIME(6) NOT NULL, expires_at DATETIME(6) NOT NULL) ENGINE=InnoDB"
        ))
        .execute(&pool)
        .await?;
        let variants = [
            ("no guard", String::new()),
            (
                "full guard",
                "SET STATEMENT max_statement_time = 5.000000, innodb_lock_wait_timeout = 6, \
                 sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION' FOR "
                    .to_owned(),
            ),
            ("max_statement_time only", "SET STATEMENT max_statement_time = 5.000000 FOR ".to_owned()),
            (
                "lock wait and sql_mode only",
                "SET STATEMENT innodb_lock_wait_timeout = 6, sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION' FOR "
                    .to_owned(),
            ),
        ];
        let mut times = vec![(Vec::new(), Vec::new(), Vec::new()); variants.len() + 1];
        let provider =
            MySqlLockProvider::from_pool(pool.clone(), MySqlLockConfig::default().table_name(format!("{TABLE}_provider")))
                .await?;
        for (i, _) in variants.iter().enumerate() {
            sqlx::query(&format!(
                "INSERT INTO `{TABLE}` VALUES (?, '', 0, 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
            ))
            .bind(format!("k{i}"))
            .execute(&pool)
            .await?;
        }
        for _ in 0..rounds {
            for (i, (_, guard)) in variants.iter().enumerate() {
                let take = format!(
                    "{guard}UPDATE `{TABLE}` SET owner = ?, depth = 1,
                        generation = generation + 1 + 0 * LAST_INSERT_ID(generation + 1),
                        acquired_at = UTC_TIMESTAMP(6), expires_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND
                     WHERE lock_key = ? AND (depth = 0 OR expires_at <= UTC_TIMESTAMP(6))"
                );
                let free = format!("{guard}UPDATE `{TABLE}` SET depth = 0, owner = '' WHERE lock_key = ? AND owner = ?");
                let key = format!("k{i}");
                for _ in 0..100 {
                    let t0 = Instant::now();
                    let took = sqlx::query(&take).bind("o").bind(&key).execute(&pool).await?;
                    let t1 = Instant::now();
                    let freed = sqlx::query(&free).bind(&key).bind("o").execute(&pool).await?;
                    let t2 = Instant::now();
                    assert_eq!((took.rows_affected(), freed.rows_affected()), (1, 1));
                    times[i].0.push(t1 - t0);
                    times[i].1.push(t2 - t1);
                    times[i].2.push(t2 - t0);
                }
            }
            let opts = LockOptions::new("k", "o").ttl(Duration::from_secs(30)).no_wait();
            for _ in 0..100 {
                let t0 = Instant::now();
                provider.lock(&opts).await?;
                let t1 = Instant::now();
                provider.unlock("k", "o").await?;
                let t2 = Instant::now();
                let last = times.len() - 1;
                times[last].0.push(t1 - t0);
                times[last].1.push(t2 - t1);
                times[last].2.push(t2 - t0);
            }
        }
        println!("| prefix | take p50 | free p50 | cycle p50 |");
        println!("|---|---|---|---|");
        let names = variants.iter().map(|(n, _)| *n).chain(["the provider (lock, unlock)"]);
        for (name, (take, free, cycle)) in names.zip(&mut times) {
            println!("| {name} | {:?} | {:?} | {:?} |", p50(take), p50(free), p50(cycle));
        }
        for t in [TABLE.to_owned(), format!("{TABLE}_provider"), format!("{TABLE}_provider_waits")] {
            sqlx::query(&format!("DROP TABLE IF EXISTS `{t}`")).execute(&pool).await?;
        }
        Ok(())
    })
}
