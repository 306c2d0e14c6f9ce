//! [`Waiting`]: the layer that makes waiting `lock` calls visible, to this process's metrics
//! and to every process through the backend, and that breaks deadlocks.
//!
//! For each `lock` call that waits (its wait policy is not `NoWait`):
//! 1. one attempt first ([`try_lock`](LockProvider::try_lock)): an uncontended call costs
//!    nothing more than without the layer. A busy answer counts in
//!    `distlock_contention_total` and the call goes on waiting with what is left of its policy
//!    (every retry, whose delays are the budget, or the deadline less the time spent),
//!    counted in `distlock_waiters`;
//! 2. with deadlock detection on ([`DeadlockConfig`]), once the wait has lasted half an
//!    interval the call [publishes](LockProvider::publish_wait) its wait, renews it every
//!    interval, and looks for cycles in the [wait-for graph](crate::deadlock::WaitForGraph)
//!    (at most one scan per interval for all the calls of this layer). Waits shorter than half
//!    an interval, which is most hand-overs, write nothing;
//! 3. when the call ends (acquired, timed out, failed or dropped) its wait is withdrawn in the
//!    background; one that cannot be withdrawn expires with its TTL.
//!
//! A cycle whose victim (its youngest wait) is a call of this layer is reported once, as a
//! `WARN` event with the cycle and in `distlock_deadlocks_total`; under
//! [`DeadlockPolicy::FailYoungest`] the victim's call ends at once with
//! [`LockError::Deadlock`]. Dropping that call's inner `lock` future leaves no lock behind
//! (every backend's cancel safety).
//!
//! `try_lock` calls count in `distlock_contention_total` when they find the lock held and
//! publish nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use metrics::{counter, gauge};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::deadlock::{Cycle, DeadlockConfig, DeadlockPolicy, WaitForGraph, WaitInfo};
use crate::error::{LockError, Result};
use crate::layer::metrics::{Classifier, CONTENTION_TOTAL, DEADLOCKS_TOTAL, WAITERS};
use crate::lease::Lease;
use crate::options::{LockOptions, WaitPolicy};
use crate::provider::LockProvider;

/// Publishes waits, detects deadlocks and counts waiters (see the [module docs](self)).
#[derive(Debug)]
pub struct Waiting {
    inner: Arc<dyn LockProvider>,
    config: DeadlockConfig,
    classifier: Option<Classifier>,
    shared: Arc<Shared>,
}

/// What the calls of one layer share.
#[derive(Debug, Default)]
struct Shared {
    /// This layer's calls with a published wait, by wait id.
    local: Mutex<HashMap<u64, Local>>,
    /// When the last scan for cycles started; held while one runs.
    last_scan: tokio::sync::Mutex<Option<Instant>>,
    /// The cycles the last scan found.
    cycles: Mutex<Vec<Cycle>>,
}

#[derive(Debug)]
struct Local {
    key: Arc<str>,
    owner: Arc<str>,
    /// Fails the call with `Deadlock`; taken when used.
    victim: Option<oneshot::Sender<Cycle>>,
    /// A cycle broken at this wait was reported already.
    reported: bool,
}

impl Shared {
    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Local>> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A waiting call's registration: removed from the local table, and its wait withdrawn, when
/// the call ends in any way.
struct Registration {
    shared: Arc<Shared>,
    inner: Arc<dyn LockProvider>,
    id: u64,
    key: Arc<str>,
    owner: Arc<str>,
    published: AtomicBool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.local().remove(&self.id);
        if !self.published.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: the record expires with its TTL
        };
        let (inner, key, owner, id) = (self.inner.clone(), self.key.clone(), self.owner.clone(), self.id);
        runtime.spawn(async move {
            if let Err(e) = inner.withdraw_wait(&key, &owner, id).await {
                tracing::debug!(provider = inner.name(), key = &*key, owner = &*owner, error = %e, "wait not withdrawn; it expires with its TTL");
            }
        });
    }
}

/// Keeps `distlock_waiters` up while a call waits.
struct WaiterGauge(Option<metrics::Gauge>);

impl WaiterGauge {
    fn new(gauge: Option<metrics::Gauge>) -> Self {
        if let Some(g) = &gauge {
            g.increment(1.0);
        }
        WaiterGauge(gauge)
    }
}

impl Drop for WaiterGauge {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.decrement(1.0);
        }
    }
}

impl Waiting {
    /// Wraps `inner`; `classifier` labels the metrics (`None`: record none).
    pub fn new(inner: Arc<dyn LockProvider>, config: DeadlockConfig, classifier: Option<Classifier>) -> Self {
        Waiting { inner, config, classifier, shared: Arc::default() }
    }

    /// The wrapped provider.
    pub fn inner(&self) -> &Arc<dyn LockProvider> {
        &self.inner
    }

    /// The deadlock settings in use.
    pub fn config(&self) -> &DeadlockConfig {
        &self.config
    }

