//! # lock-mysql
//!
//! The MySQL / MariaDB backend of distlock, on a `sqlx::MySqlPool`: the
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
//! [`MySqlLockConfig::table_name`] (default `distributed_locks`) and must be a plain identifier
//! (ASCII letters, digits, `_`, at most 64 bytes), anything else is `InvalidArgument`:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `distributed_locks` (
//!   lock_key    VARBINARY(255) NOT NULL,          -- the key, compared byte for byte
//!   id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
//!   owner       VARBINARY(255) NOT NULL,          -- '' while the row is free
//!   depth       INT UNSIGNED NOT NULL,            -- reentry depth; 0 = released
//!   generation  BIGINT UNSIGNED NOT NULL DEFAULT 0, -- acquisitions of this row after the first
//!   last_op     TINYINT UNSIGNED NOT NULL DEFAULT 5,
//!   waits       BIGINT UNSIGNED NOT NULL DEFAULT 0, -- busy attempts seen (contention)
//!   acquired_at DATETIME(6) NOT NULL,             -- when the holder took it (depth 1), server clock
//!   expires_at  DATETIME(6) NOT NULL,             -- lease end (or release time), server clock
//!   PRIMARY KEY (lock_key), UNIQUE KEY `id` (id)
//! ) ENGINE=InnoDB
//! ```
//!
//! ## How it works
//!
//! - **Server clock**: every comparison uses `UTC_TIMESTAMP(6)` on the server; the client's
//!   clock only bounds `Lease::valid_until` conservatively. UTC keeps time-zone changes out.
//!   `acquired_at` is set by the acquisition that makes a new holder and kept by re-entry and
//!   refresh; `LockInfo::held_for` is the server's `UTC_TIMESTAMP(6)` minus it.
//! - **Acquire decides in one statement.** `INSERT ... ON DUPLICATE KEY UPDATE` inserts a row
//!   for a new key, or, under the row lock, takes a released or expired row, re-enters the
//!   owner's live lock, or reports busy. A re-entry adds one read for its depth; if only that
//!   read fails, the committed re-entry is still reported (with depth 2, the least it can be),
//!   never as an error. A key this provider's own release freed is first tried with a plain
//!   `UPDATE` of the free row (the same generation step, cheaper for the server); if the row
//!   is no longer free, the upsert follows.
//! - **Release and refresh compare the owner in the statement that acts** (`... WHERE owner = ?
//!   AND expires_at > UTC_TIMESTAMP(6)`), so a holder whose lease ran out can never touch the
//!   new holder's lock. A release is one `UPDATE` that counts the depth down and, at zero,
//!   marks the row free (no owner, `expires_at` = now): concurrent releases of one owner each
//!   remove exactly one level. Refresh is one `UPDATE`, followed by a read of the depth.
//! - **Fencing token** = `(id << 16) + generation`: a new row takes its `AUTO_INCREMENT` id;
//!   each later acquisition of the row adds one to `generation` inside the acquire statement,
//!   so the token follows the key's previous token by construction. A release keeps the row
//!   (and so the token); the reaper deletes a row only once it has been free for
//!   [`MySqlLockConfig::reap_grace`], at least [`REAP_GRACE_FACTOR`] times the longest a
//!   statement can run, and only while `generation < 65536`. A statement that drew its id
//!   before the old row was created cannot still be running then, so the next row of the key
//!   has a larger id, and its first token, `id << 16`, is above every token of the old row.
//!   (`TRUNCATE` or rebuilding the table resets `AUTO_INCREMENT`: don't.)
//! - **Statement timeout**: on MariaDB every statement runs under `SET STATEMENT
//!   max_statement_time = command_timeout, ... FOR`, so the server aborts and rolls back a
//!   statement that hangs; the client gives up a little later
//!   ([`MySqlLockProvider::command_timeout`]). Either way the answer is a retryable
//!   `Unavailable`. On MySQL only row-lock waits are bounded on the server
//!   (`innodb_lock_wait_timeout`), and `reap_grace` must cover it.
//! - **Application pools** ([`MySqlLockProvider::from_pool`]): the statements use backquoted
//!   identifiers, no `||`, no `GROUP BY` and only UTC, so the session's time zone, isolation
//!   level and sql_mode do not change them; on MariaDB the statement guard also pins the
//!   sql_mode. A pool with autocommit off is refused with `Config`.
//! - **No connection holds a lock**: unlike `GET_LOCK`, a lock lives in a row, so pooled
//!   connections can die or be reused freely; a waiter holds no connection while it sleeps.
//! - **Waiting** uses the shared loop of `lock_core::wait`: a release by the same provider
//!   wakes one local waiter of that key at once; releases by other processes are noticed by
//!   the jittered backoff polling (the database cannot notify). Deadlocks (1213) and
//!   lock-wait timeouts (1205) are retried inside the backend; lost connections and statement
//!   timeouts surface as retryable `Unavailable`.
//! - **Cancel safety**: each attempt runs detached; if the caller is gone (or stopped waiting
//!   after the command timeout) when it acquired, the acquisition is undone by owner and
//!   fencing token.
//!
//! The statements use only syntax common to MariaDB 10.5+ and MySQL 8. They rely on
//! `ON DUPLICATE KEY UPDATE` and `UPDATE` assigning left to right.

mod backend;
mod config;
mod core;
mod error;
mod freed;
mod provider;
mod seen;
mod table;
mod tls;
mod waits;

pub use config::{CleanupStats, MySqlLockConfig, REAP_GRACE_FACTOR};
pub use provider::MySqlLockProvider;
/// The pool type the provider runs on, re-exported so callers need no direct sqlx dependency.
pub use sqlx::mysql::MySqlPool;
pub use table::{TableName, DEFAULT_TABLE, MAX_TABLE_NAME_LEN, WAITS_SUFFIX};
