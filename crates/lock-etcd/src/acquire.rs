//! Acquisition: the attempt with one lease, the free-lock fast path and joining the queue.
//!
//! Invariants (the protocol is described in the crate documentation):
//! - The acquisition runs in its own task ([`Inner::lock`]), so that a caller dropping its
//!   future cannot interrupt it between a request and the bookkeeping of its answer. An
//!   acquisition nobody received (the caller went away, or the answer came after it gave up)
//!   is taken back: exactly its own level ([`TakeBack`]).
//! - **Holder = oldest entry.** A free lock is taken in one transaction ("if the range is
//!   empty, put"); otherwise the attempt learns who holds it, re-enters when that is its own
//!   owner (`reenter`), or queues by putting its entry; its create revision is its place and
//!   the fencing token it will hold the lock with.
//! - Until an answer says otherwise, the attempt's entry may have been written: the attempt's
//!   [`LeaseGuard`] knows it (`guard.mine`) and takes back exactly that entry if the attempt
//!   leaves by any other path than success.
//! - An attempt whose lease is gone (a kept lease that expired, a queued entry whose lease
//!   ran out) answers `Ok(None)`; the acquisition starts over with a new lease, within the
//!   same deadline.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use lock_core::raw::Backoff;
use lock_core::{FencingToken, Lease, LockError, LockOptions, Result};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::{lease_not_found, NAME};
use crate::held::HeldEntry;
use crate::keys::{wall_ms, Entry, Value};
use crate::leases::{secs, LeaseGrant};
use crate::provider::{gets, revision, Inner};
use crate::queue::{timeout, Budget, Queued};
use crate::takeback::{LeaseGuard, Mine, TakeBack};

/// What an acquisition hands back, and how to take it back if nobody receives it.
#[derive(Debug)]
pub(crate) struct Acquired {
    /// What the caller receives.
    pub(crate) lease: Lease,
    /// How to take it back.
    pub(crate) take_back: TakeBack,
}

/// The caller's side of an acquisition: if the caller's future is dropped, an acquisition
/// that completed but was never received is taken back.
struct Pending {
    rx: Option<oneshot::Receiver<Result<Acquired>>>,
    inner: Arc<Inner>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // After `close`, a send either already happened (and the value is here) or fails,
        // in which case the acquiring task takes it back itself.
        rx.close();
        if let Ok(Ok(got)) = rx.try_recv() {
            let inner = self.inner.clone();
            self.inner.inflight.spawn(async move { inner.take_back(got.take_back).await });
        }
    }
}

impl Inner {
    /// Acquires `opts.key` for `opts.owner` (input already checked): the acquisition runs in
    /// a task of its own; what the caller does not receive is taken back.
    pub(crate) async fn lock(self: &Arc<Self>, opts: &LockOptions) -> Result<Lease> {
        let (mut tx, rx) = oneshot::channel();
        let (inner, task_opts) = (self.clone(), opts.clone());
        let guard = self.inflight.enter();
        tokio::spawn(async move {
            let _counted = guard;
            let result = inner.acquire(&task_opts, &mut tx).await;
            if let Err(Ok(unreceived)) = tx.send(result) {
                // Boxed, as the rare path it is (see `acquire`).
                Box::pin(inner.take_back(unreceived.take_back)).await;
            }
        });
        let mut pending = Pending { rx: Some(rx), inner: self.clone() };
        let result = pending.rx.as_mut().expect("receiver present until received").await;
        pending.rx = None;
        match result {
            Ok(r) => r.map(|got| got.lease),
            Err(_) => Err(LockError::backend(NAME, "the acquiring task ended without an answer")),
        }
    }

