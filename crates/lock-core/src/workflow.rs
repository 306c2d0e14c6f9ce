//! Locks for workflow orchestrators: executions, templates and resources, held through a
//! [`WorkflowLockHandle`] that refreshes itself and says when it can no longer be trusted.
//!
//! ## Keys
//!
//! With the default prefix `distlock:workflow:`:
//!
//! | lock | key |
//! |---|---|
//! | execution `e` | `distlock:workflow:execution:e` |
//! | template `t` (limit 1) | `distlock:workflow:template:t` |
//! | template `t` with limit `n` | one of `distlock:workflow:template:t:slot:0` .. `:slot:{n-1}` |
//! | resource `r` | `distlock:workflow:resource:r` |
//!
//! ## Owners
//!
//! Every handle is its own owner: `<host>:<pid>:<random>:<n>`, where the first three parts
//! name the [`WorkflowLockProvider`] (one per process, normally) and `n` counts its
//! acquisitions. Two tasks of one process therefore exclude each other like two processes
//! do; reentrancy stays available through [`LockProvider`] with an explicit owner.
//! [`WorkflowLockProvider::lock_with_options`] takes a key and owner as the caller names them
//! (no prefix, no generated id) and still gives a handle, as `distlock exec` uses it.
//!
//! ## Handles
//!
//! - **Auto-refresh** (on by default): a watchdog refreshes the lease a third of the way into
//!   its trusted part (the TTL less the safety margin below: about TTL/3) and stops on
//!   unlock or drop. A refresh that fails with a retryable error is retried until the lease
//!   stops being trusted (below); a refresh that does not answer is given up at that moment.
//! - **Lost signal**: [`WorkflowLockHandle::lost`] is a [`CancellationToken`](tokio_util::sync::CancellationToken) cancelled when
//!   the lease can no longer be trusted: a refresh answered `LeaseLost` (or any final error),
//!   or the lease came within its **safety margin** of its conservative local deadline
//!   ([`Lease::valid_until`](crate::Lease::valid_until)) without a successful refresh. Guarded work should stop.
//! - **Safety margin** ([`WorkflowConfig::lost_margin`]): by default the larger of 10 % of the
//!   TTL and twice the provider's [`request_timeout`](LockProvider::request_timeout), at most
//!   half the TTL. `lost()` fires that long before `valid_until`, so the work has that long
//!   to stop before another worker can be granted the lock, even while the network is cut
//!   and the last refresh hangs.
//! - **Drop without unlock** releases the lock in the background and logs a warning, so a
//!   forgotten handle does not keep its key locked for a whole TTL.
//! - **Ambiguous acquisitions**: a `lock` that failed with a system error may still have been
//!   granted by the server (the answer was lost). The layer then releases the handle's owner
//!   id in the background (owner-checked, so it can only remove that acquisition), instead of
//!   leaving the key locked for a whole TTL with nobody knowing the owner id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{LockError, Result};
use crate::options::{LockOptions, WaitPolicy, DEFAULT_TTL};
use crate::provider::LockProvider;
use crate::raw::wait::Backoff;
use crate::validate;

mod handle;

use handle::release_in_background;
pub use handle::WorkflowLockHandle;

/// Default key prefix of workflow locks.
pub const DEFAULT_WORKFLOW_PREFIX: &str = "distlock:workflow:";

/// Settings of a [`WorkflowLockProvider`].
#[derive(Debug, Clone)]
pub struct WorkflowConfig {
    /// Prefix of every key (default [`DEFAULT_WORKFLOW_PREFIX`]).
    pub key_prefix: String,
    /// Lease TTL (default 5 minutes).
    pub ttl: Duration,
    /// How long to wait for a busy lock (default: 3 retries, 1 s apart, 20 % jitter).
    pub wait: WaitPolicy,
    /// Refresh leases in the background, about every TTL/3 (default `true`).
    pub auto_refresh: bool,
    /// Owner id prefix (default `<host>:<pid>:<random>`); each handle appends `:<n>`.
    pub owner_prefix: String,
    /// How long before the lease's conservative deadline [`WorkflowLockHandle::lost`] fires.
    /// `None` (the default): the larger of 10 % of the TTL and twice the provider's
    /// [`request_timeout`](LockProvider::request_timeout). Either way at most half the TTL.
    pub lost_margin: Option<Duration>,
}

