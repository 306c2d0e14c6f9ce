//! # lock-mysql
//!
//! The MySQL / MariaDB backend of distlock, on a `sqlx::MySqlPool`: the original design's
//! default provider, for teams that already run MySQL and want no extra component. Use it
//! through the `distlock` facade (feature `mysql`).
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! use lock_core::{LockOptions, LockProvider};
//! use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
//!
//! let locks = MySqlLockProvider::connect("mysql://root@127.0.0.1:3306/test", MySqlLockConfig::default()).await?;
//! let lease = locks.lock(&LockOptions::new("workflow:execution:42", "worker-1")).await?;
//! locks.unlock(&lease.key, &lease.owner).await?;
//! # Ok(()) }
//! ```
//!
//! ## The table
//!
//! Created on start (or by [`MySqlLockProvider::migrate`]); the name comes from
//! [`MySqlLockConfig::table`] (default `distributed_locks`) and must be a plain identifier
//! (ASCII letters, digits, `_`), anything else is `InvalidArgument`:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `distributed_locks` (
//!   lock_key    VARBINARY(255) NOT NULL,          -- the key, compared byte for byte
//!   id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
//!   owner       VARBINARY(255) NOT NULL,
//!   depth       INT UNSIGNED NOT NULL,            -- reentry depth
//!   generation  INT UNSIGNED NOT NULL DEFAULT 0,  -- take-overs of this row
//!   last_op     TINYINT UNSIGNED NOT NULL DEFAULT 5,
//!   waits       BIGINT UNSIGNED NOT NULL DEFAULT 0, -- busy attempts seen (contention)
//!   acquired_at DATETIME(6) NOT NULL,
//!   expires_at  DATETIME(6) NOT NULL,             -- the lease ends here, by the server's clock
//!   PRIMARY KEY (lock_key), UNIQUE KEY (id)
//! ) ENGINE=InnoDB
//! ```
//!
//! ## How it works
//!
//! - **Server clock**: every comparison uses `UTC_TIMESTAMP(6)` on the server; the client's
//!   clock only bounds `Lease::valid_until` conservatively. UTC keeps time-zone changes out.
//! - **Acquire decides in one statement.** A free key is taken by a plain `INSERT`. When the
//!   key has a row, `INSERT ... ON DUPLICATE KEY UPDATE` takes over an expired lease,
//!   re-enters the owner's live lock, or reports busy, atomically under the row lock (one
//!   statement on retries and on re-entries through the same provider, which remembers what it
//!   holds; two when it first meets the duplicate key). A re-entry adds one read for its depth.
//! - **Release and refresh compare the owner in the statement that acts** (`... WHERE owner = ?
//!   AND expires_at > UTC_TIMESTAMP(6)`), so a holder whose lease ran out can never touch the
//!   new holder's lock. Releasing the last level is one `DELETE` (the next acquisition is then
//!   a plain insert, exactly the raw INSERT+DELETE pattern); releasing a nested level is an
//!   `UPDATE` of the depth, tried only when the `DELETE` found the depth above one. Refresh is
//!   one `UPDATE`, followed by a read of the lease it reports.
//! - **Fencing token** = `(id << 16) | generation`: `id` is the row's `AUTO_INCREMENT` value
//!   (always larger for a newer row, and persisted by InnoDB across restarts on MariaDB
//!   10.2.4+ and MySQL 8), `generation` counts take-overs of the same row. A row is replaced
//!   after 65,535 take-overs of expired leases, so tokens strictly increase per key and are
//!   never reused, also across release, expiry and cleanup. (`TRUNCATE` or rebuilding the table resets
//!   `AUTO_INCREMENT`: don't.)
//! - **Cleanup**: a release deletes its row; an acquisition takes over an expired row in place
//!   (counted as `expired_taken_over`); a background reaper deletes rows whose lease expired
//!   more than [`MySqlLockConfig::reap_grace`] ago (counted as `rows_reaped`).
//! - **No connection holds a lock**: unlike `GET_LOCK`, a lock lives in a row, so pooled
//!   connections can die or be reused freely; a waiter holds no connection while it sleeps.
//! - **Waiting** uses the shared loop of `lock_core::wait`: a release by the same provider
//!   wakes one local waiter of that key at once; releases by other processes are noticed by
//!   the jittered backoff polling (the database cannot notify). Deadlocks (1213) and
//!   lock-wait timeouts (1205) are retried inside the backend; lost connections surface as
//!   retryable `Unavailable`.
//! - **Cancel safety**: each attempt runs detached; if the caller is gone when it acquired,
//!   the acquisition is undone by owner and fencing token.
//!
//! The statements use only syntax common to MariaDB 10.5+ and MySQL 8. They rely on
//! `ON DUPLICATE KEY UPDATE` assigning left to right, which MariaDB's
//! `SIMULTANEOUS_ASSIGNMENT` sql_mode changes; the provider refuses to start under it.

mod errors;
mod provider;
mod table;

pub use provider::{CleanupStats, MySqlLockConfig, MySqlLockProvider};
/// The pool type the provider runs on, re-exported so callers need no direct sqlx dependency.
pub use sqlx::mysql::MySqlPool;
pub use table::{TableName, DEFAULT_TABLE, MAX_TABLE_NAME_LEN};
