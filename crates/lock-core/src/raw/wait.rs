//! The shared wait loop: jittered backoff plus release wake-ups.
//!
//! [`Backoff`] turns a [`WaitPolicy`] into the schedule of attempts; every backend and the
//! workflow layer's refresh loop take their delays or their deadline from it.
//! [`acquire_with_backoff`] runs that schedule for the backends that poll (MySQL, Redis) and
//! also tries again the moment the backend's release signal ([`tokio::sync::Notify`]) fires,
//! so a backend that can see releases (a local unlock, Redis pub/sub) never makes its waiters
//! sleep a whole delay, while a lost wake-up only costs latency: the timer still fires.
//! Backends that queue their waiters instead (memory, etcd) wait until
//! [`Backoff::deadline`].

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{LockError, Result};
use crate::lease::Lease;
use crate::options::{LockOptions, WaitPolicy};
use crate::raw::gate::Gate;

/// The outcome of one acquisition attempt.
#[derive(Debug)]
pub enum Attempt {
    /// The lock is ours.
    Acquired(Lease),
    /// Somebody else holds it.
    Busy {
        /// The holder, where the backend can tell.
        holder: Option<String>,
        /// Time left on the holder's lease, where the backend can tell: an attempt right after
        /// it ends beats waiting a whole delay.
        expires_in: Option<Duration>,
    },
}

/// The attempt schedule of a [`WaitPolicy`].
///
/// - `NoWait`: no delay at all.
/// - `Retry { retries, delay, jitter }`: `retries` delays, each `delay * (1 ± jitter)`.
/// - `Deadline { timeout, min_delay, max_delay, jitter }`: delays from `min_delay` doubling to
///   `max_delay`, each jittered, the last one cut so the schedule ends exactly at `timeout`.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: WaitPolicy,
    started: Instant,
    steps: u32,
    next: Duration,
}

fn jittered(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || d.is_zero() {
        return d;
    }
    let factor = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
    d.mul_f64(factor.max(0.0))
}

impl Backoff {
    /// Starts the schedule now.
    pub fn new(policy: &WaitPolicy) -> Self {
        Self::started_at(policy, Instant::now())
    }

    /// A schedule that started at `started`: the time since then counts against a deadline.
    pub fn started_at(policy: &WaitPolicy, started: Instant) -> Self {
        let next = match policy {
            WaitPolicy::Deadline { min_delay, .. } => *min_delay,
            WaitPolicy::Retry { delay, .. } => *delay,
            WaitPolicy::NoWait => Duration::ZERO,
        };
        Backoff { policy: policy.clone(), started, steps: 0, next }
    }

    /// Time since the schedule started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The next delay, or `None` when the budget is spent and the caller should give up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        match self.policy {
            WaitPolicy::NoWait => None,
            WaitPolicy::Retry { retries, delay, jitter } => {
                if self.steps >= retries {
                    return None;
                }
                self.steps += 1;
                Some(jittered(delay, jitter))
            }
            WaitPolicy::Deadline { timeout, max_delay, jitter, .. } => {
                let left = timeout.checked_sub(self.elapsed()).filter(|d| !d.is_zero())?;
                let d = jittered(self.next, jitter).min(left);
                self.next = (self.next * 2).min(max_delay);
                self.steps += 1;
                Some(d)
            }
        }
    }

    /// The instant at which the whole schedule ends: for `Deadline` its timeout, for `Retry`
    /// the retries times the delay (the jitter averages out), for `NoWait` now. Backends that
    /// hand a lock over in a queue (and so never poll) wait until this instant. Constant time,
    /// whatever the retry count.
    pub fn deadline(&self) -> Instant {
        self.started + self.policy.budget()
    }
}