impl Default for WorkflowConfig {
    fn default() -> Self {
        WorkflowConfig {
            key_prefix: DEFAULT_WORKFLOW_PREFIX.to_string(),
            ttl: DEFAULT_TTL,
            wait: WaitPolicy::default(),
            auto_refresh: true,
            owner_prefix: default_owner_prefix(),
            lost_margin: None,
        }
    }
}

/// `<host>:<pid>:<8 random hex digits>`: unique per provider, readable in `list` output.
pub fn default_owner_prefix() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

/// What a workflow lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Execution,
    Template,
    Resource,
}

/// Workflow locks over any [`LockProvider`]: execution, template and resource locks with handles.
///
/// ```
/// # async fn demo(provider: std::sync::Arc<dyn lock_core::LockProvider>) -> lock_core::Result<()> {
/// use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
///
/// let workflows = WorkflowLockProvider::new(provider, WorkflowConfig::default());
/// let handle = workflows.lock_workflow_execution("execution_123").await?;
/// tokio::select! {
///     _ = handle.lost().cancelled() => { /* the lease is gone: stop the work */ }
///     _ = async { /* business logic, writing with handle.fencing_token() */ } => {}
/// }
/// handle.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct WorkflowLockProvider {
    provider: Arc<dyn LockProvider>,
    config: Arc<WorkflowConfig>,
    next_owner: Arc<AtomicU64>,
}

impl WorkflowLockProvider {
    /// Workflow locks on `provider`.
    pub fn new(provider: Arc<dyn LockProvider>, config: WorkflowConfig) -> Self {
        WorkflowLockProvider { provider, config: Arc::new(config), next_owner: Arc::new(AtomicU64::new(0)) }
    }

    /// The underlying provider (for inspection: `list`, `is_locked`, `health`).
    pub fn provider(&self) -> &Arc<dyn LockProvider> {
        &self.provider
    }

    /// The settings.
    pub fn config(&self) -> &WorkflowConfig {
        &self.config
    }

    /// Locks one workflow execution: the same execution never runs twice at once.
    pub async fn lock_workflow_execution(&self, execution_id: &str) -> Result<WorkflowLockHandle> {
        self.acquire(Scope::Execution, execution_id, &self.config.wait).await
    }

    /// Like [`lock_workflow_execution`](Self::lock_workflow_execution) with a wait policy of
    /// its own (e.g. [`WaitPolicy::NoWait`] for "run it unless somebody else already does").
    pub async fn lock_workflow_execution_with(
        &self,
        execution_id: &str,
        wait: &WaitPolicy,
    ) -> Result<WorkflowLockHandle> {
        self.acquire(Scope::Execution, execution_id, wait).await
    }

    /// Locks a workflow template: one execution of the template at a time.
    pub async fn lock_workflow_template(&self, template_id: &str) -> Result<WorkflowLockHandle> {
        self.acquire(Scope::Template, template_id, &self.config.wait).await
    }

