//! The conformance cases. Each is a `pub async fn(&Ctx)` that panics on a violation.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
use lock_core::{validate, LockError, LockOptions, LockProvider, WaitPolicy};
use tokio::time::Instant;

use crate::Ctx;

pub use crate::faults::{
    fault_chaos_mix, fault_hung_refresh, fault_killed_connections, fault_lost_answer_on_acquire,
    fault_lost_answer_on_reentry, fault_lost_answer_on_refresh, fault_lost_answer_on_unlock,
    fault_partitioned_holder, fault_server_killed_connections, fault_slow_server,
};
pub use crate::restart::{
    pause_minority_while_held_and_awaited, pause_server_while_held_and_awaited,
    restart_minority_while_held_and_awaited, restart_server_while_held_and_awaited,
};

/// A generous bound on any single case: a hang is a failure, not a stuck CI run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a case under [`CASE_TIMEOUT`].
pub async fn run(name: &str, case: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("{name}: did not finish within {CASE_TIMEOUT:?}");
    }
}

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

fn patient(key: &str, owner: &str) -> LockOptions {
    opts(key, owner).wait(WaitPolicy::deadline(Duration::from_secs(30)))
}

/// Waits (bounded) until `key` is free: for backends whose cleanup runs in the background.
async fn eventually_free(p: &dyn LockProvider, key: &str) -> Option<lock_core::LockInfo> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let held = p.is_locked(key).await.expect("is_locked");
        if held.is_none() || Instant::now() >= until {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free key is acquired at once, shows its holder, and is free again after `unlock`.
pub async fn free_acquire(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let lease = p.lock(&opts(&key, "alice")).await.expect("free key must be acquired");
    assert_eq!(&*lease.key, key);
    assert_eq!(&*lease.owner, "alice");
    assert_eq!(lease.depth, 1);
    assert!(lease.ttl > Duration::from_secs(25) && lease.ttl <= Duration::from_secs(30), "{:?}", lease.ttl);
    assert!(!lease.is_expired());
    let info = p.is_locked(&key).await.unwrap().expect("held");
    assert_eq!(info.owner, "alice");
    p.unlock(&key, "alice").await.unwrap();
    assert_eq!(p.is_locked(&key).await.unwrap(), None);
}

/// A second owner waits out its whole retry budget, then gets `Timeout` (not a system error)
/// naming the holder where the backend can tell.
pub async fn busy_lock_times_out_with_holder(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    let policy = WaitPolicy::Retry { retries: 2, delay: Duration::from_millis(100), jitter: 0.0 };
    let started = Instant::now();
    let err = q.lock(&opts(&key, "bob").wait(policy)).await.expect_err("held by alice");
    let elapsed = started.elapsed();
    assert!(err.is_timeout() && !err.is_system() && err.is_retryable(), "{err:?}");
    match err {
        LockError::Timeout { key: k, holder, waited } => {
            assert_eq!(k, key);
            if let Some(h) = holder {
                assert_eq!(h, "alice");
            }
            assert!(waited >= Duration::from_millis(200), "gave up before its budget: {waited:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(200), "returned before the budget: {elapsed:?}");
    assert_eq!(p.is_locked(&key).await.unwrap().unwrap().owner, "alice");
}

/// `try_lock` makes one attempt whatever the wait policy says.
pub async fn try_lock_does_not_wait(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    let long = opts(&key, "bob").wait(WaitPolicy::deadline(Duration::from_secs(600)));
    let err = tokio::time::timeout(Duration::from_secs(60), p.try_lock(&long))
        .await
        .expect("try_lock waited as if it were lock")
        .expect_err("busy");
    assert!(err.is_timeout(), "{err:?}");
    assert!(p.try_lock(&opts(&ctx.key("free"), "bob")).await.is_ok());
}

/// Re-entering keeps the token, counts depth, and needs one unlock per lock.
pub async fn reentrant_lock_needs_matching_unlocks(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.reentrant, "reentrant") {
        return;
    }
    let key = ctx.key("k");
    let first = p.lock(&opts(&key, "alice")).await.unwrap();
    let second = p.lock(&opts(&key, "alice")).await.expect("owner re-enters");
    assert_eq!(second.depth, 2);
    assert_eq!(second.token, first.token, "re-entry keeps the fencing token");
    assert_eq!(p.is_locked(&key).await.unwrap().unwrap().depth, 2);
    p.unlock(&key, "alice").await.unwrap();
    let info = p.is_locked(&key).await.unwrap().expect("one level still held");
    assert_eq!((info.owner.as_str(), info.depth), ("alice", 1));
    assert!(p.try_lock(&opts(&key, "bob")).await.unwrap_err().is_timeout());
    p.unlock(&key, "alice").await.unwrap();
    assert_eq!(p.is_locked(&key).await.unwrap(), None);
    assert!(matches!(p.unlock(&key, "alice").await, Err(LockError::NotHeld { .. })));
}

/// Re-entering with a longer TTL extends the lease; with a shorter one it never shortens it.
pub async fn reentry_extends_to_the_longer_ttl(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.reentrant, "reentrant") {
        return;
    }
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice").ttl(Duration::from_secs(10))).await.unwrap();
    let longer = p.lock(&opts(&key, "alice").ttl(Duration::from_secs(60))).await.unwrap();
    assert!(longer.ttl > Duration::from_secs(50), "{:?}", longer.ttl);
    assert!(p.is_locked(&key).await.unwrap().unwrap().remaining_ttl > Duration::from_secs(50));
    let shorter = p.lock(&opts(&key, "alice").ttl(Duration::from_secs(3))).await.unwrap();
    assert_eq!(shorter.depth, 3);
    assert!(
        p.is_locked(&key).await.unwrap().unwrap().remaining_ttl > Duration::from_secs(50),
        "re-entry shortened the lease"
    );
}

/// Owners with spaces and punctuation come back unchanged from every place that reports them.
pub async fn owners_with_spaces_round_trip(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let owner = "host a:123 worker #7 (retry 2)";
    p.lock(&opts(&key, owner)).await.unwrap();
    assert_eq!(p.is_locked(&key).await.unwrap().unwrap().owner, owner);
    assert_eq!(p.list(ctx.prefix()).await.unwrap()[0].owner, owner);
    match p.try_lock(&opts(&key, "bob")).await {
        Err(LockError::Timeout { holder, .. }) => assert!(holder.map_or(true, |h| h == owner)),
        other => panic!("{other:?}"),
    }
    match p.unlock(&key, "bob").await {
        Err(LockError::NotOwner { holder, .. }) => assert!(holder.map_or(true, |h| h == owner)),
        other => panic!("{other:?}"),
    }
    p.unlock(&key, owner).await.unwrap();
}

/// Closing a provider while its `lock` calls are in flight leaves no lock behind. Only locks
/// that outlive their provider (a distributed backend) can be left behind; the case needs
/// providers that are separate clients.
pub async fn close_during_acquire_leaves_no_lock(ctx: &Ctx) {
    let observer = ctx.provider().await;
    if !ctx.requires(observer.capabilities(), |c| c.distributed, "distributed") {
        return;
    }
    let mut raced = 0;
    for round in 0..10u64 {
        let p = ctx.provider().await;
        let key = ctx.key(&format!("k{round}"));
        let (p2, k2) = (p.clone(), key.clone());
        let call = tokio::spawn(async move { p2.lock(&opts(&k2, "bob")).await });
        // From "at once" to "about a round trip later"; the timer's 1 ms tick is too coarse.
        match round {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => {
                let until = std::time::Instant::now() + Duration::from_micros(round * 40);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
        }
        if !call.is_finished() {
            raced += 1;
        }
        p.close().await.unwrap();
        match call.await.unwrap() {
            // Acquired before the close: the lock is bob's, and releasing it is an operator's
            // job now that his provider is closed.
            Ok(_) => match observer.unlock(&key, "bob").await {
                Ok(()) | Err(LockError::Closed) => {}
                Err(e) => panic!("round {round}: {e:?}"),
            },
            Err(LockError::Closed) => {}
            Err(e) => panic!("round {round}: {e:?}"),
        }
        let left = eventually_free(&*observer, &key).await;
        assert_eq!(left, None, "round {round}: a lock survived the close of its provider");
    }
    eprintln!("{raced} of 10 lock calls were unfinished when the close began");
    assert!(raced > 0, "every lock call had finished before the close: the case tested nothing");
}

/// `unlock` by somebody else fails with `NotOwner` and leaves the holder's lock as it was.
pub async fn unlock_by_non_owner_keeps_holder(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let lease = p.lock(&opts(&key, "alice")).await.unwrap();
    match p.unlock(&key, "mallory").await {
        Err(LockError::NotOwner { key: k, holder }) => {
            assert_eq!(k, key);
            if let Some(h) = holder {
                assert_eq!(h, "alice");
            }
        }
        other => panic!("expected NotOwner, got {other:?}"),
    }
    let info = p.is_locked(&key).await.unwrap().expect("holder intact");
    assert_eq!((info.owner.as_str(), info.token, info.depth), ("alice", lease.token, 1));
    p.unlock(&key, "alice").await.unwrap();
}

/// `unlock` of a key nobody holds fails with `NotHeld`.
pub async fn unlock_of_free_key_is_not_held(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("never");
    assert!(matches!(p.unlock(&key, "alice").await, Err(LockError::NotHeld { .. })));
    p.lock(&opts(&key, "alice")).await.unwrap();
    p.unlock(&key, "alice").await.unwrap();
    assert!(matches!(p.unlock(&key, "alice").await, Err(LockError::NotHeld { .. })));
}

/// `refresh_lock` moves the expiry to the new TTL, keeps the token, and so outlives the
/// original TTL.
pub async fn refresh_extends_lease_and_keeps_token(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let lease = p.lock(&opts(&key, "alice").ttl(ctx.short_ttl())).await.unwrap();
    let refreshed = p.refresh_lock(&key, "alice", Duration::from_secs(30)).await.expect("holder refreshes");
    assert_eq!(refreshed.token, lease.token);
    assert!(refreshed.ttl > Duration::from_secs(25), "{:?}", refreshed.ttl);
    tokio::time::sleep(ctx.outlive_short_ttl()).await;
    let info = p.is_locked(&key).await.unwrap().expect("refreshed lease outlives the first TTL");
    assert_eq!(info.owner, "alice");
    assert!(info.remaining_ttl > Duration::from_secs(20), "{:?}", info.remaining_ttl);
    // A shorter TTL is honoured too.
    let shorter = p.refresh_lock(&key, "alice", Duration::from_secs(10)).await.unwrap();
    assert!(shorter.ttl <= Duration::from_secs(10));
    assert!(p.is_locked(&key).await.unwrap().unwrap().remaining_ttl <= Duration::from_secs(10));
}

/// `refresh_lock` by an owner that does not hold the lock fails with `LeaseLost` and leaves
/// the holder's lease as it was.
pub async fn refresh_by_non_owner_fails(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let lease = p.lock(&opts(&key, "alice").ttl(Duration::from_secs(20))).await.unwrap();
    let err = p.refresh_lock(&key, "mallory", Duration::from_secs(600)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    let info = p.is_locked(&key).await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), ("alice", lease.token));
    assert!(info.remaining_ttl <= Duration::from_secs(20), "non-owner refresh extended the lease");
    let err = p.refresh_lock(&ctx.key("free"), "alice", Duration::from_secs(5)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
}

/// Once a lease runs out, another owner acquires without anyone unlocking.
pub async fn expired_lock_can_be_taken(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice").ttl(ctx.short_ttl())).await.unwrap();
    tokio::time::sleep(ctx.outlive_short_ttl()).await;
    let lease = q.try_lock(&opts(&key, "bob")).await.expect("expired lease frees the key");
    assert_eq!(&*lease.owner, "bob");
    assert_eq!(p.is_locked(&key).await.unwrap().unwrap().owner, "bob");
}

/// A holder whose lease expired (and was taken over) can neither unlock nor refresh the new
/// holder's lock.
pub async fn stale_holder_cannot_touch_new_holders_lock(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    let stale = p.lock(&opts(&key, "alice").ttl(ctx.short_ttl())).await.unwrap();
    tokio::time::sleep(ctx.outlive_short_ttl()).await;
    assert!(stale.is_expired(), "the local deadline must be conservative");
    let fresh = q.lock(&patient(&key, "bob")).await.unwrap();
    let err = p.unlock(&key, "alice").await.unwrap_err();
    assert!(matches!(err, LockError::NotOwner { .. }), "{err:?}");
    let err = p.refresh_lock(&key, "alice", Duration::from_secs(60)).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    let info = q.is_locked(&key).await.unwrap().expect("new holder intact");
    assert_eq!((info.owner.as_str(), info.token), ("bob", fresh.token));
    assert!(info.remaining_ttl <= Duration::from_secs(30));
}

/// Fencing tokens strictly increase across release, expiry and owners; re-entry keeps them.
pub async fn fencing_tokens_strictly_increase(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.fencing, "fencing") {
        return;
    }
    let q = ctx.provider().await;
    let key = ctx.key("k");
    let t1 = p.lock(&opts(&key, "alice")).await.unwrap().token;
    p.unlock(&key, "alice").await.unwrap();
    let t2 = q.lock(&opts(&key, "bob")).await.unwrap().token;
    assert!(t2 > t1, "after release: {t1} then {t2}");
    q.unlock(&key, "bob").await.unwrap();
    let t3 = p.lock(&opts(&key, "alice").ttl(ctx.short_ttl())).await.unwrap().token;
    assert!(t3 > t2, "same owner again: {t2} then {t3}");
    tokio::time::sleep(ctx.outlive_short_ttl()).await;
    let t4 = q.lock(&patient(&key, "bob")).await.unwrap().token;
    assert!(t4 > t3, "after expiry: {t3} then {t4}");
    q.unlock(&key, "bob").await.unwrap();
    // A free key and its counter: the next token still goes up.
    let t5 = p.lock(&opts(&key, "carol")).await.unwrap().token;
    assert!(t5 > t4, "after cleanup: {t4} then {t5}");
    let info = p.is_locked(&key).await.unwrap().unwrap();
    assert_eq!(info.token, t5);
}

/// `is_locked` reports holder, token, remaining TTL and depth; a free key is `None`.
pub async fn is_locked_reports_holder_and_ttl(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    assert_eq!(p.is_locked(&key).await.unwrap(), None);
    let lease = p.lock(&opts(&key, "alice").ttl(Duration::from_secs(30))).await.unwrap();
    let info = p.is_locked(&key).await.unwrap().expect("held");
    assert_eq!(info.key, key);
    assert_eq!(info.owner, "alice");
    assert_eq!(info.token, lease.token);
    assert_eq!(info.depth, 1);
    assert!(
        info.remaining_ttl > Duration::from_secs(20) && info.remaining_ttl <= Duration::from_secs(30),
        "{:?}",
        info.remaining_ttl
    );
}

/// A waiter acquires once the holder releases, within its wait policy.
pub async fn waiter_acquires_after_release(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    let first = p.lock(&opts(&key, "alice")).await.unwrap();
    let k2 = key.clone();
    let waiter = tokio::spawn(async move { q.lock(&patient(&k2, "bob")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "waiter must wait while alice holds the lock");
    p.unlock(&key, "alice").await.unwrap();
    let lease = waiter.await.unwrap().expect("waiter acquires after release");
    assert_eq!(&*lease.owner, "bob");
    assert!(lease.token > first.token || !p.capabilities().fencing);
}

/// A release wakes a waiter at once: its only timer retry is far beyond the case's bound, so
/// it can only succeed by being woken.
pub async fn release_wakes_waiter(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.wakes_waiters, "wakes_waiters") {
        return;
    }
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    let k2 = key.clone();
    let policy = WaitPolicy::Retry { retries: 1, delay: Duration::from_secs(3600), jitter: 0.0 };
    let waiter = tokio::spawn(async move { q.lock(&opts(&k2, "bob").wait(policy)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.unlock(&key, "alice").await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the release did not wake the waiter")
        .unwrap()
        .unwrap();
    assert_eq!(&*lease.owner, "bob");
}

/// A waiter acquires when the holder's lease runs out, without any release.
pub async fn waiter_acquires_after_holder_expires(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice").ttl(ctx.short_ttl())).await.unwrap();
    let lease = q.lock(&patient(&key, "bob")).await.expect("waiter takes over the expired lease");
    assert_eq!(&*lease.owner, "bob");
}

/// Waiters get the lock in the order they started waiting.
pub async fn fifo_order(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.fifo, "fifo") {
        return;
    }
    let key = ctx.key("k");
    p.lock(&opts(&key, "holder")).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (q, key, order) = (ctx.provider().await, key.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{i}");
            q.lock(&patient(&key, &owner)).await.unwrap();
            order.lock().unwrap().push(i);
            q.unlock(&key, &owner).await.unwrap();
        }));
        // Let this waiter queue before the next one starts.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.unlock(&key, "holder").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

/// Dropping a waiting `lock` future leaves no lock and no queue entry behind.
pub async fn dropped_waiting_lock_leaves_no_lock(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), q.lock(&patient(&key, "bob"))).await;
    assert!(gave_up.is_err(), "the waiter should still have been waiting");
    p.unlock(&key, "alice").await.unwrap();
    let left = eventually_free(&*p, &key).await;
    assert_eq!(left, None, "a cancelled waiter left a lock behind");
    let lease = p.try_lock(&opts(&key, "carol")).await.expect("key is free for the next caller");
    assert_eq!(&*lease.owner, "carol");
}

/// A waiter cancelled right as the lock is released either got the lock (and releases it) or
/// left nothing: the key never stays locked by a caller that is gone.
pub async fn cancel_racing_release_leaves_no_orphan(ctx: &Ctx) {
    let p = ctx.provider().await;
    for round in 0..30u64 {
        let key = ctx.key(&format!("k{round}"));
        p.lock(&opts(&key, "alice")).await.unwrap();
        let (q, k2) = (ctx.provider().await, key.clone());
        let waiter = tokio::spawn(async move { q.lock(&patient(&k2, "bob")).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.unlock(&key, "alice").await.unwrap();
        // Vary the race window: abort right at, just after and well after the hand-over.
        match round % 3 {
            0 => {}
            1 => tokio::task::yield_now().await,
            _ => tokio::time::sleep(Duration::from_micros(round * 100)).await,
        }
        waiter.abort();
        match waiter.await {
            Ok(Ok(lease)) => p.unlock(&key, &lease.owner).await.unwrap(),
            Ok(Err(e)) => panic!("waiter failed: {e:?}"),
            Err(_cancelled) => {}
        }
        let left = eventually_free(&*p, &key).await;
        assert_eq!(left, None, "round {round}: a cancelled waiter left a lock behind");
    }
}

/// A `lock` dropped while its request is in flight (the key is free, so the request may well
/// be granted after the caller left) leaves no lock behind. Only a backend with round trips
/// has requests in flight (an in-process one answers within its first poll).
pub async fn dropped_lock_in_flight_leaves_no_lock(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.distributed, "distributed") {
        return;
    }
    let mut dropped = 0;
    for round in 0..40u64 {
        let key = ctx.key(&format!("k{round}"));
        // From "dropped right after its first poll" to "after a round trip or two".
        match within(Duration::from_micros(round * round * 2), p.lock(&opts(&key, "bob"))).await {
            Some(Ok(lease)) => p.unlock(&key, &lease.owner).await.unwrap(),
            Some(Err(e)) => panic!("lock of a free key failed: {e:?}"),
            None => dropped += 1,
        }
        let left = eventually_free(&*p, &key).await;
        assert_eq!(left, None, "round {round}: a lock dropped in flight stayed behind");
    }
    eprintln!("{dropped} of 40 lock calls were dropped in flight");
    assert!(dropped > 0, "no call was dropped in flight: the case tested nothing");
}

/// A `lock` task aborted from another thread while it runs (on the other worker; the key is
/// free, so the request may be granted whether or not its caller is still there to hear it)
/// either returned its lease (which is released) or leaves no lock behind. Aborts land before,
/// during and after the round trip.
pub async fn aborted_lock_task_leaves_no_lock(ctx: &Ctx) {
    const ROUNDS: u64 = 60;
    let p = ctx.provider().await;
    let mut aborted = 0;
    for round in 0..ROUNDS {
        let key = ctx.key(&format!("k{round}"));
        let (p2, k2) = (p.clone(), key.clone());
        let caller = tokio::spawn(async move { p2.lock(&opts(&k2, "alice")).await });
        // Timers are too coarse for this: spin 0 to 190 µs while the caller runs on the other
        // worker.
        let until = std::time::Instant::now() + Duration::from_micros(round % 20 * 10);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        caller.abort();
        match caller.await {
            Ok(lease) => {
                let lease = lease.unwrap_or_else(|e| panic!("round {round}: a free key was refused: {e:?}"));
                p.unlock(&key, &lease.owner).await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            }
            Err(e) if e.is_cancelled() => aborted += 1,
            Err(e) => panic!("round {round}: the lock task failed: {e}"),
        }
        let left = eventually_free(&*p, &key).await;
        assert_eq!(left, None, "round {round}: an aborted lock task left its lock behind");
    }
    eprintln!("{aborted} of {ROUNDS} lock tasks were aborted before they finished");
    assert!(aborted > 0, "no lock task was aborted before it finished: the case tested nothing");
}

/// A re-entry dropped in flight (perhaps after the server applied it) gives back at most its
/// own level: the owner's first level is still held, and one unlock frees the key.
pub async fn dropped_reentry_keeps_the_first_level(ctx: &Ctx) {
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.reentrant && c.distributed, "reentrant, distributed") {
        return;
    }
    let mut dropped = 0;
    for round in 0..30u64 {
        let key = ctx.key(&format!("k{round}"));
        let first = p.lock(&opts(&key, "alice")).await.expect("first level");
        let levels =
            match within(Duration::from_micros(round * round * 4), p.lock(&opts(&key, "alice"))).await {
                Some(Ok(lease)) => lease.depth,
                Some(Err(e)) => panic!("re-entry failed: {e:?}"),
                None => {
                    dropped += 1;
                    // Let a clean-up of the dropped request run.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    p.is_locked(&key).await.unwrap().map_or(0, |i| i.depth)
                }
            };
        let Some(info) = p.is_locked(&key).await.unwrap() else {
            panic!("round {round}: the first level was lost with the dropped re-entry")
        };
        assert_eq!((info.owner.as_str(), info.token), ("alice", first.token), "round {round}");
        for _ in 0..levels.max(1) {
            p.unlock(&key, "alice").await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        }
        let left = eventually_free(&*p, &key).await;
        assert_eq!(left, None, "round {round}: a level was left behind");
    }
    eprintln!("{dropped} of 30 re-entries were dropped in flight");
    assert!(dropped > 0, "no re-entry was dropped in flight: the case tested nothing");
}

/// Two tasks of one owner lock a free key at once and one of them is dropped in flight: the
/// dropped call gives back at most the one level it may have taken, never the level the other
/// task received (which may sit on the same entry, as a re-entry of it).
pub async fn dropped_acquisition_keeps_the_owners_other_level(ctx: &Ctx) {
    const ROUNDS: u64 = 200;
    let p = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.reentrant && c.distributed, "reentrant, distributed") {
        return;
    }
    let mut dropped = 0;
    for round in 0..ROUNDS {
        let key = ctx.key(&format!("k{round}"));
        // The dropped call gets 0 to 0.6 ms, the other one starts 0 to 7.6 ms after it: from
        // "taken before the other call asks" to "given back before it", swept again and again.
        let budget = Duration::from_micros(round % 4 * 200);
        let delay = Duration::from_micros(round / 4 % 20 * 400);
        let alice = opts(&key, "alice");
        let (first, second) = tokio::join!(within(budget, p.lock(&alice)), async {
            within(delay, std::future::pending::<()>()).await;
            p.lock(&alice).await
        });
        let second =
            second.unwrap_or_else(|e| panic!("round {round}: a lock of alice's own key failed: {e:?}"));
        let received = match first {
            Some(Ok(_)) => 2,
            Some(Err(e)) => panic!("round {round}: a lock of alice's own key failed: {e:?}"),
            None => {
                dropped += 1;
                1
            }
        };
        // Let a clean-up of the dropped call run; it may take back its own level only.
        let until = Instant::now() + Duration::from_secs(5);
        let info = loop {
            let info = p.is_locked(&key).await.unwrap();
            if info.as_ref().map_or(true, |i| i.depth <= received) || Instant::now() >= until {
                break info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let Some(info) = info else {
            panic!("round {round}: alice's received level was taken back with the dropped call")
        };
        assert_eq!((info.owner.as_str(), info.token), ("alice", second.token), "round {round}");
        assert_eq!(info.depth, received, "round {round}: levels held after the clean-up");
        for _ in 0..received {
            p.unlock(&key, "alice").await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        }
        let left = eventually_free(&*p, &key).await;
        assert_eq!(left, None, "round {round}: a level was left behind");
    }
    eprintln!("{dropped} of {ROUNDS} concurrent acquisitions were dropped in flight");
    assert!(dropped > 0, "no acquisition was dropped in flight: the case tested nothing");
}

/// Polls `fut` until it finishes or `budget` has passed, then drops it: a cancellation point
/// finer than the timer's 1 ms tick (`tokio::time::timeout` rounds a deadline up to it). The
/// future is polled at least once, and polled again at once whenever it yields, so its I/O
/// goes on meanwhile.
async fn within<F: Future>(budget: Duration, fut: F) -> Option<F::Output> {
    let started = std::time::Instant::now();
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending if started.elapsed() >= budget => std::task::Poll::Ready(None),
        std::task::Poll::Pending => {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Locks on different keys do not interfere.
pub async fn distinct_keys_are_independent(ctx: &Ctx) {
    let p = ctx.provider().await;
    let (a, b) = (ctx.key("a"), ctx.key("b"));
    p.lock(&opts(&a, "alice")).await.unwrap();
    let lb = p.lock(&opts(&b, "bob")).await.expect("other key is free");
    assert_eq!(&*lb.owner, "bob");
    assert_eq!(p.is_locked(&a).await.unwrap().unwrap().owner, "alice");
    assert_eq!(p.is_locked(&b).await.unwrap().unwrap().owner, "bob");
    p.unlock(&a, "alice").await.unwrap();
    assert_eq!(p.is_locked(&b).await.unwrap().unwrap().owner, "bob");
}

/// Keys that extend one another (`jobs`, `jobs/a`, `jobs:a`) are separate locks: neither is
/// mistaken for the other's holder or waiter, and `list` treats the shorter one as a prefix.
pub async fn keys_extending_each_other_are_independent(ctx: &Ctx) {
    let p = ctx.provider().await;
    let (jobs, slash, colon) = (ctx.key("jobs"), ctx.key("jobs/a"), ctx.key("jobs:a"));
    let outer = p.lock(&opts(&jobs, "alice")).await.unwrap();
    let inner = p.lock(&opts(&slash, "bob")).await.expect("jobs/a is not jobs");
    p.lock(&opts(&colon, "carol")).await.expect("jobs:a is not jobs");
    let info = p.is_locked(&jobs).await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), ("alice", outer.token));
    let info = p.is_locked(&slash).await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), ("bob", inner.token));
    let listed: Vec<_> = p.list(&jobs).await.unwrap().into_iter().map(|i| (i.key, i.owner)).collect();
    let expected = [(&jobs, "alice"), (&slash, "bob"), (&colon, "carol")];
    assert_eq!(listed, expected.map(|(k, o)| (k.clone(), o.to_string())), "sorted by key");
    match p.try_lock(&opts(&jobs, "dave")).await {
        Err(LockError::Timeout { holder, .. }) => assert!(holder.map_or(true, |h| h == "alice")),
        other => panic!("jobs is alice's: {other:?}"),
    }
    assert!(matches!(p.unlock(&jobs, "bob").await, Err(LockError::NotOwner { .. })));
    p.unlock(&jobs, "alice").await.unwrap();
    assert_eq!(p.is_locked(&jobs).await.unwrap(), None);
    let info = p.is_locked(&slash).await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), ("bob", inner.token));
    let under: Vec<_> = p.list(&jobs).await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(under, vec![slash.clone(), colon.clone()]);
    // The longer keys' holders do not make `jobs` look taken.
    let again = p.try_lock(&opts(&jobs, "dave")).await.expect("jobs is free while jobs/a is held");
    assert_eq!(&*again.owner, "dave");
}

