//! Published waits and deadlock detection ([`Waiting`]) on each backend: waits are stored
//! beside the locks and visible to every client, and two owners that wait for each other are
//! found out, across providers (and, in [`process`](crate::process), across processes).

use std::time::SystemTime;

use lock_core::deadlock::{Cycle, DeadlockConfig, DeadlockPolicy, WaitForGraph, WaitInfo};
use lock_core::layer::waiting::Waiting;

use super::*;

/// The detector interval of these cases.
pub const DETECT_EVERY: Duration = Duration::from_millis(200);

/// `p` behind a waiting layer that looks for deadlocks every [`DETECT_EVERY`].
pub fn detecting(p: Arc<dyn LockProvider>, policy: DeadlockPolicy) -> Arc<Waiting> {
    let config = DeadlockConfig { enabled: true, interval: DETECT_EVERY, policy };
    Arc::new(Waiting::new(p, config, None))
}

/// Polls `check` every 20 ms until it returns `Some` (bounded: `what` fails the case after
/// `within`).
async fn eventually<T, F: Future<Output = Option<T>>>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(Instant::now() < until, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `owner`'s wait under `prefix` is published.
pub async fn published(p: &dyn LockProvider, prefix: &str, owner: &str) {
    eventually(Duration::from_secs(20), &format!("{owner}'s wait published"), || async {
        let waits = p.waits(prefix).await.expect("waits");
        waits.iter().any(|w| w.owner == owner).then_some(())
    })
    .await
}

fn members(cycle: &Cycle) -> Vec<(&str, &str)> {
    cycle.edges.iter().map(|e| (e.waiter.as_str(), e.holder.as_str())).collect()
}

/// Waits are stored and renewed by key, owner and id, listed by prefix from another client,
/// withdrawn, and expire with their TTL; they are never taken for locks.
pub async fn waits_are_published_listed_and_withdrawn(ctx: &Ctx) {
    let p = ctx.provider().await;
    let other = ctx.provider().await;
    let ttl = Duration::from_secs(30);
    let now = SystemTime::now();
    let wait = |key: &str, owner: &str, id: u64, age_s: u64| WaitInfo {
        key: ctx.key(key),
        owner: owner.into(),
        id,
        since: now - Duration::from_secs(age_s),
        remaining_ttl: ttl,
    };
    let alice = wait("a", "alice", 11, 1);
    let carol = wait("a", "carol", 12, 3);
    let bob = wait("b", "bob with spaces", u64::MAX, 2);
    for w in [&alice, &carol, &bob] {
        p.publish_wait(w).await.expect("publish");
    }
    let seen = other.waits(ctx.prefix()).await.expect("waits");
    let ids: Vec<u64> = seen.iter().map(|w| w.id).collect();
    assert_eq!(ids, vec![12, 11, u64::MAX], "by key, then oldest first: {seen:?}");
    for (got, sent) in seen.iter().zip([&carol, &alice, &bob]) {
        assert_eq!((&got.key, &got.owner), (&sent.key, &sent.owner));
        let skew = got.since.duration_since(sent.since).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(2), "since kept to the millisecond: {got:?} vs {sent:?}");
        assert!(got.remaining_ttl > Duration::ZERO && got.remaining_ttl <= ttl, "{got:?}");
    }
    assert_eq!(other.waits(&ctx.key("b")).await.unwrap().len(), 1, "by prefix");
    assert!(other.waits(&ctx.key("c")).await.unwrap().is_empty());

    // Waits are not locks: the key is free, and nothing is listed.
    assert_eq!(other.is_locked(&alice.key).await.unwrap(), None);
    assert!(other.list(ctx.prefix()).await.unwrap().is_empty(), "a wait is not listed as a lock");
    let lease = other.lock(&opts(&alice.key, "dave")).await.expect("a waited-for key is free");
    other.unlock(&lease.key, "dave").await.unwrap();

    // Renewing keeps one record; withdrawing (by the publisher or anyone) removes it.
    p.publish_wait(&alice).await.expect("renew");
    assert_eq!(other.waits(ctx.prefix()).await.unwrap().len(), 3, "renewed, not duplicated");
    p.withdraw_wait(&alice.key, "alice", 11).await.expect("withdraw");
    p.withdraw_wait(&alice.key, "alice", 11).await.expect("withdrawing twice is fine");
    other.withdraw_wait(&bob.key, &bob.owner, bob.id).await.expect("withdraw by another client");
    let left: Vec<u64> = other.waits(ctx.prefix()).await.unwrap().iter().map(|w| w.id).collect();
    assert_eq!(left, vec![12]);

    // A wait nobody renews expires.
    let short = WaitInfo { remaining_ttl: ctx.short_ttl(), ..wait("c", "erin", 13, 0) };
    p.publish_wait(&short).await.expect("publish");
    eventually(Duration::from_secs(20), "the unrenewed wait expired", || async {
        let waits = other.waits(&short.key).await.expect("waits");
        waits.is_empty().then_some(())
    })
    .await;
    p.withdraw_wait(&carol.key, "carol", 12).await.unwrap();
    assert!(other.waits(ctx.prefix()).await.unwrap().is_empty());
    p.close().await.unwrap();
    other.close().await.unwrap();
}