    /// Takes one of `limit` slots of a template: at most `limit` executions at a time.
    /// Free slots are tried in a random order; when all are busy the wait policy applies.
    pub async fn lock_workflow_template_slot(
        &self,
        template_id: &str,
        limit: u32,
    ) -> Result<WorkflowLockHandle> {
        if limit == 0 {
            return Err(LockError::invalid("limit", "a template needs at least one slot"));
        }
        if limit == 1 {
            return self.lock_workflow_template(template_id).await;
        }
        let mut backoff = Backoff::new(&self.config.wait);
        let start = fastrand::u32(..limit);
        loop {
            for i in 0..limit {
                let slot = format!("{template_id}:slot:{}", (start + i) % limit);
                match self.acquire(Scope::Template, &slot, &WaitPolicy::NoWait).await {
                    Ok(mut handle) => {
                        handle.template_id = Some(template_id.to_string());
                        return Ok(handle);
                    }
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                }
            }
            match backoff.next_delay() {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    return Err(LockError::Timeout {
                        key: self.key(Scope::Template, template_id),
                        holder: None,
                        waited: backoff.elapsed(),
                    })
                }
            }
        }
    }

    /// Locks a shared resource by id (the design's third granularity).
    pub async fn lock_resource(&self, resource_id: &str) -> Result<WorkflowLockHandle> {
        self.acquire(Scope::Resource, resource_id, &self.config.wait).await
    }

    /// Locks `opts.key` as `opts.owner`, both taken as given (no key prefix, no generated
    /// owner id), with `opts.wait`, and returns a handle that refreshes with `opts.ttl`: for
    /// tools whose user names the key (`distlock exec`). The handle behaves like any other
    /// (auto-refresh as configured, `lost()`, release on drop). As with every acquisition of
    /// this layer, a `lock` that fails with a system error is followed by an owner-checked
    /// release of `opts.owner` in the background, so give each such call an owner id of its
    /// own.
    pub async fn lock_with_options(&self, opts: &LockOptions) -> Result<WorkflowLockHandle> {
        self.acquire_as(opts.clone(), None).await
    }

    /// Closes the underlying provider.
    pub async fn close(&self) -> Result<()> {
        self.provider.close().await
    }

    fn key(&self, scope: Scope, id: &str) -> String {
        let kind = match scope {
            Scope::Execution => "execution",
            Scope::Template => "template",
            Scope::Resource => "resource",
        };
        format!("{}{kind}:{id}", self.config.key_prefix)
    }

    async fn acquire(&self, scope: Scope, id: &str, wait: &WaitPolicy) -> Result<WorkflowLockHandle> {
        if id.is_empty() {
            return Err(LockError::invalid("id", "a workflow id must not be empty"));
        }
        let key = self.key(scope, id);
        validate::key(&key)?;
        let n = self.next_owner.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", self.config.owner_prefix);
        let opts = LockOptions::new(key, owner).ttl(self.config.ttl).wait(wait.clone());
        self.acquire_as(opts, Some((scope, id))).await
    }

    /// Acquires `opts` and starts its handle; `scoped` names the workflow lock it is, if any.
    async fn acquire_as(
        &self,
        opts: LockOptions,
        scoped: Option<(Scope, &str)>,
    ) -> Result<WorkflowLockHandle> {
        let started = Instant::now();
        let outcome = self.provider.lock(&opts).await;
        let waited = started.elapsed();
        match &outcome {
            Ok(lease) => tracing::info!(
                provider = self.provider.name(),
                key = &*lease.key,
                owner = &*lease.owner,
                token = lease.token.0,
                wait_us = waited.as_micros() as u64,
                outcome = "acquired",
                "workflow lock acquired"
            ),
            Err(e) if e.is_timeout() => tracing::debug!(
                provider = self.provider.name(),
                key = &*opts.key,
                owner = &*opts.owner,
                wait_us = waited.as_micros() as u64,
                outcome = "timeout",
                "workflow lock busy"
            ),
            Err(e) => tracing::warn!(
                provider = self.provider.name(), key = &*opts.key, owner = &*opts.owner,
                wait_us = waited.as_micros() as u64, outcome = crate::layer::trace::outcome_of(e),
                error = %e, "workflow lock not acquired"
            ),
        }
        let lease = match outcome {
            Ok(lease) => lease,
            Err(e) => {
                if e.is_system() {
                    // The server may have granted it and the answer got lost: nobody else
                    // knows this owner id, so give back whatever it may hold now.
                    release_in_background(self.provider.clone(), opts.key, opts.owner, opts.ttl);
                }
                return Err(e);
            }
        };
        let (execution_id, template_id) = match scoped {
            Some((Scope::Execution, id)) => (Some(id.to_string()), None),
            Some((Scope::Template, id)) => (None, Some(id.to_string())),
            Some((Scope::Resource, _)) | None => (None, None),
        };
        Ok(WorkflowLockHandle::start(
            self.provider.clone(),
            lease,
            opts.ttl,
            &self.config,
            execution_id,
            template_id,
        ))
    }
}
