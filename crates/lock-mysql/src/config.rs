//! [`MySqlLockConfig`]: the provider's settings, with every default in one place.

use std::time::Duration;

use lock_core::{LockError, Result};

use crate::table::{TableName, DEFAULT_TABLE};

/// How many times the longest a statement can run the reaper's grace period must be at least:
/// a freed row outlives, by far, any statement that may still be working on its key.
pub const REAP_GRACE_FACTOR: u32 = 10;

/// Settings of a [`MySqlLockProvider`](crate::MySqlLockProvider).
///
/// Build it from [`Default`] and change the fields you need
/// (`MySqlLockConfig { table: "my_locks".into(), ..Default::default() }`).
#[derive(Debug, Clone)]
pub struct MySqlLockConfig {
    /// Lock table (default `distributed_locks`); validated as a plain identifier.
    pub table: String,
    /// Create the table on start if it is missing (default `true`).
    pub auto_migrate: bool,
    /// Period of the background reaper; `None` disables it (default 30 s).
    pub reap_interval: Option<Duration>,
    /// How long a row stays after its lock was released or expired before the reaper deletes
    /// it (default 10 min). While the row stays, the key's last fencing token stays, and the
    /// next acquisition continues from it. Must be at least [`REAP_GRACE_FACTOR`] times
    /// `command_timeout` (and, on MySQL, times the server's `innodb_lock_wait_timeout`), so
    /// that no statement that started before the row was freed can still be running when it
    /// is deleted.
    pub reap_grace: Duration,
    /// Pool size when the provider builds its own pool from a URL (default 10).
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering `Unavailable` (default 5 s).
    pub acquire_timeout: Duration,
    /// Longest a statement may take (default 5 s). On MariaDB the server aborts and rolls
    /// back a statement that runs longer (`max_statement_time`, and row-lock waits end by
    /// then too); the client gives up a little later. Either way the operation fails with a
    /// retryable `Unavailable`, and an acquisition whose answer was lost is undone when it
    /// completes. See [`MySqlLockProvider::command_timeout`](crate::MySqlLockProvider::command_timeout).
    pub command_timeout: Duration,
}

impl Default for MySqlLockConfig {
    fn default() -> Self {
        MySqlLockConfig {
            table: DEFAULT_TABLE.to_string(),
            auto_migrate: true,
            reap_interval: Some(Duration::from_secs(30)),
            reap_grace: Duration::from_secs(600),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
        }
    }
}

impl MySqlLockConfig {
    /// Checks everything that can be checked without a server; returns the table name.
    pub(crate) fn validate(&self) -> Result<TableName> {
        let table = TableName::new(&self.table)?;
        if self.command_timeout < Duration::from_millis(10)
            || self.command_timeout > Duration::from_secs(3600)
        {
            return Err(LockError::invalid(
                "command_timeout",
                format!("{:?}: must be between 10 ms and 1 h", self.command_timeout),
            ));
        }
        let floor = self.command_timeout * REAP_GRACE_FACTOR;
        if self.reap_grace < floor {
            return Err(LockError::invalid(
                "reap_grace",
                format!(
                    "{:?} is shorter than {REAP_GRACE_FACTOR} x command_timeout ({floor:?}): a freed row could be \
                     deleted while a statement on its key is still running",
                    self.reap_grace
                ),
            ));
        }
        if self.reap_interval.is_some_and(|every| every.is_zero()) {
            return Err(LockError::invalid("reap_interval", "must not be zero"));
        }
        Ok(table)
    }
}

/// How many rows the cleanup has handled so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// Expired leases taken over by an acquisition (lazy cleanup on acquire).
    pub expired_taken_over: u64,
    /// Rows deleted by the reaper (free for longer than the grace period).
    pub rows_reaped: u64,
}
