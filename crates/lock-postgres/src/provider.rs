//! [`PgLockProvider`]: the public type, its constructors and what it reports about itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::raw::{spawn_reaper, Gate, Inflight};
use lock_core::{LockError, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::config::{CleanupStats, PgLockConfig, REAP_GRACE_FACTOR};
use crate::core::{bounded, Inner};
use crate::error::{map_err, NAME};
use crate::table::{Statements, TAG_LEN};

/// Distributed locks in a PostgreSQL table. See the [crate docs](crate).
#[derive(Debug)]
pub struct PgLockProvider {
    pub(crate) inner: Arc<Inner>,
    /// The wake-up listener's own pool of one connection (`None` with `listen` off).
    pub(crate) listener_pool: Option<PgPool>,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The session's `statement_timeout` (0: none), read once on start.
async fn session_statement_timeout(pool: &PgPool, timeout: Duration) -> Result<Duration> {
    let probe = async {
        let ms: String =
            sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
                .fetch_one(pool)
                .await
                .map_err(map_err)?;
        let ms: u64 = ms
            .trim()
            .parse()
            .map_err(|_| LockError::backend(NAME, format!("unexpected statement_timeout setting {ms:?}")))?;
        Ok(Duration::from_millis(ms))
    };
    bounded(timeout, probe).await
}

impl PgLockProvider {
    /// A provider on the application's pool. Closing the provider leaves the pool open; the
    /// wake-up listener opens one connection of its own with the pool's connect options.
    ///
    /// The pool's sessions must bound their statements (`statement_timeout`, say with
    /// `options=-c statement_timeout=5s` in the URL): the reaper's grace period rests on
    /// it. A pool without one is refused with [`LockError::Config`], and so is one whose
    /// timeout is so long that `reap_grace` is shorter than [`REAP_GRACE_FACTOR`] times it.
    pub async fn from_pool(pool: PgPool, config: PgLockConfig) -> Result<Self> {
        config.validate()?;
        let client_timeout = client_timeout(&config);
        let session = session_statement_timeout(&pool, client_timeout).await?;
        if session.is_zero() {
            return Err(LockError::Config(
                "the pool's sessions run without statement_timeout: a statement on the lock table could run \
                 unbounded, and the reaper's grace period rests on a bound; set one on the pool's connections \
                 (e.g. `options=-c statement_timeout=5s` in the URL)"
                    .into(),
            ));
        }
        let longest = session.max(config.statement_timeout);
        let listener = (*pool.connect_options()).clone();
        Self::start(pool, listener, false, config, longest).await
    }

    /// A provider as `config` says: with a pool of its own connected to
    /// [`config.url`](PgLockConfig::url). Without a URL the answer is a
    /// [`Config`](LockError::Config) error naming it; an application with a pool of its own
    /// uses [`from_pool`](Self::from_pool).
    pub async fn open(config: PgLockConfig) -> Result<Self> {
        config.validate()?;
        let Some(url) = config.url.clone() else {
            return Err(LockError::Config(
                "the PostgreSQL provider needs a database: hand in the application's pool or set postgres.url".into(),
            ));
        };
        Self::connect(&url, config).await
    }

    /// A provider with a pool of its own, connected to `url` (`postgres://user:pass@host/db`),
    /// whose sessions run with the configured `statement_timeout` and `lock_timeout`.
    pub async fn connect(url: &str, config: PgLockConfig) -> Result<Self> {
        // Bad configuration fails before any connection is made.
        config.validate()?;
        let timeout = format!("{}ms", config.statement_timeout.as_millis());
        let options = crate::tls::connect_options(url, config.tls.as_ref())?
            .options([("statement_timeout", timeout.as_str()), ("lock_timeout", timeout.as_str())])
            .application_name("distlock");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        let longest = config.statement_timeout;
        Self::start(pool, options, true, config, longest).await
    }

    async fn start(
        pool: PgPool,
        listener: PgConnectOptions,
        owns_pool: bool,
        config: PgLockConfig,
        longest_statement: Duration,
    ) -> Result<Self> {
        let table = config.validate()?;
        let min_grace = longest_statement * REAP_GRACE_FACTOR;
        if config.reap_grace < min_grace {
            return Err(LockError::Config(format!(
                "reap_grace {:?} is shorter than {REAP_GRACE_FACTOR} x the longest a statement can run on this \
                 pool ({longest_statement:?}, statement_timeout)",
                config.reap_grace
            )));
        }
        let inner = Arc::new(Inner {
            pool,
            owns_pool,
            sql: Statements::new(&table),
            table,
            tag: format!("{:0width$x}", fastrand::u64(..), width = TAG_LEN),
            client_timeout: client_timeout(&config),
            config,
            min_grace,
            gate: Gate::new(),
            inflight: Inflight::new(),
            waiters: Default::default(),
            rows: Default::default(),
            handovers: AtomicU64::new(0),
            expired_taken_over: AtomicU64::new(0),
            rows_reaped: AtomicU64::new(0),
            expired_reaped: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
        });
        if inner.config.auto_migrate {
            inner.migrate().await?;
        }
        let mut tasks = Vec::new();
        let listener_pool = inner.config.listen.then(|| {
            PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(inner.config.acquire_timeout)
                .connect_lazy_with(listener.application_name("distlock-listener"))
        });
        if let Some(pool) = &listener_pool {
            tasks.push(crate::listen::spawn(&inner, pool.clone()));
        }
        if let Some(every) = inner.config.reap_interval {
            tasks.push(spawn_reaper(Arc::downgrade(&inner), every, |inner: Arc<Inner>| async move {
                if inner.gate.is_closed() {
                    return false;
                }
                match inner.reap(inner.config.reap_grace).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(backend = NAME, rows = n, "reaper deleted free rows"),
                    Err(e) => tracing::warn!(backend = NAME, error = %e, "reaper pass failed"),
                }
                true
            }));
        }
        Ok(PgLockProvider { inner, listener_pool, tasks: Mutex::new(tasks) })
    }

    pub(crate) fn stop_tasks(&self) {
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
    }

    /// Creates the lock table, its id sequence and the waits table if they do not exist
    /// (also done on start unless `auto_migrate` is off).
    pub async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    /// The lock table's name.
    pub fn table(&self) -> &str {
        self.inner.table.table()
    }

    /// The lock table's schema.
    pub fn schema(&self) -> &str {
        self.inner.table.schema()
    }

    /// The pool the provider runs on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Longest an operation waits for the server before it fails with a retryable
    /// `Unavailable`: the configured `statement_timeout` plus a margin (the server gives up
    /// at `statement_timeout`, the client a little later). A lease whose refresh may take this
    /// long should be refreshed at least this much before it ends.
    pub fn command_timeout(&self) -> Duration {
        self.inner.client_timeout
    }

    /// The shortest grace period the reaper uses on this pool (see
    /// [`PgLockConfig::reap_grace`]).
    pub fn min_reap_grace(&self) -> Duration {
        self.inner.min_grace
    }

    /// What cleanup has done so far.
    pub fn cleanup_stats(&self) -> CleanupStats {
        CleanupStats {
            expired_taken_over: self.inner.expired_taken_over.load(Ordering::Relaxed),
            rows_reaped: self.inner.rows_reaped.load(Ordering::Relaxed),
            expired_reaped: self.inner.expired_reaped.load(Ordering::Relaxed),
        }
    }

    /// Statements sent to the server so far (for measuring what an operation costs).
    pub fn statements_sent(&self) -> u64 {
        self.inner.statements.load(Ordering::Relaxed)
    }

    /// Acquire attempts (acquire statements) sent so far: the cost of waiting.
    pub fn acquire_attempts(&self) -> u64 {
        self.inner.attempts.load(Ordering::Relaxed)
    }

    /// Locks a release of this provider handed over to one of its waiting calls, in the
    /// release's own statement (the waiter then holds it without a statement of its own).
    pub fn handovers(&self) -> u64 {
        self.inner.handovers.load(Ordering::Relaxed)
    }

    /// Whether the wake-up listener is connected now (releases in other processes then wake
    /// this provider's waiters).
    pub fn listening(&self) -> bool {
        self.inner.waiters.listening.load(Ordering::Acquire)
    }

    /// Release notifications of other providers that woke a waiter of this one so far.
    pub fn wake_notifications(&self) -> u64 {
        self.inner.notifications.load(Ordering::Relaxed)
    }

    /// Runs one reaper pass now, deleting rows that have been free (released or expired) for
    /// longer than `grace`, but never sooner than [`min_reap_grace`](Self::min_reap_grace);
    /// returns how many it deleted.
    pub async fn reap_now(&self, grace: Duration) -> Result<u64> {
        self.inner.gate.check()?;
        self.inner.reap(grace).await
    }
}

/// How long the client waits for one statement: the server's bound plus a margin.
fn client_timeout(config: &PgLockConfig) -> Duration {
    config.statement_timeout + config.statement_timeout.min(Duration::from_secs(1))
}

impl Drop for PgLockProvider {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}
