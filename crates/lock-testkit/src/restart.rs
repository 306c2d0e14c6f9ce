//! Cases on a private server the case starts itself ([`crate::servers`]): the server is
//! killed and restarted, or frozen, while a lock is held and another caller waits. The shared
//! services the other cases use are never touched.
//!
//! A harness opts in with [`Harness::private_server`](crate::Harness::private_server) and
//! [`Harness::provider_at`](crate::Harness::provider_at).

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

/// Starts the harness's private server, or says why not (a loud skip, or a failure under
/// `DISTLOCK_REQUIRE_SERVICES=1`).
async fn private(ctx: &Ctx) -> Option<PrivateServer> {
    let Some(kind) = ctx.harness.private_server() else {
        eprintln!("SKIPPED {}: the harness runs no private server", ctx.case);
        return None;
    };
    let started = tokio::task::spawn_blocking(move || PrivateServer::start(kind)).await.expect("start task");
    crate::require_or_skip(ctx.case, started)
}

/// What the waiter saw when its `lock` returned: the outcome and the holder's state then.
struct Seen {
    outcome: lock_core::Result<lock_core::Lease>,
    holder_lost: bool,
    holder_valid_until: Instant,
    at: Instant,
}

/// Runs `fault` on the server while a workflow handle holds a lock and another provider waits
/// for it, then judges: nobody hangs; the waiter is granted the lock only once the holder
/// stopped trusting its lease (where `survives` says the lock outlives the fault), with a
/// larger token; a holder whose lock did not survive hears `lost()`; once the holder lets go
/// after the fault, the waiter gets the lock (the service recovered, no lock is stuck).
async fn hold_and_wait_through(
    ctx: &Ctx,
    fault: fn(&mut PrivateServer),
    survives: fn(&Capabilities) -> bool,
) {
    let Some(mut server) = private(ctx).await else { return };
    let url = server.url();
    let holder_side = ctx.harness.provider_at(&url).await;
    let waiter_side = ctx.harness.provider_at(&url).await;
    let caps = holder_side.capabilities();
    let ttl = (ctx.short_ttl() * 8).max(Duration::from_secs(4));
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
    let server = tokio::task::spawn_blocking(move || {
        fault(&mut server);
        server
    })
    .await
    .expect("fault task");
    // The fault is over; a holder whose lease survived it finishes its work and lets go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let_go.store(true, Ordering::SeqCst);
    let released = settled(|| holder_side.unlock(&key, h.owner())).await;
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
    tokio::task::spawn_blocking(move || drop(server)).await.expect("stop task");
}

/// The server is killed and started again (same port, same data) mid-hold and mid-wait.
pub async fn restart_server_while_held_and_awaited(ctx: &Ctx) {
    hold_and_wait_through(ctx, |s| s.restart(), |c| c.durable).await
}

/// The server is frozen (SIGSTOP) past the lease's TTL, then thawed.
pub async fn pause_server_while_held_and_awaited(ctx: &Ctx) {
    hold_and_wait_through(
        ctx,
        |s| {
            s.pause();
            std::thread::sleep(Duration::from_secs(6));
            s.resume();
        },
        |_| true,
    )
    .await
}
