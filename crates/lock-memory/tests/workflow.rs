//! The workflow layer's watchdog under a paused clock, on the memory backend.

use std::sync::Arc;
use std::time::Duration;

use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
use lock_core::{LockOptions, LockProvider, WaitPolicy};
use lock_memory::MemoryLockProvider;

fn setup(ttl_secs: u64, auto_refresh: bool) -> (Arc<MemoryLockProvider>, WorkflowLockProvider) {
    let mem = Arc::new(MemoryLockProvider::builder().reap_interval(None).build());
    let config = WorkflowConfig {
        ttl: Duration::from_secs(ttl_secs),
        wait: WaitPolicy::NoWait,
        auto_refresh,
        ..WorkflowConfig::default()
    };
    (mem.clone(), WorkflowLockProvider::new(mem, config))
}

#[tokio::test(start_paused = true)]
async fn watchdog_refreshes_every_third_of_the_ttl_for_hours() {
    let (mem, wf) = setup(30, true);
    let h = wf.lock_workflow_execution("e").await.unwrap();
    for _ in 0..360 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let left = mem.is_locked(h.lock_key()).await.unwrap().expect("held").remaining_ttl;
        // Refreshed at 10 s intervals: never less than two thirds of the TTL minus a tick.
        assert!(left >= Duration::from_secs(19), "lease ran down to {left:?}");
    }
    assert!(!h.is_lost());
    let token = h.fencing_token();
    h.unlock().await.unwrap();
    assert_eq!(mem.is_locked("distlock:workflow:execution:e").await.unwrap(), None);
    assert!(token.get() > 0);
}

#[tokio::test(start_paused = true)]
async fn unlock_stops_the_watchdog() {
    let (mem, wf) = setup(30, true);
    let h = wf.lock_workflow_execution("e").await.unwrap();
    let key = h.lock_key().to_string();
    h.unlock().await.unwrap();
    // Someone else takes the key; a watchdog still running would fail to refresh, harmlessly,
    // but it must not exist at all: the new holder's TTL runs down untouched.
    mem.lock(&LockOptions::new(key.as_str(), "other").ttl(Duration::from_secs(30)).no_wait()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    let left = mem.is_locked(&key).await.unwrap().unwrap().remaining_ttl;
    assert_eq!(left, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn lost_fires_at_the_deadline_without_refresh_and_manual_refresh_moves_it() {
    let (_mem, wf) = setup(30, false);
    let h = wf.lock_workflow_execution("e").await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    h.refresh(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(!h.is_lost(), "the manual refresh moved the deadline to t=50s");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(h.is_lost());
}

#[tokio::test(start_paused = true)]
async fn lost_fires_when_the_lease_is_taken_over() {
    let (mem, wf) = setup(30, true);
    let h = wf.lock_workflow_execution("e").await.unwrap();
    // An operator force-releases it and another worker takes it.
    mem.unlock(h.lock_key(), h.owner()).await.unwrap();
    mem.lock(&LockOptions::new(h.lock_key(), "thief").ttl(Duration::from_secs(300)).no_wait()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(h.is_lost(), "the watchdog's refresh was refused");
    // Dropping the lost handle must not release the new holder's lock.
    let key = h.lock_key().to_string();
    drop(h);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mem.is_locked(&key).await.unwrap().unwrap().owner, "thief");
}
