//! [`LockBackend`]: what a backend author implements, the server protocol and nothing else.
//!
//! Every `LockBackend` is a [`LockProvider`](crate::LockProvider) through the [checks
//! layer](crate::layer::checks), which validates the input and enforces the closed state
//! before a hook runs. A hook may therefore take for granted that keys, owners, TTLs, prefixes
//! and wait policies satisfy [`validate`](crate::validate) and that the provider was open when
//! the call began.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::deadlock::WaitInfo;
use crate::error::Result;
use crate::lease::{Lease, LockInfo};
use crate::options::LockOptions;
use crate::provider::{Capabilities, Health};
use crate::raw::gate::Gate;

/// The hooks of a lock backend. See the [module docs](self) for what the caller guarantees.
///
/// The hooks return futures that the checks layer awaits inside its own, so a call costs one
/// boxed future (the [`LockProvider`](crate::LockProvider) one), not two; an implementation
/// writes them as `async fn`.
///
/// The hooks carry their own names (not the [`LockProvider`](crate::LockProvider) ones) so
/// that a call on a backend type always resolves to the checked operation.
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// Short backend name, as [`LockProvider::name`](crate::LockProvider::name) reports it.
    const NAME: &'static str;

    /// The provider's open/closed state. The checks layer refuses calls once it is closed and
    /// closes it on `close`; the backend's wait loops and background tasks watch it.
    fn gate(&self) -> &Gate;

    /// What this backend promises ([`LockProvider::capabilities`](crate::LockProvider::capabilities)).
    fn promises(&self) -> Capabilities;

    /// The client's command timeout, where the backend bounds one request
    /// ([`LockProvider::request_timeout`](crate::LockProvider::request_timeout)).
    fn command_timeout(&self) -> Option<Duration> {
        None
    }

    /// Acquires `opts.key` for `opts.owner`, waiting as `opts.wait` allows; fails with
    /// [`Closed`](crate::LockError::Closed) if the gate closes while it waits. Dropping the
    /// future leaves no lock behind.
    fn acquire(&self, opts: &LockOptions) -> impl Future<Output = Result<Lease>> + Send;

    /// Releases one level of `key` held by `owner`.
    fn release(&self, key: &str, owner: &str) -> impl Future<Output = Result<()>> + Send;

    /// Extends `owner`'s lease on `key` to `ttl` from now, keeping its fencing token.
    fn extend(&self, key: &str, owner: &str, ttl: Duration) -> impl Future<Output = Result<Lease>> + Send;

    /// The current holder of `key`, if any.
    fn holder(&self, key: &str) -> impl Future<Output = Result<Option<LockInfo>>> + Send;

    /// Every held lock whose key starts with `prefix`, sorted by key.
    fn held(&self, prefix: &str) -> impl Future<Output = Result<Vec<LockInfo>>> + Send;

    /// Stores or renews the wait `wait` for `wait.remaining_ttl`
    /// ([`LockProvider::publish_wait`](crate::LockProvider::publish_wait)). Keyed by key,
    /// owner and id; waits live beside the locks, never where a lock hook reads them.
    fn post_wait(&self, wait: &WaitInfo) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the wait `id` of `owner` for `key`, if it is there.
    fn drop_wait(&self, key: &str, owner: &str, id: u64) -> impl Future<Output = Result<()>> + Send;

    /// Every unexpired wait whose key starts with `prefix`, sorted by key, then `since`.
    fn posted_waits(&self, prefix: &str) -> impl Future<Output = Result<Vec<WaitInfo>>> + Send;

    /// Probes the server.
    fn probe(&self) -> impl Future<Output = Result<Health>> + Send;

    /// Stops background work and lets go of connections. Called once, after the gate closed.
    fn shutdown(&self) -> impl Future<Output = Result<()>> + Send;
}
