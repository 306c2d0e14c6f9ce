//! Leases: granting, keep-alive, revocation, and the kept (parked) empty leases of released
//! locks.
//!
//! Invariants:
//! - Every attempt has a lease of its own, under an id chosen by this client
//!   ([`new_lease_id`]), so that an attempt cancelled in any state can still be revoked by id.
//!   A grant whose answer was lost is revoked in the background; an id taken by somebody
//!   else's lease is never revoked, another id is picked.
//! - A lease is revoked only once it is known to carry no entry; a lease whose contents are
//!   unknown is left to run out.
//! - A lease is kept for reuse ([`Inner::park`]) only if this provider saw its last grant or
//!   renewal answered: [`LeaseGrant::sent`] (and so `Lease::valid_until`) is always the send
//!   time of that request, and the lease cannot end before `sent + ttl`. Up to
//!   [`MAX_SPARES`] leases of at most [`MAX_SPARE_TTL`] are kept, while younger than half
//!   their TTL. A kept lease renewed less than min([`FRESH_SPARE`], TTL/10) ago is used as it
//!   is; an older one is renewed alongside the acquiring transaction, and one that died is
//!   never trusted: the keep-alive or the put says so and the attempt starts over.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::LeaseGrantOptions;
use lock_core::Result;
use tokio::time::Instant;

use crate::error::{keep_alive_not_found, lease_exists, map_err, no_answer, revoked_already};
use crate::held::HeldEntry;
use crate::provider::{Inner, RETRY_PAUSE};

/// At most this many empty leases are kept for reuse.
pub(crate) const MAX_SPARES: usize = 64;
/// Leases longer than this are not kept for reuse (an idle spare lives until its TTL ends).
pub(crate) const MAX_SPARE_TTL: i64 = 600;
/// A kept lease renewed less than this long ago (and less than a tenth of its TTL) is used
/// as it is: the lock then ends at most this much earlier than asked, and its `valid_until`
/// says so. An older one is renewed alongside the acquiring transaction.
pub(crate) const FRESH_SPARE: Duration = Duration::from_secs(1);

/// A lease for one attempt: freshly granted, or a spare to be renewed before it is trusted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseGrant {
    /// The lease id.
    pub(crate) id: i64,
    /// TTL in seconds as asked for.
    pub(crate) want: i64,
    /// TTL in seconds as granted (etcd raises a TTL below its minimum).
    pub(crate) ttl: i64,
    /// When the grant (or last renewal) was sent: the lease cannot end before `sent + ttl`.
    pub(crate) sent: Instant,
    /// A kept lease to renew: the first request of the attempt renews it at the same time.
    pub(crate) reused: bool,
}

/// An empty lease kept for reuse.
#[derive(Debug)]
pub(crate) struct Spare {
    id: i64,
    /// TTL in seconds as asked for, and as granted.
    want: i64,
    ttl: i64,
    /// When its last grant or renewal was sent.
    renewed: Instant,
}

/// Whole seconds for a lease: etcd's leases count in seconds, so a TTL is rounded up.
pub(crate) fn lease_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1) as i64
}

/// Whole seconds as a duration (a negative count as zero).
pub(crate) fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// A fresh client-chosen lease id: known before the grant is sent, so an attempt cancelled
/// in any state can still be revoked by id.
pub(crate) fn new_lease_id() -> i64 {
    fastrand::i64(1..i64::MAX)
}

impl Inner {
    /// A new lease with `ttl` (rounded up to whole seconds; etcd may raise it to its
    /// minimum), under a fresh client-chosen id.
    pub(crate) async fn grant(self: &Arc<Self>, ttl: Duration) -> Result<LeaseGrant> {
        let want = lease_secs(ttl);
        let mut attempts = 0;
        loop {
            let id = new_lease_id();
            let sent = Instant::now();
            let mut client = self.client.lease_client();
            let grant = client.grant(want, Some(LeaseGrantOptions::new().with_id(id)));
            match tokio::time::timeout(self.request_timeout, grant).await {
                Ok(Ok(resp)) => {
                    return Ok(LeaseGrant { id: resp.id(), want, ttl: resp.ttl(), sent, reused: false })
                }
                // A random id that is taken (by somebody else's lease: never revoke it): pick
                // another.
                Ok(Err(e)) if lease_exists(&e) => {
                    attempts += 1;
                    if attempts > 3 {
                        return Err(map_err(e));
                    }
                }
                Ok(Err(e)) => {
                    // The grant may have been applied before the error: do not leave it.
                    self.revoke_in_background(id);
                    return Err(map_err(e));
                }
                Err(_) => {
                    self.revoke_in_background(id);
                    return Err(no_answer(Some("lease grant"), self.request_timeout));
                }
            }
        }
    }

