//! Taking back what a call may have written: the level of an acquisition nobody received,
//! the entry of an attempt that gave up, the level of a re-entry whose answer was lost.
//!
//! Invariants:
//! - Taking back an acquisition (first or re-entry) releases exactly one level of its entry,
//!   compare-and-act on the entry's create and mod revisions: another call of the same owner
//!   may have re-entered on it, and its levels are never lost.
//! - A lease is revoked only once it is known to carry no entry; a lease whose contents are
//!   unknown is left to run out.
//! - A transaction that moves an entry to a lease known only to its attempt, and whose answer
//!   was lost, is settled by a write of the unchanged value on the old mod revision
//!   ([`Inner::settle`]): either the entry is on the new lease (the transaction applied) or
//!   the lost transaction can no longer apply.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use lock_core::{LockOptions, Result};

use crate::error::{map_err, no_answer};
use crate::keys::{Entry, Value};
use crate::provider::{gets, revision, Inner, RETRY_PAUSE};

/// The least a background take-back waits for one answer, whatever the request timeout.
pub(crate) const BACKGROUND_TIMEOUT_FLOOR: Duration = Duration::from_millis(250);

/// Taking back an acquisition (first or re-entry) releases exactly one level of its entry,
/// and only while the entry is still that acquisition (same create revision): never the
/// levels the same owner added through other calls. `at` is the entry as written.
#[derive(Debug)]
pub(crate) struct TakeBack {
    /// Whose entry.
    pub(crate) mine: Mine,
    /// The entry as the acquisition wrote it.
    pub(crate) at: Entry,
}

/// An attempt's own entry: which lock, which owner, its etcd key and, once known, its
/// create revision (the token).
#[derive(Clone, Debug)]
pub(crate) struct Mine {
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) entry: Vec<u8>,
    pub(crate) token: Option<i64>,
}

impl Mine {
    /// The entry `entry` of `opts`' owner on `opts`' key, with create revision `token`.
    pub(crate) fn of(opts: &LockOptions, entry: Vec<u8>, token: i64) -> Mine {
        Mine { key: opts.key.to_string(), owner: opts.owner.to_string(), entry, token: Some(token) }
    }
}

/// What is left of an entry after one level of it was taken back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// It stays, with other levels (or it is another acquisition), on this lease.
    Stays(i64),
    /// It was deleted; this lease carried it.
    Deleted(i64),
    /// It was not there.
    Gone,
}

/// Takes an attempt's lease back when dropped unless disarmed: whatever path an attempt
/// leaves by, its lease (and so its entry) does not outlive it unless the attempt succeeded.
/// While the attempt's entry may exist (`mine`), it first takes back exactly that entry's own
/// level: another call of the same owner may have re-entered on it, and the lease is revoked
/// only if it does not carry those levels.
pub(crate) struct LeaseGuard {
    inner: Arc<Inner>,
    /// The lease; `None` once disarmed.
    id: Option<i64>,
    /// The attempt's entry, while it may exist.
    pub(crate) mine: Option<Mine>,
}

impl LeaseGuard {
    /// Guards lease `id`, which carries no entry of the attempt yet.
    pub(crate) fn new(inner: &Arc<Inner>, id: i64) -> Self {
        LeaseGuard { inner: inner.clone(), id: Some(id), mine: None }
    }

    /// The attempt succeeded (or its lease must be left to run out): take nothing back.
    pub(crate) fn disarm(&mut self) {
        self.id = None;
    }

    /// Takes back now and waits for the answer.
    pub(crate) async fn revoke(mut self) {
        if let Some(id) = self.id.take() {
            self.inner.leave(id, self.mine.take()).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        match self.mine.take() {
            None => self.inner.revoke_in_background(id),
            Some(mine) => {
                let inner = self.inner.clone();
                self.inner.inflight.spawn(async move { inner.leave(id, Some(mine)).await });
            }
        }
    }
}

impl Inner {
    /// Leaves an attempt with lease `lease`: takes back the attempt's own level (if its entry
    /// may exist), then revokes the lease unless the entry, with other levels, stays on it.
    /// When the outcome is unknown the lease is left to run out on its own: it may carry
    /// levels that are not this attempt's.
    pub(crate) async fn leave(self: &Arc<Self>, lease: i64, mine: Option<Mine>) {
        let left = match mine {
            None => Left::Gone,
            Some(m) => match self.drop_level(&m, None).await {
                Ok(left) => left,
                Err(e) => {
                    tracing::debug!(key = %m.key, lease, error = %e, "cannot take back an entry; its lease runs out on its own");
                    return;
                }
            },
        };
        match left {
            Left::Stays(l) if l == lease => return,
            Left::Deleted(l) if l != lease => self.revoke_in_background(l),
            _ => {}
        }
        if let Err(e) = self.revoke(lease).await {
            tracing::debug!(lease, error = %e, "revoke failed; retrying in the background");
            self.revoke_in_background(lease);
        }
    }

    /// Takes back one level of `m`'s entry (`at`: as last known, saving a read), compare-and-
    /// act on its mod revision, so that a level added or removed meanwhile is never lost. An
    /// entry that is another acquisition (another create revision) is left alone.
    pub(crate) async fn drop_level(self: &Arc<Self>, m: &Mine, at: Option<Entry>) -> Result<Left> {
        self.drop_level_within(m, at, self.request_timeout).await
    }

