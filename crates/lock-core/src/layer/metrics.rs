//! [`Metered`]: a provider wrapper that records every lock operation through the
//! [`metrics`] facade.
//!
//! Nothing is exported from here: the application installs a recorder (an exporter such as
//! `metrics-exporter-prometheus`). Without one, the layer still classifies keys and tracks
//! holds: about 2,300 instructions per acquire/release cycle, 2,800 with the Prometheus
//! recorder (docs/benchmarks.md).
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `distlock_acquire_total` | counter | `provider`, `class`, `outcome` | one per `lock`/`try_lock` call |
//! | `distlock_acquire_wait_seconds` | histogram | `provider`, `class` | time spent in a `lock`/`try_lock` that acquired |
//! | `distlock_hold_seconds` | histogram | `provider`, `class` | from the acquisition that made depth 1 to the unlock of the last level, or to a refresh answered `LeaseLost` |
//! | `distlock_refresh_total` | counter | `provider`, `class`, `outcome` | one per `refresh_lock` call |
//! | `distlock_lease_lost_total` | counter | `provider`, `class` | refreshes answered `LeaseLost` |
//! | `distlock_held_locks` | gauge | `provider`, `class` | locks held through this layer |
//! | `distlock_oldest_hold_start_seconds` | gauge | `provider`, `class` | Unix time (seconds) at which the oldest lock of the class held through this layer was taken; 0 when the class holds none |
//! | `distlock_provider_healthy` | gauge | `provider` | 1 after a successful `health()`, 0 after a failed one |
//!
//! The [waiting layer](crate::layer::waiting) records `distlock_contention_total`,
//! `distlock_waiters` and `distlock_deadlocks_total`, and backends report
//! `distlock_expired_cleaned_total` ([`report_expired_cleaned`](crate::raw::report_expired_cleaned));
//! their names are defined here, with the others.
//!
//! `outcome` of an acquisition is `acquired`, `timeout`, `cancelled` (the future was dropped
//! before it finished) or the error's short name as [`outcome_of`] gives it (`unavailable`,
//! `invalid`, `closed`, ...); of a refresh, `refreshed` or the error's short name.
//!
//! `class` is never the raw key: a [`Classifier`] maps each key to one of a bounded number of
//! classes (see there).
//!
//! Held locks are tracked by (key, owner) with the depth the backend reported. A hold that
//! ends otherwise than by the last unlock or a `LeaseLost` refresh records no hold time,
//! since the layer cannot tell when it ended: an `unlock` answered `NotHeld` or `LeaseLost`,
//! or `close`, only takes it off the gauge. A lease that expired without anyone noticing
//! stays counted (and tracked) until its owner next locks, unlocks or refreshes the key.
//!
//! The oldest hold of a class is kept without scanning the holds: each class keeps its holds
//! in a list in the order they started, so that an acquisition or a release costs O(1), and
//! the gauge is set only when the class's oldest hold changes.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use metrics::{counter, gauge};
use tokio::time::Instant;

use crate::error::{LockError, Result};
use crate::layer::trace::outcome_of;
use crate::lease::Lease;
use crate::options::LockOptions;
use crate::provider::{Health, LockProvider};
use crate::workflow::DEFAULT_WORKFLOW_PREFIX;
use handles::{ClassHandles, HandleCache};
use holds::Holds;

/// Counter: `lock`/`try_lock` calls by `provider`, `class`, `outcome`.
pub const ACQUIRE_TOTAL: &str = "distlock_acquire_total";
/// Histogram: seconds spent in a `lock`/`try_lock` that acquired, by `provider`, `class`.
pub const ACQUIRE_WAIT_SECONDS: &str = "distlock_acquire_wait_seconds";
/// Histogram: seconds a lock was held, by `provider`, `class`.
pub const HOLD_SECONDS: &str = "distlock_hold_seconds";
/// Counter: `refresh_lock` calls by `provider`, `class`, `outcome`.
pub const REFRESH_TOTAL: &str = "distlock_refresh_total";
/// Counter: refreshes answered `LeaseLost`, by `provider`, `class`.
pub const LEASE_LOST_TOTAL: &str = "distlock_lease_lost_total";
/// Gauge: locks held through the layer, by `provider`, `class`.
pub const HELD_LOCKS: &str = "distlock_held_locks";
/// Counter: `lock`/`try_lock` calls whose first attempt found the lock held, by `provider`,
/// `class` (recorded by the [waiting layer](crate::layer::waiting)).
pub const CONTENTION_TOTAL: &str = "distlock_contention_total";
/// Gauge: `lock` calls waiting for a lock held by someone else, by `provider`, `class`
/// (recorded by the [waiting layer](crate::layer::waiting)).
pub const WAITERS: &str = "distlock_waiters";
/// Counter: deadlocks (wait-for cycles) broken at a wait of this process, by `provider`
/// (recorded by the [waiting layer](crate::layer::waiting)).
pub const DEADLOCKS_TOTAL: &str = "distlock_deadlocks_total";
/// Counter: expired leases a backend ended itself, by `provider`: the memory backend's reaper
/// and lazy clean-up, MySQL's acquire statement taking over an expired lease. Redis and etcd
/// expire keys and leases inside the server, unseen by the client: they report none.
pub const EXPIRED_CLEANED_TOTAL: &str = "distlock_expired_cleaned_total";
/// Gauge: 1 after a successful health probe through the layer, 0 after a failed one, by
/// `provider`.
pub const PROVIDER_HEALTHY: &str = "distlock_provider_healthy";
/// Gauge: Unix time in seconds at which the oldest lock of the class currently held through
/// the layer was taken, by `provider`, `class`; 0 when the class holds none. `time() - gauge`
/// is how long that lock has been held.
pub const OLDEST_HOLD_START_SECONDS: &str = "distlock_oldest_hold_start_seconds";

