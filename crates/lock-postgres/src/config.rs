//! [`PgLockConfig`]: the provider's settings, with every default in one place.

use std::time::Duration;

use lock_core::tls::{redact_url, TlsFiles};
use lock_core::{LockError, Result};
use serde::{Deserialize, Serialize};

use crate::table::{TableName, DEFAULT_SCHEMA, DEFAULT_TABLE};

/// How many times the longest a statement can run the reaper's grace period must be at least:
/// a freed row outlives, by far, any statement that may still be working on its key.
pub const REAP_GRACE_FACTOR: u32 = 10;

/// Settings of a [`PgLockProvider`](crate::PgLockProvider), with every default.
///
/// Build it from [`Default`] and the setters, or load it with serde (TOML keys are the field
/// names; durations in humantime form, `"30s"`):
///
/// ```
/// use std::time::Duration;
/// use lock_postgres::PgLockConfig;
///
/// let config = PgLockConfig::default().table_name("my_locks").statement_timeout(Duration::from_secs(2));
/// assert_eq!(config.table_name, "my_locks");
/// ```
///
/// TLS (feature `tls`): either in the URL, as libpq spells it
/// (`postgres://app:pw@db.internal/app?sslmode=verify-full&sslrootcert=/etc/ssl/pg/ca.pem`,
/// also `sslcert`, `sslkey`), or in the `tls` table:
///
/// ```toml
/// url = "postgres://app:pw@db.internal/app"
/// [tls]                                  # verify the server (verify-full unless the URL sets sslmode)
/// ca = "/etc/ssl/pg/ca.pem"              # else the system's trust store
/// cert = "/etc/ssl/pg/client.pem"        # with key, for `cert` authentication
/// key = "/etc/ssl/pg/client-key.pem"
/// ```
///
/// `Debug` shows the URL with its password replaced by `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PgLockConfig {
    /// Where [`PgLockProvider::open`](crate::PgLockProvider::open) connects
    /// (`postgres://user:pass@host/db`) when the application hands in no pool of its own.
    pub url: Option<String>,
    /// Schema of the lock table (default `public`); validated as a plain identifier.
    pub schema: String,
    /// Lock table (default `distributed_locks`); validated as a plain identifier of at most
    /// [`MAX_TABLE_NAME_LEN`](crate::MAX_TABLE_NAME_LEN) bytes. Its name is also the
    /// LISTEN/NOTIFY channel of its releases.
    pub table_name: String,
    /// Create the table on start if it is missing (default `true`).
    pub auto_migrate: bool,
    /// Period of the background reaper; `None` disables it (default 30 s).
    #[serde(with = "humantime_serde")]
    pub reap_interval: Option<Duration>,
    /// How long a row stays after its lock was released or expired before the reaper deletes
    /// it (default 10 min). While the row stays, the key's last fencing token stays, and the
    /// next acquisition continues from it. Must be at least [`REAP_GRACE_FACTOR`] times
    /// `statement_timeout`, so that no statement that started before the row was freed can
    /// still be running when it is deleted.
    #[serde(with = "humantime_serde")]
    pub reap_grace: Duration,
    /// Pool size when the provider builds its own pool from a URL (default 10). The wake-up
    /// listener has one connection of its own besides.
    pub max_connections: u32,
    /// How long to wait for a pooled connection before answering `Unavailable` (default 5 s).
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Longest a statement may take (default 5 s): the server's `statement_timeout` and
    /// `lock_timeout` on the provider's own connections, so the server aborts and rolls back
    /// a statement that runs longer; the client gives up a little later. Either way the
    /// operation fails with a retryable `Unavailable`, and an acquisition whose answer was lost
    /// is undone when it completes.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Wake waiters of other processes by LISTEN/NOTIFY (default `true`); off, they notice
    /// releases by polling with jittered backoff only.
    pub listen: bool,
    /// TLS from PEM files (feature `tls`) when the provider connects from [`url`](Self::url);
    /// `None`: as the URL says (`sslmode`, default `prefer`). `server_name` is not supported:
    /// the client verifies the host of the URL (`verify-full`) or no name (`sslmode=verify-ca`).
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for PgLockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLockConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("schema", &self.schema)
            .field("table_name", &self.table_name)
            .field("auto_migrate", &self.auto_migrate)
            .field("reap_interval", &self.reap_interval)
            .field("reap_grace", &self.reap_grace)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for PgLockConfig {
    fn default() -> Self {
        PgLockConfig {
            url: None,
            schema: DEFAULT_SCHEMA.to_string(),
            table_name: DEFAULT_TABLE.to_string(),
            auto_migrate: true,
            reap_interval: Some(Duration::from_secs(30)),
            reap_grace: Duration::from_secs(600),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            listen: true,
            tls: None,
        }
    }
}

