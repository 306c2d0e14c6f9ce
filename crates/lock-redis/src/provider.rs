//! [`RedisLockProvider`]: the [`LockBackend`] on one Redis deployment.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lock_core::raw::{
    acquire_with_backoff, finish_on_drop, Attempt, Backoff, FinishOnDrop, Gate, LockBackend,
};
use lock_core::{
    async_trait, Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result,
};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{Acquire, Backend, Redlock, Release};
use crate::config::{RedisConfig, RedisMode};
use crate::keys::{KeyNames, KeySpace};
use crate::node::{map_err, ConnectTo, Node, Settings};
use crate::wake::{Interest, Wakers};
use crate::NAME;

/// Distributed locks on Redis. See the [crate docs](crate) for the design.
///
/// Cheap to clone (the clones share one set of connections);
/// [`close`](lock_core::LockProvider::close) closes them all.
#[derive(Clone, Debug)]
pub struct RedisLockProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: KeySpace,
    backend: Backend,
    wakers: Arc<Wakers>,
    gate: Gate,
    inflight: Inflight,
    command_timeout: Duration,
}

/// Counts acquire requests in flight (including those finished in the background for a
/// caller that left), so that `close` lets them give their locks back before it closes the
/// connections.
#[derive(Debug, Default)]
struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

impl Inflight {
    async fn wait_idle(&self, bound: Duration) {
        let _ = tokio::time::timeout(bound, async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

struct InflightGuard(Arc<Inner>);

impl InflightGuard {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.inflight.count.fetch_add(1, Ordering::AcqRel);
        InflightGuard(inner.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inflight.idle.notify_waiters();
        }
    }
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
    let guard = InflightGuard::new(inner);
    let (request_inner, request_names, request_owner) = (inner.clone(), names.clone(), owner.clone());
    let (names, owner) = (names.clone(), owner.clone());
    finish_on_drop(
        async move { request_inner.backend.acquire(&request_names, &request_owner, ttl).await },
        move |outcome| async move {
            let Ok(Acquire::Granted(granted)) = outcome else { return };
            let inner = &guard.0;
            inner.wakers.released(&names.channel, Some(&owner), Some(granted.token));
            match inner.backend.give_back(&names, &owner, &granted.receipts).await {
                Ok(()) => {
                    tracing::debug!(key = %names.lock, token = granted.token, "gave back a lock whose caller left")
                }
                Err(e) => {
                    tracing::warn!(key = %names.lock, error = %e, "cannot give back a lock whose caller left; it expires with its TTL")
                }
            }
        },
    )
}

impl RedisLockProvider {
    /// Connects to the deployment `config` describes and loads the scripts.
    ///
    /// Fails with [`LockError::Config`] for a bad configuration and
    /// [`LockError::Unavailable`] when the server cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        let settings = Settings {
            pool_size: config.pool_size,
            command_timeout: config.command_timeout,
            connect_timeout: config.connect_timeout,
            resolver: (!config.connect_to.is_empty()).then(|| Arc::new(ConnectTo(config.connect_to.clone()))),
        };
        let connect = |url: String, fail_fast: bool| Node::connect(url, &settings, fail_fast);
        let backend = match &config.mode {
            RedisMode::Single => Backend::Single(Box::new(connect(config.url.clone(), false).await?)),
            RedisMode::Redlock { urls, clock_drift_factor } => {
                // Every master must be reachable at start: a typo in one URL is a
                // configuration error, not something to discover under load.
                // A master that is down must not hold every attempt up for a command timeout.
                let nodes = futures::future::join_all(urls.iter().map(|u| connect(u.clone(), true))).await;
                let nodes = nodes.into_iter().collect::<Result<Vec<_>>>()?;
                Backend::Redlock(Arc::new(Redlock {
                    quorum: nodes.len() / 2 + 1,
                    nodes,
                    drift_factor: *clock_drift_factor,
                    taking_back: Default::default(),
                }))
            }
        };
        let subscribers = backend.wake_node().subscribers();
        let match_tokens = matches!(backend, Backend::Single(_));
        Ok(RedisLockProvider {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&config.key_prefix),
                backend,
                wakers: Arc::new(Wakers::new(match_tokens, subscribers)),
                gate: Gate::new(),
                inflight: Inflight::default(),
                command_timeout: config.command_timeout,
            }),
        })
    }

    /// Acquire script calls made so far (each one round trip), for measurements: with many
    /// tasks on one key, this divided by the acquisitions shows how often callers tried in vain.
    pub fn acquire_attempts(&self) -> u64 {
        self.inner.backend.attempts()
    }
}