    /// [`drop_level`](Self::drop_level), each request bounded by `within` instead of the
    /// request timeout (for background work that nobody waits for).
    pub(crate) async fn drop_level_within(
        self: &Arc<Self>,
        m: &Mine,
        mut at: Option<Entry>,
        within: Duration,
    ) -> Result<Left> {
        loop {
            let e = match at.take() {
                Some(e) => e,
                None => match self.entry(&m.entry).await? {
                    Some(e) => e,
                    None => return Ok(Left::Gone),
                },
            };
            if m.token.is_some_and(|t| t != e.create_revision) || e.value.owner != m.owner {
                return Ok(Left::Stays(e.lease));
            }
            let lower = if e.value.depth > 1 {
                let value = Value { depth: e.value.depth - 1, ..e.value.clone() };
                TxnOp::put(e.key.clone(), value.encode(), Some(PutOptions::new().with_ignore_lease()))
            } else {
                TxnOp::delete(e.key.clone(), None)
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(e.key.clone(), CompareOp::Equal, e.mod_revision)])
                .and_then([lower])
                .or_else([TxnOp::get(e.key.clone(), None)]);
            let resp = match tokio::time::timeout(within, self.client.kv_client().txn(txn)).await {
                Ok(r) => r.map_err(map_err)?,
                Err(_) => return Err(no_answer(None, within)),
            };
            if !resp.succeeded() {
                match gets(&resp).pop().and_then(|mut g| g.pop()) {
                    Some(now) => at = Some(now),
                    None => return Ok(Left::Gone),
                }
                continue;
            }
            // Bookkeeping of the lock this provider remembers, if it is this acquisition.
            let mut all = self.held.lock().unwrap();
            let id = (m.key.clone(), m.owner.clone());
            if let Some(h) = all.get_mut(&id).filter(|h| h.token == e.create_revision) {
                if e.value.depth > 1 {
                    h.depth = e.value.depth - 1;
                    h.mod_revision = revision(&resp);
                    if h.lease != e.lease {
                        h.lease = e.lease;
                        h.renewed = None;
                    }
                } else {
                    all.remove(&id);
                }
            }
            return Ok(if e.value.depth > 1 { Left::Stays(e.lease) } else { Left::Deleted(e.lease) });
        }
    }

    /// After a transaction that moves `head` (guarded by its mod revision) to the lease
    /// `target` went unanswered: was it applied? `Some`: yes (the entry as it is now).
    /// `None`: no, and it never will be: unless it was applied, a write of the unchanged value
    /// moves the mod revision on, so that the lost transaction can no longer match.
    pub(crate) async fn settle(&self, head: &Entry, target: i64, within: Duration) -> Result<Option<Entry>> {
        let fence = Txn::new()
            .when([Compare::mod_revision(head.key.clone(), CompareOp::Equal, head.mod_revision)])
            .and_then([TxnOp::put(
                head.key.clone(),
                head.value.encode(),
                Some(PutOptions::new().with_ignore_lease()),
            )])
            .or_else([TxnOp::get(head.key.clone(), None)]);
        let resp = match tokio::time::timeout(within, self.client.kv_client().txn(fence)).await {
            Ok(r) => r.map_err(map_err)?,
            Err(_) => return Err(no_answer(None, within)),
        };
        if resp.succeeded() {
            return Ok(None);
        }
        // Only this attempt ever put the entry on `target`.
        Ok(gets(&resp).pop().and_then(|mut g| g.pop()).filter(|e| e.lease == target))
    }

    /// [`settle`](Self::settle) in the background, with growing timeouts, for a re-entry whose
    /// caller was told it failed: a level that was added is taken back, a lease that carries
    /// nothing is revoked.
    pub(crate) fn settle_in_background(self: &Arc<Self>, mine: Mine, head: Entry, target: i64) {
        let inner = self.clone();
        self.inflight.spawn(async move {
            // Nobody waits for this: each try may take far longer than a caller's request
            // timeout (which may be a few milliseconds), so that a loaded server still answers.
            let base = inner.request_timeout.max(BACKGROUND_TIMEOUT_FLOOR);
            for attempt in 1..=6u32 {
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
                match inner.settle(&head, target, base * 2u32.pow(attempt)).await {
                    Ok(Some(now)) => {
                        // One try only: an unanswered drop may have been applied, and a second
                        // one would then take a level the owner still uses.
                        if let Err(e) = inner.drop_level_within(&mine, Some(now), base * 8).await {
                            tracing::warn!(key = %mine.key, error = %e, "cannot take back an unanswered re-entry; it ends with its lease");
                        }
                        return;
                    }
                    Ok(None) => {
                        inner.revoke_in_background(target);
                        return;
                    }
                    Err(_) => {}
                }
            }
            tracing::warn!(key = %mine.key, "unanswered re-entry unresolved; its level ends with its lease");
        });
    }

    /// Takes back an acquisition nobody received: exactly its one level.
    pub(crate) async fn take_back(self: &Arc<Self>, back: TakeBack) {
        match self.drop_level(&back.mine, Some(back.at)).await {
            Ok(Left::Deleted(lease)) => self.revoke_in_background(lease),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(key = %back.mine.key, error = %e, "cannot take back an unreceived acquisition; it ends with its lease")
            }
        }
    }
}
