//! Runs uncontended lock/unlock cycles against PostgreSQL, through the provider or as the raw
//! `INSERT` + `DELETE` the bench compares it with, for counting the client's instructions per
//! cycle with a tool that counts them (the count does not depend on the machine's load; the
//! server's work is not in it):
//!
//! ```sh
//! cargo build --release -p lock-postgres --example client_cycles
//! valgrind --tool=callgrind target/release/examples/client_cycles distlock 1000
//! ```
//!
//! Modes: `distlock` (the provider) or `raw`. Divide the difference of two runs' totals (say
//! 1,000 and 2,000 cycles) by the difference of their cycles. The server comes from
//! `DISTLOCK_TEST_POSTGRES_URL` (default `postgres://distlock@127.0.0.1:5432/distlock`).

use lock_core::{LockOptions, LockProvider};
use lock_postgres::{PgLockConfig, PgLockProvider};

const TABLE: &str = "distlock_client_cycles";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "distlock".into());
    let cycles: u64 = args.next().map_or(Ok(1_000), |n| n.parse())?;
    let url = std::env::var("DISTLOCK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://distlock@127.0.0.1:5432/distlock".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let config = PgLockConfig::default().table_name(TABLE).max_connections(4);
        let provider = PgLockProvider::connect(&url, config).await?;
        match mode.as_str() {
            "distlock" => {
                let opts = LockOptions::new("cycles:uncontended", "cycles-owner").no_wait();
                for _ in 0..cycles {
                    provider.lock(&opts).await?;
                    provider.unlock("cycles:uncontended", "cycles-owner").await?;
                }
            }
            "raw" => {
                let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await?;
                let raw = format!("{TABLE}_raw");
                sqlx::query(&format!("DROP TABLE IF EXISTS \"{raw}\"")).execute(&pool).await?;
                sqlx::query(&format!("CREATE TABLE \"{raw}\" (LIKE \"{TABLE}\" INCLUDING ALL)"))
                    .execute(&pool)
                    .await?;
                let insert = format!(
                    "INSERT INTO \"{raw}\" (lock_key, id, owner, depth, last_op, acquired_at, expires_at)
                     VALUES ($1, 1, $2, 1, 4, clock_timestamp(), clock_timestamp() + INTERVAL '30 seconds')"
                );
                let delete = format!("DELETE FROM \"{raw}\" WHERE lock_key = $1 AND owner = $2");
                for _ in 0..cycles {
                    sqlx::query(&insert)
                        .bind("cycles:uncontended")
                        .bind("cycles-owner")
                        .execute(&pool)
                        .await?;
                    sqlx::query(&delete)
                        .bind("cycles:uncontended")
                        .bind("cycles-owner")
                        .execute(&pool)
                        .await?;
                }
                pool.close().await;
            }
            other => return Err(format!("unknown mode {other:?}: distlock or raw").into()),
        }
        provider.close().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