/// Sets up the classic deadlock on two providers: alice holds `a` and waits for `b`, bob holds
/// `b` and then waits for `a` (so bob's wait is the younger). Returns both waiting calls.
async fn cross_waits(
    ctx: &Ctx,
    pa: &Arc<Waiting>,
    pb: &Arc<Waiting>,
) -> (
    tokio::task::JoinHandle<lock_core::Result<lock_core::Lease>>,
    tokio::task::JoinHandle<lock_core::Result<lock_core::Lease>>,
) {
    let (ka, kb) = (ctx.key("a"), ctx.key("b"));
    pa.lock(&opts(&ka, "alice")).await.expect("a is free");
    pb.lock(&opts(&kb, "bob")).await.expect("b is free");
    let (p, k) = (pa.clone(), kb.clone());
    let alice = tokio::spawn(async move { p.lock(&patient(&k, "alice")).await });
    published(&**pa, ctx.prefix(), "alice").await;
    let (p, k) = (pb.clone(), ka.clone());
    let bob = tokio::spawn(async move { p.lock(&patient(&k, "bob")).await });
    (alice, bob)
}

/// Alice and bob wait for each other's lock through two providers: the cycle is found (by
/// both providers' detectors and by anyone reading the wait-for graph), reported once with
/// bob's younger wait as its victim, and nobody is failed under the report policy.
pub async fn deadlock_is_detected_and_reported(ctx: &Ctx) {
    let rec = metrics::recorded();
    let pa = detecting(ctx.provider().await, DeadlockPolicy::Report);
    let pb = detecting(ctx.provider().await, DeadlockPolicy::Report);
    let provider = pa.name();
    let before = rec.total(lock_core::layer::metrics::DEADLOCKS_TOTAL, provider);
    let (alice, bob) = cross_waits(ctx, &pa, &pb).await;
    let started = Instant::now();
    let cycle = eventually(Duration::from_secs(20), "bob's provider finds the cycle", || async {
        pb.last_cycles().into_iter().find(|c| c.edges.iter().any(|e| e.key.starts_with(ctx.prefix())))
    })
    .await;
    eprintln!(
        "{}: deadlock found {:?} after bob started waiting ({DETECT_EVERY:?} interval)",
        provider,
        started.elapsed()
    );
    assert_eq!(members(&cycle), vec![("alice", "bob"), ("bob", "alice")], "{cycle}");
    assert_eq!(cycle.victim().waiter, "bob", "bob's wait is the younger: {cycle}");
    assert_eq!(cycle.victim().key, ctx.key("a"));
    // Anyone can read the same graph.
    let third = ctx.provider().await;
    let graph = WaitForGraph::read(&*third, ctx.prefix()).await.expect("graph");
    assert_eq!(graph.cycles().iter().map(members).collect::<Vec<_>>(), vec![members(&cycle)]);
    eventually(Duration::from_secs(20), "the deadlock counted", || async {
        (rec.total(lock_core::layer::metrics::DEADLOCKS_TOTAL, provider) > before).then_some(())
    })
    .await;
    assert!(!alice.is_finished() && !bob.is_finished(), "the report policy fails nobody");

    // Bob gives up: alice proceeds, and every wait is withdrawn.
    bob.abort();
    let _ = bob.await;
    pb.unlock(&ctx.key("b"), "bob").await.expect("bob still holds b");
    let lease = tokio::time::timeout(Duration::from_secs(20), alice).await.expect("alice gets b").unwrap();
    assert_eq!(lease.expect("alice's wait ends with the lock").owner.as_ref(), "alice");
    eventually(Duration::from_secs(20), "waits withdrawn", || async {
        third.waits(ctx.prefix()).await.unwrap().is_empty().then_some(())
    })
    .await;
    pa.unlock(&ctx.key("b"), "alice").await.unwrap();
    pa.unlock(&ctx.key("a"), "alice").await.unwrap();
    for p in [&*pa as &dyn LockProvider, &*pb, &*third] {
        p.close().await.unwrap();
    }
}

