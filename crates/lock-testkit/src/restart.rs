//! Cases on private servers the case starts itself ([`crate::servers`]): servers are killed
//! and restarted, or frozen, while a lock is held and another caller waits. The shared
//! services the other cases use are never touched.
//!
//! A harness opts in with [`Harness::private_server`](crate::Harness::private_server) and
//! [`Harness::provider_at`](crate::Harness::provider_at) (one server), or additionally
//! [`Harness::private_server_count`](crate::Harness::private_server_count),
//! [`Harness::prepare_private`](crate::Harness::prepare_private) and
//! [`Harness::provider_on`](crate::Harness::provider_on) for a deployment over several servers
//! (Redlock's masters, a cluster's primaries);
//! [`Harness::private_majority_keeps_locks`](crate::Harness::private_majority_keeps_locks)
//! marks a quorum, which the minority cases need.
//!
//! | case | fault | what must hold |
//! |---|---|---|
//! | [`restart_server_while_held_and_awaited`] | every server killed and started again | durable backend: no grant while the holder trusts its lease, then a larger token; otherwise the lock is gone with the servers' memory and the holder hears `lost()`; nobody hangs, the lock is free once released |
//! | [`pause_server_while_held_and_awaited`] | every server frozen (SIGSTOP) past the TTL | the lock survives the freeze: no grant while the holder trusts its lease |
//! | [`restart_minority_while_held_and_awaited`] | the largest minority of a quorum's servers restarted (1 of 3) | the majority keeps the lock: the holder (with a TTL of at least nine request timeouts) never hears `lost()` and releases it; no grant before that |
//! | [`pause_minority_while_held_and_awaited`] | the largest minority frozen for two refresh periods | as above, though every round waits a request timeout for the frozen server; its queued requests, applied on thaw, leave nothing behind |
//!
//! Every case ends with the waiter granted the lock once the holder let go (the deployment
//! recovered, no lock is stuck) and nothing held under the case's prefix after its release.
//! The minority cases are skipped, loudly, unless the deployment is a quorum of at least three
//! servers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
use lock_core::{Capabilities, LockOptions, WaitPolicy, WorkflowLockHandle};
use tokio::time::Instant;

use crate::faults::settled;
use crate::history::assert_nothing_held;
use crate::servers::PrivateServer;
use crate::Ctx;

/// Starts the harness's private servers ([`Harness::private_server_count`] of them), or says
/// why not (a loud skip, or a failure under `DISTLOCK_REQUIRE_SERVICES=1`).
///
/// [`Harness::private_server_count`]: crate::Harness::private_server_count
async fn private(ctx: &Ctx) -> Option<Vec<PrivateServer>> {
    let Some(kind) = ctx.harness.private_server() else {
        eprintln!("SKIPPED {}: the harness runs no private server", ctx.case);
        return None;
    };
    let n = ctx.harness.private_server_count().max(1);
    let started: Result<Vec<PrivateServer>, String> =
        tokio::task::spawn_blocking(move || (0..n).map(|_| PrivateServer::start(kind)).collect())
            .await
            .expect("start task");
    let servers = crate::require_or_skip(ctx.case, started)?;
    let urls: Vec<String> = servers.iter().map(PrivateServer::url).collect();
    if let Err(e) = ctx.harness.prepare_private(&urls).await {
        panic!("{}: the private servers did not form one deployment: {e}", ctx.case);
    }
    Some(servers)
}

/// What the waiter saw when its `lock` returned: the outcome and the holder's state then.
struct Seen {
    outcome: lock_core::Result<lock_core::Lease>,
    holder_lost: bool,
    holder_valid_until: Instant,
    at: Instant,
}

