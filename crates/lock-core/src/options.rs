//! What a caller asks for: [`LockOptions`] and its [`WaitPolicy`].

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::validate;

/// Default lease TTL: five minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default number of retries after the first attempt.
pub const DEFAULT_RETRY_COUNT: u32 = 3;
/// Default delay between retries.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Default jitter: each delay varies by up to ±20 %.
pub const DEFAULT_JITTER: f64 = 0.2;

/// How long and how often `lock` tries before it gives up with
/// [`LockError::Timeout`](crate::LockError::Timeout).
///
/// Backends that can be told when a lock is released (the memory backend's queue, Redis
/// pub/sub, etcd watches) try again as soon as that happens; the delays below are then only the
/// fallback and the overall budget. See [`Backoff`](crate::raw::Backoff) for the exact schedule.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WaitPolicy {
    /// A single attempt; fail at once when the lock is busy.
    NoWait,
    /// A fixed number of retries: after the first attempt, up to `retries` more, `delay`
    /// apart. Each delay is scaled by a random factor in `1 ± jitter`. The total wait is
    /// bounded by the sum of the delays; a release wake-up inside a delay costs no retry.
    Retry {
        /// Retries after the first attempt.
        retries: u32,
        /// Delay between attempts.
        delay: Duration,
        /// Fraction (0.0 to 1.0) by which each delay varies at random.
        jitter: f64,
    },
    /// Keep trying until `timeout` has passed since the first attempt. Between attempts the
    /// delay starts at `min_delay`, doubles up to `max_delay`, and is jittered by `jitter`.
    Deadline {
        /// Total time to wait.
        timeout: Duration,
        /// First delay.
        min_delay: Duration,
        /// Largest delay.
        max_delay: Duration,
        /// Fraction (0.0 to 1.0) by which each delay varies at random.
        jitter: f64,
    },
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy::Retry { retries: DEFAULT_RETRY_COUNT, delay: DEFAULT_RETRY_DELAY, jitter: DEFAULT_JITTER }
    }
}

impl WaitPolicy {
    /// `retries` retries `delay` apart with the default jitter.
    pub fn retry(retries: u32, delay: Duration) -> Self {
        WaitPolicy::Retry { retries, delay, jitter: DEFAULT_JITTER }
    }

    /// Wait up to `timeout`, backing off from 5 ms to 250 ms between fallback attempts.
    pub fn deadline(timeout: Duration) -> Self {
        WaitPolicy::Deadline {
            timeout,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(250),
            jitter: 0.5,
        }
    }

    /// The whole time the policy may wait: zero for `NoWait`, the retries times the delay for
    /// `Retry` (the jitter averages out), the timeout for `Deadline`. Constant time, no clock.
    pub fn budget(&self) -> Duration {
        match *self {
            WaitPolicy::NoWait => Duration::ZERO,
            WaitPolicy::Retry { retries, delay, .. } => delay.saturating_mul(retries),
            WaitPolicy::Deadline { timeout, .. } => timeout,
        }
    }

