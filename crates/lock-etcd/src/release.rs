//! Release and refresh of a lock this owner holds.
//!
//! Invariants:
//! - **Unlock** takes off one level: it decrements the depth of the holder's entry or, at
//!   the last level, deletes it, in a transaction guarded by the entry's mod revision, so a
//!   level added or removed meanwhile is never lost. The fast path compares the mod revision
//!   as this provider last wrote it ([`HeldEntry`]) and releases in one round trip, falling
//!   back to a read of the holder when it changed. The lease of a released lock carries
//!   nothing any more: it is kept for reuse or revoked ([`Inner::park`]).
//! - **Refresh** with the same TTL is a keep-alive. With another TTL (a lease's TTL is fixed
//!   at grant) it grants a new lease, and a transaction guarded by the entry's mod revision
//!   re-puts the entry under it; the entry keeps its key and create revision, so the token
//!   and queue order stay; the old lease is revoked. A lease that is gone (expired, revoked)
//!   gives [`LeaseLost`](LockError::LeaseLost).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use lock_core::{FencingToken, Lease, LockError, Result};
use tokio::time::Instant;

use crate::error::lease_not_found;
use crate::held::HeldEntry;
use crate::keys::Value;
use crate::leases::{lease_secs, secs};
use crate::provider::{gets, revision, Inner};
use crate::takeback::LeaseGuard;