/// The class every key falls into once a classifier has seen its maximum of classes.
pub const OTHER_CLASS: &str = "other";
/// Default maximum of distinct classes per classifier.
pub const DEFAULT_MAX_CLASSES: usize = 64;

/// The kinds of workflow lock, as they appear after the workflow prefix.
const WORKFLOW_KINDS: [&str; 3] = ["execution", "template", "resource"];

/// A function from key to class, for [`Classifier::with_fn`].
pub type ClassFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Maps a key to its `class` label, so that metrics never carry raw keys.
///
/// By default: for a key under the workflow prefix (`distlock:workflow:` unless set with
/// [`workflow_prefix`](Self::workflow_prefix)), the workflow kind (`execution`, `template`,
/// `resource`); otherwise the key up to its first `:` (`reports:daily` is `reports`), and
/// `other` for a key without `:`. [`with_fn`](Self::with_fn) replaces that rule.
///
/// Whatever the rule, at most [`max_classes`](Self::max_classes) distinct classes (default
/// 64) are handed out, first come first served; keys of any further class are counted as
/// `other`.
#[derive(Clone)]
pub struct Classifier {
    workflow_prefix: String,
    rule: Option<ClassFn>,
    max: usize,
    seen: Arc<RwLock<HashSet<Arc<str>>>>,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier {
            workflow_prefix: DEFAULT_WORKFLOW_PREFIX.to_string(),
            rule: None,
            max: DEFAULT_MAX_CLASSES,
            seen: Arc::default(),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("workflow_prefix", &self.workflow_prefix)
            .field("custom_rule", &self.rule.is_some())
            .field("max_classes", &self.max)
            .finish_non_exhaustive()
    }
}

impl Classifier {
    /// The default rule with the workflow locks under `prefix` (the `key_prefix` of the
    /// [`WorkflowConfig`](crate::WorkflowConfig)).
    pub fn workflow_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.workflow_prefix = prefix.into();
        self
    }

    /// At most `max` distinct classes (besides `other`).
    pub fn max_classes(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Classifies with `rule` instead of the default rule (the cap still applies).
    pub fn with_fn(mut self, rule: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.rule = Some(Arc::new(rule));
        self
    }

    /// The class of `key`.
    pub fn classify(&self, key: &str) -> Arc<str> {
        self.capped(&self.rule_class(key))
    }

    /// The class the rule gives `key`, before the cap.
    fn rule_class<'k>(&self, key: &'k str) -> Cow<'k, str> {
        match &self.rule {
            Some(rule) => rule(key).into(),
            None => self.default_rule(key).into(),
        }
    }

    fn default_rule<'k>(&self, key: &'k str) -> &'k str {
        if let Some(rest) = key.strip_prefix(self.workflow_prefix.as_str()) {
            let kind = before_colon(rest).unwrap_or(rest);
            if let Some(kind) = WORKFLOW_KINDS.iter().find(|k| **k == kind) {
                return kind;
            }
        }
        before_colon(key).unwrap_or(OTHER_CLASS)
    }

    fn capped(&self, class: &str) -> Arc<str> {
        {
            let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(known) = seen.get(class) {
                return known.clone();
            }
            if seen.len() >= self.max {
                return Arc::from(OTHER_CLASS);
            }
        }
        if class == OTHER_CLASS {
            return Arc::from(OTHER_CLASS);
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = seen.get(class) {
            return known.clone();
        }
        if seen.len() >= self.max {
            return Arc::from(OTHER_CLASS);
        }
        let class: Arc<str> = Arc::from(class);
        seen.insert(class.clone());
        class
    }
}

