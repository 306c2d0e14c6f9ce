//! The [`LockBackend`] impl of [`EtcdLockProvider`]: each method delegates to the protocol
//! modules. No protocol here, and no input or closed checks: lock-core's checks layer applies
//! both before any of these is called.

use std::time::Duration;

use lock_core::raw::{Gate, LockBackend};
use lock_core::{Capabilities, Health, Lease, LockInfo, LockOptions, Result, WaitInfo};

use crate::error::NAME;
use crate::provider::EtcdLockProvider;
use crate::takeback::BACKGROUND_TIMEOUT_FLOOR;

impl LockBackend for EtcdLockProvider {
    const NAME: &'static str = NAME;

    fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    fn command_timeout(&self) -> Option<Duration> {
        Some(self.inner.request_timeout)
    }

    fn promises(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            fencing: true,
            wakes_waiters: true,
            fifo: true,
            distributed: true,
            server_clock: true,
            durable: true,
        }
    }

    async fn acquire(&self, opts: &LockOptions) -> Result<Lease> {
        self.inner.lock(opts).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        self.inner.release(key, owner, None).await
    }

    async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        self.inner.refresh(key, owner, ttl).await
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        self.inner.is_locked(key).await
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        self.inner.list(prefix).await
    }

    async fn post_wait(&self, wait: &WaitInfo) -> Result<()> {
        self.inner.post_wait(wait).await
    }

    async fn drop_wait(&self, key: &str, _owner: &str, id: u64) -> Result<()> {
        self.inner.drop_wait(key, id).await
    }

    async fn posted_waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        self.inner.waits(prefix).await
    }

    async fn probe(&self) -> Result<Health> {
        self.inner.health().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        self.inner.revoke_spares();
        let waits: Vec<i64> =
            self.inner.wait_leases.lock().unwrap().drain().map(|(_, lease)| lease).collect();
        for lease in waits {
            self.inner.revoke_in_background(lease);
        }
        // Acquisitions still running see the close and end; what they, or callers who left,
        // were granted is taken back, and the leases above are revoked: let that finish,
        // boundedly, so that nothing waits for a lease to run out.
        let bound = self.inner.request_timeout.max(BACKGROUND_TIMEOUT_FLOOR) * 2;
        if !self.inner.inflight.wait_idle(bound).await {
            tracing::debug!(
                left = self.inner.inflight.count(),
                "close: background work unfinished; its entries end with their leases"
            );
        }
        Ok(())
    }
}