/// A waiter that queued for longer than its own TTL still gets a whole lease when its turn
/// comes: waiting must not eat into the lease. With `fifo` it also keeps its place: a waiter
/// that came after its TTL ran out is still behind it.
pub async fn long_waiter_gets_a_full_lease(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let fifo = p.capabilities().fifo;
    let key = ctx.key("k");
    let ttl = ctx.short_ttl() * 2;
    let order = Arc::new(Mutex::new(Vec::new()));
    p.lock(&opts(&key, "alice")).await.unwrap();
    let (k2, o2) = (key.clone(), order.clone());
    let waiter = tokio::spawn(async move {
        let lease = q.lock(&patient(&k2, "bob").ttl(ttl)).await;
        o2.lock().unwrap().push("bob");
        lease
    });
    // Longer than the waiter's TTL and the backend's expiry slack: whatever the waiter put on
    // the server while queueing would be gone by now unless it is kept alive.
    tokio::time::sleep(ttl + ctx.outlive_short_ttl()).await;
    let later = if fifo {
        let (r, k2, o2) = (ctx.provider().await, key.clone(), order.clone());
        let later = tokio::spawn(async move {
            r.lock(&patient(&k2, "carol")).await.expect("the later waiter acquires");
            o2.lock().unwrap().push("carol");
            r.unlock(&k2, "carol").await.unwrap();
        });
        // Let the later waiter queue.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some(later)
    } else {
        None
    };
    p.unlock(&key, "alice").await.unwrap();
    let lease = waiter.await.unwrap().expect("the waiter acquires");
    let info = p.is_locked(&key).await.unwrap().expect("the waiter holds the lock");
    assert_eq!(info.owner, "bob", "the long waiter lost its place in the queue");
    assert!(
        info.remaining_ttl > ttl / 2,
        "only {:?} of a {ttl:?} lease left right after the grant",
        info.remaining_ttl
    );
    assert!(lease.remaining() > ttl / 2, "the lease's local deadline must count from the grant");
    if let Some(later) = later {
        p.unlock(&key, "bob").await.unwrap();
        later.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["bob", "carol"], "the long waiter lost its place in the queue");
    }
}

