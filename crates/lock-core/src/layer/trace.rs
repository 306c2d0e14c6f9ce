//! [`Traced`]: a provider wrapper that logs every lock operation as a `tracing` event.
//!
//! Fields: `provider`, `op`, `key`, `owner`, `outcome` (`acquired`, `timeout`, `released`,
//! `refreshed`, `not_held`, `not_owner`, `lease_lost`, `invalid`, `unavailable`, `error`,
//! `closed`), `elapsed_us` (for `lock`: the wait), `token` where one was granted. Successful
//! operations log at `DEBUG`, refused ones at `INFO`, failures of the service at `WARN`.
//! The workflow layer adds the hold time when a handle is released.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::{LockError, Result};
use crate::lease::Lease;
use crate::options::LockOptions;
use crate::provider::LockProvider;

/// Logs every operation of the wrapped provider.
#[derive(Debug)]
pub struct Traced {
    inner: Arc<dyn LockProvider>,
}

impl Traced {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LockProvider>) -> Self {
        Traced { inner }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &Arc<dyn LockProvider> {
        &self.inner
    }

    fn log<T>(
        &self,
        op: &'static str,
        key: &str,
        owner: &str,
        started: Instant,
        r: &Result<T>,
        token: Option<u64>,
    ) {
        let elapsed_us = started.elapsed().as_micros() as u64;
        let provider = self.inner.name();
        match r {
            Ok(_) => {
                let outcome = match op {
                    "lock" | "try_lock" => "acquired",
                    "unlock" => "released",
                    _ => "refreshed",
                };
                tracing::debug!(provider, op, key, owner, outcome, elapsed_us, token, "lock operation")
            }
            Err(e) => {
                let outcome = outcome_of(e);
                if e.is_system() {
                    tracing::warn!(provider, op, key, owner, outcome, elapsed_us, error = %e, "lock operation failed")
                } else {
                    tracing::info!(provider, op, key, owner, outcome, elapsed_us, error = %e, "lock operation refused")
                }
            }
        }
    }
}

/// A short name for an error, as logged in the `outcome` field.
pub fn outcome_of(e: &LockError) -> &'static str {
    match e {
        LockError::Timeout { .. } => "timeout",
        LockError::NotHeld { .. } => "not_held",
        LockError::NotOwner { .. } => "not_owner",
        LockError::LeaseLost { .. } => "lease_lost",
        LockError::InvalidArgument { .. } => "invalid",
        LockError::Unavailable { .. } => "unavailable",
        LockError::Closed => "closed",
        LockError::Deadlock { .. } => "deadlock",
        _ => "error",
    }
}

#[async_trait]
impl LockProvider for Traced {
    crate::forward_to_inner!(
        inner;
        name,
        capabilities,
        request_timeout,
        is_locked,
        list,
        publish_wait,
        withdraw_wait,
        waits,
        health,
        close,
    );

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        let started = Instant::now();
        let r = self.inner.lock(opts).await;
        self.log("lock", &opts.key, &opts.owner, started, &r, r.as_ref().ok().map(|l| l.token.0));
        r
    }

    async fn try_lock(&self, opts: &LockOptions) -> Result<Lease> {
        let started = Instant::now();
        let r = self.inner.try_lock(opts).await;
        self.log("try_lock", &opts.key, &opts.owner, started, &r, r.as_ref().ok().map(|l| l.token.0));
        r
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        let started = Instant::now();
        let r = self.inner.unlock(key, owner).await;
        self.log("unlock", key, owner, started, &r, None);
        r
    }

    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let started = Instant::now();
        let r = self.inner.refresh_lock(key, owner, ttl).await;
        self.log("refresh_lock", key, owner, started, &r, r.as_ref().ok().map(|l| l.token.0));
        r
    }
}
