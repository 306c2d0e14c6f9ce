//! Re-entry: the holder's owner takes one more level of the lock it holds.
//!
//! Invariants:
//! - The level is added on the holder's entry in a transaction guarded by its mod revision,
//!   which moves the entry to a lease of the attempt's own (with the longer of the two TTLs:
//!   a re-entry never shortens the lock). The entry keeps its key and create revision, so the
//!   token and the queue order stay; the old lease, which then carries nothing, is revoked.
//! - That lease is known only to the attempt, so a transaction whose answer is lost is told
//!   applied or not by the lease the entry is on ([`Inner::settle`]): an error is reported
//!   only for a level that was not added. When even that cannot be settled, the error says
//!   so and a background check takes the level back (else it ends with its lease); a lease
//!   that may carry the entry is never revoked.

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use lock_core::{FencingToken, Lease, LockError, LockOptions, Result};

use crate::acquire::Acquired;
use crate::error::{lease_not_found, NAME};
use crate::held::HeldEntry;
use crate::keys::{Entry, Value};
use crate::leases::{secs, LeaseGrant};
use crate::provider::{revision, Inner};
use crate::takeback::{LeaseGuard, Mine, TakeBack};

impl Inner {
    /// Re-entry by the holder: one more level on its entry, guarded by the entry's mod
    /// revision, which moves to a lease of this attempt: `grant`, or a new one with the
    /// entry's TTL when `grant`'s is shorter (a re-entry never shortens the lock). That lease
    /// is this attempt's alone, so a transaction whose answer is lost is told applied or not
    /// by the lease the entry is on ([`settle`](Self::settle)): an error is reported only
    /// for a level that was not added, and a lease that may carry the entry is never
    /// revoked. `Ok(None)`: the entry changed meanwhile; look again.
    pub(crate) async fn reenter(
        self: &Arc<Self>,
        opts: &LockOptions,
        head: &Entry,
        grant: LeaseGrant,
        guard: &mut LeaseGuard,
    ) -> Result<Option<Acquired>> {
        let mut own = None;
        let target = if grant.ttl >= head.value.ttl {
            grant
        } else {
            let g = self.grant(secs(head.value.ttl)).await?;
            own = Some(LeaseGuard::new(self, g.id));
            g
        };
        // The hold goes on: same owner, same start.
        let value = Value { depth: head.value.depth + 1, ttl: target.ttl, ..head.value.clone() };
        let moved = Txn::new()
            .when([Compare::mod_revision(head.key.clone(), CompareOp::Equal, head.mod_revision)])
            .and_then([TxnOp::put(
                head.key.clone(),
                value.encode(),
                Some(PutOptions::new().with_lease(target.id)),
            )]);
        let mine = Mine::of(opts, head.key.clone(), head.create_revision);
        let at = match self.txn(moved).await {
            Ok(resp) if resp.succeeded() => Entry {
                key: head.key.clone(),
                create_revision: head.create_revision,
                mod_revision: revision(&resp),
                lease: target.id,
                value,
            },
            Ok(_) => return Ok(None),
            // Refused: the lease is gone, nothing was written.
            Err(e) if lease_not_found(&e) => return Err(e),
            Err(e) => match self.settle(head, target.id, self.request_timeout).await {
                Ok(Some(now)) => now,
                Ok(None) => return Err(e),
                Err(_) => {
                    // Unknown: `target` may carry the entry now. It is not revoked; the
                    // background check takes the level back if it was added.
                    own.as_mut().unwrap_or(guard).disarm();
                    self.settle_in_background(mine, head.clone(), target.id);
                    return Err(LockError::unavailable(
                        NAME,
                        format!(
                            "re-entry of {:?} unanswered ({e}); a level it may have added is taken back in \
                             the background, or ends with its lease",
                            opts.key
                        ),
                    ));
                }
            },
        };
        own.as_mut().unwrap_or(guard).disarm();
        if head.lease != 0 {
            // The entry left its old lease, which now carries nothing.
            self.revoke_in_background(head.lease);
        }
        self.remember(
            &opts.key,
            &opts.owner,
            HeldEntry {
                token: head.create_revision,
                entry: head.key.clone(),
                mod_revision: at.mod_revision,
                lease: target.id,
                depth: at.value.depth,
                start: at.value.start,
                want: target.want,
                ttl: target.ttl,
                renewed: Some(target.sent),
            },
        );
        Ok(Some(Acquired {
            lease: Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(head.create_revision as u64),
                ttl: secs(target.ttl),
                valid_until: target.sent + secs(target.ttl),
                depth: at.value.depth,
            },
            take_back: TakeBack { mine, at },
        }))
    }
}