/// The part of `s` before its first `:`, if it has one. (A plain scan: keys are short, and
/// this runs on every operation.)
fn before_colon(s: &str) -> Option<&str> {
    s.bytes().position(|b| b == b':').map(|at| &s[..at])
}

/// Records the metrics of every operation of the wrapped provider (see the [module
/// docs](self)).
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn LockProvider>,
    classifier: Classifier,
    holds: Mutex<Holds>,
    handles: HandleCache,
}

/// Records `cancelled` when an acquisition's future is dropped before it finished.
struct Pending<'a> {
    provider: &'static str,
    class: &'a ClassHandles,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            counter!(ACQUIRE_TOTAL, "provider" => self.provider, "class" => self.class.class.clone(), "outcome" => "cancelled")
                .increment(1);
        }
    }
}

impl Metered {
    /// Wraps `inner` with the default [`Classifier`].
    pub fn new(inner: Arc<dyn LockProvider>) -> Self {
        Self::with_classifier(inner, Classifier::default())
    }

    /// Wraps `inner`, labelling keys with `classifier`.
    pub fn with_classifier(inner: Arc<dyn LockProvider>, classifier: Classifier) -> Self {
        Metered { inner, classifier, holds: Mutex::default(), handles: HandleCache::default() }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &Arc<dyn LockProvider> {
        &self.inner
    }

    /// The classifier in use.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The class of `key` with its metric handles.
    fn class_of(&self, key: &str) -> Arc<ClassHandles> {
        self.handles.of_key(self.inner.name(), &self.classifier, key)
    }

    async fn acquire(&self, opts: &LockOptions, try_only: bool) -> Result<Lease> {
        let provider = self.inner.name();
        let class = self.class_of(&opts.key);
        let started = Instant::now();
        let mut pending = Pending { provider, class: &class, done: false };
        let r = if try_only { self.inner.try_lock(opts).await } else { self.inner.lock(opts).await };
        pending.done = true;
        match &r {
            Ok(lease) => {
                let now = Instant::now();
                class.acquired.increment(1);
                class.wait.record(now.saturating_duration_since(started).as_secs_f64());
                self.holds().acquired(&lease.key, &lease.owner, lease.depth, &class, now);
            }
            Err(LockError::Timeout { .. }) => class.timeout.increment(1),
            Err(e) => {
                counter!(ACQUIRE_TOTAL, "provider" => provider, "class" => class.class.clone(), "outcome" => outcome_of(e))
                    .increment(1)
            }
        }
        r
    }
}

#[async_trait]
impl LockProvider for Metered {
    crate::forward_to_inner!(
        inner;
        name,
        capabilities,
        request_timeout,
        is_locked,
        list,
        publish_wait,
        withdraw_wait,
        waits,
    );

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        self.acquire(opts, false).await
    }

    async fn try_lock(&self, opts: &LockOptions) -> Result<Lease> {
        self.acquire(opts, true).await
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        let r = self.inner.unlock(key, owner).await;
        match &r {
            Ok(()) => self.holds().released(key, owner),
            Err(LockError::NotHeld { .. } | LockError::LeaseLost { .. }) => {
                self.holds().ended(key, owner, false)
            }
            Err(_) => {}
        }
        r
    }

    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let r = self.inner.refresh_lock(key, owner, ttl).await;
        match &r {
            Ok(lease) => {
                self.class_of(key).refreshed.increment(1);
                self.holds().refreshed(key, owner, lease.depth);
            }
            Err(e) => {
                let (provider, class) = (self.inner.name(), self.class_of(key).class.clone());
                counter!(REFRESH_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => outcome_of(e))
                    .increment(1);
                if e.is_lease_lost() {
                    counter!(LEASE_LOST_TOTAL, "provider" => provider, "class" => class).increment(1);
                    self.holds().ended(key, owner, true);
                }
            }
        }
        r
    }

    async fn health(&self) -> Result<Health> {
        let r = self.inner.health().await;
        gauge!(PROVIDER_HEALTHY, "provider" => self.inner.name()).set(if r.is_ok() { 1.0 } else { 0.0 });
        r
    }

    async fn close(&self) -> Result<()> {
        let r = self.inner.close().await;
        self.holds().clear();
        r
    }
}

mod handles;
mod holds;

#[cfg(test)]
mod tests;