/// Runs `attempt` on the schedule of `opts.wait` until it acquires or the budget is spent.
///
/// `wake`, when given, is the backend's release signal for this key: the loop registers for it
/// *before* each attempt (so a release between a failed attempt and the sleep is never missed)
/// and tries again as soon as it fires. Such extra attempts do not use up the retry budget:
/// they happen inside the current delay. Errors from `attempt` end the loop at once.
///
/// When `gate` closes during a delay the loop ends with [`LockError::Closed`]; an attempt
/// already on its way to the server runs to its end (its outcome is returned).
///
/// On a spent budget the result is [`LockError::Timeout`] with the last seen holder.
pub async fn acquire_with_backoff<F, Fut>(
    opts: &LockOptions,
    gate: &Gate,
    wake: Option<&Notify>,
    attempt: F,
) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    acquire_with_backoff_since(Instant::now(), opts, gate, wake, attempt).await
}

/// [`acquire_with_backoff`] for a call that started at `started`, e.g. with an attempt of its
/// own before the loop: the time since then counts against the policy's deadline, and a
/// [`LockError::Timeout`] reports it as waited.
pub async fn acquire_with_backoff_since<F, Fut>(
    started: Instant,
    opts: &LockOptions,
    gate: &Gate,
    wake: Option<&Notify>,
    mut attempt: F,
) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let mut backoff = Backoff::started_at(&opts.wait, started);
    loop {
        gate.check()?;
        let mut notified = std::pin::pin!(wake.map(Notify::notified));
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        let (holder, expires_in) = match attempt().await? {
            Attempt::Acquired(lease) => return Ok(lease),
            Attempt::Busy { holder, expires_in } => (holder, expires_in),
        };
        let Some(delay) = backoff.next_delay() else {
            return Err(LockError::Timeout { key: opts.key.to_string(), holder, waited: backoff.elapsed() });
        };
        // Try again when the holder's lease runs out if that comes before the delay.
        let delay = match expires_in {
            Some(left) => delay.min(left + Duration::from_millis(1)),
            None => delay,
        };
        let due = Instant::now() + delay;
        // Inside the delay, every wake-up earns a free attempt.
        while let Some(n) = notified.as_mut().as_pin_mut() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                _ = gate.closed() => return Err(LockError::Closed),
                _ = n => {}
            }
            notified.set(wake.map(Notify::notified));
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            if let Attempt::Acquired(lease) = attempt().await? {
                return Ok(lease);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = gate.closed() => return Err(LockError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::FencingToken;
    use std::cell::Cell;
    use std::sync::Arc;

    fn lease() -> Lease {
        Lease::counted_from(Instant::now(), "k", "o", FencingToken(1), Duration::from_secs(1), 1)
    }

    #[test]
    fn retry_schedule_has_exactly_the_retries_within_jitter() {
        let mut b =
            Backoff::new(&WaitPolicy::Retry { retries: 3, delay: Duration::from_millis(100), jitter: 0.2 });
        for _ in 0..3 {
            let d = b.next_delay().unwrap();
            assert!(d >= Duration::from_millis(80) && d <= Duration::from_millis(120), "{d:?}");
        }
        assert_eq!(b.next_delay(), None);
        assert_eq!(Backoff::new(&WaitPolicy::NoWait).next_delay(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_schedule_doubles_and_ends_at_the_timeout() {
        let policy = WaitPolicy::Deadline {
            timeout: Duration::from_millis(100),
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            jitter: 0.0,
        };
        let mut b = Backoff::new(&policy);
        let mut seen = vec![];
        while let Some(d) = b.next_delay() {
            seen.push(d.as_millis());
            tokio::time::advance(d).await;
        }
        assert_eq!(seen, vec![10, 20, 40, 30]);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_is_the_sum_of_the_delays_without_walking_them() {
        let start = Instant::now();
        let many = WaitPolicy::Retry {
            retries: crate::validate::MAX_RETRIES,
            delay: Duration::from_millis(2),
            jitter: 0.5,
        };
        assert_eq!(Backoff::new(&many).deadline(), start + Duration::from_millis(20_000));
        assert_eq!(Backoff::new(&WaitPolicy::NoWait).deadline(), start);
        let policy = WaitPolicy::deadline(Duration::from_secs(3));
        assert_eq!(Backoff::new(&policy).deadline(), start + Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn time_before_the_loop_counts_against_the_deadline() {
        let opts = LockOptions::new("k", "o").wait(WaitPolicy::deadline(Duration::from_secs(3)));
        let started = Instant::now();
        // A first attempt of the caller's own took 2 s before the loop began.
        tokio::time::advance(Duration::from_secs(2)).await;
        let err = acquire_with_backoff_since(started, &opts, &Gate::new(), None, || async {
            Ok(Attempt::Busy { holder: Some("h".into()), expires_in: None })
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, LockError::Timeout { waited, .. } if waited == Duration::from_secs(3)),
            "{err:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3), "the loop used only what was left");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_with_timeout_after_the_budget_and_reports_the_holder() {
        let attempts = Cell::new(0);
        let opts = LockOptions::new("k", "o").wait(WaitPolicy::Retry {
            retries: 2,
            delay: Duration::from_secs(1),
            jitter: 0.0,
        });
        let start = Instant::now();
        let err = acquire_with_backoff(&opts, &Gate::new(), None, || {
            attempts.set(attempts.get() + 1);
            async { Ok(Attempt::Busy { holder: Some("h".into()), expires_in: None }) }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts.get(), 3);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        match err {
            LockError::Timeout { holder, waited, .. } => {
                assert_eq!(holder.as_deref(), Some("h"));
                assert_eq!(waited, Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_retries_at_once_without_spending_a_retry() {
        let notify = Arc::new(Notify::new());
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let opts = LockOptions::new("k", "o").wait(WaitPolicy::Retry {
            retries: 1,
            delay: Duration::from_secs(60),
            jitter: 0.0,
        });
        let n2 = notify.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            n2.notify_waiters();
        });
        let start = Instant::now();
        let a = attempts.clone();
        let got = acquire_with_backoff(&opts, &Gate::new(), Some(&notify), || {
            let n = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    Ok(Attempt::Busy { holder: None, expires_in: None })
                } else {
                    Ok(Attempt::Acquired(lease()))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got.token, FencingToken(1));
        assert_eq!(start.elapsed(), Duration::from_secs(5), "woken, not timed out");
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_expiry_hint_shortens_the_delay() {
        let attempts = Cell::new(0);
        let opts = LockOptions::new("k", "o").wait(WaitPolicy::Retry {
            retries: 1,
            delay: Duration::from_secs(60),
            jitter: 0.0,
        });
        let start = Instant::now();
        acquire_with_backoff(&opts, &Gate::new(), None, || {
            attempts.set(attempts.get() + 1);
            let first = attempts.get() == 1;
            async move {
                Ok(if first {
                    Attempt::Busy { holder: None, expires_in: Some(Duration::from_secs(2)) }
                } else {
                    Attempt::Acquired(lease())
                })
            }
        })
        .await
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn errors_end_the_loop() {
        let opts = LockOptions::new("k", "o").wait(WaitPolicy::retry(5, Duration::from_secs(1)));
        let err = acquire_with_backoff(&opts, &Gate::new(), None, || async {
            Err(LockError::unavailable("x", "down"))
        })
        .await
        .unwrap_err();
        assert!(err.is_system());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closing_gate_ends_the_wait_with_closed() {
        let gate = Gate::new();
        let opts = LockOptions::new("k", "o").wait(WaitPolicy::deadline(Duration::from_secs(600)));
        let closer = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            closer.close();
        });
        let start = Instant::now();
        let err = acquire_with_backoff(&opts, &gate, None, || async {
            Ok(Attempt::Busy { holder: None, expires_in: None })
        })
        .await
        .unwrap_err();
        assert!(matches!(err, LockError::Closed), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(600), "the wait ended at the close, not the deadline");
    }
}