    /// Checks the policy against the [input rules](crate::validate).
    pub fn validate(&self) -> Result<()> {
        match *self {
            WaitPolicy::NoWait => Ok(()),
            // No retries: the delay is never used, so any value will do.
            WaitPolicy::Retry { retries: 0, delay, jitter } => {
                validate::wait("retry delay", delay)?;
                validate::jitter(jitter)
            }
            WaitPolicy::Retry { retries, delay, jitter } => {
                validate::jitter(jitter)?;
                validate::retries(retries)?;
                validate::retry_delay("retry delay", delay)?;
                validate::wait("total retry wait", delay.saturating_mul(retries))
            }
            WaitPolicy::Deadline { timeout, min_delay, max_delay, jitter } => {
                validate::wait("wait timeout", timeout)?;
                validate::retry_delay("min delay", min_delay)?;
                validate::retry_delay("max delay", max_delay)?;
                validate::jitter(jitter)?;
                if min_delay > max_delay {
                    return Err(crate::LockError::invalid(
                        "min delay",
                        format!("{min_delay:?} is larger than max delay {max_delay:?}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A request for a lock.
///
/// ```
/// use std::time::Duration;
/// use lock_core::{LockOptions, WaitPolicy};
///
/// let opts = LockOptions::new("orders:42", "worker-1")
///     .ttl(Duration::from_secs(30))
///     .wait(WaitPolicy::deadline(Duration::from_secs(5)));
/// assert_eq!(&*opts.key, "orders:42");
/// opts.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct LockOptions {
    /// The lock's name. See the [input rules](crate::validate) for what is accepted.
    pub key: Arc<str>,
    /// Who asks. The same owner locking again re-enters (on reentrant backends).
    pub owner: Arc<str>,
    /// How long the lease lasts unless refreshed or released.
    pub ttl: Duration,
    /// How long to wait for a busy lock.
    pub wait: WaitPolicy,
}

impl LockOptions {
    /// Options with the default TTL ([`DEFAULT_TTL`]) and wait policy (3 retries, 1 s apart).
    pub fn new(key: impl Into<Arc<str>>, owner: impl Into<Arc<str>>) -> Self {
        LockOptions { key: key.into(), owner: owner.into(), ttl: DEFAULT_TTL, wait: WaitPolicy::default() }
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the wait policy.
    pub fn wait(mut self, wait: WaitPolicy) -> Self {
        self.wait = wait;
        self
    }

    /// Makes a single attempt (same as `.wait(WaitPolicy::NoWait)`).
    pub fn no_wait(self) -> Self {
        self.wait(WaitPolicy::NoWait)
    }

    /// Checks every field against the [input rules](crate::validate).
    pub fn validate(&self) -> Result<()> {
        validate::key(&self.key)?;
        validate::owner(&self.owner)?;
        validate::ttl(self.ttl)?;
        self.wait.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LockError;

    #[test]
    fn defaults_follow_the_original_design() {
        let o = LockOptions::new("k", "o");
        assert_eq!(o.ttl, Duration::from_secs(300));
        assert_eq!(o.wait, WaitPolicy::Retry { retries: 3, delay: Duration::from_secs(1), jitter: 0.2 });
    }

    #[test]
    fn validate_rejects_bad_wait_policies() {
        let bad = LockOptions::new("k", "o").wait(WaitPolicy::Retry {
            retries: 1,
            delay: Duration::ZERO,
            jitter: 2.0,
        });
        assert!(matches!(bad.validate(), Err(LockError::InvalidArgument { what: "jitter", .. })));
        let bad = LockOptions::new("k", "o").wait(WaitPolicy::Deadline {
            timeout: Duration::from_secs(1),
            min_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(1),
            jitter: 0.0,
        });
        assert!(matches!(bad.validate(), Err(LockError::InvalidArgument { what: "min delay", .. })));
    }

    #[test]
    fn validate_bounds_retry_counts_and_delays() {
        let policy = |retries, delay| LockOptions::new("k", "o").wait(WaitPolicy::retry(retries, delay));
        // Huge counts of zero delays used to pass (their product is zero) and then spun.
        let spin = policy(u32::MAX, Duration::ZERO).validate();
        assert!(matches!(spin, Err(LockError::InvalidArgument { what: "retries", .. })), "{spin:?}");
        let tight = policy(3, Duration::ZERO).validate();
        assert!(matches!(tight, Err(LockError::InvalidArgument { what: "retry delay", .. })), "{tight:?}");
        let tight = policy(3, Duration::from_micros(999)).validate();
        assert!(matches!(tight, Err(LockError::InvalidArgument { what: "retry delay", .. })), "{tight:?}");
        policy(validate::MAX_RETRIES, validate::MIN_RETRY_DELAY).validate().unwrap();
        policy(0, Duration::ZERO).validate().unwrap();
        let zero_min = LockOptions::new("k", "o").wait(WaitPolicy::Deadline {
            timeout: Duration::from_secs(1),
            min_delay: Duration::ZERO,
            max_delay: Duration::from_millis(10),
            jitter: 0.0,
        });
        assert!(matches!(zero_min.validate(), Err(LockError::InvalidArgument { what: "min delay", .. })));
    }
}
