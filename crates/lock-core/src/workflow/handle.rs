//! [`WorkflowLockHandle`]: a held workflow lock and its watchdog, which refreshes the lease a
//! third into its trusted part and fires `lost()` a margin before the lease could end, also
//! while a refresh hangs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::WorkflowConfig;
use crate::error::{LockError, Result};
use crate::lease::{FencingToken, Lease};
use crate::provider::LockProvider;

#[derive(Debug)]
struct Shared {
    provider: Arc<dyn LockProvider>,
    key: Arc<str>,
    owner: Arc<str>,
    /// Conservative local end of the lease and the TTL refreshes use; moved by every refresh.
    lease: Mutex<(Instant, Duration)>,
    /// [`WorkflowConfig::lost_margin`].
    lost_margin: Option<Duration>,
    lost: CancellationToken,
    /// Stops the watchdog (unlock, drop).
    stop: CancellationToken,
    /// Wakes the watchdog after a manual refresh moved the deadline.
    moved: Notify,
}

impl Shared {
    fn lease(&self) -> (Instant, Duration) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_lease(&self, valid_until: Instant, ttl: Duration) {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = (valid_until, ttl);
    }

    /// The safety margin for a lease of `ttl` (see the [module docs](crate::workflow)).
    fn margin(&self, ttl: Duration) -> Duration {
        let margin = self.lost_margin.unwrap_or_else(|| {
            let request = self.provider.request_timeout().unwrap_or_default();
            (ttl / 10).max(request.saturating_mul(2))
        });
        margin.min(ttl / 2)
    }

    /// The instant the lease stops being trusted: its safety margin before `valid_until`.
    fn trusted_until(&self) -> Instant {
        let (valid_until, ttl) = self.lease();
        valid_until.checked_sub(self.margin(ttl)).unwrap_or(valid_until)
    }
}

/// Releases `owner`'s hold on `key` in a task of its own, retrying a failing server with
/// backoff for as long as the lease could last. Owner-checked, so it never touches another
/// holder's lock. Without a runtime nothing can run it: the lock then expires with its TTL.
pub(super) fn release_in_background(
    provider: Arc<dyn LockProvider>,
    key: Arc<str>,
    owner: Arc<str>,
    ttl: Duration,
) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(key = &*key, owner = &*owner, "no runtime to release a lock; it expires with its TTL");
        return;
    };
    rt.spawn(async move {
        let give_up = Instant::now() + ttl;
        let mut pause = Duration::from_millis(50);
        loop {
            match provider.unlock(&key, &owner).await {
                Ok(()) => return,
                Err(LockError::NotHeld { .. } | LockError::NotOwner { .. } | LockError::LeaseLost { .. }) => {
                    return
                }
                Err(e) if e.is_retryable() && Instant::now() + pause < give_up => {
                    tracing::debug!(key = &*key, error = %e, ?pause, "background release failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(key = &*key, owner = &*owner, error = %e, "background release failed");
                    return;
                }
            }
        }
    });
}

/// A held workflow lock, refreshed in the background until it is unlocked or dropped.
#[derive(Debug)]
pub struct WorkflowLockHandle {
    shared: Arc<Shared>,
    token: FencingToken,
    execution_id: Option<String>,
    pub(super) template_id: Option<String>,
    acquired_at: Instant,
    released: bool,
}

impl WorkflowLockHandle {
    pub(super) fn start(
        provider: Arc<dyn LockProvider>,
        lease: Lease,
        ttl: Duration,
        config: &WorkflowConfig,
        execution_id: Option<String>,
        template_id: Option<String>,
    ) -> Self {
        let auto_refresh = config.auto_refresh;
        let shared = Arc::new(Shared {
            provider,
            key: lease.key.clone(),
            owner: lease.owner.clone(),
            lease: Mutex::new((lease.valid_until, ttl)),
            lost_margin: config.lost_margin,
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
            moved: Notify::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(watchdog(shared.clone(), auto_refresh));
        }
        WorkflowLockHandle {
            shared,
            token: lease.token,
            execution_id,
            template_id,
            acquired_at: Instant::now(),
            released: false,
        }
    }

    /// Releases the lock. Stops the watchdog first.
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        let s = &self.shared;
        s.stop.cancel();
        let outcome = s.provider.unlock(&s.key, &s.owner).await;
        tracing::info!(
            provider = s.provider.name(),
            key = &*s.key,
            owner = &*s.owner,
            hold_us = self.acquired_at.elapsed().as_micros() as u64,
            outcome = if outcome.is_ok() { "released" } else { "error" },
            "workflow lock released"
        );
        outcome
    }

