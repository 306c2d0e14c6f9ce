//! The FIFO wait: a queued attempt waits for the entry just ahead of it (its predecessor) to
//! go away, and for nothing else.
//!
//! Invariants:
//! - **No herd.** A waiter watches only the newest entry older than its own, for a delete;
//!   then it looks again (the predecessor may have been a waiter that gave up), so a release
//!   wakes exactly one waiter, in create-revision order.
//! - While waiting, the waiter keeps its own lease alive (a keep-alive every third of its
//!   TTL, at least every 500 ms).
//! - **Success needs the waiter's own entry.** When nothing is ahead, the waiter checks that
//!   its entry still exists and, unless its lease was renewed under min(1 s, TTL/10) ago,
//!   renews it in the same round trip before reporting success: an attempt whose lease ran
//!   out while waiting never believes it holds the lock (etcd issue 11456).
//! - The wait ends at the acquisition's deadline, when the provider closes or when the caller
//!   stops listening ([`Budget`]); the attempt's entry is then taken back. A connection
//!   failure (a member going down, a leader election) does not end it: the waiter looks
//!   again after [`RETRY_PAUSE`] until its own deadline.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchFilterType, WatchOptions,
};
use lock_core::{LockError, LockOptions, Result};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::acquire::Acquired;
use crate::error::map_err;
use crate::keys::{wall_ms, Entry, Value};
use crate::leases::{secs, LeaseGrant, FRESH_SPARE};
use crate::provider::{gets, is_closed, revision, Inner, RETRY_PAUSE};
use crate::takeback::LeaseGuard;

/// Why a waiter stopped waiting on its predecessor.
pub(crate) enum Wake {
    /// Something changed (a delete, a lost watch, a lease check): look again.
    Recheck,
    /// The acquisition's deadline passed.
    Deadline,
    /// The caller stopped listening.
    Cancelled,
    /// The provider was closed.
    Closed,
}

/// What an acquisition waits within: its wait budget, the provider's close signal and the
/// caller still listening, whichever ends first.
pub(crate) struct Budget<'a> {
    /// When the acquisition started.
    pub(crate) started: Instant,
    /// When it must give up.
    pub(crate) deadline: Instant,
    /// The provider's close signal.
    pub(crate) closed: watch::Receiver<bool>,
    /// The way back to the caller; closed once the caller went away.
    pub(crate) caller: &'a mut oneshot::Sender<Result<Acquired>>,
}

impl Budget<'_> {
    /// Whether there is time left.
    pub(crate) fn left(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Resolves with the reason the wait must end.
    async fn ended(&mut self) -> Wake {
        tokio::select! {
            biased;
            _ = is_closed(&mut self.closed) => Wake::Closed,
            _ = self.caller.closed() => Wake::Cancelled,
            _ = tokio::time::sleep_until(self.deadline) => Wake::Deadline,
        }
    }
}

/// The error of an acquisition that ran out of time while `holder` held the lock.
pub(crate) fn timeout(opts: &LockOptions, holder: String, budget: &Budget<'_>) -> LockError {
    LockError::Timeout { key: opts.key.to_string(), holder: Some(holder), waited: budget.started.elapsed() }
}

/// A queued attempt: its lease, the guard that takes its entry back, the entry's create
/// revision (its place in the queue) and the entry just ahead of it.
pub(crate) struct Queued {
    pub(crate) grant: LeaseGrant,
    pub(crate) guard: LeaseGuard,
    /// The attempt's entry's create revision.
    pub(crate) mine: i64,
    /// The newest entry older than the attempt's: the one to watch.
    pub(crate) ahead: Entry,
    /// The lock's holder as last seen, for a timeout's error.
    pub(crate) holder: String,
}

