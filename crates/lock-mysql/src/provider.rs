//! [`MySqlLockProvider`]: the public type, its constructors and what it reports about itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::raw::{spawn_reaper, Gate, Inflight, Wakers};
use lock_core::{LockError, Result};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::Row;

use crate::config::{CleanupStats, MySqlLockConfig, REAP_GRACE_FACTOR};
use crate::core::{bounded, Inner};
use crate::error::{map_err, NAME};
use crate::table::{statement_guard, Statements};

/// Distributed locks in a MySQL or MariaDB table. See the [crate docs](crate).
#[derive(Debug)]
pub struct MySqlLockProvider {
    pub(crate) inner: Arc<Inner>,
    pub(crate) reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the server and the session of the pool are, checked once on start.
struct ServerFacts {
    mariadb: bool,
    autocommit: bool,
    lock_wait_timeout: Duration,
}

async fn server_facts(pool: &MySqlPool, timeout: Duration) -> Result<ServerFacts> {
    let probe = async {
        let row = sqlx::query(
            "SELECT VERSION(), CAST(@@SESSION.autocommit AS SIGNED), \
             CAST(@@SESSION.innodb_lock_wait_timeout AS SIGNED)",
        )
        .fetch_one(pool)
        .await
        .map_err(map_err)?;
        let version: String = row.try_get(0).map_err(map_err)?;
        let autocommit: i64 = row.try_get(1).map_err(map_err)?;
        let lock_wait: i64 = row.try_get(2).map_err(map_err)?;
        Ok(ServerFacts {
            mariadb: version.to_ascii_lowercase().contains("mariadb"),
            autocommit: autocommit != 0,
            lock_wait_timeout: Duration::from_secs(lock_wait.max(0) as u64),
        })
    };
    bounded(timeout, probe).await
}

impl MySqlLockProvider {
    /// A provider on the application's pool. Closing the
    /// provider leaves the pool open.
    ///
    /// The pool's session settings do not matter (time zone, isolation level, sql_mode),
    /// except `autocommit`: a pool whose connections run with autocommit off is refused with
    /// [`LockError::Config`], since its locks would stay invisible in an open transaction.
    pub async fn from_pool(pool: MySqlPool, config: MySqlLockConfig) -> Result<Self> {
        Self::start(pool, false, config).await
    }

    /// A provider as `config` says: with a pool of its own connected to
    /// [`config.url`](MySqlLockConfig::url). Without a URL the answer is a
    /// [`Config`](LockError::Config) error naming it; an application with a pool of its own
    /// uses [`from_pool`](Self::from_pool).
    pub async fn open(config: MySqlLockConfig) -> Result<Self> {
        config.validate()?;
        let Some(url) = config.url.clone() else {
            return Err(LockError::Config(
                "the MySQL provider needs a database: hand in the application's pool or set mysql.url".into(),
            ));
        };
        Self::connect(&url, config).await
    }

    /// A provider with a pool of its own, connected to `url` (`mysql://user:pass@host/db`).
    pub async fn connect(url: &str, config: MySqlLockConfig) -> Result<Self> {
        // Bad configuration fails before any connection is made.
        config.validate()?;
        let options = crate::tls::connect_options(url, config.tls.as_ref())?;
        let pool = MySqlPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Self::start(pool, true, config).await
    }

    async fn start(pool: MySqlPool, owns_pool: bool, config: MySqlLockConfig) -> Result<Self> {
        let table = config.validate()?;
        let client_timeout = config.command_timeout + config.command_timeout.min(Duration::from_secs(1));
        let facts = server_facts(&pool, client_timeout).await?;
        if !facts.autocommit {
            return Err(LockError::Config(
                "the pool's connections run with autocommit off: every lock would stay in an open transaction, \
                 invisible to others; give the lock provider a pool with autocommit on"
                    .into(),
            ));
        }
        // MariaDB bounds each statement on the server; MySQL only bounds its row-lock waits.
        let (guard, longest_statement) = if facts.mariadb {
            (statement_guard(config.command_timeout), config.command_timeout)
        } else {
            (String::new(), config.command_timeout.max(facts.lock_wait_timeout))
        };
        let min_grace = longest_statement * REAP_GRACE_FACTOR;
        if config.reap_grace < min_grace {
            return Err(LockError::Config(format!(
                "reap_grace {:?} is shorter than {REAP_GRACE_FACTOR} x the longest a statement can run on this \
                 server ({longest_statement:?}, innodb_lock_wait_timeout)",
                config.reap_grace
            )));
        }
        let inner = Arc::new(Inner {
            pool,
            owns_pool,
            sql: Statements::new(&table, &guard),
            config,
            min_grace,
            client_timeout,
            gate: Gate::new(),
            inflight: Inflight::new(),
            wakers: Wakers::new(),
            seen: Default::default(),
            freed: Default::default(),
            expired_taken_over: AtomicU64::new(0),
            rows_reaped: AtomicU64::new(0),
            statements: AtomicU64::new(0),
        });
        if inner.config.auto_migrate {
            inner.migrate().await?;
        }
        let reaper = inner.config.reap_interval.map(|every| {
            spawn_reaper(Arc::downgrade(&inner), every, |inner: Arc<Inner>| async move {
                if inner.gate.is_closed() {
                    return false;
                }
                match inner.reap(inner.config.reap_grace).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(backend = NAME, rows = n, "reaper deleted free rows"),
                    Err(e) => tracing::warn!(backend = NAME, error = %e, "reaper pass failed"),
                }
                true
            })
        });
        Ok(MySqlLockProvider { inner, reaper: Mutex::new(reaper) })
    }

    /// Creates the lock table if it does not exist (also done on start unless
    /// `auto_migrate` is off).
    pub async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    /// The lock table's name.
    pub fn table(&self) -> &str {
        &self.inner.config.table_name
    }

    /// The pool the provider runs on.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// Longest an operation waits for the server before it fails with a retryable
    /// `Unavailable`: the configured `command_timeout` plus a margin (the server gives up at
    /// `command_timeout` on MariaDB, the client a little later). A lease whose refresh may
    /// take this long should be refreshed at least this much before it ends.
    pub fn command_timeout(&self) -> Duration {
        self.inner.client_timeout
    }

    /// The shortest grace period the reaper uses on this server (see
    /// [`MySqlLockConfig::reap_grace`]).
    pub fn min_reap_grace(&self) -> Duration {
        self.inner.min_grace
    }

    /// What cleanup has done so far.
    pub fn cleanup_stats(&self) -> CleanupStats {
        CleanupStats {
            expired_taken_over: self.inner.expired_taken_over.load(Ordering::Relaxed),
            rows_reaped: self.inner.rows_reaped.load(Ordering::Relaxed),
        }
    }

    /// Statements sent to the server so far (for measuring what an acquisition costs).
    pub fn statements_sent(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    /// Runs one reaper pass now, deleting rows that have been free (released or expired) for
    /// longer than `grace`, but never sooner than [`min_reap_grace`](Self::min_reap_grace);
    /// returns how many it deleted.
    pub async fn reap_now(&self, grace: Duration) -> Result<u64> {
        self.inner.gate.check()?;
        self.inner.reap(grace).await
    }
}

impl Drop for MySqlLockProvider {
    fn drop(&mut self) {
        if let Some(r) = self.reaper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
    }
}
