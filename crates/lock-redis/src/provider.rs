//! [`RedisLockProvider`]: the public type, its shared state and connecting; the acquire
//! request that survives a caller who leaves.

use std::sync::Arc;
use std::time::Duration;

use lock_core::raw::{finish_on_drop, Attempt, FinishOnDrop, Gate, Inflight};
use lock_core::{FencingToken, Lease, LockOptions, Result};
use tokio::time::Instant;

use crate::config::{RedisConfig, RedisMode};
use crate::deployment::{Acquire, Deployment, Redlock};
use crate::keys::{KeyNames, KeySpace};
use crate::node::{ConnectTo, Node, Settings};
use crate::wake::ReleaseListener;

/// Distributed locks on Redis. See the [crate docs](crate) for the design.
///
/// Cheap to clone (the clones share one set of connections);
/// [`close`](lock_core::LockProvider::close) closes them all.
#[derive(Clone, Debug)]
pub struct RedisLockProvider {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) keys: KeySpace,
    pub(crate) deployment: Deployment,
    pub(crate) listener: Arc<ReleaseListener>,
    pub(crate) gate: Gate,
    /// Acquire requests in flight (including those finished in the background for a caller
    /// that left), so that `close` lets them give their locks back before it closes the
    /// connections.
    pub(crate) inflight: Inflight,
    pub(crate) command_timeout: Duration,
}

/// One acquire round trip, polled in place by its caller. If the caller's future is dropped
/// before the answer arrives (the request may already have been executed), the request is
/// finished in a task of its own and a lock it granted is given back: one level of exactly
/// this acquisition, matched by owner and token, so a later holder is never touched. The
/// request counts as in flight (for `close`) until it is answered or given back.
fn acquire_request(
    inner: &Arc<Inner>,
    names: &Arc<KeyNames>,
    owner: &Arc<str>,
    ttl: Duration,
) -> FinishOnDrop<Result<Acquire>> {
    let (request_inner, request_names, request_owner) = (inner.clone(), names.clone(), owner.clone());
    let (orphan_inner, names, owner) = (inner.clone(), names.clone(), owner.clone());
    finish_on_drop(
        async move { request_inner.deployment.acquire(&request_names, &request_owner, ttl).await },
        move |outcome| async move {
            let Ok(Acquire::Granted(granted)) = outcome else { return };
            orphan_inner.listener.released(&names.channel, Some(&owner), Some(granted.token));
            match orphan_inner.deployment.give_back(&names, &owner, &granted.receipts).await {
                Ok(()) => {
                    tracing::debug!(key = %names.lock, token = granted.token, "gave back a lock whose caller left")
                }
                Err(e) => {
                    tracing::warn!(key = %names.lock, error = %e, "cannot give back a lock whose caller left; it expires with its TTL")
                }
            }
        },
    )
    .counted(&inner.inflight)
}

impl RedisLockProvider {
    /// Connects to the deployment `config` describes and loads the scripts.
    ///
    /// Fails with [`LockError::Config`](lock_core::LockError::Config) for a bad configuration and
    /// [`LockError::Unavailable`](lock_core::LockError::Unavailable) when the server cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let settings = Settings {
            pool_size: config.pool_size,
            command_timeout: config.command_timeout,
            connect_timeout: config.connect_timeout,
            fence_idle: config.fence_idle,
            resolver: (!config.connect_to.is_empty()).then(|| Arc::new(ConnectTo(config.connect_to.clone()))),
            #[cfg(feature = "tls")]
            tls: config.tls.as_ref().map(crate::tls::client_config).transpose()?,
        };
        let connect = |url: String, fail_fast: bool| Node::connect(url, &settings, fail_fast);
        let deployment = match &config.mode {
            RedisMode::Single => Deployment::Single(Box::new(connect(config.url.clone(), false).await?)),
            RedisMode::Redlock { urls, clock_drift_factor } => {
                // Every master must be reachable at start: a typo in one URL is a
                // configuration error, not something to discover under load.
                // A master that is down must not hold every attempt up for a command timeout.
                let nodes = futures::future::join_all(urls.iter().map(|u| connect(u.clone(), true))).await;
                let nodes = nodes.into_iter().collect::<Result<Vec<_>>>()?;
                Deployment::Redlock(Arc::new(Redlock {
                    quorum: nodes.len() / 2 + 1,
                    nodes,
                    drift_factor: *clock_drift_factor,
                    taking_back: Default::default(),
                }))
            }
        };
        let subscribers = deployment.wake_node().subscribers();
        let match_tokens = matches!(deployment, Deployment::Single(_));
        Ok(RedisLockProvider {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&config.key_prefix),
                deployment,
                listener: Arc::new(ReleaseListener::new(match_tokens, subscribers)),
                gate: Gate::new(),
                inflight: Inflight::default(),
                command_timeout: config.command_timeout,
            }),
        })
    }

    /// Acquire script calls made so far (each one round trip), for measurements: with many
    /// tasks on one key, this divided by the acquisitions shows how often callers tried in vain.
    pub fn acquire_attempts(&self) -> u64 {
        self.inner.deployment.attempts()
    }
}

impl Inner {
    /// One acquire round trip (see [`acquire_request`] for what happens if the caller leaves).
    pub(crate) async fn attempt(
        self: &Arc<Self>,
        names: &Arc<KeyNames>,
        opts: &LockOptions,
    ) -> Result<Attempt> {
        self.gate.check()?;
        let sent = Instant::now();
        match acquire_request(self, names, &opts.owner, opts.ttl).await? {
            // From here on nothing awaits: the lease reaches the caller or nobody got it.
            Acquire::Granted(g) => Ok(Attempt::Acquired(Lease::counted_from(
                sent,
                opts.key.clone(),
                opts.owner.clone(),
                FencingToken(g.token),
                g.ttl,
                g.depth,
            ))),
            Acquire::Busy { holder, left } => Ok(Attempt::Busy { holder, expires_in: left }),
        }
    }
}
