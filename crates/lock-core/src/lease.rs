//! What a caller gets back: [`Lease`] for a held lock, [`LockInfo`] for an inspected one, and
//! the [`FencingToken`] that makes a lock safe to use against a storage system.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A number, strictly increasing per key, issued with every new acquisition.
///
/// Pass it along with every write the lock protects and let the storage reject a token lower
/// than the highest it has seen: a holder that paused past its lease (GC, VM freeze, network
/// partition) is then refused instead of corrupting data. Tokens are never reused, also not
/// after release, expiry or cleanup. Re-entering a lock you already hold keeps its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A held lock, as granted by `lock`, `try_lock` or `refresh_lock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The key.
    pub key: Arc<str>,
    /// The holder.
    pub owner: Arc<str>,
    /// The fencing token of this acquisition.
    pub token: FencingToken,
    /// The TTL the server granted, counted from the server's clock.
    pub ttl: Duration,
    /// A conservative local deadline, never later than the server's expiry: the instant the
    /// request that granted or last renewed the lease was *sent*, plus the TTL the server
    /// counts from then. The server's lease cannot end before it unless clocks run at
    /// different speeds.
    pub valid_until: Instant,
    /// Reentry depth: 1 for a first acquisition, n for the n-th nested one.
    pub depth: u32,
}

impl Lease {
    /// A lease granted by a request sent at `sent`: the server counts `ttl` from a moment after
    /// that, so `sent + ttl` is a deadline the server's expiry cannot precede. Backends build
    /// every lease through this constructor, so that the rule lives in one place.
    pub fn counted_from(
        sent: Instant,
        key: impl Into<Arc<str>>,
        owner: impl Into<Arc<str>>,
        token: FencingToken,
        ttl: Duration,
        depth: u32,
    ) -> Lease {
        Lease { key: key.into(), owner: owner.into(), token, ttl, valid_until: sent + ttl, depth }
    }

    /// Time left on the local conservative deadline (zero when passed).
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// `true` once the local conservative deadline has passed: stop trusting the lock.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.valid_until
    }
}

/// A held lock as seen from outside (by `is_locked`, `list` and the troubleshooting tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// The key.
    pub key: String,
    /// The holder.
    pub owner: String,
    /// The current holder's fencing token.
    pub token: FencingToken,
    /// Time left on the lease, by the server's clock.
    pub remaining_ttl: Duration,
    /// Reentry depth.
    pub depth: u32,
    /// How long the current holder has held the lock: counted from the acquisition that made
    /// it the holder (depth 1). Re-entry and refresh keep that start; a new holder, after a
    /// release or an expiry, starts again. By the server's clock where the backend has one,
    /// like `remaining_ttl` (etcd: the acquiring client's wall clock, see `docs/etcd.md`).
    pub held_for: Duration,
}

impl LockInfo {
    /// `true` when the lock has been held for longer than `d`: the question behind "who holds
    /// locks too long" (`distlock inspect --older-than`).
    pub fn held_longer_than(&self, d: Duration) -> bool {
        self.held_for > d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lease_expires_on_its_local_deadline() {
        let lease =
            Lease::counted_from(Instant::now(), "k", "o", FencingToken(7), Duration::from_secs(10), 1);
        assert!(!lease.is_expired());
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(lease.remaining(), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(lease.is_expired());
        assert_eq!(lease.remaining(), Duration::ZERO);
        assert!(FencingToken(3) < FencingToken(7));
    }

    #[test]
    fn held_longer_than_is_strict() {
        let info = LockInfo {
            key: "k".into(),
            owner: "o".into(),
            token: FencingToken(1),
            remaining_ttl: Duration::from_secs(30),
            depth: 1,
            held_for: Duration::from_secs(300),
        };
        assert!(info.held_longer_than(Duration::from_secs(299)));
        assert!(!info.held_longer_than(Duration::from_secs(300)));
        assert!(!info.held_longer_than(Duration::from_secs(301)));
    }
}
