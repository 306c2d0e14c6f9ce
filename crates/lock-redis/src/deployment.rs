//! The deployment behind a provider: one node (a server or a cluster), or Redlock over
//! independent masters. Both answer the same four questions; errors are already mapped to
//! [`LockError`].

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use lock_core::{LockError, Result};
use tokio::time::Instant;

use crate::keys::KeyNames;
use crate::node::{map_err, Grant, Held, Node, Released};
use crate::NAME;

/// An acquisition the deployment granted, with what it takes to give it back.
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    pub(crate) token: u64,
    pub(crate) depth: u32,
    /// TTL of the lease, counted from when the request was sent.
    pub(crate) ttl: Duration,
    /// The nodes that granted it, with each node's token.
    pub(crate) receipts: Vec<(usize, u64)>,
}

/// Answer of one acquire attempt.
#[derive(Debug, Clone)]
pub(crate) enum Acquire {
    Granted(Granted),
    Busy { holder: Option<String>, left: Option<Duration> },
}

/// Answer of a release: `Yes` carries the levels left and, for the node whose channel this
/// provider listens to, the released token.
#[derive(Debug, Clone)]
pub(crate) enum Release {
    Yes { left: u32, token: Option<u64> },
    NotHeld,
    NotOwner { holder: String },
}

/// Redlock over independent masters.
#[derive(Debug)]
pub(crate) struct Redlock {
    pub(crate) nodes: Vec<Node>,
    pub(crate) quorum: usize,
    pub(crate) drift_factor: f64,
    /// Take-backs still running, by lock key and owner (see [`Redlock::give_back_later`]).
    pub(crate) taking_back: Mutex<TakeBacks>,
}

/// Where the locks live.
#[derive(Debug)]
pub(crate) enum Deployment {
    Single(Box<Node>),
    /// Shared with the background tasks that give back grants of failed rounds.
    Redlock(Arc<Redlock>),
}

impl Deployment {
    /// Every node.
    pub(crate) fn nodes(&self) -> &[Node] {
        match self {
            Deployment::Single(n) => std::slice::from_ref(&**n),
            Deployment::Redlock(r) => &r.nodes,
        }
    }

    /// The node whose release messages wake this provider's waiters.
    pub(crate) fn wake_node(&self) -> &Node {
        &self.nodes()[0]
    }

    /// Acquire script calls made (each one round trip, to every node at once in Redlock).
    pub(crate) fn attempts(&self) -> u64 {
        self.wake_node().attempts.load(Ordering::Relaxed)
    }

    pub(crate) async fn acquire(&self, names: &KeyNames, owner: &str, ttl: Duration) -> Result<Acquire> {
        match self {
            Deployment::Single(n) => Ok(match n.acquire(names, owner, ttl).await.map_err(map_err)? {
                Grant::Acquired { token, depth, ttl } => {
                    Acquire::Granted(Granted { token, depth, ttl, receipts: vec![(0, token)] })
                }
                Grant::Busy { holder, left } => Acquire::Busy { holder: Some(holder), left },
            }),
            Deployment::Redlock(r) => r.acquire(names, owner, ttl).await,
        }
    }

    /// Gives back one level of exactly the acquisition `receipts` describe.
    pub(crate) async fn give_back(
        &self,
        names: &KeyNames,
        owner: &str,
        receipts: &[(usize, u64)],
    ) -> Result<()> {
        let nodes = self.nodes();
        let calls = receipts.iter().map(|&(i, token)| nodes[i].release(names, owner, Some(token)));
        for r in join_all(calls).await {
            r.map_err(map_err)?;
        }
        Ok(())
    }

    pub(crate) async fn release(&self, names: &KeyNames, owner: &str) -> Result<Release> {
        match self {
            Deployment::Single(n) => Ok(match n.release(names, owner, None).await.map_err(map_err)? {
                Released::Yes { left, token } => Release::Yes { left, token: Some(token) },
                Released::NotHeld => Release::NotHeld,
                Released::NotOwner { holder } => Release::NotOwner { holder },
            }),
            Deployment::Redlock(r) => r.release(names, owner).await,
        }
    }