impl Inner {
    /// One level of `key` held by `owner` (and carrying `token`, when given).
    pub(crate) async fn release(self: &Arc<Self>, key: &str, owner: &str, token: Option<i64>) -> Result<()> {
        let lower = |c: &HeldEntry| {
            if c.depth > 1 {
                let value =
                    Value { depth: c.depth - 1, ttl: c.ttl, owner: owner.to_string(), start: c.start };
                TxnOp::put(c.entry.clone(), value.encode(), Some(PutOptions::new().with_ignore_lease()))
            } else {
                TxnOp::delete(c.entry.clone(), None)
            }
        };
        // Fast path: the entry exactly as this provider last wrote it, released in one round
        // trip; if it changed, the same transaction reads who holds the lock now.
        let mut seen = None;
        if let Some(c) = self.recall(key, owner).filter(|c| token.is_none_or(|t| t == c.token)) {
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(c.entry.clone(), CompareOp::Equal, c.mod_revision)])
                        .and_then([lower(&c)])
                        .or_else([TxnOp::get(self.layout.dir(key), Some(self.head_get(key)))]),
                )
                .await?;
            if resp.succeeded() {
                self.lowered(key, owner, &c, revision(&resp));
                return Ok(());
            }
            seen = Some(gets(&resp).pop().and_then(|mut g| g.pop()));
        }
        loop {
            let head = match seen.take() {
                Some(head) => head,
                None => self.head(key).await?,
            };
            let Some(h) = head else {
                return Err(if self.forget(key, owner).is_some() {
                    LockError::LeaseLost { key: key.to_string() }
                } else {
                    LockError::NotHeld { key: key.to_string() }
                });
            };
            if h.value.owner != owner || token.is_some_and(|t| t != h.create_revision) {
                self.forget(key, owner);
                return Err(LockError::NotOwner { key: key.to_string(), holder: Some(h.value.owner) });
            }
            let known =
                self.recall(key, owner).filter(|c| c.token == h.create_revision && c.lease == h.lease);
            let c = match known {
                Some(c) => HeldEntry {
                    mod_revision: h.mod_revision,
                    depth: h.value.depth,
                    start: h.value.start,
                    ..c
                },
                None => HeldEntry {
                    token: h.create_revision,
                    entry: h.key.clone(),
                    mod_revision: h.mod_revision,
                    lease: h.lease,
                    depth: h.value.depth,
                    start: h.value.start,
                    want: h.value.ttl,
                    ttl: h.value.ttl,
                    // Never renewed by this provider: its age is unknown.
                    renewed: None,
                },
            };
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(h.key.clone(), CompareOp::Equal, h.mod_revision)])
                        .and_then([lower(&c)]),
                )
                .await?;
            if resp.succeeded() {
                // A lock taken elsewhere (`!is_known`) has a lease of unknown age: `park`
                // revokes it rather than keeping it for reuse.
                self.lowered(key, owner, &c, revision(&resp));
                return Ok(());
            }
        }
    }

    /// Bookkeeping after one level of `c` was released at `revision`.
    fn lowered(self: &Arc<Self>, key: &str, owner: &str, c: &HeldEntry, revision: i64) {
        if c.depth > 1 {
            let next = HeldEntry { depth: c.depth - 1, mod_revision: revision, ..c.clone() };
            self.remember(key, owner, next);
        } else {
            self.forget(key, owner);
            // The entry is gone; its lease holds nothing any more.
            self.park(c);
        }
    }

    /// Restarts `key`'s lease held by `owner` with `ttl`.
    pub(crate) async fn refresh(self: &Arc<Self>, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let lost = || LockError::LeaseLost { key: key.to_string() };
        let want = lease_secs(ttl);
        loop {
            let Some(h) = self.head(key).await?.filter(|h| h.value.owner == owner) else {
                self.forget(key, owner);
                return Err(lost());
            };
            let lease = |ttl: i64, valid_from: Instant| Lease {
                key: key.into(),
                owner: owner.into(),
                token: FencingToken(h.create_revision as u64),
                ttl: secs(ttl),
                valid_until: valid_from + secs(ttl),
                depth: h.value.depth,
            };
            // Remember the entry as it is now, so that `unlock` takes the fast path.
            let note = |lease: i64, want: i64, ttl: i64, mod_revision: i64, renewed: Instant| {
                let held = HeldEntry {
                    token: h.create_revision,
                    entry: h.key.clone(),
                    mod_revision,
                    lease,
                    depth: h.value.depth,
                    start: h.value.start,
                    want,
                    ttl,
                    renewed: Some(renewed),
                };
                self.remember(key, owner, held);
            };
            if want == h.value.ttl {
                // Same TTL: a keep-alive restarts the lease.
                let sent = Instant::now();
                if self.keep_alive(h.lease).await? {
                    note(h.lease, want, h.value.ttl, h.mod_revision, sent);
                    return Ok(lease(h.value.ttl, sent));
                }
                continue; // gone: the next read says so
            }
            // A lease's TTL is fixed at grant: move the entry to a new lease. The entry keeps
            // its key and create revision, so the token and the queue order stay.
            let grant = self.grant(ttl).await?;
            let mut guard = LeaseGuard::new(self, grant.id);
            if grant.ttl == h.value.ttl {
                // etcd raised the TTL to what the entry already has.
                drop(guard);
                let sent = Instant::now();
                if self.keep_alive(h.lease).await? {
                    note(h.lease, want, h.value.ttl, h.mod_revision, sent);
                    return Ok(lease(h.value.ttl, sent));
                }
                continue;
            }
            let value = Value { ttl: grant.ttl, ..h.value.clone() };
            let moved = Txn::new()
                .when([Compare::mod_revision(h.key.clone(), CompareOp::Equal, h.mod_revision)])
                .and_then([TxnOp::put(
                    h.key.clone(),
                    value.encode(),
                    Some(PutOptions::new().with_lease(grant.id)),
                )]);
            let mod_revision = match self.txn(moved).await {
                Ok(resp) if resp.succeeded() => revision(&resp),
                Ok(_) => continue,
                Err(e) if lease_not_found(&e) => return Err(e),
                // Unanswered: the new lease may carry the entry now; it is revoked only once
                // it is known not to (and never will).
                Err(e) => match self.settle(&h, grant.id, self.request_timeout).await {
                    Ok(Some(now)) => now.mod_revision,
                    Ok(None) => return Err(e),
                    Err(_) => {
                        guard.disarm();
                        return Err(e);
                    }
                },
            };
            guard.disarm();
            // The entry left its old lease, which now carries nothing.
            self.revoke_in_background(h.lease);
            note(grant.id, grant.want, grant.ttl, mod_revision, grant.sent);
            return Ok(lease(grant.ttl, grant.sent));
        }
    }
}