    /// Extends the lease to `ttl` from now (and makes `ttl` the watchdog's TTL). A final
    /// failure (not retryable) fires the [`lost`](Self::lost) signal.
    pub async fn refresh(&self, ttl: Duration) -> Result<()> {
        let s = &self.shared;
        match s.provider.refresh_lock(&s.key, &s.owner, ttl).await {
            Ok(lease) => {
                s.set_lease(lease.valid_until, ttl);
                s.moved.notify_one();
                Ok(())
            }
            Err(e) => {
                if !e.is_retryable() {
                    s.lost.cancel();
                }
                Err(e)
            }
        }
    }

    /// The locked key.
    pub fn lock_key(&self) -> &str {
        &self.shared.key
    }

    /// The owner id this handle holds the lock as.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// The execution id, for an execution lock.
    pub fn execution_id(&self) -> Option<&str> {
        self.execution_id.as_deref()
    }

    /// The template id, for a template lock (also for a template slot).
    pub fn template_id(&self) -> Option<&str> {
        self.template_id.as_deref()
    }

    /// The fencing token of this acquisition: pass it to every write the lock protects.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// Cancelled when the lease can no longer be trusted (see the [module docs](crate::workflow)).
    pub fn lost(&self) -> &CancellationToken {
        &self.shared.lost
    }

    /// `true` once the [`lost`](Self::lost) signal fired.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.is_cancelled()
    }

    /// The conservative local deadline of the lease.
    pub fn valid_until(&self) -> Instant {
        self.shared.lease().0
    }

    /// The instant [`lost`](Self::lost) fires unless a refresh moves it: the safety margin
    /// before [`valid_until`](Self::valid_until).
    pub fn trusted_until(&self) -> Instant {
        self.shared.trusted_until()
    }
}

impl Drop for WorkflowLockHandle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if self.released {
            return;
        }
        let s = self.shared.clone();
        tracing::warn!(
            key = &*s.key,
            owner = &*s.owner,
            "workflow lock handle dropped without unlock; releasing in the background"
        );
        let ttl = s.lease().1;
        release_in_background(s.provider.clone(), s.key.clone(), s.owner.clone(), ttl);
    }
}

/// Refreshes a third of the way into the lease's trusted part (when `auto_refresh`), leaving
/// the other two thirds for the refresh and its retries, and fires `lost` when the lease cannot
/// be kept:
/// at the latest when it comes within its safety margin of `valid_until`, also while a
/// refresh is still waiting for its answer.
async fn watchdog(s: Arc<Shared>, auto_refresh: bool) {
    let mut retry_at: Option<Instant> = None;
    loop {
        let (valid_until, ttl) = s.lease();
        let trusted_until = s.trusted_until();
        // A third into the trusted window (TTL less margin) that began with the last refresh.
        let window = ttl.saturating_sub(s.margin(ttl));
        let due = retry_at.unwrap_or_else(|| {
            valid_until.checked_sub(ttl).map_or(valid_until, |granted| granted + window / 3)
        });
        let next = if auto_refresh { due.min(trusted_until) } else { trusted_until };
        tokio::select! {
            _ = s.stop.cancelled() => return,
            _ = s.moved.notified() => { retry_at = None; continue; }
            _ = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= s.trusted_until() {
            tracing::warn!(
                key = &*s.key,
                owner = &*s.owner,
                "lease reached its safety margin without a successful refresh"
            );
            s.lost.cancel();
            return;
        }
        if !auto_refresh {
            continue;
        }
        let outcome = tokio::select! {
            _ = s.stop.cancelled() => return,
            r = s.provider.refresh_lock(&s.key, &s.owner, ttl) => r,
            // A refresh that answers after this could not be acted on in time anyway.
            _ = tokio::time::sleep_until(trusted_until) => {
                if Instant::now() >= s.trusted_until() {
                    tracing::warn!(key = &*s.key, owner = &*s.owner, "lease refresh unanswered at the safety margin; lease lost");
                    s.lost.cancel();
                    return;
                }
                // A manual refresh moved the deadline meanwhile.
                continue;
            }
        };
        match outcome {
            Ok(lease) => {
                s.set_lease(lease.valid_until, ttl);
                retry_at = None;
                tracing::debug!(key = &*s.key, "lease refreshed by the watchdog");
            }
            Err(e) if e.is_retryable() => {
                let left = s.trusted_until().saturating_duration_since(Instant::now());
                let pause = (left / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
                tracing::warn!(key = &*s.key, error = %e, ?pause, "lease refresh failed; retrying");
                retry_at = Some(Instant::now() + pause);
            }
            Err(e) => {
                tracing::warn!(key = &*s.key, owner = &*s.owner, error = %e, "lease lost");
                s.lost.cancel();
                return;
            }
        }
    }
}
