//! Ambiguous outcomes: requests whose answer is lost (a request timeout shorter than the
//! server's latency) and acquisitions whose caller gave up (a dropped `lock` future). Whatever
//! the server applied, nobody may lose a lock they hold, gain a level they do not know about,
//! or be told a lock lasts longer than the server keeps it. Same server as the conformance
//! suite (`DISTLOCK_TEST_ETCD_ENDPOINTS`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Lease, LockOptions, LockProvider, WaitPolicy};
use lock_etcd::{EtcdConfig, EtcdLockProvider};

mod common;
use common::provider;
use tokio::time::Instant;

/// Another provider on the same client and prefix (another process, as far as the lock
/// protocol is concerned), with its own request timeout.
fn sibling(p: &EtcdLockProvider, prefix: &str, request_timeout: Duration) -> EtcdLockProvider {
    let config = EtcdConfig::new(["unused"]).prefix(prefix).request_timeout(request_timeout);
    EtcdLockProvider::with_client(p.client().clone(), &config)
}

fn opts(key: &str, owner: &str, ttl: u64) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(ttl)).no_wait()
}

/// Request timeouts around the server's latency on loopback: some requests are answered,
/// some are applied but their answer is dropped, some are dropped before they are sent.
fn short_timeout(round: usize) -> Duration {
    Duration::from_micros(1500 + 750 * (round % 10) as u64)
}

/// Polls (bounded) until `key` shows `depth` levels held by `owner`; the last state seen.
async fn settles_at(p: &EtcdLockProvider, key: &str, owner: &str, depth: u32) -> Option<(String, u32)> {
    let mut seen = None;
    // The take-back of an unanswered call retries in the background with pauses of up to a
    // second between tries; on a loaded machine a few tries can fail. 15 s is still half the
    // cases' 30 s TTL, so a level that expired instead of being taken back still fails.
    for _ in 0..150 {
        seen = p.is_locked(key).await.unwrap().map(|i| (i.owner, i.depth));
        if seen.as_ref().is_some_and(|(o, d)| o == owner && *d == depth) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// A re-entry with a longer TTL moves the entry to a new lease. When the move is applied but
/// its answer is lost, the new lease carries the holder's lock: it must not be revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_reentry_onto_a_new_lease_keeps_the_lock() {
    let Some((p, prefix)) = provider("reenter-move").await else { return };
    let rounds = 150;
    let mut results = Vec::new();
    for round in 0..rounds {
        let key = format!("k{round}");
        // Leases far longer than the whole loop, which takes many seconds on a loaded
        // machine: a lock found gone was revoked, not expired.
        p.lock(&opts(&key, "alice", 120)).await.unwrap();
        let q = sibling(&p, &prefix, short_timeout(round));
        results.push(q.lock(&opts(&key, "alice", 240)).await.is_ok());
    }
    // Give leases revoked in the background time to go.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lost = Vec::new();
    for (round, ok) in results.iter().enumerate() {
        let key = format!("k{round}");
        match p.is_locked(&key).await.unwrap() {
            Some(info) if info.owner == "alice" => {}
            other => lost.push((round, *ok, other)),
        }
    }
    assert!(lost.is_empty(), "the holder lost its lock in {} of {rounds} rounds: {lost:?}", lost.len());
}

/// A re-entry that reports an error must not leave a level behind: the caller does not know
/// it has to release it. One that succeeds adds exactly one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_reentry_leaves_no_unknown_level() {
    let Some((p, prefix)) = provider("reenter-level").await else { return };
    let rounds = 150;
    let mut results = Vec::new();
    for round in 0..rounds {
        let key = format!("k{round}");
        p.lock(&opts(&key, "alice", 30)).await.unwrap();
        let q = sibling(&p, &prefix, short_timeout(round));
        results.push(q.lock(&opts(&key, "alice", 30)).await.is_ok());
    }
    let mut wrong = Vec::new();
    for (round, ok) in results.iter().enumerate() {
        let key = format!("k{round}");
        let want = if *ok { 2 } else { 1 };
        let seen = settles_at(&p, &key, "alice", want).await;
        if seen != Some(("alice".to_string(), want)) {
            wrong.push((round, *ok, seen));
            break;
        }
    }
    assert!(wrong.is_empty(), "levels differ from what callers were told: {wrong:?}");
}