    /// Sets a held lock's TTL: `(token, depth, ttl)`, or `None` when `owner` does not hold it.
    pub(crate) async fn refresh(
        &self,
        names: &KeyNames,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<(u64, u32, Duration)>> {
        match self {
            Deployment::Single(n) => {
                Ok(n.refresh(names, owner, ttl).await.map_err(map_err)?.map(|(t, d)| (t, d, ttl)))
            }
            Deployment::Redlock(r) => r.refresh(names, owner, ttl).await,
        }
    }

    pub(crate) async fn inspect(&self, lock_key: &str) -> Result<Option<Held>> {
        match self {
            Deployment::Single(n) => n.inspect(lock_key).await.map_err(map_err),
            Deployment::Redlock(r) => r.inspect(lock_key).await,
        }
    }
}

impl Redlock {
    /// The share of `ttl` set aside for clock drift between masters, plus 2 ms for the
    /// granularity of their expiry.
    fn drift(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.drift_factor) + Duration::from_millis(2)
    }

    fn too_few(&self, answered: usize, what: &str) -> LockError {
        LockError::unavailable(
            NAME,
            format!(
                "Redlock {what}: only {answered} of {} masters answered, a quorum needs {}",
                self.nodes.len(),
                self.quorum
            ),
        )
    }

