//! The [`LockProvider`] trait every backend implements, and what it reports about itself.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::deadlock::WaitInfo;
use crate::error::{LockError, Result};
use crate::lease::{Lease, LockInfo};
use crate::options::LockOptions;

/// What a backend can promise. The conformance suite runs only the cases a backend claims.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The same owner can lock again while holding; each `lock` needs its `unlock`.
    pub reentrant: bool,
    /// Leases carry fencing tokens strictly increasing per key, never reused.
    pub fencing: bool,
    /// A release wakes waiters at once (no need to wait for the next poll).
    pub wakes_waiters: bool,
    /// Waiters get the lock in the order they started waiting.
    pub fifo: bool,
    /// Locks are shared by every process that talks to the same server.
    pub distributed: bool,
    /// Expiry is judged by the server's clock, never the client's.
    pub server_clock: bool,
    /// Held locks and fencing counters survive a restart of the server: after it, a lock is
    /// still its holder's and tokens go on increasing. Without it, a restart frees every
    /// lock at once (their holders hear `LeaseLost` at their next refresh) and tokens may
    /// start over.
    pub durable: bool,
}

fn no_waits(provider: &str) -> LockError {
    LockError::Config(format!("the {provider} provider keeps no waits"))
}

/// A successful health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Backend name.
    pub backend: &'static str,
    /// Round-trip time of the probe.
    pub latency: Duration,
    /// Backend-specific detail (server version, node count, ...).
    pub detail: String,
}

/// A distributed lock service: the contract every backend implements.
///
/// Object safe: hold it as `Arc<dyn LockProvider>` and switch backends without touching
/// business code.
///
/// Error contract (checked by the conformance suite):
/// - invalid input fails with [`InvalidArgument`](crate::LockError::InvalidArgument) before any
///   server is touched;
/// - a busy lock fails with [`Timeout`](crate::LockError::Timeout) once the wait policy ran out;
/// - `unlock` by a non-holder fails with [`NotOwner`](crate::LockError::NotOwner) (someone else
///   holds it; untouched) or [`NotHeld`](crate::LockError::NotHeld) (nobody does); a backend
///   that can tell that the caller's own lease was lost may answer
///   [`LeaseLost`](crate::LockError::LeaseLost) instead of `NotHeld`;
/// - `refresh_lock` by an owner that no longer holds the lock fails with
///   [`LeaseLost`](crate::LockError::LeaseLost);
/// - after [`close`](LockProvider::close) every operation fails with
///   [`Closed`](crate::LockError::Closed).
///
/// ```
/// # async fn demo(provider: std::sync::Arc<dyn lock_core::LockProvider>) -> lock_core::Result<()> {
/// use std::time::Duration;
/// use lock_core::LockOptions;
///
/// let lease = provider.lock(&LockOptions::new("reports:daily", "worker-7").ttl(Duration::from_secs(60))).await?;
/// // ... do the work, passing lease.token to the storage it writes ...
/// provider.unlock(&lease.key, &lease.owner).await?;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait LockProvider: Send + Sync + fmt::Debug + 'static {
    /// Short backend name: `"memory"`, `"mysql"`, `"redis"`, `"etcd"`.
    fn name(&self) -> &'static str;

    /// What this backend promises.
    fn capabilities(&self) -> Capabilities;

    /// The longest one request to the server may go unanswered before it fails with
    /// [`Unavailable`](crate::LockError::Unavailable) (the client's command timeout), where the
    /// backend bounds it. The workflow layer keeps twice this much of a lease in reserve, so
    /// that a refresh that hangs is given up while the lease is still valid.
    fn request_timeout(&self) -> Option<Duration> {
        None
    }

    /// Acquires `opts.key` for `opts.owner`, waiting as `opts.wait` allows.
    ///
    /// Dropping the returned future while it waits leaves no lock behind.
    async fn lock(&self, opts: &LockOptions) -> Result<Lease>;

    /// One attempt, whatever `opts.wait` says: [`Timeout`](crate::LockError::Timeout) at once
    /// when the lock is busy.
    async fn try_lock(&self, opts: &LockOptions) -> Result<Lease> {
        // The policy is replaced, but a malformed one is still the caller's bug to hear about.
        opts.validate()?;
        self.lock(&opts.clone().no_wait()).await
    }

    /// Releases one level of `key` held by `owner` (the lock is free once every nested `lock`
    /// has been unlocked).
    async fn unlock(&self, key: &str, owner: &str) -> Result<()>;

    /// Extends `owner`'s lease on `key` to `ttl` from now, keeping its fencing token.
    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease>;

    /// The current holder of `key`, if any.
    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>>;

    /// Every held lock whose key starts with `prefix` (the empty prefix lists all), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>>;

    /// Publishes, or renews, the wait `wait`: `wait.owner` waits for `wait.key` since
    /// `wait.since`, and the record lives `wait.remaining_ttl` unless published again. Other
    /// processes read it with [`waits`](LockProvider::waits) to find deadlocks (see
    /// [`crate::deadlock`]); the [waiting layer](crate::layer::waiting) calls it for every
    /// `lock` call that waits.
    ///
    /// The default answers [`Config`](LockError::Config): the provider keeps no waits.
    async fn publish_wait(&self, wait: &WaitInfo) -> Result<()> {
        let _ = wait;
        Err(no_waits(self.name()))
    }

    /// Withdraws the wait `id` of `owner` for `key`; withdrawing one that is gone is fine.
    async fn withdraw_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        let _ = (key, owner, id);
        Err(no_waits(self.name()))
    }

    /// Every published, unexpired wait whose key starts with `prefix`, sorted by key, then
    /// `since`.
    async fn waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        let _ = prefix;
        Err(no_waits(self.name()))
    }

    /// Probes the backend; an unhealthy backend answers
    /// [`Unavailable`](crate::LockError::Unavailable).
    async fn health(&self) -> Result<Health>;

    /// Stops background work and refuses further operations. Waiters fail with
    /// [`Closed`](crate::LockError::Closed). Closing twice is fine.
    async fn close(&self) -> Result<()>;
}