/// Runs `fault` on the servers while a workflow handle holds a lock and another provider waits
/// for it, then judges: nobody hangs; the waiter is granted the lock only once the holder
/// stopped trusting its lease (where `survives` says the lock outlives the fault), with a
/// larger token; a holder whose lock did not survive hears `lost()`; once the holder lets go
/// after the fault, the waiter gets the lock (the service recovered, no lock is stuck).
///
/// With `holder_keeps` (a majority of the servers lives through the fault untouched) the
/// lease's TTL follows the floor of `docs/safety.md`, three times the default margin plus the
/// request timeout, and the holder must keep its lock through the fault: no `lost()`, and its
/// release succeeds.
async fn hold_and_wait_through(
    ctx: &Ctx,
    fault: fn(&mut [PrivateServer]),
    survives: fn(&Capabilities) -> bool,
    holder_keeps: bool,
) {
    let Some(mut servers) = private(ctx).await else { return };
    let urls: Vec<String> = servers.iter().map(PrivateServer::url).collect();
    let holder_side = ctx.harness.provider_on(&urls).await;
    let waiter_side = ctx.harness.provider_on(&urls).await;
    let caps = holder_side.capabilities();
    let mut ttl = (ctx.short_ttl() * 8).max(Duration::from_secs(4));
    if holder_keeps {
        let request = holder_side.request_timeout().unwrap_or(Duration::from_secs(1));
        ttl = ttl.max(request * 9);
    }
    let config = WorkflowConfig {
        key_prefix: ctx.key("wf:"),
        ttl,
        wait: WaitPolicy::NoWait,
        ..WorkflowConfig::default()
    };
    let wf = WorkflowLockProvider::new(holder_side.clone(), config);
    let h: Arc<WorkflowLockHandle> = Arc::new(wf.lock_workflow_execution("restart").await.expect("lock"));
    let key = h.lock_key().to_string();
    // Set before the holder asks to release: from then on it no longer trusts its lease.
    let let_go = Arc::new(AtomicBool::new(false));
    let patient =
        LockOptions::new(key.as_str(), "waiter").ttl(ttl).wait(WaitPolicy::deadline(Duration::from_secs(60)));
    let waiter = {
        let (p, h, let_go, o) = (waiter_side.clone(), h.clone(), let_go.clone(), patient.clone());
        tokio::spawn(async move {
            let outcome = p.lock(&o).await;
            Seen {
                holder_lost: h.is_lost() || let_go.load(Ordering::SeqCst),
                holder_valid_until: h.valid_until(),
                at: Instant::now(),
                outcome,
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let servers = tokio::task::spawn_blocking(move || {
        fault(&mut servers);
        servers
    })
    .await
    .expect("fault task");
    // The fault is over; a holder whose lease survived it finishes its work and lets go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if holder_keeps {
        assert!(!h.is_lost(), "the holder lost a lock that a majority of the servers kept");
    }
    let_go.store(true, Ordering::SeqCst);
    let released = settled(|| holder_side.unlock(&key, h.owner())).await;
    if holder_keeps {
        assert!(released.is_ok(), "the holder's release of a lock a majority kept: {released:?}");
    }
    let seen =
        tokio::time::timeout(Duration::from_secs(90), waiter).await.expect("the waiter hangs").unwrap();
    eprintln!(
        "waiter: {:?}; holder lost: {}; holder's release: {released:?}",
        seen.outcome.as_ref().map(|l| l.token),
        h.is_lost()
    );
    let lease = match seen.outcome {
        Ok(lease) => {
            if survives(&caps) {
                assert!(
                    seen.holder_lost || seen.at >= seen.holder_valid_until,
                    "the waiter was granted the lock while the holder still trusted its lease"
                );
            } else if !seen.holder_lost {
                // The lock died with the server's memory: the holder must hear it.
                tokio::time::timeout(ttl * 2, h.lost().cancelled())
                    .await
                    .expect("a holder whose lock died with the server hears lost()");
            }
            lease
        }
        Err(e) => {
            // The fault broke the waiter's own requests; with the holder gone it gets the lock.
            assert!(e.is_retryable() && !e.is_timeout(), "the waiter failed with {e:?}");
            waiter_side.lock(&patient).await.expect("the lock is free again after the fault")
        }
    };
    if survives(&caps) && caps.fencing {
        assert!(lease.token > h.fencing_token(), "token {} after {}", lease.token, h.fencing_token());
    }
    waiter_side.unlock(&key, "waiter").await.expect("the waiter releases");
    drop(wf);
    drop(h);
    assert_nothing_held(&*waiter_side, ctx.prefix(), Duration::from_secs(10)).await;
    tokio::task::spawn_blocking(move || drop(servers)).await.expect("stop task");
}

/// Every server is killed and started again (same port, same data) mid-hold and mid-wait.
pub async fn restart_server_while_held_and_awaited(ctx: &Ctx) {
    hold_and_wait_through(ctx, |s| s.iter_mut().for_each(PrivateServer::restart), |c| c.durable, false).await
}

/// Every server is frozen (SIGSTOP) past the lease's TTL, then thawed.
pub async fn pause_server_while_held_and_awaited(ctx: &Ctx) {
    hold_and_wait_through(ctx, |s| freeze(s, s.len()), |_| true, false).await
}

/// Freezes the first `n` servers for 6 s (past the TTL of the cases where every server
/// freezes, past two refreshes where a minority does), then thaws them.
fn freeze(servers: &mut [PrivateServer], n: usize) {
    servers[..n].iter().for_each(PrivateServer::pause);
    std::thread::sleep(Duration::from_secs(6));
    servers[..n].iter().for_each(PrivateServer::resume);
}

/// The largest minority of a deployment of `n` servers (1 of 3, 2 of 5); 0 for one server.
fn minority(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

/// `false` (and a loud skip) unless the deployment is a quorum with a minority to lose.
fn has_minority(ctx: &Ctx) -> bool {
    let (n, quorum) = (ctx.harness.private_server_count(), ctx.harness.private_majority_keeps_locks());
    if ctx.harness.private_server().is_some() && (!quorum || minority(n) == 0) {
        eprintln!("SKIPPED {}: the deployment ({n} servers) is no quorum that outlives a minority", ctx.case);
        return false;
    }
    true
}

/// The largest minority of a quorum's servers is killed and started again (empty, for a
/// backend without durability) mid-hold and mid-wait: the majority keeps the lock.
pub async fn restart_minority_while_held_and_awaited(ctx: &Ctx) {
    if has_minority(ctx) {
        hold_and_wait_through(
            ctx,
            |s| {
                let m = minority(s.len());
                s[..m].iter_mut().for_each(PrivateServer::restart)
            },
            |_| true,
            true,
        )
        .await
    }
}

/// The largest minority of a quorum's servers is frozen past the lease's TTL, then thawed:
/// the majority keeps the lock.
pub async fn pause_minority_while_held_and_awaited(ctx: &Ctx) {
    if has_minority(ctx) {
        hold_and_wait_through(ctx, |s| freeze(s, minority(s.len())), |_| true, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::minority;

    #[test]
    fn a_minority_is_less_than_half() {
        assert_eq!([1, 2, 3, 4, 5].map(minority), [0, 0, 1, 1, 2]);
    }
}
