//! [`RedisLockProvider`]: the [`LockProvider`] on one Redis deployment.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lock_core::{
    acquire_with_backoff, async_trait, validate, Attempt, Capabilities, FencingToken, Health, Lease,
    LockError, LockInfo, LockOptions, LockProvider, Result, WaitPolicy,
};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::config::{RedisConfig, RedisMode};
use crate::keys::{KeyNames, KeySpace};
use crate::node::{map_err, Grant, Node, Released};
use crate::wake::{Interest, Wakers};
use crate::NAME;

/// Distributed locks on Redis. See the [crate docs](crate) for the design.
///
/// Cheap to clone (the clones share one set of connections); [`close`](LockProvider::close)
/// closes them all.
#[derive(Clone, Debug)]
pub struct RedisLockProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: KeySpace,
    node: Node,
    wakers: Arc<Wakers>,
    closed: AtomicBool,
    on_close: Notify,
    inflight: Inflight,
    command_timeout: Duration,
}

/// Counts the background attempt tasks that may still have to give back a lock, so that
/// `close` lets them finish before it closes the connections.
#[derive(Debug, Default)]
struct Inflight {
    count: AtomicUsize,
    idle: Notify,
}

struct InflightGuard(Arc<Inner>);

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

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inflight.idle.notify_waiters();
        }
    }
}

/// A lease granted by a background attempt, not yet seen by its caller. If it is dropped
/// unseen (the caller's future was cancelled), the acquisition is given back: one level of
/// exactly this acquisition, matched by owner and token, so a later holder is never touched.
struct Granted {
    lease: Option<Lease>,
    names: Arc<KeyNames>,
    guard: Option<InflightGuard>,
}

impl Granted {
    fn take(mut self) -> Lease {
        self.lease.take().expect("taken once")
    }
}

impl Drop for Granted {
    fn drop(&mut self) {
        let (Some(lease), Some(guard)) = (self.lease.take(), self.guard.take()) else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %lease.key, "cannot give back an unclaimed lock outside a runtime; it expires with its TTL");
            return;
        };
        let names = self.names.clone();
        rt.spawn(async move {
            let inner = &guard.0;
            inner.wakers.released(&names.channel, Some(&lease.owner), Some(lease.token.0));
            match inner.node.release(&names, &lease.owner, Some(lease.token.0)).await {
                Ok(_) => tracing::debug!(key = %lease.key, token = %lease.token, "gave back a lock whose caller left"),
                Err(e) => tracing::warn!(key = %lease.key, error = %e, "cannot give back a lock whose caller left; it expires with its TTL"),
            }
            drop(guard);
        });
    }
}

impl RedisLockProvider {
    /// Connects to the deployment `config` describes and loads the scripts.
    ///
    /// Fails with [`LockError::Config`] for a bad configuration and
    /// [`LockError::Unavailable`] when the server cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        config.validate()?;
        if let RedisMode::Redlock { .. } = config.mode {
            return Err(LockError::Config("redis: use RedlockProvider for RedisMode::Redlock".into()));
        }
        let node =
            Node::connect(&config.url, config.pool_size, config.command_timeout, config.connect_timeout)
                .await?;
        let subscriber = node.subscriber();
        Ok(RedisLockProvider {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&config.key_prefix),
                node,
                wakers: Arc::new(Wakers::new(move || subscriber.clone_new())),
                closed: AtomicBool::new(false),
                on_close: Notify::new(),
                inflight: Inflight::default(),
                command_timeout: config.command_timeout,
            }),
        })
    }

    /// Acquire script calls made so far (each one round trip), for measurements: with many
    /// tasks on one key, this divided by the acquisitions shows how often callers tried in vain.
    pub fn acquire_attempts(&self) -> u64 {
        self.inner.node.attempts.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(LockError::Closed)
        } else {
            Ok(())
        }
    }

    async fn closed(&self) {
        loop {
            let n = self.on_close.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }

    /// One acquire round trip, run in its own task so that a caller who stops waiting
    /// cannot leave a lock behind (see [`Granted`]).
    async fn attempt(self: &Arc<Self>, names: &Arc<KeyNames>, opts: &LockOptions) -> Result<Attempt> {
        self.check_open()?;
        self.inflight.count.fetch_add(1, Ordering::AcqRel);
        let guard = InflightGuard(self.clone());
        let (tx, rx) = oneshot::channel();
        let (names, key, owner, ttl) = (names.clone(), opts.key.clone(), opts.owner.clone(), opts.ttl);
        tokio::spawn(async move {
            let sent = Instant::now();
            let out = match guard.0.node.acquire(&names, &owner, ttl).await {
                Ok(Grant::Acquired { token, depth, ttl }) => Ok(Ok(Granted {
                    lease: Some(Lease {
                        key,
                        owner,
                        token: FencingToken(token),
                        ttl,
                        valid_until: sent + ttl,
                        depth,
                    }),
                    names,
                    guard: Some(guard),
                })),
                Ok(Grant::Busy { holder, left }) => {
                    Ok(Err(Attempt::Busy { holder: Some(holder), expires_in: left }))
                }
                Err(e) => Err(map_err(e)),
            };
            // A send to a caller that left returns the grant, whose drop gives the lock back.
            let _ = tx.send(out);
        });
        match rx.await {
            Ok(Ok(Ok(granted))) => Ok(Attempt::Acquired(granted.take())),
            Ok(Ok(Err(busy))) => Ok(busy),
            Ok(Err(e)) => Err(e),
            // The task cannot vanish while the runtime runs; if it did, it released nothing.
            Err(_) => Err(LockError::unavailable(NAME, "acquire task ended without an answer")),
        }
    }
}

