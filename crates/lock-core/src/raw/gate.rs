//! [`Gate`]: a provider's open/closed state, kept one way for every backend.
//!
//! The [checks layer](crate::layer::checks) consults the gate before every operation and closes
//! it on [`close`](crate::LockProvider::close); a backend hands clones of it to whatever waits
//! or runs in the background (wait loops, reapers, keep-alive tasks) so that they stop when
//! the provider closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};

/// Open until closed, once; cheap to clone (clones share the state).
#[derive(Clone, Debug, Default)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    closed: AtomicBool,
    signal: CancellationToken,
}

impl Gate {
    /// An open gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(Closed)` once the gate is closed.
    pub fn check(&self) -> Result<()> {
        if self.is_closed() {
            Err(LockError::Closed)
        } else {
            Ok(())
        }
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Resolves once the gate is closed (at once if it already is). Cancel safe.
    pub async fn closed(&self) {
        self.inner.signal.cancelled().await
    }

    /// A token cancelled when the gate closes, for code that selects on a
    /// [`CancellationToken`].
    pub fn token(&self) -> CancellationToken {
        self.inner.signal.clone()
    }

    /// Closes the gate; `true` the first time only, so that shutdown work runs once.
    pub fn close(&self) -> bool {
        let first = !self.inner.closed.swap(true, Ordering::AcqRel);
        self.inner.signal.cancel();
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closes_once_and_wakes_whoever_waits() {
        let gate = Gate::new();
        gate.check().unwrap();
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.closed().await }
        });
        assert!(gate.close());
        assert!(!gate.close(), "a second close reports that the gate was already closed");
        waiter.await.unwrap();
        assert!(gate.is_closed() && gate.token().is_cancelled());
        assert!(matches!(gate.check(), Err(LockError::Closed)));
    }
}
