//! The one error type every backend returns.
//!
//! A caller must be able to tell a lock
//! **timeout** (somebody else holds the lock; try later or give up) apart from a **system**
//! error (the lock service misbehaves). [`LockError::is_timeout`] and
//! [`LockError::is_system`] make that split explicit, and [`LockError::is_retryable`] says
//! whether the same call may succeed if simply repeated.

use std::time::Duration;

/// A boxed error from a backend client (sqlx, fred, etcd-client, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`LockError`].
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// Everything that can go wrong with a lock operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held by somebody else and the wait policy ran out.
    ///
    /// This is *not* a failure of the lock service: it is the answer "busy".
    #[error("lock `{key}` is held by {} (gave up after {waited:?})", holder.as_deref().unwrap_or("another owner"))]
    Timeout {
        /// The contended key.
        key: String,
        /// The holder when last seen, where the backend can tell.
        holder: Option<String>,
        /// How long the caller waited in total.
        waited: Duration,
    },

    /// `unlock` of a key that nobody holds (never locked, released or expired).
    #[error("lock `{key}` is not held")]
    NotHeld {
        /// The key.
        key: String,
    },

    /// `unlock` by an owner other than the current holder. The holder's lock is untouched.
    #[error("lock `{key}` is held by {}, not by the caller", holder.as_deref().unwrap_or("another owner"))]
    NotOwner {
        /// The key.
        key: String,
        /// The actual holder, where the backend can tell.
        holder: Option<String>,
    },

    /// The caller believed it held the lock, but its lease is gone (expired, revoked, taken
    /// over after expiry, or lost with the server's state). Work guarded by the lock must stop.
    #[error("lease on lock `{key}` was lost")]
    LeaseLost {
        /// The key.
        key: String,
    },

    /// This `lock` call was chosen to break a deadlock: it waited for `key`, whose holder
    /// waits (directly or through others) for a lock the caller's owner holds. Nothing was
    /// acquired, and what the owner already holds is untouched: release it and start over, so
    /// that the other members of the cycle can proceed (see [`crate::deadlock`]).
    #[error("deadlock broken at this wait for `{key}`: {cycle}")]
    Deadlock {
        /// The key this call waited for.
        key: String,
        /// The cycle, as the detector saw it.
        cycle: crate::deadlock::Cycle,
    },

    /// Bad input, rejected before anything touched a server.
    #[error("invalid {what}: {why}")]
    InvalidArgument {
        /// The offending field, e.g. `"key"` or `"ttl"`.
        what: &'static str,
        /// The rule it broke.
        why: String,
    },

    /// The backend could not be reached or did not answer in time. Retrying may succeed.
    #[error("{backend} backend unavailable: {source}")]
    Unavailable {
        /// Backend name (`"mysql"`, `"redis"`, ...).
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },

    /// The backend answered with an error that retrying will not fix.
    #[error("{backend} backend error: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },

    /// The configuration is unusable (unknown provider, missing URL, disabled feature, ...).
    #[error("configuration error: {0}")]
    Config(String),

    /// The provider was closed; no further operation is possible.
    #[error("lock provider is closed")]
    Closed,
}

impl LockError {
    /// Builds an [`LockError::InvalidArgument`].
    pub fn invalid(what: &'static str, why: impl Into<String>) -> Self {
        LockError::InvalidArgument { what, why: why.into() }
    }

    /// Builds an [`LockError::Unavailable`] from any client error.
    pub fn unavailable(backend: &'static str, source: impl Into<BoxError>) -> Self {
        LockError::Unavailable { backend, source: source.into() }
    }

    /// Builds a [`LockError::Backend`] from any client error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        LockError::Backend { backend, source: source.into() }
    }

    /// `true` for a lock timeout: the lock is busy, the service is fine.
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Timeout { .. })
    }

    /// `true` for a failure of the lock service itself (unreachable or erroring backend).
    pub fn is_system(&self) -> bool {
        matches!(self, LockError::Unavailable { .. } | LockError::Backend { .. })
    }

    /// `true` when repeating the same call later may succeed: the lock was busy
    /// ([`Timeout`](LockError::Timeout)) or the backend was unavailable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LockError::Timeout { .. } | LockError::Unavailable { .. })
    }

    /// `true` when the call was failed to break a deadlock.
    pub fn is_deadlock(&self) -> bool {
        matches!(self, LockError::Deadlock { .. })
    }

    /// `true` when the caller no longer holds a lock it thought it held.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, LockError::LeaseLost { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_is_retryable_but_not_a_system_error() {
        let e = LockError::Timeout { key: "k".into(), holder: Some("a".into()), waited: Duration::ZERO };
        assert!(e.is_timeout() && e.is_retryable() && !e.is_system());
        assert!(e.to_string().contains("held by a"), "{e}");
    }

    #[test]
    fn unavailable_is_retryable_system_error_and_backend_error_is_not_retryable() {
        let u = LockError::unavailable("redis", "connection refused");
        assert!(u.is_system() && u.is_retryable() && !u.is_timeout());
        let b = LockError::backend("redis", "WRONGTYPE");
        assert!(b.is_system() && !b.is_retryable());
    }

    #[test]
    fn lease_lost_and_closed_are_final() {
        assert!(!LockError::LeaseLost { key: "k".into() }.is_retryable());
        assert!(LockError::LeaseLost { key: "k".into() }.is_lease_lost());
        assert!(!LockError::Closed.is_retryable());
    }
}