    /// The whole acquisition, run in its own task so that a caller dropping its future
    /// cannot interrupt it between a request and the bookkeeping of its answer. `tx` tells
    /// whether anybody is still waiting for the result.
    async fn acquire(
        self: &Arc<Self>,
        opts: &LockOptions,
        tx: &mut oneshot::Sender<Result<Acquired>>,
    ) -> Result<Acquired> {
        let mut budget = Budget {
            started: Instant::now(),
            deadline: Backoff::new(&opts.wait).deadline(),
            closed: self.closed.subscribe(),
            caller: tx,
        };
        loop {
            let grant = self.lease_for(opts.ttl).await?;
            let guard = LeaseGuard::new(self, grant.id);
            // Boxed: an attempt's future holds etcd-client's request futures (about 5 KB),
            // and an unboxed one would be stored twice over in this future and moved, whole,
            // in and out of the task that runs it (over 10 KB copied per acquisition).
            if let Some(got) = Box::pin(self.attempt(opts, grant, guard, &mut budget)).await? {
                return Ok(got);
            }
            // The attempt's lease is gone: a reused spare had expired, or the queued entry
            // vanished while waiting (its lease ran out while the cluster was unreachable).
            // Start again with a new lease, within the same deadline.
            tracing::debug!(key = %opts.key, "attempt lost its lease; starting over");
        }
    }

