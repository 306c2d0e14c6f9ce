//! [`MemoryLockProvider`]: the public type, its builder and constructors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::raw::{spawn_reaper, Gate, LockBackend};
use lock_core::Result;

use crate::config::MemoryConfig;
use crate::table::{lock, Inner};

/// Builder for [`MemoryLockProvider`], over a [`MemoryConfig`].
#[derive(Debug, Clone, Default)]
pub struct MemoryLockProviderBuilder {
    config: MemoryConfig,
}

impl MemoryLockProviderBuilder {
    /// Number of independently locked shards (rounded up to a power of two; default 64).
    pub fn shards(mut self, shards: usize) -> Self {
        self.config = self.config.shards(shards);
        self
    }

    /// How often the background reaper removes expired leases (default 5 s); `None` leaves
    /// cleanup to the lazy check on every access.
    pub fn reap_interval(mut self, every: Option<Duration>) -> Self {
        self.config = self.config.reap_interval(every);
        self
    }

    /// Builds the provider. The reaper starts only when called inside a tokio runtime.
    pub fn build(self) -> MemoryLockProvider {
        let config = self.config;
        let inner = Arc::new(Inner {
            shards: (0..config.shards).map(|_| Mutex::default()).collect(),
            hasher: foldhash::quality::RandomState::default(),
            next_token: AtomicU64::new(0),
            next_waiter: AtomicU64::new(0),
            expired_cleaned: AtomicU64::new(0),
            gate: Gate::new(),
            waits: Default::default(),
        });
        let reaper = match (config.reap_interval, tokio::runtime::Handle::try_current()) {
            (Some(every), Ok(_)) => {
                Some(spawn_reaper(Arc::downgrade(&inner), every, |inner: Arc<Inner>| async move {
                    if inner.gate.is_closed() {
                        return false;
                    }
                    let n = inner.reap();
                    if n > 0 {
                        tracing::debug!(backend = MemoryLockProvider::NAME, cleaned = n, "reaper pass");
                    }
                    true
                }))
            }
            _ => None,
        };
        MemoryLockProvider { inner, reaper: Mutex::new(reaper) }
    }
}

/// The in-process lock provider. See the [crate docs](crate) for what it guarantees.
#[derive(Debug)]
pub struct MemoryLockProvider {
    pub(crate) inner: Arc<Inner>,
    pub(crate) reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for MemoryLockProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryLockProvider {
    fn drop(&mut self) {
        if let Some(reaper) = lock(&self.reaper).take() {
            reaper.abort();
        }
    }
}

impl MemoryLockProvider {
    /// A provider with default settings (64 shards, reaper every 5 s).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder to tune shards and the reaper.
    pub fn builder() -> MemoryLockProviderBuilder {
        MemoryLockProviderBuilder::default()
    }

    /// A provider with `config`, checked first ([`InvalidArgument`](lock_core::LockError::InvalidArgument)
    /// names a bad setting).
    pub fn with_config(config: MemoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(MemoryLockProviderBuilder { config }.build())
    }

    /// How many expired leases have been cleaned up so far (lazily or by the reaper).
    pub fn expired_cleaned(&self) -> u64 {
        self.inner.expired_cleaned.load(Ordering::Relaxed)
    }

    /// Runs one reaper pass now and returns how many expired leases it cleaned.
    pub fn reap_expired(&self) -> u64 {
        self.inner.reap()
    }
}
