//! [`Metered`]: a provider wrapper that records every lock operation through the
//! [`metrics`] facade.
//!
//! Nothing is exported from here: the application installs a recorder (an exporter such as
//! `metrics-exporter-prometheus`). Without one, the layer still classifies keys and tracks
//! holds: about two microseconds per acquire/release cycle, with or without a recorder (docs/benchmarks.md).
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
//! The oldest hold of a class is kept without scanning the holds: each class has an ordered
//! multiset of the start times (wall clock) of its holds, so that an acquisition or a release
//! costs O(log n) in the holds of its class, and the gauge is set only when its oldest start
//! changes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use metrics::{counter, gauge};
use tokio::time::Instant;

use crate::deadlock::WaitInfo;
use crate::error::{LockError, Result};
use crate::layer::trace::outcome_of;
use crate::lease::{Lease, LockInfo};
use crate::options::LockOptions;
use crate::provider::{Capabilities, Health, LockProvider};
use crate::workflow::DEFAULT_WORKFLOW_PREFIX;

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
        let class: std::borrow::Cow<'_, str> = match &self.rule {
            Some(rule) => rule(key).into(),
            None => self.default_rule(key).into(),
        };
        self.capped(&class)
    }

    fn default_rule<'k>(&self, key: &'k str) -> &'k str {
        if let Some(rest) = key.strip_prefix(self.workflow_prefix.as_str()) {
            let kind = rest.split(':').next().unwrap_or_default();
            if let Some(kind) = WORKFLOW_KINDS.iter().find(|k| **k == kind) {
                return kind;
            }
        }
        match key.split_once(':') {
            Some((class, _)) => class,
            None => OTHER_CLASS,
        }
    }

    fn capped(&self, class: &str) -> Arc<str> {
        if let Some(known) = self.seen.read().unwrap_or_else(PoisonError::into_inner).get(class) {
            return known.clone();
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

/// A lock held through the layer.
#[derive(Debug)]
struct Held {
    /// When the hold began, for its hold time.
    since: Instant,
    /// The same moment by the wall clock (since the Unix epoch), for the oldest-hold gauge.
    started: Duration,
    depth: u32,
    class: Arc<str>,
}

/// Records the metrics of every operation of the wrapped provider (see the [module
/// docs](self)).
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn LockProvider>,
    classifier: Classifier,
    held: Mutex<Holds>,
    handles: handles::HandleCache,
}

/// Held locks by key, then owner: looked up by `&str` without allocating.
type HeldMap = HashMap<Arc<str>, HashMap<Arc<str>, Held>>;

/// What the layer knows of the locks held through it.
#[derive(Debug, Default)]
struct Holds {
    by_key: HeldMap,
    /// Per class, the start times of its holds with how many holds started at each: an
    /// ordered multiset whose first entry is the oldest hold.
    starts: HashMap<Arc<str>, BTreeMap<Duration, u32>>,
}

impl Holds {
    /// Adds a hold of `class` started at `at`; `true` when that changed the class's oldest.
    fn add_start(&mut self, class: &Arc<str>, at: Duration) -> bool {
        let starts = self.starts.entry(class.clone()).or_default();
        let changed = starts.first_key_value().is_none_or(|(&oldest, _)| at < oldest);
        *starts.entry(at).or_default() += 1;
        changed
    }

    /// Removes a hold of `class` started at `at`; `true` when that changed the class's oldest.
    fn remove_start(&mut self, class: &str, at: Duration) -> bool {
        let Some(starts) = self.starts.get_mut(class) else { return false };
        let Some(n) = starts.get_mut(&at) else { return false };
        if *n > 1 {
            *n -= 1;
            return false;
        }
        let was_oldest = starts.first_key_value().is_some_and(|(&oldest, _)| oldest == at);
        starts.remove(&at);
        if starts.is_empty() {
            self.starts.remove(class);
        }
        was_oldest
    }

    /// The start of the oldest hold of `class`; zero when it has none.
    fn oldest(&self, class: &str) -> Duration {
        self.starts.get(class).and_then(|s| s.first_key_value()).map_or(Duration::ZERO, |(&at, _)| at)
    }
}

/// The wall clock as a duration since the Unix epoch.
fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Records `cancelled` when an acquisition's future is dropped before it finished.
struct Pending {
    provider: &'static str,
    class: Arc<str>,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            counter!(ACQUIRE_TOTAL, "provider" => self.provider, "class" => self.class.clone(), "outcome" => "cancelled")
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
        Metered { inner, classifier, held: Mutex::default(), handles: Default::default() }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &Arc<dyn LockProvider> {
        &self.inner
    }

    /// The classifier in use.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the tracked hold of (key, owner), if any.
    fn with_held<T>(&self, key: &str, owner: &str, f: impl FnOnce(&mut Held) -> T) -> Option<T> {
        self.held().by_key.get_mut(key).and_then(|owners| owners.get_mut(owner)).map(f)
    }

    /// Sets the oldest-hold gauge of `class` to `oldest` (zero: none). Called with the holds
    /// locked, so that the gauge's last value is the latest state.
    fn set_oldest(&self, class: &Arc<str>, oldest: Duration) {
        self.handles(class).oldest.set(oldest.as_secs_f64());
    }

    fn handles(&self, class: &Arc<str>) -> Arc<handles::ClassHandles> {
        self.handles.get(self.inner.name(), class)
    }

    async fn acquire(&self, opts: &LockOptions, try_only: bool) -> Result<Lease> {
        let provider = self.inner.name();
        let class = self.classifier.classify(&opts.key);
        let started = Instant::now();
        let mut pending = Pending { provider, class: class.clone(), done: false };
        let r = if try_only { self.inner.try_lock(opts).await } else { self.inner.lock(opts).await };
        pending.done = true;
        let h = self.handles(&class);
        match &r {
            Ok(lease) => {
                h.acquired.increment(1);
                h.wait.record(started.elapsed().as_secs_f64());
                self.track(lease, class, &h);
            }
            Err(LockError::Timeout { .. }) => h.timeout.increment(1),
            Err(e) => {
                counter!(ACQUIRE_TOTAL, "provider" => provider, "class" => class, "outcome" => outcome_of(e))
                    .increment(1)
            }
        }
        r
    }

    /// Notes an acquisition: a new hold at depth 1, a deeper level otherwise.
    fn track(&self, lease: &Lease, class: Arc<str>, handles: &handles::ClassHandles) {
        let mut held = self.held();
        let holds = &mut *held;
        let owners = holds.by_key.entry(lease.key.clone()).or_default();
        let (class, ended, started) = match owners.entry(lease.owner.clone()) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let h = e.get_mut();
                h.depth = lease.depth;
                if lease.depth > 1 {
                    return;
                }
                // The previous hold ended unseen (it expired): a new one starts.
                let ended = h.started;
                (h.since, h.started) = (Instant::now(), wall_clock());
                (h.class.clone(), Some(ended), h.started)
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                handles.held.increment(1.0);
                let started = wall_clock();
                e.insert(Held { since: Instant::now(), started, depth: lease.depth, class: class.clone() });
                (class, None, started)
            }
        };
        let removed = ended.is_some_and(|at| holds.remove_start(&class, at));
        if holds.add_start(&class, started) | removed {
            handles.oldest.set(holds.oldest(&class).as_secs_f64());
        }
    }

    /// Stops tracking (key, owner); records the hold time when `ended` says it ended now.
    fn untrack(&self, key: &str, owner: &str, ended: bool) {
        let removed = {
            let mut held = self.held();
            let Some(owners) = held.by_key.get_mut(key) else { return };
            let h = owners.remove(owner);
            if owners.is_empty() {
                held.by_key.remove(key);
            }
            if let Some(h) = h.as_ref().filter(|h| held.remove_start(&h.class, h.started)) {
                self.set_oldest(&h.class, held.oldest(&h.class));
            }
            h
        };
        let Some(h) = removed else { return };
        let handles = self.handles(&h.class);
        handles.held.decrement(1.0);
        if ended {
            handles.hold.record(h.since.elapsed().as_secs_f64());
        }
    }
}