/// Under the fail-youngest policy exactly one member of the cycle, bob (the younger wait),
/// fails with `Deadlock`, holding what he held; once he lets go, alice proceeds.
pub async fn deadlock_fails_the_youngest_waiter(ctx: &Ctx) {
    let pa = detecting(ctx.provider().await, DeadlockPolicy::FailYoungest);
    let pb = detecting(ctx.provider().await, DeadlockPolicy::FailYoungest);
    let (alice, bob) = cross_waits(ctx, &pa, &pb).await;
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), bob)
        .await
        .expect("bob's wait ends before its 30 s deadline")
        .unwrap()
        .expect_err("bob must not get a while alice holds it");
    eprintln!("{}: deadlock broken {:?} after bob started waiting", pa.name(), started.elapsed());
    match &err {
        LockError::Deadlock { key, cycle } => {
            assert_eq!(key, &ctx.key("a"));
            assert_eq!(members(cycle), vec![("alice", "bob"), ("bob", "alice")], "{cycle}");
            assert!(err.to_string().contains("alice waits for"), "{err}");
        }
        other => panic!("expected Deadlock, got {other:?}"),
    }
    assert!(err.is_deadlock() && !err.is_retryable() && !err.is_system());
    assert_eq!(pa.is_locked(&ctx.key("a")).await.unwrap().map(|i| i.owner).as_deref(), Some("alice"));
    tokio::time::sleep(DETECT_EVERY * 3).await;
    assert!(!alice.is_finished(), "alice, the older wait, is not failed");

    pb.unlock(&ctx.key("b"), "bob").await.expect("bob still holds b");
    let lease = tokio::time::timeout(Duration::from_secs(20), alice).await.expect("alice gets b").unwrap();
    assert_eq!(lease.expect("alice proceeds").owner.as_ref(), "alice");
    pa.unlock(&ctx.key("b"), "alice").await.unwrap();
    pa.unlock(&ctx.key("a"), "alice").await.unwrap();
    eventually(Duration::from_secs(20), "waits withdrawn", || async {
        pa.waits(ctx.prefix()).await.unwrap().is_empty().then_some(())
    })
    .await;
    pa.close().await.unwrap();
    pb.close().await.unwrap();
}

/// A waiting call whose connections go dark after it published its wait: the record it can
/// no longer renew expires, and the call ends as the backend's own wait would (the lock once
/// the network is back, or a retryable error), never as a deadlock victim; afterwards no wait
/// and no lock is left behind.
pub async fn fault_partitioned_waiter(ctx: &Ctx) {
    let Some(f) = crate::faults::faulty(ctx).await else { return };
    let observer = ctx.provider().await;
    let key = ctx.key("k");
    observer.lock(&opts(&key, "holder")).await.expect("free key");
    let waiter = detecting(f.provider.clone(), DeadlockPolicy::FailYoungest);
    let o = LockOptions::new(key.as_str(), "alice")
        .ttl(Duration::from_secs(30))
        .wait(WaitPolicy::deadline(Duration::from_secs(60)));
    let call = tokio::spawn(async move { waiter.lock(&o).await });
    published(&*observer, ctx.prefix(), "alice").await;
    f.blackhole(crate::proxy::Direction::Both);
    // Three intervals, at least 3 s: the record ends with its TTL.
    eventually(Duration::from_secs(30), "the unrenewable wait expired", || async {
        observer.waits(ctx.prefix()).await.expect("waits").is_empty().then_some(())
    })
    .await;
    f.heal();
    observer.unlock(&key, "holder").await.unwrap();
    match tokio::time::timeout(Duration::from_secs(60), call).await.expect("the call ends").unwrap() {
        Ok(lease) => {
            assert_eq!(lease.owner.as_ref(), "alice");
            eventually(Duration::from_secs(20), "alice unlocks once her connections are back", || async {
                f.provider.unlock(&key, "alice").await.ok()
            })
            .await;
        }
        Err(e) => assert!(e.is_retryable() && !e.is_deadlock(), "{e:?}"),
    }
    crate::history::assert_nothing_held(&*observer, ctx.prefix(), Duration::from_secs(30)).await;
    eventually(Duration::from_secs(20), "no wait left", || async {
        observer.waits(ctx.prefix()).await.expect("waits").is_empty().then_some(())
    })
    .await;
}