impl Inner {
    /// One acquire round trip (see [`acquire_request`] for what happens if the caller leaves).
    async fn attempt(self: &Arc<Self>, names: &Arc<KeyNames>, opts: &LockOptions) -> Result<Attempt> {
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

#[async_trait]
impl LockBackend for RedisLockProvider {
    const NAME: &'static str = NAME;

    fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    fn command_timeout(&self) -> Option<Duration> {
        Some(self.inner.command_timeout)
    }

    fn promises(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            // Redlock tokens come from independent counters: see `docs/redis.md`.
            fencing: matches!(self.inner.backend, Backend::Single(_)),
            wakes_waiters: true,
            fifo: false,
            distributed: true,
            server_clock: true,
            // Whether a restarted server still has the locks and counters depends on its
            // persistence settings, which a client cannot enforce: see `docs/safety.md`.
            durable: false,
        }
    }

    async fn acquire(&self, opts: &LockOptions) -> Result<Lease> {
        let inner = &self.inner;
        let names = Arc::new(inner.keys.names(&opts.key));
        // Only a caller whose policy lets it wait listens for releases (and may be answered
        // from local knowledge); one that tries once always asks the server.
        let may_wait = Backoff::new(&opts.wait).next_delay().is_some();
        let interest: Option<Interest> = may_wait.then(|| inner.wakers.interest(&names.channel));
        let first = AtomicBool::new(true);
        let attempt = || async {
            let Some(interest) = &interest else { return inner.attempt(&names, opts).await };
            if let Some(settled) = interest.settled(&opts.owner, first.swap(false, Ordering::Relaxed)) {
                return Ok(settled);
            }
            let mut answer = inner.attempt(&names, opts).await?;
            // First time this key is busy for a local waiter: subscribe to its releases, then
            // look again, since a release before the subscription sends no message.
            if matches!(answer, Attempt::Busy { .. }) && interest.ensure_subscribed().await {
                answer = inner.attempt(&names, opts).await?;
            }
            interest.record(&answer);
            Ok(answer)
        };
        acquire_with_backoff(opts, &inner.gate, interest.as_ref().map(Interest::notify), attempt).await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        let names = self.inner.keys.names(key);
        let released = self.inner.backend.release(&names, owner).await?;
        match released {
            Release::Yes { left: 1.., .. } => {}
            Release::Yes { left: 0, token } => {
                self.inner.wakers.released(&names.channel, Some(owner), token);
                self.inner.wakers.freed(&names.channel, token);
            }
            // Gone already: this provider's waiters must stop assuming it is held.
            Release::NotHeld | Release::NotOwner { .. } => {
                self.inner.wakers.released(&names.channel, Some(owner), None)
            }
        }
        match released {
            Release::Yes { .. } => Ok(()),
            Release::NotHeld => Err(LockError::NotHeld { key: key.to_owned() }),
            Release::NotOwner { holder } => {
                Err(LockError::NotOwner { key: key.to_owned(), holder: Some(holder) })
            }
        }
    }

    async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let names = self.inner.keys.names(key);
        let sent = Instant::now();
        match self.inner.backend.refresh(&names, owner, ttl).await? {
            Some((token, depth, ttl)) => {
                Ok(Lease::counted_from(sent, key, owner, FencingToken(token), ttl, depth))
            }
            None => {
                self.inner.wakers.released(&names.channel, Some(owner), None);
                Err(LockError::LeaseLost { key: key.to_owned() })
            }
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        let lock_key = self.inner.keys.lock_key(key);
        Ok(self.inner.backend.inspect(&lock_key).await?.map(|h| LockInfo {
            key: key.to_owned(),
            owner: h.owner,
            token: FencingToken(h.token),
            remaining_ttl: h.left,
            depth: h.depth,
        }))
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let inner = &self.inner;
        let pattern = inner.keys.scan_pattern(prefix);
        let mut found = BTreeMap::new();
        let nodes = inner.backend.nodes();
        let mut scanned = 0;
        for node in nodes {
            match node.scan(&pattern).await {
                Ok(names) => {
                    scanned += 1;
                    // SCAN MATCH also finds counters and keys of other layouts; keep exact
                    // locks whose user key really starts with the prefix.
                    for name in names {
                        if let Some(key) = inner.keys.decode_lock_key(&name).filter(|k| k.starts_with(prefix))
                        {
                            found.insert(key, name);
                        }
                    }
                }
                // One master down does not hide the locks a quorum still holds.
                Err(e) if nodes.len() > 1 => {
                    tracing::debug!(error = %e, "list: a master could not be scanned")
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        if scanned == 0 {
            return Err(LockError::unavailable(NAME, "list: no master could be scanned"));
        }
        let reads = found.into_iter().map(|(key, name)| async move {
            Ok::<_, LockError>(inner.backend.inspect(&name).await?.map(|h| LockInfo {
                key,
                owner: h.owner,
                token: FencingToken(h.token),
                remaining_ttl: h.left,
                depth: h.depth,
            }))
        });
        let mut out = Vec::new();
        let mut reads = futures::stream::iter(reads).buffered(64);
        while let Some(info) = reads.next().await {
            out.extend(info?);
        }
        Ok(out)
    }

    async fn probe(&self) -> Result<Health> {
        let started = Instant::now();
        let nodes = self.inner.backend.nodes();
        let probes = futures::future::join_all(nodes.iter().map(Node::ping)).await;
        let latency = started.elapsed();
        let mut up = Vec::new();
        let mut last_error = None;
        for p in probes {
            match p {
                Ok(detail) => up.push(detail),
                Err(e) => last_error = Some(e),
            }
        }
        let needed = nodes.len() / 2 + 1;
        match (&self.inner.backend, last_error) {
            (Backend::Single(_), Some(e)) => return Err(map_err(e)),
            (Backend::Redlock(_), Some(e)) if up.len() < needed => {
                return Err(LockError::unavailable(
                    NAME,
                    format!(
                        "{} of {} Redlock masters answered, a quorum needs {needed}: {e}",
                        up.len(),
                        nodes.len()
                    ),
                ))
            }
            _ => {}
        }
        let detail = match &self.inner.backend {
            Backend::Single(_) => up.join(""),
            Backend::Redlock(_) => {
                format!("Redlock, {} of {} masters up: {}", up.len(), nodes.len(), up.join("; "))
            }
        };
        Ok(Health { backend: NAME, latency, detail })
    }

    async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        inner.wakers.wake_all();
        // Attempts already sent may still have to give a lock back: let them, boundedly.
        inner.inflight.wait_idle(inner.command_timeout * 2).await;
        inner.wakers.close();
        futures::future::join_all(inner.backend.nodes().iter().map(Node::quit)).await;
        Ok(())
    }
}
