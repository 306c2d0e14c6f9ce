//! MySQL floors on a sqlx pool, each on a table of the provider's shape: the textbook
//! `INSERT` + `DELETE` of a row (no token), a kept row taken and freed by two `UPDATE`s with a
//! generation as token (the least a fenced lock costs on InnoDB, where a new `AUTO_INCREMENT`
//! row per acquisition cannot give ordered tokens), and `GET_LOCK` on a connection kept for
//! the hold.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lock_core::raw::Backoff;
use lock_core::WaitPolicy;
use sqlx::mysql::MySqlPool;
use sqlx::pool::PoolConnection;
use sqlx::MySql;

use crate::bench::{BoxFut, Cycle};

/// The longest a floor waits for a busy lock before it panics.
const DEADLINE: Duration = Duration::from_secs(60);

/// `INSERT` to acquire (a duplicate key means busy, retried on the provider's backoff
/// schedule), `DELETE` to release.
pub struct RawInsertDelete {
    pool: MySqlPool,
    insert: String,
    delete: String,
}

impl RawInsertDelete {
    /// The floor on `table`, which has the provider's columns.
    pub fn new(pool: MySqlPool, table: &str) -> Self {
        RawInsertDelete {
            pool,
            insert: format!(
                "INSERT INTO `{table}` (lock_key, owner, depth, acquired_at, expires_at)
                 VALUES (?, ?, 1, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL 30 SECOND)"
            ),
            delete: format!("DELETE FROM `{table}` WHERE lock_key = ? AND owner = ?"),
        }
    }
}

impl Cycle for RawInsertDelete {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut backoff = Backoff::new(&WaitPolicy::deadline(DEADLINE));
            loop {
                let inserted = sqlx::query(&self.insert)
                    .bind(key.as_bytes())
                    .bind(owner.as_bytes())
                    .execute(&self.pool)
                    .await;
                match inserted {
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
            sqlx::query(&self.delete)
                .bind(key.as_bytes())
                .bind(owner.as_bytes())
                .execute(&self.pool)
                .await
                .expect("raw delete");
        })
    }
}

/// One `UPDATE` takes the key's row (created free the first time) and counts its generation
/// up (the token, read back through `LAST_INSERT_ID`), one `UPDATE` frees it. No re-entry, no
/// hold start, no lost-answer undo, no statement guard.
pub struct RawFencedUpdate {
    pool: MySqlPool,
    take: String,
    create: String,
    free: String,
}

impl RawFencedUpdate {
    /// The floor on `table`, which has the provider's columns.
    pub fn new(pool: MySqlPool, table: &str) -> Self {
        RawFencedUpdate {
            pool,
            take: format!(
                "UPDATE `{table}` SET owner = ?, depth = 1,
                        generation = generation + 1 + 0 * LAST_INSERT_ID(generation + 1),
                        acquired_at = UTC_TIMESTAMP(6), expires_at = UTC_TIMESTAMP(6) + INTERVAL 30 SECOND
                 WHERE lock_key = ? AND (depth = 0 OR expires_at <= UTC_TIMESTAMP(6))"
            ),
            create: format!(
                "INSERT IGNORE INTO `{table}` (lock_key, owner, depth, acquired_at, expires_at)
                 VALUES (?, '', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
            ),
            free: format!(
                "UPDATE `{table}` SET depth = 0, owner = '' WHERE lock_key = ? AND owner = ? AND depth = 1"
            ),
        }
    }
}

impl Cycle for RawFencedUpdate {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut backoff = Backoff::new(&WaitPolicy::deadline(DEADLINE));
            loop {
                let done = sqlx::query(&self.take)
                    .bind(owner.as_bytes())
                    .bind(key.as_bytes())
                    .execute(&self.pool)
                    .await
                    .expect("raw fenced take");
                if done.rows_affected() == 1 {
                    std::hint::black_box(done.last_insert_id());
                    return;
                }
                let created = sqlx::query(&self.create)
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
            sqlx::query(&self.free)
                .bind(key.as_bytes())
                .bind(owner.as_bytes())
                .execute(&self.pool)
                .await
                .expect("raw fenced release");
        })
    }
}

/// `GET_LOCK` holds the lock on a connection, which stays checked out until `RELEASE_LOCK`:
/// the server's in-memory lock, with no TTL and no token, gone with its connection.
pub struct GetLock {
    pool: MySqlPool,
    held: Mutex<HashMap<String, PoolConnection<MySql>>>,
}

impl GetLock {
    /// The floor on connections of `pool`.
    pub fn new(pool: MySqlPool) -> Self {
        GetLock { pool, held: Mutex::default() }
    }
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
            let conn = self.held.lock().unwrap().remove(key);
            let mut conn = conn.expect("held connection");
            sqlx::query("SELECT RELEASE_LOCK(?)").bind(key).execute(&mut *conn).await.expect("RELEASE_LOCK");
        })
    }
}