    /// Revokes lease `id` (with the entries it carries); a lease that is gone already counts
    /// as revoked.
    pub(crate) async fn revoke(&self, id: i64) -> Result<()> {
        match self.call(self.client.lease_client().revoke(id)).await {
            Err(e) if revoked_already(&e) => Ok(()),
            other => other.map(drop),
        }
    }

    /// [`revoke`](Self::revoke) in the background, retried while the cluster is unreachable;
    /// a lease that cannot be revoked runs out on its own.
    pub(crate) fn revoke_in_background(self: &Arc<Self>, id: i64) {
        let inner = self.clone();
        self.inflight.spawn(async move {
            for attempt in 0..5u32 {
                match inner.revoke(id).await {
                    Ok(()) => return,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(RETRY_PAUSE * (attempt + 1)).await;
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "cannot revoke lease; it expires on its own");
                        return;
                    }
                }
            }
        });
    }

    /// One keep-alive round trip. `Ok(false)`: the lease no longer exists.
    pub(crate) async fn keep_alive(&self, id: i64) -> Result<bool> {
        let mut client = self.client.lease_client();
        match tokio::time::timeout(self.request_timeout, client.keep_alive(id)).await {
            Ok(Ok(_stream)) => Ok(true),
            Ok(Err(e)) if keep_alive_not_found(&e) => Ok(false),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(no_answer(Some("lease keep-alive"), self.request_timeout)),
        }
    }

    /// A lease for a new attempt: a spare with the same TTL that is still young, else a new
    /// grant.
    pub(crate) async fn lease_for(self: &Arc<Self>, ttl: Duration) -> Result<LeaseGrant> {
        let want = lease_secs(ttl);
        loop {
            let spare = {
                let mut spares = self.spares.lock().unwrap();
                spares.iter().rposition(|s| s.want == want).map(|i| spares.swap_remove(i))
            };
            let Some(s) = spare else { break };
            let age = s.renewed.elapsed();
            if age < FRESH_SPARE.min(secs(s.ttl) / 10) {
                return Ok(LeaseGrant { id: s.id, want, ttl: s.ttl, sent: s.renewed, reused: false });
            }
            if age < secs(s.ttl) / 2 {
                return Ok(LeaseGrant { id: s.id, want, ttl: s.ttl, sent: s.renewed, reused: true });
            }
            self.revoke_in_background(s.id);
        }
        // Boxed: a grant is the rare path, and its future would make every acquisition's
        // future (moved into its task) as large as its own.
        Box::pin(self.grant(ttl)).await
    }

    /// Keeps the lease of a released lock for reuse, or revokes it.
    /// Only a lease whose last renewal this provider saw answered is kept: its age is known.
    pub(crate) fn park(self: &Arc<Self>, h: &HeldEntry) {
        let young = h.renewed.filter(|r| r.elapsed() < secs(h.ttl) / 2);
        if let Some(renewed) = young.filter(|_| h.ttl <= MAX_SPARE_TTL && !*self.closed.borrow()) {
            let mut spares = self.spares.lock().unwrap();
            if spares.len() < MAX_SPARES {
                spares.push(Spare { id: h.lease, want: h.want, ttl: h.ttl, renewed });
                return;
            }
        }
        self.revoke_in_background(h.lease);
    }

    /// Revokes every kept lease (when the provider closes).
    pub(crate) fn revoke_spares(self: &Arc<Self>) {
        let spares = std::mem::take(&mut *self.spares.lock().unwrap());
        for s in spares {
            self.revoke_in_background(s.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_secs(Duration::from_millis(1500)), 2);
        assert_eq!(lease_secs(Duration::from_secs(30)), 30);
        assert!(new_lease_id() > 0);
    }
}