/// The same for a refresh with another TTL, which also moves the entry to a new lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_refresh_onto_a_new_lease_keeps_the_lock() {
    let Some((p, prefix)) = provider("refresh-move").await else { return };
    let rounds = 150;
    for round in 0..rounds {
        let key = format!("k{round}");
        // As above: a lock found gone was revoked, not expired.
        p.lock(&opts(&key, "alice", 120)).await.unwrap();
        let q = sibling(&p, &prefix, short_timeout(round));
        let _ = q.refresh_lock(&key, "alice", Duration::from_secs(240)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lost = Vec::new();
    for round in 0..rounds {
        let key = format!("k{round}");
        match p.is_locked(&key).await.unwrap() {
            Some(info) if info.owner == "alice" => {}
            other => lost.push((round, other)),
        }
    }
    assert!(lost.is_empty(), "the holder lost its lock in {} of {rounds} rounds: {lost:?}", lost.len());
}

/// A lease this provider never renewed (the lock was taken through another provider) must
/// not be trusted as if it had just been renewed: a later lock on it would report a validity
/// the server does not keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_lease_is_never_reused_as_if_renewed() {
    let Some((p, prefix)) = provider("unknown-lease").await else { return };
    let ttl = 4;
    // Taken (twice) through `p`; `q` releases it without knowing anything about its lease.
    p.lock(&opts("a", "alice", ttl)).await.unwrap();
    p.lock(&opts("a", "alice", ttl)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let q = sibling(&p, &prefix, Duration::from_secs(5));
    q.unlock("a", "alice").await.unwrap();
    q.unlock("a", "alice").await.unwrap();
    assert_eq!(q.is_locked("a").await.unwrap(), None);
    let lease = q.lock(&opts("b", "bob", ttl)).await.unwrap();

    // However long the lock lasts on the server, it must not end while `valid_until` says it
    // is still valid.
    let give_up = Instant::now() + Duration::from_secs(ttl + 10);
    loop {
        let before = Instant::now();
        if q.is_locked("b").await.unwrap().is_none() {
            assert!(
                lease.valid_until <= before,
                "the server dropped the lock {:?} before its valid_until",
                lease.valid_until - before
            );
            break;
        }
        assert!(Instant::now() < give_up, "the lock never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One hold: who, which token, and when it was surely held (from the moment `lock` returned
/// to the moment `unlock` was called, cut at the lease's `valid_until`).
#[derive(Debug, Clone)]
struct Hold {
    owner: String,
    #[allow(dead_code)] // shown in failure messages
    token: u64,
    from: Instant,
    to: Instant,
}

/// Owners that re-enter (lock twice, unlock twice, from two tasks each) while their `lock`
/// calls are cancelled at random moments. Taking back an acquisition nobody received must release exactly that one
/// level: never the levels the same owner holds through other calls, so two owners never
/// hold the lock at once and nothing is left at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquisitions_release_exactly_their_own_level() {
    let Some((p, prefix)) = provider("cancel-reentry").await else { return };
    let providers = [Arc::new(p), Arc::new(sibling_default(&prefix).await)];
    let holds = Arc::new(Mutex::new(Vec::<Hold>::new()));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for t in 0..6 {
        let p = providers[t % 2].clone();
        let (holds, problems) = (holds.clone(), problems.clone());
        tasks.push(tokio::spawn(async move {
            // Two tasks per owner: one's acquisitions re-enter on the other's.
            let owner = format!("owner-{}", t / 2);
            let o = LockOptions::new("k", owner.as_str())
                .ttl(Duration::from_secs(20))
                .wait(WaitPolicy::deadline(Duration::from_secs(2)));
            while Instant::now() < stop {
                // Most calls are cancelled at a random moment (often while queued, sometimes
                // just after the acquisition completed); some are given time to finish.
                let budget = || match fastrand::u8(..10) {
                    0..=2 => Duration::from_secs(1),
                    _ => Duration::from_micros(fastrand::u64(500..30_000)),
                };
                let Ok(Ok(first)) = tokio::time::timeout(budget(), p.lock(&o)).await else { continue };
                let from = Instant::now();
                let mut levels: Vec<Lease> = vec![first];
                if let Ok(Ok(again)) = tokio::time::timeout(budget(), p.lock(&o)).await {
                    levels.push(again);
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
                match p.is_locked("k").await {
                    Ok(Some(info)) if info.owner == owner => {}
                    other => {
                        problems.lock().unwrap().push(format!("{owner} holds, but the server says {other:?}"))
                    }
                }
                let to = Instant::now().min(levels.iter().map(|l| l.valid_until).min().unwrap());
                let token = levels[0].token.0;
                holds.lock().unwrap().push(Hold { owner: owner.clone(), token, from, to });
                for _ in &levels {
                    if let Err(e) = p.unlock("k", &owner).await {
                        problems.lock().unwrap().push(format!("{owner}: unlock of a level it holds: {e}"));
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let holds = holds.lock().unwrap().clone();
    let problems = problems.lock().unwrap().clone();
    let mut overlaps = Vec::new();
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if a.owner != b.owner && a.from < b.to && b.from < a.to {
                overlaps.push((a.clone(), b.clone()));
            }
        }
    }
    assert!(holds.len() > 10, "too few holds to mean anything: {}", holds.len());
    assert!(overlaps.is_empty(), "two owners held the lock at once: {overlaps:?}");
    assert!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        &problems[..problems.len().min(5)]
    );

    // Cancelled acquisitions are taken back in the background: nothing stays.
    let mut left = Vec::new();
    for _ in 0..50 {
        left = providers[0].list("").await.unwrap();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.is_empty(), "locks left behind: {left:?}");
}

/// A second provider (own connection) on `prefix`.
async fn sibling_default(prefix: &str) -> EtcdLockProvider {
    let endpoints = lock_testkit::env::etcd_endpoints();
    let config =
        EtcdConfig::from_list(&endpoints).prefix(prefix.to_string()).connect_timeout(Duration::from_secs(3));
    EtcdLockProvider::connect(config).await.unwrap()
}
