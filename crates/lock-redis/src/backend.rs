//! `impl LockBackend for RedisLockProvider`: the hooks the checks layer calls. Each is one
//! script round trip on the [deployment](crate::deployment) (or a quorum of them), plus what
//! the [release listener](crate::wake) needs to hear about releases this provider made.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lock_core::raw::{acquire_with_backoff_since, Attempt, Gate, LockBackend};
use lock_core::{
    Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result, WaitInfo,
};
use tokio::time::Instant;

use crate::deployment::{Deployment, Release};
use crate::node::{map_err, Node};
use crate::wake::Interest;
use crate::{RedisLockProvider, NAME};

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
            fencing: matches!(self.inner.deployment, Deployment::Single(_)),
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
        let may_wait = !opts.wait.budget().is_zero();
        // The call's wait starts now, whatever the first attempt below costs.
        let started = Instant::now();
        // When no local caller is interested in the key, there is no local knowledge to answer
        // from and no local queue to keep: ask the server at once, and only register an
        // interest (and subscribe) if the key turns out to be busy. An uncontended lock then
        // costs no bookkeeping at all.
        let busy_before = if may_wait && !inner.listener.watched(&names.channel) {
            match inner.attempt(&names, opts).await? {
                Attempt::Acquired(lease) => return Ok(lease),
                Attempt::Busy { .. } => true,
            }
        } else {
            false
        };
        let interest: Option<Interest> = may_wait.then(|| inner.listener.interest(&names.channel));
        let first = AtomicBool::new(true);
        let attempt = || async {
            let Some(interest) = &interest else { return inner.attempt(&names, opts).await };
            let first = first.swap(false, Ordering::Relaxed);
            if busy_before && first {
                // Busy a moment ago: subscribe, then look again (a release before the
                // subscription sends no message).
                interest.ensure_subscribed().await;
            } else if let Some(settled) = interest.settled(&opts.owner, first) {
                return Ok(settled);
            }
            let mut asked = Instant::now();
            let mut answer = inner.attempt(&names, opts).await?;
            // First time this key is busy for a local waiter: subscribe to its releases, then
            // look again, since a release before the subscription sends no message.
            if matches!(answer, Attempt::Busy { .. }) && interest.ensure_subscribed().await {
                asked = Instant::now();
                answer = inner.attempt(&names, opts).await?;
            }
            interest.record(&answer, asked);
            Ok(answer)
        };
        acquire_with_backoff_since(
            started,
            opts,
            &inner.gate,
            interest.as_ref().map(Interest::notify),
            attempt,
        )
        .await
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        let names = self.inner.keys.names(key);
        let released = self.inner.deployment.release(&names, owner).await?;
        match released {
            Release::Yes { left: 1.., .. } => {}
            Release::Yes { left: 0, token } => {
                self.inner.listener.released(&names.channel, Some(owner), token);
                self.inner.listener.freed(&names.channel, token);
            }
            // Gone already: this provider's waiters must stop assuming it is held.
            Release::NotHeld | Release::NotOwner { .. } => {
                self.inner.listener.released(&names.channel, Some(owner), None)
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
        match self.inner.deployment.refresh(&names, owner, ttl).await? {
            Some((token, depth, ttl)) => {
                Ok(Lease::counted_from(sent, key, owner, FencingToken(token), ttl, depth))
            }
            None => {
                self.inner.listener.released(&names.channel, Some(owner), None);
                Err(LockError::LeaseLost { key: key.to_owned() })
            }
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        let lock_key = self.inner.keys.lock_key(key);
        Ok(self.inner.deployment.inspect(&lock_key).await?.map(|h| LockInfo {
            key: key.to_owned(),
            owner: h.owner,
            token: FencingToken(h.token),
            remaining_ttl: h.left,
            depth: h.depth,
            held_for: h.held,
        }))
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let inner = &self.inner;
        let pattern = inner.keys.scan_pattern(prefix);
        let mut found = BTreeMap::new();
        let nodes = inner.deployment.nodes();
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
            Ok::<_, LockError>(inner.deployment.inspect(&name).await?.map(|h| LockInfo {
                key,
                owner: h.owner,
                token: FencingToken(h.token),
                remaining_ttl: h.left,
                depth: h.depth,
                held_for: h.held,
            }))
        });
        let mut out = Vec::new();
        let mut reads = futures::stream::iter(reads).buffered(64);
        while let Some(info) = reads.next().await {
            out.extend(info?);
        }
        Ok(out)
    }

    async fn post_wait(&self, wait: &WaitInfo) -> Result<()> {
        crate::waits::post(&self.inner.deployment, &self.inner.keys, wait).await
    }

    async fn drop_wait(&self, key: &str, _owner: &str, id: u64) -> Result<()> {
        crate::waits::drop(&self.inner.deployment, &self.inner.keys, key, id).await
    }

    async fn posted_waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        crate::waits::list(&self.inner.deployment, &self.inner.keys, prefix).await
    }

    async fn probe(&self) -> Result<Health> {
        let started = Instant::now();
        let nodes = self.inner.deployment.nodes();
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
        match (&self.inner.deployment, last_error) {
            (Deployment::Single(_), Some(e)) => return Err(map_err(e)),
            (Deployment::Redlock(_), Some(e)) if up.len() < needed => {
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
        let detail = match &self.inner.deployment {
            Deployment::Single(_) => up.join(""),
            Deployment::Redlock(_) => {
                format!("Redlock, {} of {} masters up: {}", up.len(), nodes.len(), up.join("; "))
            }
        };
        Ok(Health { backend: NAME, latency, detail })
    }

    async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        inner.listener.wake_all();
        // Attempts already sent may still have to give a lock back: let them, boundedly.
        inner.inflight.wait_idle(inner.command_timeout * 2).await;
        inner.listener.close();
        futures::future::join_all(inner.deployment.nodes().iter().map(Node::quit)).await;
        Ok(())
    }
}