#[async_trait]
impl LockProvider for RedisLockProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            fencing: true,
            wakes_waiters: true,
            fifo: false,
            distributed: true,
            server_clock: true,
        }
    }

    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        opts.validate()?;
        let inner = &self.inner;
        inner.check_open()?;
        let names = Arc::new(inner.keys.names(&opts.key));
        let interest: Option<Interest> =
            (!matches!(opts.wait, WaitPolicy::NoWait)).then(|| inner.wakers.interest(&names.channel));
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
        tokio::select! {
            biased;
            r = acquire_with_backoff(opts, interest.as_ref().map(Interest::notify), attempt) => r,
            () = inner.closed() => Err(LockError::Closed),
        }
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        validate::key(key)?;
        validate::owner(owner)?;
        self.inner.check_open()?;
        let names = self.inner.keys.names(key);
        let released = self.inner.node.release(&names, owner, None).await.map_err(map_err)?;
        match released {
            Released::Yes { left: 1.., .. } => {}
            Released::Yes { left: 0, token } => {
                self.inner.wakers.released(&names.channel, Some(owner), Some(token));
                self.inner.wakers.freed(&names.channel, token);
            }
            // Gone already: this provider's waiters must stop assuming it is held.
            Released::NotHeld | Released::NotOwner { .. } => {
                self.inner.wakers.released(&names.channel, Some(owner), None)
            }
        }
        match released {
            Released::Yes { .. } => Ok(()),
            Released::NotHeld => Err(LockError::NotHeld { key: key.to_owned() }),
            Released::NotOwner { holder } => {
                Err(LockError::NotOwner { key: key.to_owned(), holder: Some(holder) })
            }
        }
    }

    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        validate::key_owner_ttl(key, owner, ttl)?;
        self.inner.check_open()?;
        let names = self.inner.keys.names(key);
        let sent = Instant::now();
        match self.inner.node.refresh(&names, owner, ttl).await.map_err(map_err)? {
            Some((token, depth)) => Ok(Lease {
                key: key.into(),
                owner: owner.into(),
                token: FencingToken(token),
                ttl,
                valid_until: sent + ttl,
                depth,
            }),
            None => {
                self.inner.wakers.released(&names.channel, Some(owner), None);
                Err(LockError::LeaseLost { key: key.to_owned() })
            }
        }
    }

    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        validate::key(key)?;
        self.inner.check_open()?;
        let lock_key = self.inner.keys.lock_key(key);
        Ok(self.inner.node.inspect(&lock_key).await.map_err(map_err)?.map(|h| LockInfo {
            key: key.to_owned(),
            owner: h.owner,
            token: FencingToken(h.token),
            remaining_ttl: h.left,
            depth: h.depth,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        validate::prefix(prefix)?;
        self.inner.check_open()?;
        let inner = &self.inner;
        let pattern = inner.keys.scan_pattern(prefix);
        let client = inner.node.pool.next();
        let mut found = BTreeMap::new();
        {
            use fred::interfaces::ClientLike;
            let mut names = if client.is_clustered() {
                client.scan_cluster_buffered(pattern, Some(1000), None).boxed()
            } else {
                client.scan_buffered(pattern, Some(1000), None).boxed()
            };
            while let Some(name) = names.next().await {
                let name = name.map_err(map_err)?;
                let Some(name) = name.as_str() else { continue };
                // SCAN MATCH also finds counters and keys of other layouts; keep exact locks
                // whose user key really starts with the prefix.
                if let Some(key) = inner.keys.decode_lock_key(name).filter(|k| k.starts_with(prefix)) {
                    found.insert(key, name.to_owned());
                }
            }
        }
        let reads = found.into_iter().map(|(key, name)| async move {
            let held = inner.node.inspect(&name).await.map_err(map_err)?;
            Ok::<_, LockError>(held.map(|h| LockInfo {
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

    async fn health(&self) -> Result<Health> {
        self.inner.check_open()?;
        use fred::interfaces::ClientLike;
        let client = self.inner.node.pool.next();
        let started = Instant::now();
        let _: String = client.ping(None).await.map_err(map_err)?;
        let latency = started.elapsed();
        let version = client.server_version().map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
        Ok(Health {
            backend: NAME,
            latency,
            detail: format!(
                "redis {version}, {} pooled connections{}",
                self.inner.node.pool.size(),
                if client.is_clustered() { ", cluster" } else { "" }
            ),
        })
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.on_close.notify_waiters();
        inner.wakers.wake_all();
        // Attempts already sent may still have to give a lock back: let them, boundedly.
        inner.inflight.wait_idle(inner.command_timeout * 2).await;
        inner.wakers.close();
        inner.node.quit().await;
        Ok(())
    }
}
