//! Published waits (deadlock detection) in the table beside the locks: one row per waiting
//! call, with an expiry on the server's clock like the locks'.

use std::time::{Duration, UNIX_EPOCH};

use lock_core::{Result, WaitInfo};
use sqlx::Row;

use crate::core::{micros, remaining, Inner};
use crate::error::map_err;
use crate::table::like_prefix;

impl Inner {
    /// Creates the waits table if it is missing.
    pub(crate) async fn migrate_waits(&self) -> Result<()> {
        self.count();
        self.bounded(async {
            sqlx::query(&self.sql.create_waits).execute(&self.pool).await.map_err(map_err)
        })
        .await?;
        Ok(())
    }

    /// Inserts or renews the row of `wait`.
    pub(crate) async fn post_wait(&self, wait: &WaitInfo) -> Result<()> {
        let since = wait.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        self.bounded(
            self.exec(
                sqlx::query(&self.sql.post_wait)
                    .bind(wait.key.as_bytes())
                    .bind(wait.owner.as_bytes())
                    .bind(wait.id)
                    .bind(since)
                    .bind(micros(wait.remaining_ttl)),
            ),
        )
        .await?;
        Ok(())
    }

    /// Deletes the row of one wait.
    pub(crate) async fn drop_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        self.bounded(
            self.exec(sqlx::query(&self.sql.drop_wait).bind(key.as_bytes()).bind(owner.as_bytes()).bind(id)),
        )
        .await?;
        Ok(())
    }

    /// Unexpired waits under `prefix`, by key, then since.
    pub(crate) async fn waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        self.count();
        let rows = self
            .bounded(async {
                sqlx::query(&self.sql.list_waits)
                    .bind(like_prefix(prefix))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_err)
            })
            .await?;
        rows.iter()
            .map(|row| {
                Ok(WaitInfo {
                    key: String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(0)?).into_owned(),
                    owner: String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(1)?).into_owned(),
                    id: row.try_get::<u64, _>(2)?,
                    since: UNIX_EPOCH + Duration::from_millis(row.try_get::<u64, _>(3)?),
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
            let n = self.bounded(self.exec(sqlx::query(&self.sql.reap_waits))).await?.rows_affected();
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }
}