impl PgLockConfig {
    /// Sets [`tls`](Self::tls).
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// Sets [`url`](Self::url).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Sets [`schema`](Self::schema).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets [`table_name`](Self::table_name).
    pub fn table_name(mut self, table: impl Into<String>) -> Self {
        self.table_name = table.into();
        self
    }

    /// Sets [`auto_migrate`](Self::auto_migrate).
    pub fn auto_migrate(mut self, on: bool) -> Self {
        self.auto_migrate = on;
        self
    }

    /// Sets [`reap_interval`](Self::reap_interval).
    pub fn reap_interval(mut self, every: Option<Duration>) -> Self {
        self.reap_interval = every;
        self
    }

    /// Sets [`reap_grace`](Self::reap_grace).
    pub fn reap_grace(mut self, grace: Duration) -> Self {
        self.reap_grace = grace;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`statement_timeout`](Self::statement_timeout).
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets [`listen`](Self::listen).
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// Checks everything that can be checked without a server; returns the table name.
    pub fn validate(&self) -> Result<TableName> {
        let table = TableName::new(&self.schema, &self.table_name)?;
        if self.statement_timeout < Duration::from_millis(10)
            || self.statement_timeout > Duration::from_secs(3600)
        {
            return Err(LockError::invalid(
                "statement_timeout",
                format!("{:?}: must be between 10 ms and 1 h", self.statement_timeout),
            ));
        }
        let floor = self.statement_timeout * REAP_GRACE_FACTOR;
        if self.reap_grace < floor {
            return Err(LockError::invalid(
                "reap_grace",
                format!(
                    "{:?} is shorter than {REAP_GRACE_FACTOR} x statement_timeout ({floor:?}): a freed row could be \
                     deleted while a statement on its key is still running",
                    self.reap_grace
                ),
            ));
        }
        if self.reap_interval.is_some_and(|every| every.is_zero()) {
            return Err(LockError::invalid("reap_interval", "must not be zero"));
        }
        if self.max_connections == 0 {
            return Err(LockError::invalid("max_connections", "must be at least 1"));
        }
        if let Some(tls) = &self.tls {
            tls.validate("postgres")?;
            if tls.server_name.is_some() {
                return Err(LockError::Config(
                    "postgres: tls.server_name is not supported: connect by the certificate's name, or set \
                     sslmode=verify-ca in the URL to check the CA only"
                        .into(),
                ));
            }
        }
        let url_wants_tls = self.url.as_deref().is_some_and(|u| {
            let u = u.to_ascii_lowercase();
            ["=require", "=verify-ca", "=verify-full"].iter().any(|m| u.contains(m))
        });
        if (self.tls.is_some() || url_wants_tls) && !cfg!(feature = "tls") {
            return Err(LockError::Config(
                "postgres: TLS (sslmode in the URL or a tls table) needs feature `tls` of lock-postgres \
                 (`postgres-tls` of distlock)"
                    .into(),
            ));
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
    /// Of those, rows whose lease had expired without a release.
    pub expired_reaped: u64,
}