    /// A new acquisition with `grant`, recorded as held: its entry has create revision
    /// `token`, mod revision `mod_revision` and the start `start`.
    pub(crate) fn fresh(
        &self,
        opts: &LockOptions,
        grant: &LeaseGrant,
        (token, mod_revision): (i64, i64),
        start: Option<u64>,
        valid_from: Instant,
    ) -> Acquired {
        let entry = self.layout.entry(&opts.key, grant.id);
        let at = Entry {
            key: entry.clone(),
            create_revision: token,
            mod_revision,
            lease: grant.id,
            value: Value { depth: 1, ttl: grant.ttl, owner: opts.owner.to_string(), start },
        };
        self.remember(
            &opts.key,
            &opts.owner,
            HeldEntry {
                token,
                entry: entry.clone(),
                mod_revision,
                lease: grant.id,
                depth: 1,
                start,
                want: grant.want,
                ttl: grant.ttl,
                renewed: Some(valid_from),
            },
        );
        Acquired {
            lease: Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(token as u64),
                ttl: secs(grant.ttl),
                valid_until: valid_from + secs(grant.ttl),
                depth: 1,
            },
            take_back: TakeBack { mine: Mine::of(opts, entry, token), at },
        }
    }

    /// The attempt's entry, moved to another lease (renewed at `sent`) by another call of the
    /// same owner, recorded as held.
    pub(crate) fn adopt(&self, opts: &LockOptions, at: Entry, sent: Instant) -> Acquired {
        let held = HeldEntry {
            token: at.create_revision,
            entry: at.key.clone(),
            mod_revision: at.mod_revision,
            lease: at.lease,
            depth: at.value.depth,
            start: at.value.start,
            want: at.value.ttl,
            ttl: at.value.ttl,
            renewed: Some(sent),
        };
        self.remember(&opts.key, &opts.owner, held);
        Acquired {
            lease: Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(at.create_revision as u64),
                ttl: secs(at.value.ttl),
                valid_until: sent + secs(at.value.ttl),
                depth: at.value.depth,
            },
            take_back: TakeBack { mine: Mine::of(opts, at.key.clone(), at.create_revision), at },
        }
    }

    /// One attempt with one lease. `Ok(None)`: the lease is gone; start over with another.
    async fn attempt(
        self: &Arc<Self>,
        opts: &LockOptions,
        mut grant: LeaseGrant,
        mut guard: LeaseGuard,
        budget: &mut Budget<'_>,
    ) -> Result<Option<Acquired>> {
        let key = &*opts.key;
        let dir = self.layout.dir(key);
        let end = self.layout.dir_end(key);
        let entry = self.layout.entry(key, grant.id);
        // Every put records this client's wall clock as the start: right for a free lock taken
        // at once; a queued entry is stamped again when its turn comes (`wait_turn`).
        let put = |start: u64| {
            let value = Value { depth: 1, ttl: grant.ttl, owner: opts.owner.to_string(), start: Some(start) };
            TxnOp::put(entry.clone(), value.encode(), Some(PutOptions::new().with_lease(grant.id)))
        };

        // Fast path: take a free lock in one transaction; otherwise learn who holds it.
        let head = loop {
            let start = wall_ms();
            let take = Txn::new()
                .when([Compare::create_revision(dir.clone(), CompareOp::Equal, 0).with_range(end.clone())])
                .and_then([put(start)])
                .or_else([TxnOp::get(dir.clone(), Some(self.head_get(key)))]);
            // Until the answer says otherwise, the entry may have been written.
            guard.mine = Some(Mine {
                key: key.to_string(),
                owner: opts.owner.to_string(),
                entry: entry.clone(),
                token: None,
            });
            let resp = if grant.reused {
                // A spare is renewed in the same round trip; only a live lease is trusted.
                let sent = Instant::now();
                // Boxed, like the other paths an uncontended attempt rarely takes, so that the
                // attempt's future (allocated once per acquisition) is the fast path's size.
                let (alive, resp) =
                    Box::pin(async { tokio::join!(self.keep_alive(grant.id), self.txn(take)) }).await;
                if !alive? {
                    return Ok(None);
                }
                grant.sent = sent;
                grant.reused = false;
                resp
            } else {
                self.txn(take).await
            };
            let resp = match resp {
                Err(e) if lease_not_found(&e) => {
                    guard.mine = None;
                    return Ok(None);
                }
                r => r?,
            };
            if resp.succeeded() {
                guard.disarm();
                let token = revision(&resp);
                return Ok(Some(self.fresh(opts, &grant, (token, token), Some(start), grant.sent)));
            }
            guard.mine = None;
            match gets(&resp).pop().and_then(|mut g| g.pop()) {
                Some(head) if head.value.owner == *opts.owner => {
                    match Box::pin(self.reenter(opts, &head, grant, &mut guard)).await {
                        Ok(Some(got)) => return Ok(Some(got)),
                        Ok(None) => continue,
                        // A kept lease that died, met when moving to it: start over.
                        Err(e) if lease_not_found(&e) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
                Some(head) => break head,
                // Emptied between the compare and the read cannot happen inside one
                // transaction; a foreign write in between just means: try again.
                None => continue,
            }
        };
        let holder = head.value.owner;
        if !budget.left() {
            Box::pin(guard.revoke()).await;
            return Err(timeout(opts, holder, budget));
        }

        // Queue: the entry's create revision is its place; the newest entry before it is the
        // one to watch.
        guard.mine = Some(Mine {
            key: key.to_string(),
            owner: opts.owner.to_string(),
            entry: entry.clone(),
            token: None,
        });
        let start = wall_ms();
        let resp = self
            .txn(
                Txn::new().and_then([
                    put(start),
                    TxnOp::get(
                        dir.clone(),
                        Some(
                            GetOptions::new()
                                .with_range(end.clone())
                                .with_sort(SortTarget::Create, SortOrder::Descend)
                                .with_limit(2),
                        ),
                    ),
                ]),
            )
            .await;
        let resp = match resp {
            Err(e) if lease_not_found(&e) => {
                guard.mine = None;
                return Ok(None);
            }
            r => r?,
        };
        let mine = revision(&resp);
        // From here on, leaving takes back exactly this entry's own level: once it is the
        // oldest, another call of the same owner may re-enter on it.
        guard.mine.as_mut().expect("set above").token = Some(mine);
        let pred = gets(&resp).pop().unwrap_or_default().into_iter().find(|e| e.create_revision < mine);
        let Some(p) = pred else {
            // The holder left between the two transactions: ours is the oldest entry, the
            // holder since its put.
            guard.disarm();
            return Ok(Some(self.fresh(opts, &grant, (mine, mine), Some(start), grant.sent)));
        };

        // Wait for each predecessor in turn to go away.
        Box::pin(self.wait_turn(opts, Queued { grant, guard, mine, ahead: p, holder }, budget)).await
    }
}