#[async_trait]
impl LockProvider for Metered {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn request_timeout(&self) -> Option<Duration> {
        self.inner.request_timeout()
    }

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        self.acquire(opts, false).await
    }

    async fn try_lock(&self, opts: &LockOptions) -> Result<Lease> {
        self.acquire(opts, true).await
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        let r = self.inner.unlock(key, owner).await;
        match &r {
            Ok(()) => {
                let last = self.with_held(key, owner, |h| {
                    h.depth = h.depth.saturating_sub(1);
                    h.depth == 0
                });
                if last == Some(true) {
                    self.untrack(key, owner, true);
                }
            }
            Err(LockError::NotHeld { .. } | LockError::LeaseLost { .. }) => self.untrack(key, owner, false),
            Err(_) => {}
        }
        r
    }

    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let class = self.classifier.classify(key);
        let r = self.inner.refresh_lock(key, owner, ttl).await;
        let provider = self.inner.name();
        if let Err(e) = &r {
            counter!(REFRESH_TOTAL, "provider" => provider, "class" => class.clone(), "outcome" => outcome_of(e))
                .increment(1);
        }
        match &r {
            Ok(lease) => {
                self.handles(&class).refreshed.increment(1);
                self.with_held(key, owner, |h| h.depth = lease.depth);
            }
            Err(LockError::LeaseLost { .. }) => {
                counter!(LEASE_LOST_TOTAL, "provider" => provider, "class" => class).increment(1);
                self.untrack(key, owner, true);
            }
            Err(_) => {}
        }
        r
    }

    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        self.inner.is_locked(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        self.inner.list(prefix).await
    }

    async fn publish_wait(&self, wait: &WaitInfo) -> Result<()> {
        self.inner.publish_wait(wait).await
    }

    async fn withdraw_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        self.inner.withdraw_wait(key, owner, id).await
    }

    async fn waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        self.inner.waits(prefix).await
    }

    async fn health(&self) -> Result<Health> {
        let r = self.inner.health().await;
        gauge!(PROVIDER_HEALTHY, "provider" => self.inner.name()).set(if r.is_ok() { 1.0 } else { 0.0 });
        r
    }

    async fn close(&self) -> Result<()> {
        let r = self.inner.close().await;
        let dropped: Vec<Held> = {
            let mut held = self.held();
            for (class, _) in std::mem::take(&mut held.starts) {
                self.set_oldest(&class, Duration::ZERO);
            }
            held.by_key.drain().flat_map(|(_, owners)| owners.into_values()).collect()
        };
        for h in dropped {
            gauge!(HELD_LOCKS, "provider" => self.inner.name(), "class" => h.class).decrement(1.0);
        }
        r
    }
}

mod handles;

#[cfg(test)]
mod tests;