    /// The cycles found by this layer's last scan (empty when none ran).
    pub fn last_cycles(&self) -> Vec<Cycle> {
        self.shared.cycles.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn contended(&self, key: &str) {
        if let Some(c) = &self.classifier {
            counter!(CONTENTION_TOTAL, "provider" => self.inner.name(), "class" => c.classify(key))
                .increment(1);
        }
    }

    async fn wait(&self, opts: &LockOptions) -> Result<Lease> {
        let started = Instant::now();
        match self.inner.try_lock(opts).await {
            Err(LockError::Timeout { .. }) => {}
            other => return other,
        }
        self.contended(&opts.key);
        let Some(rest) = rest_of(&opts.wait, started.elapsed()) else {
            return Err(LockError::Timeout {
                key: opts.key.to_string(),
                holder: None,
                waited: started.elapsed(),
            });
        };
        let rest = opts.clone().wait(rest);
        let _waiting = WaiterGauge::new(
            self.classifier
                .as_ref()
                .map(|c| gauge!(WAITERS, "provider" => self.inner.name(), "class" => c.classify(&opts.key))),
        );
        let spent = started.elapsed();
        let r =
            if self.config.enabled { self.wait_visibly(&rest).await } else { self.inner.lock(&rest).await };
        match r {
            Err(LockError::Timeout { key, holder, waited }) => {
                Err(LockError::Timeout { key, holder, waited: waited + spent })
            }
            other => other,
        }
    }

    /// Waits with `opts`, the wait published and watched for deadlocks.
    async fn wait_visibly(&self, opts: &LockOptions) -> Result<Lease> {
        let (tx, rx) = oneshot::channel();
        let id = loop {
            let id = fastrand::u64(..);
            let mut local = self.shared.local();
            if let std::collections::hash_map::Entry::Vacant(e) = local.entry(id) {
                e.insert(Local {
                    key: opts.key.clone(),
                    owner: opts.owner.clone(),
                    victim: Some(tx),
                    reported: false,
                });
                break id;
            }
        };
        let registration = Registration {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
            id,
            key: opts.key.clone(),
            owner: opts.owner.clone(),
            published: AtomicBool::new(false),
        };
        let wait = WaitInfo {
            key: opts.key.to_string(),
            owner: opts.owner.to_string(),
            id,
            since: SystemTime::now(),
            remaining_ttl: self.config.wait_ttl(),
        };
        let victim = async {
            match rx.await {
                Ok(cycle) => cycle,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = self.inner.lock(opts) => r,
            cycle = victim => Err(LockError::Deadlock { key: opts.key.to_string(), cycle }),
            never = self.keep_up(&registration, &wait) => match never {},
        }
    }

    /// Publishes `wait` after half an interval, then renews it and scans for cycles every
    /// interval, until dropped.
    async fn keep_up(&self, registration: &Registration, wait: &WaitInfo) -> std::convert::Infallible {
        tokio::time::sleep(self.config.interval / 2).await;
        loop {
            // Marked before it is sent: a call that ends while its publication is on the wire
            // must still withdraw it.
            registration.published.store(true, Ordering::Release);
            if let Err(e) = self.inner.publish_wait(wait).await {
                tracing::debug!(provider = self.inner.name(), key = %wait.key, owner = %wait.owner, error = %e, "wait not published");
            }
            self.scan().await;
            tokio::time::sleep(self.config.interval).await;
        }
    }

    /// Looks for cycles, unless another call of this layer did within half an interval.
    async fn scan(&self) {
        let mut last = self.shared.last_scan.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.config.interval / 2) {
            return;
        }
        *last = Some(Instant::now());
        let graph = match WaitForGraph::read(&*self.inner, "").await {
            Ok(graph) => graph,
            Err(e) => {
                tracing::debug!(provider = self.inner.name(), error = %e, "wait-for graph not read");
                return;
            }
        };
        let cycles = graph.cycles();
        for cycle in &cycles {
            self.settle(cycle);
        }
        *self.shared.cycles.lock().unwrap_or_else(PoisonError::into_inner) = cycles;
    }

    /// Reports `cycle` and applies the policy, if its victim is a call of this layer.
    fn settle(&self, cycle: &Cycle) {
        let victim = cycle.victim();
        let mut local = self.shared.local();
        let Some(call) = local.get_mut(&victim.id) else { return };
        if *call.key != victim.key || *call.owner != victim.waiter {
            return; // another process's wait with the same id
        }
        if !call.reported {
            call.reported = true;
            let provider = self.inner.name();
            tracing::warn!(provider, key = %victim.key, owner = %victim.waiter, %cycle, policy = ?self.config.policy, "deadlock detected");
            counter!(DEADLOCKS_TOTAL, "provider" => provider).increment(1);
        }
        if self.config.policy == DeadlockPolicy::FailYoungest {
            if let Some(tx) = call.victim.take() {
                let _ = tx.send(cycle.clone());
            }
        }
    }
}

/// What is left of `policy` after one attempt that took `spent`; `None` when nothing is.
///
/// A retry policy keeps all its retries: its budget is the delays between attempts, and the
/// first attempt took none of them (the inner call starts with an attempt of its own, one more
/// than the policy counts). A deadline policy keeps what is left of its timeout.
fn rest_of(policy: &WaitPolicy, spent: Duration) -> Option<WaitPolicy> {
    match policy {
        WaitPolicy::NoWait | WaitPolicy::Retry { retries: 0, .. } => None,
        WaitPolicy::Retry { .. } => Some(policy.clone()),
        &WaitPolicy::Deadline { timeout, min_delay, max_delay, jitter } => timeout
            .checked_sub(spent)
            .filter(|t| !t.is_zero())
            .map(|timeout| WaitPolicy::Deadline { timeout, min_delay, max_delay, jitter }),
    }
}

#[async_trait]
impl LockProvider for Waiting {
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
        unlock,
        refresh_lock,
        health,
        close,
    );

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        if matches!(opts.wait, WaitPolicy::NoWait) {
            return self.try_lock(opts).await;
        }
        if !self.config.enabled && self.classifier.is_none() {
            return self.inner.lock(opts).await;
        }
        self.wait(opts).await
    }

    async fn try_lock(&self, opts: &LockOptions) -> Result<Lease> {
        let r = self.inner.try_lock(opts).await;
        if matches!(r, Err(LockError::Timeout { .. })) {
            self.contended(&opts.key);
        }
        r
    }
}

#[cfg(test)]
mod tests;
