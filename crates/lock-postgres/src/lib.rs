//! # lock-postgres
//!
//! The PostgreSQL backend of distlock, on a `sqlx::PgPool`. Use it through the `distlock`
//! facade (feature `postgres`); `docs/postgres.md` has the whole story.
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! use lock_core::{LockOptions, LockProvider};
//! use lock_postgres::{PgLockConfig, PgLockProvider};
//!
//! let locks = PgLockProvider::connect("postgres://distlock@127.0.0.1:5432/distlock", PgLockConfig::default()).await?;
//! let lease = locks.lock(&LockOptions::new("workflow:execution:42", "worker-1")).await?;
//! locks.unlock(&lease.key, &lease.owner).await?;
//! # Ok(()) }
//! ```
//!
//! ## The table
//!
//! Created on start (or by [`PgLockProvider::migrate`]) in [`PgLockConfig::schema`] (default
//! `public`), named [`PgLockConfig::table_name`] (default `distributed_locks`); both must be
//! plain identifiers (ASCII letters, digits, `_`), anything else is `InvalidArgument`:
//!
//! ```sql
//! CREATE SEQUENCE IF NOT EXISTS "public"."distributed_locks_ids";
//! CREATE TABLE IF NOT EXISTS "public"."distributed_locks" (
//!   lock_key    TEXT COLLATE "C" NOT NULL PRIMARY KEY, -- compared byte for byte
//!   id          BIGINT NOT NULL,             -- from the sequence, when the row was made
//!   generation  BIGINT NOT NULL DEFAULT 0,   -- acquisitions of this row after the first
//!   owner       TEXT COLLATE "C" NOT NULL,   -- '' while the row is free
//!   depth       INTEGER NOT NULL,            -- reentry depth; 0 = released
//!   last_op     SMALLINT NOT NULL,           -- what the last acquire statement did
//!   waiter      TEXT NOT NULL DEFAULT '',    -- tag of the provider to wake on release
//!   other_waiter TEXT NOT NULL DEFAULT '',   -- a second provider known to wait
//!   acquired_at TIMESTAMPTZ NOT NULL,        -- when the holder took it, server clock
//!   expires_at  TIMESTAMPTZ NOT NULL         -- lease end (or release time), server clock
//! ) WITH (fillfactor = 50);
//! ```
//!
//! ## How it works
//!
//! - **Server clock**: every comparison uses `clock_timestamp()`; the client's clock only
//!   bounds `Lease::valid_until` conservatively. The acquire statement reads the clock once
//!   (into the inserted row's `acquired_at`) and judges expiry by that one reading.
//! - **Acquire decides in one statement.** `INSERT ... ON CONFLICT (lock_key) DO UPDATE SET
//!   ... RETURNING` inserts a row for a new key or, under the row lock, takes a released or
//!   expired row, re-enters the owner's live lock, or reports busy with the holder and its TTL
//!   left. Every `SET` reads the row as it was, so the order of assignments does not matter.
//! - **A key this provider used before is taken and released with plain `UPDATE`s**: the next
//!   acquisition of a key whose row this provider freed, with no waiter named in it, first
//!   tries `UPDATE ... WHERE` the row still has the token it was freed with, is free and names
//!   no waiter; the last level of a lock this provider took is first released with `UPDATE ...
//!   WHERE` the row is at depth 1 and names no waiter. Neither returns a row (the new token is
//!   the old one plus one), which makes a cycle about 25 % cheaper for the server than the
//!   upsert and the full release; when one matches no row, the full statement follows.
//! - **A release hands the lock to a waiting call of the same provider** in its own
//!   statement (the waiter becomes the owner, one generation on), so a hand-over costs one
//!   statement instead of a release and an acquisition.
//! - **Release and refresh compare the owner in the statement that acts** (`... WHERE owner = $2
//!   AND expires_at > clock_timestamp()`), so a holder whose lease ran out can never touch the
//!   new holder's lock. A release counts the depth down and, at zero, marks the row free.
//! - **Fencing token** = `(id << 16) + generation`: a new row takes an id from the table's
//!   sequence; each later acquisition of the row adds one to `generation` inside the acquire
//!   statement, so the token follows the key's previous token by construction, whatever order
//!   concurrent statements commit in. A release keeps the row (and so the token); the reaper
//!   deletes a row only once it has been free for [`PgLockConfig::reap_grace`], at least
//!   [`REAP_GRACE_FACTOR`] times the `statement_timeout` every statement runs under, and only
//!   while `generation < 65536`. A statement that drew its id before the old row was created
//!   cannot still be running then, so the next row of the key has a larger id, and its first
//!   token is above every token of the old row.
//! - **Waiting**: the shared wait loop, woken by releases. A release through this provider
//!   wakes its next local waiter at once; a release elsewhere reaches this provider through
//!   LISTEN/NOTIFY on a connection of its own, addressed to the provider whose turn it is (the
//!   row names up to two waiting providers, which take turns; see the `listen` and `waiters`
//!   modules). Between wake-ups, a waiter's attempts are answered from what this provider heard
//!   from the server less than 100 ms ago, so only woken waiters go to the server. Lost
//!   notifications cost latency only: the loop falls back to jittered backoff.
//! - **Cancel safety**: each attempt runs detached; if the caller is gone when it acquired,
//!   the acquisition is undone by owner and fencing token.
//! - **No connection holds a lock**: unlike `pg_advisory_lock`, a lock lives in a row, so
//!   pooled connections can die or be reused freely; a waiter holds no connection while it
//!   sleeps.

mod backend;
mod config;
mod core;
mod error;
mod listen;
mod provider;
mod rows;
mod table;
mod tls;
mod waiters;
mod waits;

pub use config::{CleanupStats, PgLockConfig, REAP_GRACE_FACTOR};
pub use provider::PgLockProvider;
/// The pool type the provider runs on, re-exported so callers need no direct sqlx dependency.
pub use sqlx::postgres::PgPool;
pub use table::{
    TableName, DEFAULT_SCHEMA, DEFAULT_TABLE, IDS_SUFFIX, MAX_SCHEMA_NAME_LEN, MAX_TABLE_NAME_LEN,
    WAITS_SUFFIX,
};
