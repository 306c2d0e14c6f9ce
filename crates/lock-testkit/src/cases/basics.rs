//! Acquire, re-enter, release, refresh, expiry, fencing and inspection on a healthy backend.

use super::*;

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
        Err(LockError::Timeout { holder, .. }) => assert!(holder.is_none_or(|h| h == owner)),
        other => panic!("{other:?}"),
    }
    match p.unlock(&key, "bob").await {
        Err(LockError::NotOwner { holder, .. }) => assert!(holder.is_none_or(|h| h == owner)),
        other => panic!("{other:?}"),
    }
    p.unlock(&key, owner).await.unwrap();
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

/// How much a backend may report less than the time really slept: clock granularity (etcd
/// counts whole milliseconds) and the rounding of the server's time arithmetic. The start is
/// taken when the acquiring request reaches the server (or, on etcd, before the client sends
/// it) and the time held when the reading request does, so a sleep between the two is always
/// inside the reported figure, but for this.
const HELD_SLACK: Duration = Duration::from_millis(25);

/// `held_for` counts from the acquisition that made the holder: it grows while the lock is
/// held, re-entry, refresh and the release of a nested level keep its start, and a new holder
/// after a release starts again; `is_locked` and `list` report the same hold.
pub async fn held_for_counts_from_the_holders_acquisition(ctx: &Ctx) {
    const NAP: Duration = Duration::from_millis(300);
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let reentrant = p.capabilities().reentrant;
    let key = ctx.key("k");
    let held = |info: Option<lock_core::LockInfo>| {
        let info = info.expect("held");
        assert_eq!(info.owner, "alice");
        info.held_for
    };

    let lease = p.lock(&opts(&key, "alice")).await.unwrap();
    tokio::time::sleep(NAP).await;
    let h1 = held(p.is_locked(&key).await.unwrap());
    assert!(h1 + HELD_SLACK >= NAP, "held for {h1:?} after sleeping {NAP:?}");
    let info = q.is_locked(&key).await.unwrap().unwrap();
    assert!(info.held_longer_than(NAP - HELD_SLACK), "{info:?}");

    // Re-entry (with a longer TTL: some backends move the lock to a new lease) keeps the start.
    if reentrant {
        let again = p.lock(&opts(&key, "alice").ttl(Duration::from_secs(60))).await.unwrap();
        assert_eq!((again.token, again.depth), (lease.token, 2));
    }
    tokio::time::sleep(NAP).await;
    let h2 = held(p.is_locked(&key).await.unwrap());
    assert!(h2 + HELD_SLACK >= h1 + NAP, "re-entry restarted the hold: {h1:?}, then {h2:?}");

    // So does a refresh (with another TTL: some backends move the lock to a new lease).
    p.refresh_lock(&key, "alice", Duration::from_secs(20)).await.unwrap();
    tokio::time::sleep(NAP).await;
    let h3 = held(p.is_locked(&key).await.unwrap());
    assert!(h3 + HELD_SLACK >= h2 + NAP, "refresh restarted the hold: {h2:?}, then {h3:?}");
    let listed = q.list(ctx.prefix()).await.unwrap();
    let [from_list] = listed.as_slice() else { panic!("one lock under the prefix: {listed:?}") };
    assert_eq!(
        (from_list.key.as_str(), from_list.owner.as_str(), from_list.token),
        (key.as_str(), "alice", lease.token)
    );
    assert!(from_list.held_for >= h3, "list reports a younger hold than is_locked: {from_list:?}, {h3:?}");

    // Releasing the nested level keeps it too; releasing the last one ends it.
    if reentrant {
        p.unlock(&key, "alice").await.unwrap();
        let h4 = held(p.is_locked(&key).await.unwrap());
        assert!(h4 >= h3, "the release of a nested level restarted the hold: {h3:?}, then {h4:?}");
    }
    // A new holder starts again, from its own acquisition: bob, waiting since before the
    // release, has held the lock no longer than the time since the release (counted from his
    // wait, or from alice's acquisition, it would be at least `NAP`).
    let waiter = {
        let (q, key) = (q.clone(), key.clone());
        tokio::spawn(async move { q.lock(&patient(&key, "bob")).await })
    };
    tokio::time::sleep(NAP).await;
    let released = Instant::now();
    p.unlock(&key, "alice").await.unwrap();
    let bob = waiter.await.unwrap().expect("bob acquires after the release");
    assert!(bob.token > lease.token || !p.capabilities().fencing);
    let info = p.is_locked(&key).await.unwrap().expect("held by bob");
    let since = released.elapsed();
    assert_eq!(info.owner, "bob");
    assert!(
        info.held_for <= since + HELD_SLACK,
        "bob's hold did not start with his acquisition: held for {:?}, released {since:?} ago (alice held it {h3:?})",
        info.held_for
    );
    let listed = p.list(ctx.prefix()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].held_for >= info.held_for && listed[0].held_for <= released.elapsed() + HELD_SLACK);
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
        Err(LockError::Timeout { holder, .. }) => assert!(holder.is_none_or(|h| h == "alice")),
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
