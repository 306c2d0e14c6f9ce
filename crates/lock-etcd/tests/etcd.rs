//! etcd-specific behaviour beyond the shared suite: leases lost behind the provider's back,
//! TTL changes that move an entry to a new lease, and what a waiter leaves when it gives up.
//! Same server as the conformance suite (`DISTLOCK_TEST_ETCD_ENDPOINTS`).

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use lock_core::{LockError, LockOptions, LockProvider, WaitPolicy};
use lock_etcd::{EtcdConfig, EtcdLockProvider};

mod common;
use common::provider;

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

/// Every entry (holder and queue) of `key`.
async fn entries(client: &Client, prefix: &str, key: &str) -> Vec<(Vec<u8>, i64)> {
    let start = format!("{prefix}{key}\0");
    let end = format!("{prefix}{key}\u{1}");
    let resp = client.kv_client().get(start, Some(GetOptions::new().with_range(end))).await.unwrap();
    resp.kvs().iter().map(|kv| (kv.key().to_vec(), kv.lease())).collect()
}

/// Waits (bounded) until `n` entries queue for `key`, and returns them.
async fn wait_for_entries(client: &Client, prefix: &str, key: &str, n: usize) -> Vec<(Vec<u8>, i64)> {
    let mut queued = Vec::new();
    for _ in 0..50 {
        queued = entries(client, prefix, key).await;
        if queued.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    queued
}

async fn lease_alive(client: &Client, id: i64) -> bool {
    client.lease_client().time_to_live(id, None).await.unwrap().ttl() > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_behind_the_holders_back_is_reported_lost() {
    let Some((p, _)) = provider("revoked").await else { return };
    p.lock(&opts("k", "alice")).await.unwrap();
    let (_, lease) = p.holder_entry("k").await.unwrap().expect("held");
    p.client().lease_client().revoke(lease).await.unwrap();

    let err = p.refresh_lock("k", "alice", Duration::from_secs(30)).await.unwrap_err();
    assert!(err.is_lease_lost(), "refresh after revoke: {err:?}");
    // The provider remembered the lock: unlock says it was lost, not that it was never held.
    p.lock(&opts("k2", "alice")).await.unwrap();
    let (_, lease2) = p.holder_entry("k2").await.unwrap().unwrap();
    p.client().lease_client().revoke(lease2).await.unwrap();
    assert!(matches!(p.unlock("k2", "alice").await, Err(LockError::LeaseLost { .. })));
    assert!(matches!(p.unlock("k2", "alice").await, Err(LockError::NotHeld { .. })));
    assert_eq!(p.is_locked("k").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ttl_moves_the_entry_to_a_new_lease_keeping_key_and_token() {
    let Some((p, _)) = provider("new-ttl").await else { return };
    let first = p.lock(&opts("k", "alice")).await.unwrap();
    let (entry, old_lease) = p.holder_entry("k").await.unwrap().unwrap();

    let same = p.refresh_lock("k", "alice", Duration::from_secs(30)).await.unwrap();
    assert_eq!(p.holder_entry("k").await.unwrap().unwrap(), (entry.clone(), old_lease), "a keep-alive");
    assert_eq!(same.token, first.token);

    let shorter = p.refresh_lock("k", "alice", Duration::from_secs(10)).await.unwrap();
    let (entry2, new_lease) = p.holder_entry("k").await.unwrap().unwrap();
    assert_eq!(entry2, entry, "same entry, same place in the queue");
    assert_ne!(new_lease, old_lease);
    assert_eq!(shorter.token, first.token);
    assert_eq!(shorter.ttl, Duration::from_secs(10));
    let ttl = p.client().lease_client().time_to_live(new_lease, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 10);
    // The old lease is revoked in the background once the entry left it.
    let mut gone = false;
    for _ in 0..50 {
        if !lease_alive(p.client(), old_lease).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the old lease was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_whole_seconds_and_at_least_the_server_minimum() {
    let Some((p, _)) = provider("ttl").await else { return };
    let l = p.lock(&opts("a", "alice").ttl(Duration::from_millis(2500))).await.unwrap();
    assert_eq!(l.ttl, Duration::from_secs(3), "rounded up");
    let l = p.lock(&opts("b", "alice").ttl(Duration::from_millis(100))).await.unwrap();
    assert!(l.ttl >= Duration::from_secs(1), "{:?}", l.ttl);
    let (_, lease) = p.holder_entry("b").await.unwrap().unwrap();
    let granted = p.client().lease_client().time_to_live(lease, None).await.unwrap().granted_ttl();
    assert_eq!(l.ttl, Duration::from_secs(granted as u64), "the lease reports what etcd granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_no_entry_and_no_lease() {
    let Some((p, prefix)) = provider("gave-up").await else { return };
    p.lock(&opts("k", "alice")).await.unwrap();
    let policy = WaitPolicy::Retry { retries: 2, delay: Duration::from_millis(150), jitter: 0.0 };
    let q = {
        let Some((q, _)) = provider("gave-up-q").await else { return };
        q
    };
    // Same lock space as `p`: a second client with p's prefix.
    let q = EtcdLockProvider::with_client(
        q.client().clone(),
        &EtcdConfig::new(["unused"]).prefix(prefix.clone()),
    );
    let err = q.lock(&opts("k", "bob").wait(policy)).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let left = entries(p.client(), &prefix, "k").await;
    assert_eq!(left.len(), 1, "only the holder's entry: {left:?}");

    // A waiter dropped while queued: its entry goes away too.
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        q.lock(&opts("k", "carol").wait(WaitPolicy::deadline(Duration::from_secs(30)))),
    )
    .await;
    assert!(waiting.is_err());
    let mut left = entries(p.client(), &prefix, "k").await;
    for _ in 0..50 {
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = entries(p.client(), &prefix, "k").await;
    }
    assert_eq!(left.len(), 1, "a dropped waiter stayed queued: {left:?}");
}

/// The waiter's lease disappears while it waits (as when its keep-alives cannot reach the
/// cluster for longer than the TTL). When the holder leaves, the waiter must not report a
/// lock backed by a dead lease: it queues again and acquires with a live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_lease_vanished_never_reports_a_dead_lock() {
    let Some((p, prefix)) = provider("dead-waiter").await else { return };
    p.lock(&opts("k", "alice")).await.unwrap();
    let q = EtcdLockProvider::with_client(
        p.client().clone(),
        &EtcdConfig::new(["unused"]).prefix(prefix.clone()),
    );
    let waiter = tokio::spawn(async move {
        let l = q.lock(&opts("k", "bob").wait(WaitPolicy::deadline(Duration::from_secs(30)))).await;
        (q, l)
    });
    let queued = wait_for_entries(p.client(), &prefix, "k", 2).await;
    assert_eq!(queued.len(), 2, "bob should be queued");
    let (holder_entry, _) = p.holder_entry("k").await.unwrap().unwrap();
    let (_, bobs_lease) = queued.iter().find(|(k, _)| *k != holder_entry).cloned().unwrap();
    p.client().lease_client().revoke(bobs_lease).await.unwrap();
    p.unlock("k", "alice").await.unwrap();

    let (q, lease) = tokio::time::timeout(Duration::from_secs(30), waiter).await.unwrap().unwrap();
    let lease = lease.expect("bob queues again and acquires");
    let (entry, live) = q.holder_entry("k").await.unwrap().expect("bob holds");
    assert_ne!(live, bobs_lease, "bob's lock rests on a new lease");
    assert!(lease_alive(q.client(), live).await);
    let info = q.is_locked("k").await.unwrap().unwrap();
    assert_eq!((info.owner.as_str(), info.token), ("bob", lease.token));
    assert_eq!(entries(q.client(), &prefix, "k").await, vec![(entry, live)]);
}

/// A released lock's empty lease is kept and reused by the next acquisition with the same
/// TTL; a kept lease that died meanwhile is noticed and replaced, never trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_leases_are_reused_only_while_alive() {
    let Some((p, _)) = provider("reuse").await else { return };
    p.lock(&opts("a", "alice")).await.unwrap();
    let (_, first) = p.holder_entry("a").await.unwrap().unwrap();
    p.unlock("a", "alice").await.unwrap();
    assert!(lease_alive(p.client(), first).await, "kept for reuse");

    p.lock(&opts("b", "alice")).await.unwrap();
    let (_, second) = p.holder_entry("b").await.unwrap().unwrap();
    assert_eq!(second, first, "the next acquisition with the same TTL reuses it");
    p.unlock("b", "alice").await.unwrap();

    // Older than a second: renewed alongside the acquisition.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let renewed = p.lock(&opts("c", "alice")).await.unwrap();
    assert_eq!(p.holder_entry("c").await.unwrap().unwrap().1, first);
    let left = p.client().lease_client().time_to_live(first, None).await.unwrap().ttl();
    assert!(left >= 28, "the kept lease was renewed: {left} s left");
    assert!(renewed.remaining() > Duration::from_secs(28));
    p.unlock("c", "alice").await.unwrap();

    // The kept lease disappears behind the provider's back.
    p.client().lease_client().revoke(first).await.unwrap();
    let lease = p.lock(&opts("d", "alice")).await.expect("a dead spare is replaced");
    let (_, fourth) = p.holder_entry("d").await.unwrap().unwrap();
    assert_ne!(fourth, first);
    assert!(lease_alive(p.client(), fourth).await);
    let info = p.is_locked("d").await.unwrap().expect("held on a live lease");
    assert_eq!(info.token, lease.token);

    // The same for a kept lease that is renewed before use.
    p.unlock("d", "alice").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    p.client().lease_client().revoke(fourth).await.unwrap();
    p.lock(&opts("e", "alice")).await.expect("a dead spare is replaced");
    let (_, fifth) = p.holder_entry("e").await.unwrap().unwrap();
    assert_ne!(fifth, fourth);
    assert!(lease_alive(p.client(), fifth).await);
}
