//! Published waits (deadlock detection) in the table beside the locks: one row per waiting
//! call, with an expiry on the server's clock like the locks'.

use std::time::{Duration, UNIX_EPOCH};

use lock_core::{Result, WaitInfo};
use sqlx::Row;

use crate::core::{micros, remaining, Inner};
use crate::error::map_err;

impl Inner {
    /// Inserts or renews the row of `wait`.
    pub(crate) async fn post_wait(&self, wait: &WaitInfo) -> Result<()> {
        let since = wait.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        self.count();
        self.bounded(async {
            sqlx::query(&self.sql.post_wait)
                .bind(&*wait.key)
                .bind(&*wait.owner)
                .bind(wait.id as i64)
                .bind(since)
                .bind(micros(wait.remaining_ttl))
                .execute(&self.pool)
                .await
                .map_err(map_err)
        })
        .await?;
        Ok(())
    }

    /// Deletes the row of one wait.
    pub(crate) async fn drop_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        self.count();
        self.bounded(async {
            sqlx::query(&self.sql.drop_wait)
                .bind(key)
                .bind(owner)
                .bind(id as i64)
                .execute(&self.pool)
                .await
                .map_err(map_err)
        })
        .await?;
        Ok(())
    }

    /// Unexpired waits under `prefix`, by key, then since.
    pub(crate) async fn waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        self.count();
        let rows = self
            .bounded(async {
                sqlx::query(&self.sql.list_waits).bind(prefix).fetch_all(&self.pool).await.map_err(map_err)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(WaitInfo {
                    key: row.try_get::<String, _>(0)?,
                    owner: row.try_get::<String, _>(1)?,
                    id: row.try_get::<i64, _>(2)? as u64,
                    since: UNIX_EPOCH + Duration::from_millis(row.try_get::<i64, _>(3)?.max(0) as u64),
                    remaining_ttl: remaining(row.try_get::<i64, _>(4)?),
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(map_err)
    }

    /// Deletes expired waits; returns how many.
    pub(crate) async fn reap_waits(&self) -> Result<u64> {
        let mut total = 0;
        loop {
            self.count();
            let n = self
                .bounded(async {
                    sqlx::query(&self.sql.reap_waits).execute(&self.pool).await.map_err(map_err)
                })
                .await?
                .rows_affected();
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }
}