/// N tasks x M iterations on one key: the history checker finds no overlapping grants and
/// (with fencing) tokens strictly increasing in grant order; never two in the critical
/// section; a shared counter that ends at N*M. Half the
/// tasks share one provider (callers of one process), the others have one each.
pub async fn mutual_exclusion_under_contention(ctx: &Ctx) {
    const TASKS: usize = 8;
    const ITERS: usize = 25;
    let key = ctx.key("hot");
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let history = crate::history::History::new();
    let fencing = ctx.provider().await.capabilities().fencing;
    let shared = ctx.provider().await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let p = if t % 2 == 0 { shared.clone() } else { ctx.provider().await };
        let (key, inside, overlaps, counter, history) =
            (key.clone(), inside.clone(), overlaps.clone(), counter.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("task-{t}");
            let o = LockOptions::new(key.as_str(), owner.as_str())
                .ttl(Duration::from_secs(30))
                .wait(WaitPolicy::deadline(Duration::from_secs(60)));
            for _ in 0..ITERS {
                let lease = p.lock(&o).await.expect("lock under contention");
                let grant = history.granted(&lease);
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let seen = counter.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                counter.store(seen + 1, Ordering::SeqCst);
                inside.store(false, Ordering::SeqCst);
                history.released(grant);
                p.unlock(&key, &owner).await.expect("unlock own lock");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Grant intervals and token order, then what the critical section itself saw.
    history.assert_ok(fencing);
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert_eq!(counter.load(Ordering::SeqCst), (TASKS * ITERS) as u64, "lost updates");
    assert_eq!(ctx.provider().await.is_locked(&key).await.unwrap(), None);
}

fn assert_invalid<T: std::fmt::Debug>(r: lock_core::Result<T>, field: &str) {
    match r {
        Err(LockError::InvalidArgument { what, .. }) => assert_eq!(what, field),
        other => panic!("expected InvalidArgument for {field}, got {other:?}"),
    }
}

/// Every input rule of [`lock_core::validate`] is enforced by every operation, and the
/// longest key and owner the rules allow work.
pub async fn invalid_inputs_rejected(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let long_key = "k".repeat(validate::MAX_KEY_LEN + 1);
    let long_owner = "o".repeat(validate::MAX_OWNER_LEN + 1);
    for (o, field) in [
        (opts("", "alice"), "key"),
        (opts(&long_key, "alice"), "key"),
        (opts("a\0b", "alice"), "key"),
        (opts(&key, ""), "owner"),
        (opts(&key, &long_owner), "owner"),
        (opts(&key, "al\0ice"), "owner"),
        (opts(&key, "alice").ttl(Duration::ZERO), "ttl"),
        (opts(&key, "alice").ttl(validate::MAX_TTL + Duration::from_secs(1)), "ttl"),
        (
            opts(&key, "alice").wait(WaitPolicy::Retry {
                retries: 1,
                delay: Duration::from_secs(1),
                jitter: -0.5,
            }),
            "jitter",
        ),
    ] {
        assert_invalid(p.lock(&o).await, field);
        assert_invalid(p.try_lock(&o).await, field);
    }
    assert_invalid(p.unlock("", "alice").await, "key");
    assert_invalid(p.unlock(&key, "").await, "owner");
    assert_invalid(p.refresh_lock(&key, "alice", Duration::ZERO).await, "ttl");
    assert_invalid(p.refresh_lock(&long_key, "alice", Duration::from_secs(1)).await, "key");
    assert_invalid(p.is_locked("").await, "key");
    assert_invalid(p.list("a\0").await, "prefix");
    assert_eq!(p.is_locked(&key).await.unwrap(), None, "a rejected call must not lock");
    // The limits are inclusive, also for characters a backend escapes in its own key layout
    // (which may make its stored key longer than the caller's).
    let awkward = "}{%_*?[\\:/ ";
    let mut longest = ctx.key("");
    for c in awkward.chars().cycle() {
        if longest.len() + c.len_utf8() > validate::MAX_KEY_LEN {
            break;
        }
        longest.push(c);
    }
    assert_eq!(longest.len(), validate::MAX_KEY_LEN);
    let longest_owner: String = awkward.chars().cycle().take(validate::MAX_OWNER_LEN).collect();
    let lease = p.lock(&opts(&longest, &longest_owner)).await.expect("the longest key and owner are valid");
    assert_eq!((&*lease.key, &*lease.owner), (longest.as_str(), longest_owner.as_str()));
    let info = p.is_locked(&longest).await.unwrap().expect("held");
    assert_eq!((info.key.as_str(), info.owner.as_str()), (longest.as_str(), longest_owner.as_str()));
    assert!(p.try_lock(&opts(&longest, "bob")).await.unwrap_err().is_timeout());
    p.refresh_lock(&longest, &longest_owner, Duration::from_secs(30)).await.unwrap();
    assert_eq!(p.list(&longest).await.unwrap().len(), 1);
    p.unlock(&longest, &longest_owner).await.unwrap();
    assert_eq!(p.is_locked(&longest).await.unwrap(), None);
}

/// Input is checked before anything else: even a closed provider answers `InvalidArgument`.
pub async fn invalid_input_rejected_before_anything_else(ctx: &Ctx) {
    let p = ctx.provider().await;
    p.close().await.unwrap();
    assert_invalid(p.lock(&opts("", "alice")).await, "key");
    assert_invalid(p.unlock(&ctx.key("k"), "").await, "owner");
    assert_invalid(p.refresh_lock(&ctx.key("k"), "alice", Duration::ZERO).await, "ttl");
}

/// After `close`, every operation fails with `Closed`; closing twice is fine.
pub async fn operations_after_close_fail_closed(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    p.close().await.unwrap();
    p.close().await.expect("close is idempotent");
    let closed =
        |r: lock_core::Result<()>, op: &str| assert!(matches!(r, Err(LockError::Closed)), "{op}: {r:?}");
    closed(p.lock(&opts(&key, "bob")).await.map(drop), "lock");
    closed(p.try_lock(&opts(&key, "bob")).await.map(drop), "try_lock");
    closed(p.unlock(&key, "alice").await, "unlock");
    closed(p.refresh_lock(&key, "alice", Duration::from_secs(1)).await.map(drop), "refresh_lock");
    closed(p.is_locked(&key).await.map(drop), "is_locked");
    closed(p.list("").await.map(drop), "list");
    closed(p.health().await.map(drop), "health");
}

/// Closing a provider ends its callers that are waiting for a lock with `Closed`.
pub async fn close_fails_waiters(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    let (q2, k2) = (q.clone(), key.clone());
    let waiter = tokio::spawn(async move { q2.lock(&patient(&k2, "bob")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.close().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), waiter).await.expect("waiter ended").unwrap();
    assert!(matches!(r, Err(LockError::Closed)), "{r:?}");
}

/// `list` shows exactly the held locks under a prefix, sorted by key.
pub async fn list_shows_held_locks_by_prefix(ctx: &Ctx) {
    let p = ctx.provider().await;
    let (a, b, other) = (ctx.key("jobs/a"), ctx.key("jobs/b"), ctx.key("other/c"));
    let la = p.lock(&opts(&a, "alice")).await.unwrap();
    let lb = p.lock(&opts(&b, "bob")).await.unwrap();
    p.lock(&opts(&other, "carol")).await.unwrap();
    let listed = p.list(&ctx.key("jobs/")).await.unwrap();
    let seen: Vec<_> = listed.iter().map(|i| (i.key.as_str(), i.owner.as_str(), i.token)).collect();
    assert_eq!(seen, vec![(a.as_str(), "alice", la.token), (b.as_str(), "bob", lb.token)]);
    assert!(listed.iter().all(|i| i.remaining_ttl > Duration::ZERO && i.depth == 1));
    assert_eq!(p.list(ctx.prefix()).await.unwrap().len(), 3);
    p.unlock(&a, "alice").await.unwrap();
    let keys: Vec<_> = p.list(&ctx.key("jobs/")).await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(keys, vec![b]);
}

/// `health` answers for the backend it belongs to.
pub async fn health_reports_backend(ctx: &Ctx) {
    let p = ctx.provider().await;
    let h = p.health().await.expect("healthy backend");
    assert_eq!(h.backend, p.name());
}

// ---------------------------------------------------------------------------------------------
// The workflow layer on the backend under test.

fn workflow_config(ctx: &Ctx, ttl: Duration, auto_refresh: bool) -> WorkflowConfig {
    WorkflowConfig {
        key_prefix: ctx.key("wf:"),
        ttl,
        wait: WaitPolicy::NoWait,
        auto_refresh,
        ..WorkflowConfig::default()
    }
}

fn workflows(p: Arc<dyn LockProvider>, ctx: &Ctx, ttl: Duration, auto_refresh: bool) -> WorkflowLockProvider {
    WorkflowLockProvider::new(p, workflow_config(ctx, ttl, auto_refresh))
}

/// An execution lock excludes every other handle (also of the same process); the handle
/// reports its key, ids and token; unlock frees it.
pub async fn workflow_execution_lock_is_exclusive(ctx: &Ctx) {
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(30), true);
    let h = wf.lock_workflow_execution("exec-1").await.expect("free execution");
    assert_eq!(h.lock_key(), ctx.key("wf:execution:exec-1"));
    assert_eq!((h.execution_id(), h.template_id()), (Some("exec-1"), None));
    let again = wf.lock_workflow_execution("exec-1").await.expect_err("same process, other handle");
    assert!(again.is_timeout(), "{again:?}");
    let other = wf.lock_workflow_execution("exec-2").await.expect("other execution is free");
    let info = wf.provider().is_locked(h.lock_key()).await.unwrap().expect("held");
    assert_eq!((info.owner.as_str(), info.token), (h.owner(), h.fencing_token()));
    h.unlock().await.unwrap();
    other.unlock().await.unwrap();
    let h2 = wf.lock_workflow_execution("exec-1").await.expect("free again");
    assert!(h2.fencing_token() > info.token || !wf.provider().capabilities().fencing);
    let t = wf.lock_workflow_template("tpl").await.unwrap();
    assert_eq!((t.execution_id(), t.template_id()), (None, Some("tpl")));
    let r = wf.lock_resource("db-1").await.unwrap();
    assert_eq!(r.lock_key(), ctx.key("wf:resource:db-1"));
    for h in [h2, t, r] {
        h.unlock().await.unwrap();
    }
}

/// The watchdog keeps a lease alive well past its TTL; unlock stops it.
pub async fn workflow_auto_refresh_outlives_ttl(ctx: &Ctx) {
    // Room for a refresh round trip on a busy machine within the trusted part of the lease.
    let ttl = (ctx.short_ttl() * 2).max(Duration::from_secs(1));
    let wf = workflows(ctx.provider().await, ctx, ttl, true);
    let h = wf.lock_workflow_execution("long").await.unwrap();
    tokio::time::sleep(ttl * 3).await;
    assert!(!h.is_lost(), "the watchdog must keep the lease");
    let q = ctx.provider().await;
    let busy = q.try_lock(&opts(h.lock_key(), "intruder")).await.expect_err("still held after 3 TTLs");
    assert!(busy.is_timeout(), "{busy:?}");
    let key = h.lock_key().to_string();
    h.unlock().await.unwrap();
    assert_eq!(q.is_locked(&key).await.unwrap(), None);
}

/// The lost signal fires when the lease is taken away (here: force-released by an operator
/// using the handle's owner id) and the watchdog's next refresh is refused.
pub async fn workflow_lost_signal_fires_when_lease_is_revoked(ctx: &Ctx) {
    let ttl = ctx.short_ttl() * 2;
    let wf = workflows(ctx.provider().await, ctx, ttl, true);
    let h = wf.lock_workflow_execution("revoked").await.unwrap();
    let admin = ctx.provider().await;
    admin.unlock(h.lock_key(), h.owner()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), h.lost().cancelled())
        .await
        .expect("lost signal after the lease was revoked");
    assert!(h.is_lost());
    assert!(h.refresh(ttl).await.unwrap_err().is_lease_lost());
}

/// Without auto-refresh the lost signal fires at the lease's safety margin: before its local
/// deadline, while the server still counts the lease as held.
pub async fn workflow_lost_signal_fires_before_expiry_without_refresh(ctx: &Ctx) {
    let ttl = ctx.short_ttl() * 2;
    let margin = ttl / 2;
    let config = WorkflowConfig { lost_margin: Some(margin), ..workflow_config(ctx, ttl, false) };
    let wf = WorkflowLockProvider::new(ctx.provider().await, config);
    let h = wf.lock_workflow_execution("short").await.unwrap();
    assert!(!h.is_lost());
    assert_eq!(h.valid_until() - h.trusted_until(), margin);
    tokio::time::timeout(Duration::from_secs(60), h.lost().cancelled()).await.expect("lost before expiry");
    let fired = Instant::now();
    assert!(fired >= h.trusted_until(), "lost fired before the margin was reached");
    assert!(
        fired < h.valid_until(),
        "lost fired {:?} after the lease's end instead of {margin:?} before it",
        fired - h.valid_until()
    );
    eprintln!("lost fired {:?} before the lease's local deadline", h.valid_until() - fired);
}

/// A handle dropped without unlock is released in the background, not after its TTL.
pub async fn workflow_dropped_handle_is_released(ctx: &Ctx) {
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(600), true);
    let h = wf.lock_workflow_execution("forgotten").await.unwrap();
    let key = h.lock_key().to_string();
    drop(h);
    assert_eq!(eventually_free(&**wf.provider(), &key).await, None, "dropped handle still holds its lock");
}

/// A template with a limit admits exactly that many holders at once.
pub async fn workflow_template_limit_holds(ctx: &Ctx) {
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(30), true);
    let a = wf.lock_workflow_template_slot("tpl", 2).await.expect("slot 1");
    let b = wf.lock_workflow_template_slot("tpl", 2).await.expect("slot 2");
    assert_ne!(a.lock_key(), b.lock_key());
    assert_eq!(a.template_id(), Some("tpl"));
    let full = wf.lock_workflow_template_slot("tpl", 2).await.expect_err("limit 2 reached");
    assert!(full.is_timeout(), "{full:?}");
    a.unlock().await.unwrap();
    let c = wf.lock_workflow_template_slot("tpl", 2).await.expect("a slot was freed");
    assert!(matches!(wf.lock_workflow_template_slot("tpl", 0).await, Err(LockError::InvalidArgument { .. })));
    b.unlock().await.unwrap();
    c.unlock().await.unwrap();
}
