//! Cancel safety of the memory backend's queue, with the grant and the cancellation ordered by
//! hand.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use lock_core::{LockOptions, LockProvider, WaitPolicy};
use lock_memory::MemoryLockProvider;

fn opts(owner: &str) -> LockOptions {
    LockOptions::new("k", owner).ttl(Duration::from_secs(60))
}

/// A grant that reached a cancelled waiter is given back one level only: the same owner may
/// have re-entered meanwhile from another task, and that level is in use.
#[tokio::test(start_paused = true)]
async fn a_cancelled_grant_gives_back_one_level_not_the_owners_reentries() {
    let p = MemoryLockProvider::builder().reap_interval(None).build();
    p.lock(&opts("alice").no_wait()).await.unwrap();
    let waiting = opts("bob").wait(WaitPolicy::deadline(Duration::from_secs(30)));
    let mut waiter = Box::pin(p.lock(&waiting));
    // Poll once: bob queues behind alice.
    std::future::poll_fn(|cx| {
        assert!(waiter.as_mut().poll(cx).is_pending(), "alice holds the lock");
        Poll::Ready(())
    })
    .await;
    // Alice's release hands the lock to bob's queued request, which nobody reads yet.
    p.unlock("k", "alice").await.unwrap();
    // Another task of bob's re-enters the lock it now holds.
    let again = p.lock(&opts("bob").no_wait()).await.unwrap();
    assert_eq!(again.depth, 2);
    // The first request is cancelled: its one level goes, the re-entry stays.
    drop(waiter);
    let info = p.is_locked("k").await.unwrap().expect("bob's re-entry is still held");
    assert_eq!((info.owner.as_str(), info.depth, info.token), ("bob", 1, again.token));
    p.unlock("k", "bob").await.unwrap();
    assert_eq!(p.is_locked("k").await.unwrap(), None);
}
