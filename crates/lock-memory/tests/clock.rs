//! Memory-backend behaviour that needs a controlled clock: expiry, the reaper and its count.

use std::time::Duration;

use lock_core::{LockError, LockOptions, LockProvider, WaitPolicy};
use lock_memory::MemoryLockProvider;

fn opts(key: &str, owner: &str, ttl_secs: u64) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(ttl_secs)).no_wait()
}

#[tokio::test(start_paused = true)]
async fn lease_expires_exactly_at_its_ttl() {
    let p = MemoryLockProvider::builder().reap_interval(None).build();
    p.lock(&opts("k", "alice", 60)).await.unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(p.try_lock(&opts("k", "bob", 60)).await.unwrap_err().is_timeout());
    assert_eq!(p.is_locked("k").await.unwrap().unwrap().remaining_ttl, Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(p.try_lock(&opts("k", "bob", 60)).await.unwrap().owner.as_ref(), "bob");
    assert_eq!(p.expired_cleaned(), 1, "the lazy check cleaned alice's lease");
}

#[tokio::test(start_paused = true)]
async fn reaper_cleans_expired_leases_in_the_background_and_counts_them() {
    let p = MemoryLockProvider::builder().reap_interval(Some(Duration::from_secs(10))).build();
    for i in 0..5 {
        p.lock(&opts(&format!("job/{i}"), "alice", 5)).await.unwrap();
    }
    p.lock(&opts("job/long", "alice", 3600)).await.unwrap();
    assert_eq!(p.expired_cleaned(), 0);
    // Let the reaper's interval pass; nobody touches the keys.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(p.expired_cleaned(), 5);
    let left: Vec<_> = p.list("job/").await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(left, vec!["job/long".to_string()]);
    assert_eq!(p.reap_expired(), 0, "nothing left to clean");
}

#[tokio::test(start_paused = true)]
async fn waiter_takes_over_when_the_holder_expires_and_times_out_otherwise() {
    let p = std::sync::Arc::new(MemoryLockProvider::builder().reap_interval(None).build());
    p.lock(&opts("k", "alice", 30)).await.unwrap();
    // Bob waits 10 s: alice's lease has 30 s left, so bob times out after exactly 10 s.
    let started = tokio::time::Instant::now();
    let err =
        p.lock(&opts("k", "bob", 30).wait(WaitPolicy::deadline(Duration::from_secs(10)))).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(
        matches!(err, LockError::Timeout { ref holder, .. } if holder.as_deref() == Some("alice")),
        "{err:?}"
    );
    // Carol waits 60 s: she gets the lock the moment alice's lease ends (20 s from now).
    let started = tokio::time::Instant::now();
    let lease =
        p.lock(&opts("k", "carol", 30).wait(WaitPolicy::deadline(Duration::from_secs(60)))).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(20));
    assert_eq!(&*lease.owner, "carol");
}

#[tokio::test(start_paused = true)]
async fn refresh_moves_the_expiry_that_waiters_wait_for() {
    let p = std::sync::Arc::new(MemoryLockProvider::builder().reap_interval(None).build());
    p.lock(&opts("k", "alice", 10)).await.unwrap();
    let p2 = p.clone();
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        p2.lock(&opts("k", "bob", 10).wait(WaitPolicy::deadline(Duration::from_secs(100)))).await.unwrap();
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    p.refresh_lock("k", "alice", Duration::from_secs(30)).await.unwrap();
    assert_eq!(waiter.await.unwrap(), Duration::from_secs(35));
}

#[tokio::test(start_paused = true)]
async fn held_for_counts_from_the_acquisition_that_made_the_holder() {
    let p = std::sync::Arc::new(MemoryLockProvider::builder().reap_interval(None).build());
    let held_for = |p: std::sync::Arc<MemoryLockProvider>| async move {
        p.is_locked("k").await.unwrap().map(|i| (i.owner, i.held_for))
    };
    p.lock(&opts("k", "alice", 60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    // Re-entry and refresh keep the start.
    p.lock(&opts("k", "alice", 60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.refresh_lock("k", "alice", Duration::from_secs(60)).await.unwrap();
    assert_eq!(held_for(p.clone()).await, Some(("alice".into(), Duration::from_secs(10))));
    assert_eq!(p.list("").await.unwrap()[0].held_for, Duration::from_secs(10));

    // Bob queues now; his hold starts when the lock is handed to him, not when he queued.
    let p2 = p.clone();
    let bob = tokio::spawn(async move {
        p2.lock(&opts("k", "bob", 20).wait(WaitPolicy::deadline(Duration::from_secs(100)))).await.unwrap()
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    p.unlock("k", "alice").await.unwrap();
    p.unlock("k", "alice").await.unwrap();
    bob.await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(held_for(p.clone()).await, Some(("bob".into(), Duration::from_secs(5))));

    // Carol takes over when bob's lease runs out (15 s from now): her hold starts then.
    let p3 = p.clone();
    let carol = tokio::spawn(async move {
        p3.lock(&opts("k", "carol", 60).wait(WaitPolicy::deadline(Duration::from_secs(100)))).await.unwrap()
    });
    tokio::time::sleep(Duration::from_secs(17)).await;
    carol.await.unwrap();
    assert_eq!(held_for(p.clone()).await, Some(("carol".into(), Duration::from_secs(2))));
}

#[tokio::test]
async fn works_without_a_runtime_reaper_when_built_outside_tokio() {
    let p = std::thread::spawn(MemoryLockProvider::new).join().unwrap();
    p.lock(&opts("k", "alice", 1)).await.unwrap();
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(p.is_locked("k").await.unwrap(), None);
}

/// What the reaper and the lazy check clean is reported as `distlock_expired_cleaned_total`.
#[tokio::test(start_paused = true)]
async fn cleaned_leases_are_counted_in_the_metric() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let p = MemoryLockProvider::builder().reap_interval(None).build();
    for i in 0..3 {
        p.lock(&opts(&format!("job/{i}"), "alice", 5)).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(6)).await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The reaper pass is synchronous: it runs inside the local recorder's scope.
    let reaped = metrics::with_local_recorder(&recorder, || p.reap_expired());
    assert_eq!(reaped, 3);
    type Recorded = (String, Vec<(String, String)>, DebugValue);
    let counted: Vec<Recorded> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key.key().labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
            (key.key().name().to_string(), labels, value)
        })
        .collect();
    assert_eq!(
        counted,
        vec![(
            lock_core::layer::metrics::EXPIRED_CLEANED_TOTAL.to_string(),
            vec![("provider".to_string(), "memory".to_string())],
            DebugValue::Counter(3)
        )]
    );
}
