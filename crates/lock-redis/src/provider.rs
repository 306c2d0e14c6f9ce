//! [`RedisLockProvider`]: the [`LockProvider`] on one Redis deployment.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use lock_core::{
    acquire_with_backoff, async_trait, validate, Attempt, Capabilities, FencingToken, Health, Lease,
    LockError, LockInfo, LockOptions, LockProvider, Result, WaitPolicy,
};
use tokio::sync::Notify;
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

type GrantFuture = Pin<Box<dyn Future<Output = std::result::Result<Grant, fred::error::Error>> + Send>>;

/// One acquire round trip, polled in place by its caller. If the caller's future is dropped
/// before the answer arrives (the request may already have been executed), the request is
/// finished in a task of its own and a lock it granted is given back: one level of exactly
/// this acquisition, matched by owner and token, so a later holder is never touched.
struct AcquireRequest {
    request: Option<GrantFuture>,
    names: Arc<KeyNames>,
    owner: Arc<str>,
    guard: InflightGuard,
}

impl AcquireRequest {
    fn new(inner: &Arc<Inner>, names: &Arc<KeyNames>, owner: &Arc<str>, ttl: Duration) -> Self {
        let guard = InflightGuard::new(inner);
        let (inner, names2, owner2) = (inner.clone(), names.clone(), owner.clone());
        let request = Box::pin(async move { inner.node.acquire(&names2, &owner2, ttl).await });
        AcquireRequest { request: Some(request), names: names.clone(), owner: owner.clone(), guard }
    }
}

impl Future for AcquireRequest {
    type Output = std::result::Result<Grant, fred::error::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let request = self.request.as_mut().expect("polled after completion");
        let out = ready!(request.as_mut().poll(cx));
        self.request = None;
        Poll::Ready(out)
    }
}

impl Drop for AcquireRequest {
    fn drop(&mut self) {
        let Some(request) = self.request.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.names.lock, "acquire abandoned outside a runtime; a lock it got expires with its TTL");
            return;
        };
        let (names, owner, guard) =
            (self.names.clone(), self.owner.clone(), InflightGuard::new(&self.guard.0));
        rt.spawn(async move {
            let Ok(Grant::Acquired { token, .. }) = request.await else { return };
            let inner = &guard.0;
            inner.wakers.released(&names.channel, Some(&owner), Some(token));
            match inner.node.release(&names, &owner, Some(token)).await {
                Ok(_) => tracing::debug!(key = %names.lock, token, "gave back a lock whose caller left"),
                Err(e) => tracing::warn!(key = %names.lock, error = %e, "cannot give back a lock whose caller left; it expires with its TTL"),
            }
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

    /// One acquire round trip (see [`AcquireRequest`] for what happens if the caller leaves).
    async fn attempt(self: &Arc<Self>, names: &Arc<KeyNames>, opts: &LockOptions) -> Result<Attempt> {
        self.check_open()?;
        let sent = Instant::now();
        match AcquireRequest::new(self, names, &opts.owner, opts.ttl).await.map_err(map_err)? {
            // From here on nothing awaits: the lease reaches the caller or nobody got it.
            Grant::Acquired { token, depth, ttl } => Ok(Attempt::Acquired(Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(token),
                ttl,
                valid_until: sent + ttl,
                depth,
            })),
            Grant::Busy { holder, left } => Ok(Attempt::Busy { holder: Some(holder), expires_in: left }),
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