    /// Asks every master at once; granted by a quorum within the validity time, or given back
    /// on every master that granted it or may have (see [`Redlock::give_back_later`]).
    async fn acquire(self: &Arc<Self>, names: &KeyNames, owner: &str, ttl: Duration) -> Result<Acquire> {
        // A take-back of this owner's failed round releases a level without a token (the
        // master never said which). Were this round granted on that master first, the
        // take-back would release *this* grant and leave the lock short of a quorum: so it is
        // called off, and this round starts once its release in flight (if any) has ended.
        self.call_off_take_backs(names, owner).await;
        let started = Instant::now();
        let answers = join_all(self.nodes.iter().map(|n| n.acquire(names, owner, ttl))).await;
        let elapsed = started.elapsed();
        let mut receipts = Vec::new();
        let (mut token, mut depth) = (0, 0);
        // Some master granted a first level: the owner held nothing there before this round.
        let mut fresh = false;
        let mut holders: HashMap<String, usize> = HashMap::new();
        let mut left: Option<Duration> = None;
        let mut answered = 0;
        let mut last_error = None;
        let mut unanswered = Vec::new();
        for (i, a) in answers.into_iter().enumerate() {
            match a {
                Ok(Grant::Acquired { token: t, depth: d, .. }) => {
                    answered += 1;
                    receipts.push((i, t));
                    token = token.max(t);
                    depth = depth.max(d);
                    fresh |= d == 1;
                }
                Ok(Grant::Busy { holder, left: l }) => {
                    answered += 1;
                    *holders.entry(holder).or_default() += 1;
                    left = match (left, l) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                Err(e) => {
                    unanswered.push(i);
                    last_error = Some(e);
                }
            }
        }
        let validity = ttl.checked_sub(elapsed + self.drift(ttl)).filter(|v| !v.is_zero());
        if receipts.len() >= self.quorum {
            if let Some(validity) = validity {
                return Ok(Acquire::Granted(Granted { token, depth, ttl: validity, receipts }));
            }
        }
        if !receipts.is_empty() {
            // No quorum (or no time left): give back what the minority granted.
            if let Err(e) = self.give_back(names, owner, &receipts).await {
                tracing::warn!(key = %names.lock, error = %e, "Redlock: could not give back a minority grant; it expires with its TTL");
            }
        }
        // A master that did not answer may still have applied the request (or apply it once
        // it resumes). For a first acquisition (a master granted a first level, none reported
        // a re-entry) any level `owner` holds there came from this round: give it back once
        // the master answers.
        // A failed re-entry leaves such masters alone: taking a level there could take one
        // the owner still uses; an extra level expires with its TTL.
        // With no master answering at all, nothing shows that this was a first acquisition: the
        // owner may hold the lock already, and a token-less release would take one of its
        // levels. The round's levels (if any were applied) then expire with their TTL.
        if !unanswered.is_empty() && depth <= 1 && fresh {
            self.give_back_later(names, owner, unanswered, ttl);
        }
        if answered < self.quorum {
            let mut e = self.too_few(answered, "acquire");
            if let Some(last) = last_error {
                e = LockError::unavailable(NAME, format!("{e} (last error: {last})"));
            }
            return Err(e);
        }
        let holder = holders.into_iter().max_by_key(|(h, n)| (*n, Reverse(h.clone()))).map(|(h, _)| h);
        Ok(Acquire::Busy { holder, left })
    }

    /// In a task of its own, releases one level of `owner`'s lock on each of `masters`, trying
    /// each again with backoff until it answers, for as long as a grant of `ttl` could last.
    ///
    /// The owner's next attempt on the key calls it off (see `acquire`): a level of the failed
    /// round that is still there then expires with its TTL, which costs that master's vote for
    /// a while but never releases a grant the owner is using.
    fn give_back_later(
        self: &Arc<Self>,
        names: &KeyNames,
        owner: &str,
        mut masters: Vec<usize>,
        ttl: Duration,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (this, names, owner) = (self.clone(), names.clone(), owner.to_owned());
        let take_back = Arc::new(TakeBack::default());
        let registered = Registered::new(self.clone(), &names.lock, &owner, take_back.clone());
        rt.spawn(async move {
            let _registered = registered;
            let give_up = Instant::now() + ttl;
            let mut pause = Duration::from_millis(20);
            while !masters.is_empty() {
                let sending = take_back.sending.lock().await;
                if take_back.called_off.load(Ordering::Acquire) {
                    tracing::debug!(key = %names.lock, "Redlock: take-back called off by a new attempt of the owner");
                    break;
                }
                let calls = masters.iter().map(|&i| this.nodes[i].release(&names, &owner, None));
                let answers = join_all(calls).await;
                drop(sending);
                let mut still = Vec::new();
                for (&i, answer) in masters.iter().zip(answers) {
                    match answer {
                        Ok(Released::Yes { .. }) => {
                            tracing::debug!(key = %names.lock, master = i, "Redlock: gave back a grant of a failed round")
                        }
                        Ok(_) => {}
                        Err(_) => still.push(i),
                    }
                }
                masters = still;
                if masters.is_empty() || Instant::now() + pause >= give_up {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }

    /// Calls off every take-back of `owner`'s grants on the key and waits until none has a
    /// release on its way to a master (at most one command timeout).
    async fn call_off_take_backs(&self, names: &KeyNames, owner: &str) {
        let running: Vec<Arc<TakeBack>> = {
            let pending = self.taking_back.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&(names.lock.clone(), owner.to_owned())) {
                Some(list) => list.clone(),
                None => return,
            }
        };
        for take_back in running {
            take_back.called_off.store(true, Ordering::Release);
            drop(take_back.sending.lock().await);
        }
    }

    async fn give_back(&self, names: &KeyNames, owner: &str, receipts: &[(usize, u64)]) -> Result<()> {
        let calls = receipts.iter().map(|&(i, token)| self.nodes[i].release(names, owner, Some(token)));
        for r in join_all(calls).await {
            r.map_err(map_err)?;
        }
        Ok(())
    }

    /// Releases on every master; released when any master held it for `owner`.
    async fn release(&self, names: &KeyNames, owner: &str) -> Result<Release> {
        let answers = join_all(self.nodes.iter().map(|n| n.release(names, owner, None))).await;
        let mut released: Option<(u32, Option<u64>)> = None;
        let mut other = None;
        let mut answered = 0;
        for (i, a) in answers.into_iter().enumerate() {
            match a {
                Ok(Released::Yes { left, token }) => {
                    answered += 1;
                    let token = (i == 0).then_some(token);
                    released = Some(match released {
                        Some((l, t)) => (l.max(left), t.or(token)),
                        None => (left, token),
                    });
                }
                Ok(Released::NotOwner { holder }) => {
                    answered += 1;
                    other.get_or_insert(holder);
                }
                Ok(Released::NotHeld) => answered += 1,
                Err(e) => {
                    tracing::debug!(key = %names.lock, error = %e, "Redlock: a master did not answer a release")
                }
            }
        }
        if let Some((left, token)) = released {
            return Ok(Release::Yes { left, token });
        }
        if answered < self.quorum {
            return Err(self.too_few(answered, "release"));
        }
        Ok(match other {
            Some(holder) => Release::NotOwner { holder },
            None => Release::NotHeld,
        })
    }

    /// Refreshes on every master; kept when a quorum refreshed within the new validity time.
    async fn refresh(
        &self,
        names: &KeyNames,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<(u64, u32, Duration)>> {
        let started = Instant::now();
        let answers = join_all(self.nodes.iter().map(|n| n.refresh(names, owner, ttl))).await;
        let elapsed = started.elapsed();
        let (mut kept, mut answered, mut token, mut depth) = (0, 0, 0, 0);
        for a in answers.into_iter().flatten() {
            answered += 1;
            if let Some((t, d)) = a {
                kept += 1;
                token = token.max(t);
                depth = depth.max(d);
            }
        }
        let validity = ttl.checked_sub(elapsed + self.drift(ttl)).filter(|v| !v.is_zero());
        match validity {
            Some(v) if kept >= self.quorum => Ok(Some((token, depth, v))),
            _ if answered < self.quorum => Err(self.too_few(answered, "refresh")),
            _ => Ok(None),
        }
    }

    /// The holder a quorum of masters agrees on, if any.
    async fn inspect(&self, lock_key: &str) -> Result<Option<Held>> {
        let answers = join_all(self.nodes.iter().map(|n| n.inspect(lock_key))).await;
        let mut answered = 0;
        let mut by_owner: HashMap<String, Vec<Held>> = HashMap::new();
        for a in answers.into_iter().flatten() {
            answered += 1;
            if let Some(h) = a {
                by_owner.entry(h.owner.clone()).or_default().push(h);
            }
        }
        if answered < self.quorum {
            return Err(self.too_few(answered, "inspect"));
        }
        let Some((owner, mut held)) = by_owner.into_iter().find(|(_, h)| h.len() >= self.quorum) else {
            return Ok(None);
        };
        // A quorum holds it for at least the quorum-th longest remaining time, and has held it
        // for at least the quorum-th longest time held (each by its own clock).
        let mut since: Vec<Duration> = held.iter().map(|h| h.held).collect();
        since.sort_by_key(|&d| Reverse(d));
        held.sort_by_key(|h| Reverse(h.left));
        Ok(Some(Held {
            owner,
            token: held.iter().map(|h| h.token).max().unwrap_or_default(),
            depth: held.iter().map(|h| h.depth).max().unwrap_or_default(),
            left: held[self.quorum - 1].left,
            held: since[self.quorum - 1],
        }))
    }
}

/// Running take-backs by lock key and owner.
pub(crate) type TakeBacks = HashMap<(String, String), Vec<Arc<TakeBack>>>;

/// One running take-back: whether a new attempt called it off, and a lock held while its
/// releases are on their way, so that the attempt can wait for them to end.
#[derive(Debug, Default)]
pub(crate) struct TakeBack {
    called_off: AtomicBool,
    sending: tokio::sync::Mutex<()>,
}

/// Keeps a take-back listed under its key and owner while its task runs.
struct Registered {
    redlock: Arc<Redlock>,
    id: (String, String),
    take_back: Arc<TakeBack>,
}

impl Registered {
    fn new(redlock: Arc<Redlock>, lock_key: &str, owner: &str, take_back: Arc<TakeBack>) -> Self {
        let id = (lock_key.to_owned(), owner.to_owned());
        let mut pending = redlock.taking_back.lock().unwrap_or_else(|e| e.into_inner());
        pending.entry(id.clone()).or_default().push(take_back.clone());
        drop(pending);
        Registered { redlock, id, take_back }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut pending = self.redlock.taking_back.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = pending.get_mut(&self.id) {
            list.retain(|t| !Arc::ptr_eq(t, &self.take_back));
            if list.is_empty() {
                pending.remove(&self.id);
            }
        }
    }
}
