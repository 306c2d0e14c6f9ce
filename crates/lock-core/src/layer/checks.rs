//! The checks layer: the [`LockProvider`] every [`LockBackend`] is.
//!
//! Applied once here for every backend, so that none can forget it:
//! - input is [validated](crate::validate) before a hook runs, so bad input fails with
//!   [`InvalidArgument`](crate::LockError::InvalidArgument) without touching a server;
//! - after [`close`](LockProvider::close) every call fails with
//!   [`Closed`](crate::LockError::Closed), and the backend's
//!   [`shutdown`](LockBackend::shutdown) runs exactly once, however often `close` is called.
//!
//! The conformance suite's bad-input and `Closed` cases run against each backend as users get
//! it, that is through this layer.

use std::time::Duration;

use async_trait::async_trait;

use crate::deadlock::WaitInfo;
use crate::error::Result;
use crate::lease::{Lease, LockInfo};
use crate::options::LockOptions;
use crate::provider::{Capabilities, Health, LockProvider};
use crate::raw::backend::LockBackend;
use crate::validate;

#[async_trait]
impl<B: LockBackend> LockProvider for B {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn capabilities(&self) -> Capabilities {
        self.promises()
    }

    fn request_timeout(&self) -> Option<Duration> {
        self.command_timeout()
    }

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        opts.validate()?;
        self.gate().check()?;
        self.acquire(opts).await
    }

    async fn try_lock(&self, opts: &LockOptions) -> Result<Lease> {
        // The policy is replaced, but a malformed one is still the caller's bug to hear about.
        opts.validate()?;
        self.gate().check()?;
        self.acquire(&opts.clone().no_wait()).await
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        validate::key(key)?;
        validate::owner(owner)?;
        self.gate().check()?;
        self.release(key, owner).await
    }

    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        validate::key_owner_ttl(key, owner, ttl)?;
        self.gate().check()?;
        self.extend(key, owner, ttl).await
    }

    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        validate::key(key)?;
        self.gate().check()?;
        self.holder(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        validate::prefix(prefix)?;
        self.gate().check()?;
        self.held(prefix).await
    }

    async fn publish_wait(&self, wait: &WaitInfo) -> Result<()> {
        validate::key_owner_ttl(&wait.key, &wait.owner, wait.remaining_ttl)?;
        self.gate().check()?;
        self.post_wait(wait).await
    }

    async fn withdraw_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        validate::key(key)?;
        validate::owner(owner)?;
        self.gate().check()?;
        self.drop_wait(key, owner, id).await
    }

    async fn waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        validate::prefix(prefix)?;
        self.gate().check()?;
        self.posted_waits(prefix).await
    }

    async fn health(&self) -> Result<Health> {
        self.gate().check()?;
        self.probe().await
    }

    async fn close(&self) -> Result<()> {
        if self.gate().close() {
            self.shutdown().await
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::LockError;
    use crate::lease::FencingToken;
    use crate::raw::gate::Gate;

    /// Counts the hook calls that got through, and how often it was shut down.
    #[derive(Debug, Default)]
    struct Counting {
        gate: Gate,
        calls: AtomicU32,
        shutdowns: AtomicU32,
    }

    impl Counting {
        fn hit(&self) {
            self.calls.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl LockBackend for Counting {
        const NAME: &'static str = "counting";

        fn gate(&self) -> &Gate {
            &self.gate
        }

        fn promises(&self) -> Capabilities {
            Capabilities::default()
        }

        async fn acquire(&self, opts: &LockOptions) -> Result<Lease> {
            self.hit();
            let now = tokio::time::Instant::now();
            Ok(Lease::counted_from(now, opts.key.clone(), opts.owner.clone(), FencingToken(1), opts.ttl, 1))
        }

        async fn release(&self, _: &str, _: &str) -> Result<()> {
            self.hit();
            Ok(())
        }

        async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
            self.hit();
            Ok(Lease::counted_from(tokio::time::Instant::now(), key, owner, FencingToken(1), ttl, 1))
        }

        async fn holder(&self, _: &str) -> Result<Option<LockInfo>> {
            self.hit();
            Ok(None)
        }

        async fn held(&self, _: &str) -> Result<Vec<LockInfo>> {
            self.hit();
            Ok(Vec::new())
        }

        async fn post_wait(&self, _: &WaitInfo) -> Result<()> {
            self.hit();
            Ok(())
        }

        async fn drop_wait(&self, _: &str, _: &str, _: u64) -> Result<()> {
            self.hit();
            Ok(())
        }

        async fn posted_waits(&self, _: &str) -> Result<Vec<WaitInfo>> {
            self.hit();
            Ok(Vec::new())
        }

        async fn probe(&self) -> Result<Health> {
            self.hit();
            Ok(Health { backend: Self::NAME, latency: Duration::ZERO, detail: String::new() })
        }

        async fn shutdown(&self) -> Result<()> {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn invalid(r: Result<impl std::fmt::Debug>) -> &'static str {
        match r {
            Err(LockError::InvalidArgument { what, .. }) => what,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_input_never_reaches_a_hook() {
        let b = Counting::default();
        let ttl = Duration::from_secs(1);
        assert_eq!(invalid(b.lock(&LockOptions::new("", "o")).await), "key");
        assert_eq!(invalid(b.try_lock(&LockOptions::new("k", "o").ttl(Duration::ZERO)).await), "ttl");
        assert_eq!(invalid(b.unlock("k", "").await), "owner");
        assert_eq!(invalid(b.refresh_lock("k\0", "o", ttl).await), "key");
        assert_eq!(invalid(b.is_locked("").await), "key");
        assert_eq!(invalid(b.list("p\0").await), "prefix");
        let wait = |key: &str, owner: &str, ttl| crate::deadlock::WaitInfo {
            key: key.into(),
            owner: owner.into(),
            id: 1,
            since: std::time::SystemTime::now(),
            remaining_ttl: ttl,
        };
        assert_eq!(invalid(b.publish_wait(&wait("", "o", ttl)).await), "key");
        assert_eq!(invalid(b.publish_wait(&wait("k", "o", Duration::ZERO)).await), "ttl");
        assert_eq!(invalid(b.withdraw_wait("k", "", 1).await), "owner");
        assert_eq!(invalid(b.waits("p\0").await), "prefix");
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
        b.lock(&LockOptions::new("k", "o")).await.unwrap();
        assert_eq!(b.calls.load(Ordering::SeqCst), 1, "good input goes through");
    }

    #[tokio::test]
    async fn closed_refuses_everything_and_shuts_down_once() {
        let b = Counting::default();
        b.close().await.unwrap();
        b.close().await.unwrap();
        assert_eq!(b.shutdowns.load(Ordering::SeqCst), 1);
        let ttl = Duration::from_secs(1);
        assert!(matches!(b.lock(&LockOptions::new("k", "o")).await, Err(LockError::Closed)));
        assert!(matches!(b.try_lock(&LockOptions::new("k", "o")).await, Err(LockError::Closed)));
        assert!(matches!(b.unlock("k", "o").await, Err(LockError::Closed)));
        assert!(matches!(b.refresh_lock("k", "o", ttl).await, Err(LockError::Closed)));
        assert!(matches!(b.is_locked("k").await, Err(LockError::Closed)));
        assert!(matches!(b.list("").await, Err(LockError::Closed)));
        assert!(matches!(b.health().await, Err(LockError::Closed)));
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
        // Bad input is still named as such after the close: the caller's bug comes first.
        assert_eq!(invalid(b.unlock("", "o").await), "key");
    }
}