impl Inner {
    /// Waits for each predecessor of a queued attempt in turn to go away, then takes the
    /// lock. `Ok(None)`: the attempt's entry or lease is gone; start over with another.
    pub(crate) async fn wait_turn(
        self: &Arc<Self>,
        opts: &LockOptions,
        queued: Queued,
        budget: &mut Budget<'_>,
    ) -> Result<Option<Acquired>> {
        let Queued { mut grant, mut guard, mine, ahead: mut p, mut holder } = queued;
        let key = &*opts.key;
        let dir = self.layout.dir(key);
        let end = self.layout.dir_end(key);
        let entry = self.layout.entry(key, grant.id);
        let mut watch_from = mine + 1;
        loop {
            let wake = match self.wait_deleted(&p.key, watch_from, &mut grant, budget).await {
                Ok(w) => w,
                Err(e) if e.is_retryable() && budget.left() => {
                    tracing::debug!(key, error = %e, "watch failed; checking again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    Wake::Recheck
                }
                Err(e) => return Err(e),
            };
            match wake {
                Wake::Recheck => {}
                Wake::Deadline => {
                    guard.revoke().await;
                    return Err(timeout(opts, holder, budget));
                }
                Wake::Cancelled | Wake::Closed => {
                    guard.revoke().await;
                    return Err(LockError::Closed);
                }
            }
            // Who is ahead now, and is our own entry still there? Success needs our entry: a
            // waiter whose lease ran out (its entry deleted with it) must not believe it holds
            // the lock (etcd issue 11456). Unless the lease was renewed under min(1 s, TTL/10)
            // ago, it is renewed in the same round trip, restarting the TTL for the new holder
            // (and only a live lease counts). When nothing is ahead any more and our entry is
            // as we put it, the same transaction stamps it with the hold's start (the time it
            // queued is not when it took the lock).
            let reads = [
                TxnOp::get(
                    dir.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_max_create_revision(mine - 1)
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(1),
                    ),
                ),
                TxnOp::get(entry.clone(), None),
                TxnOp::get(dir.clone(), Some(self.head_get(key))),
            ];
            let start = wall_ms();
            let stamped =
                Value { depth: 1, ttl: grant.ttl, owner: opts.owner.to_string(), start: Some(start) };
            let mut then = vec![TxnOp::put(
                entry.clone(),
                stamped.encode(),
                Some(PutOptions::new().with_ignore_lease()),
            )];
            then.extend(reads.iter().cloned());
            let check = Txn::new()
                .when([
                    // Every entry of the lock is ours or behind ours ...
                    Compare::create_revision(dir.clone(), CompareOp::Greater, mine - 1)
                        .with_range(end.clone()),
                    // ... and ours is untouched since its put (no other call of the owner
                    // re-entered on it or moved it).
                    Compare::mod_revision(entry.clone(), CompareOp::Equal, mine),
                ])
                .and_then(then)
                .or_else(reads);
            let renew = grant.sent.elapsed() >= FRESH_SPARE.min(secs(grant.ttl) / 10);
            let sent = Instant::now();
            let (resp, alive) = if renew {
                tokio::join!(self.txn(check), self.keep_alive(grant.id))
            } else {
                (self.txn(check).await, Ok(true))
            };
            let (resp, alive) = match (resp, alive) {
                (Ok(r), Ok(a)) => (r, a),
                (Err(e), _) | (_, Err(e)) if e.is_retryable() && budget.left() => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            let mut results = gets(&resp).into_iter();
            let ahead = results.next().unwrap_or_default().pop();
            let ours = results.next().unwrap_or_default().pop();
            if let Some(h) = results.next().unwrap_or_default().pop() {
                holder = h.value.owner;
            }
            let Some(ours) = ours.filter(|e| e.create_revision == mine) else { return Ok(None) };
            if ours.lease != grant.id {
                // Another call of the same owner re-entered on (or refreshed) the entry once it
                // was the oldest, moving it to its own lease: it holds the lock, with that
                // lease, whose renewal is this attempt's to confirm.
                let sent = Instant::now();
                if !self.keep_alive(ours.lease).await? {
                    return Ok(None);
                }
                guard.mine = None; // `grant` carries nothing any more
                return Ok(Some(self.adopt(opts, ours, sent)));
            }
            if !alive {
                return Ok(None);
            }
            match ahead {
                Some(next) => p = next,
                None => {
                    guard.disarm();
                    let valid_from = if renew { sent } else { grant.sent };
                    let (mod_revision, start) = if resp.succeeded() {
                        (revision(&resp), Some(start))
                    } else {
                        // Written meanwhile, by this stamp in an earlier look whose answer was
                        // lost, or unchanged by a settled re-entry attempt: its start stands.
                        (ours.mod_revision, ours.value.start)
                    };
                    return Ok(Some(self.fresh(opts, &grant, (mine, mod_revision), start, valid_from)));
                }
            }
            watch_from = revision(&resp) + 1;
        }
    }

    /// Waits until the entry `key` is deleted (or something else calls for a look), keeping
    /// the waiter's own lease alive meanwhile (`grant.sent` follows the renewals).
    pub(crate) async fn wait_deleted(
        &self,
        key: &[u8],
        from: i64,
        grant: &mut LeaseGrant,
        budget: &mut Budget<'_>,
    ) -> Result<Wake> {
        let every = (secs(grant.ttl) / 3).max(Duration::from_millis(500));
        let mut next_keep_alive = Instant::now() + every;
        let options = WatchOptions::new().with_start_revision(from).with_filters([WatchFilterType::NoPut]);
        let mut client = self.client.watch_client();
        let mut stream = tokio::select! {
            biased;
            end = budget.ended() => return Ok(end),
            s = self.call(client.watch(key, Some(options))) => s?,
        };
        loop {
            tokio::select! {
                biased;
                end = budget.ended() => return Ok(end),
                _ = tokio::time::sleep_until(next_keep_alive) => {
                    let sent = Instant::now();
                    if !self.keep_alive(grant.id).await? {
                        return Ok(Wake::Recheck);
                    }
                    grant.sent = sent;
                    next_keep_alive = Instant::now() + every;
                }
                msg = stream.message() => match msg.map_err(map_err)? {
                    Some(resp) => {
                        let deleted = resp.events().iter().any(|e| e.event_type() == EventType::Delete);
                        // A cancelled watch (compaction, server shutdown) also ends the wait.
                        if deleted || resp.canceled() {
                            return Ok(Wake::Recheck);
                        }
                    }
                    None => return Ok(Wake::Recheck),
                },
            }
        }
    }
}
