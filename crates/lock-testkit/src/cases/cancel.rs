//! Cancel safety: a `lock` future dropped, aborted or closed at any point leaves no lock and no level behind.

use super::*;

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
    cancel_racing_release(ctx, false).await
}

/// The same race with the waiter in the holder's own provider, where a release may hand the
/// lock straight to its waiting call.
pub async fn cancel_racing_release_in_one_provider_leaves_no_orphan(ctx: &Ctx) {
    cancel_racing_release(ctx, true).await
}

/// 30 rounds: the holder releases while a waiter (in its own provider or another) is
/// cancelled at, just after or well after the release. The waiter either got the lock, with
/// the next token, or left nothing, and the key comes free for the next caller either way.
async fn cancel_racing_release(ctx: &Ctx, one_provider: bool) {
    let p = ctx.provider().await;
    for round in 0..30u64 {
        let key = ctx.key(&format!("k{round}"));
        let first = p.lock(&opts(&key, "alice")).await.unwrap();
        let q = if one_provider { p.clone() } else { ctx.provider().await };
        let k2 = key.clone();
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
            Ok(Ok(lease)) => {
                assert!(
                    lease.token > first.token,
                    "round {round}: the waiter's token must follow the holder's"
                );
                p.unlock(&key, &lease.owner).await.unwrap();
            }
            Ok(Err(e)) => panic!("waiter failed: {e:?}"),
            Err(_cancelled) => {}
        }
        let left = eventually_free(&*p, &key).await;
        assert_eq!(left, None, "round {round}: a cancelled waiter left a lock behind");
        // An acquisition of the cancelled waiter still in flight is undone in the background:
        // the key comes free within moments.
        let next = p.lock(&patient(&key, "carol")).await.expect("key comes free for the next caller");
        assert!(next.token > first.token);
        p.unlock(&key, "carol").await.unwrap();
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
            if info.as_ref().is_none_or(|i| i.depth <= received) || Instant::now() >= until {
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
pub(super) async fn within<F: Future>(budget: Duration, fut: F) -> Option<F::Output> {
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

/// A `lock` dropped while its request is in flight, on a provider closed right after: once
/// `close` has returned, the key is free. The dropped call's request may still be granted
/// after the caller left; giving that grant back is work the provider has under way, and
/// `close` finishes it instead of closing the connections under it (which would leave the
/// lock until its TTL runs out).
pub async fn close_after_dropped_lock_leaves_no_lock(ctx: &Ctx) {
    let observer = ctx.provider().await;
    if !ctx.requires(observer.capabilities(), |c| c.distributed, "distributed") {
        return;
    }
    let mut dropped = 0;
    for round in 0..20u64 {
        let p = ctx.provider().await;
        let key = ctx.key(&format!("k{round}"));
        // From "dropped right after its first poll" to "after a round trip or two".
        match within(Duration::from_micros(round * round * 8), p.lock(&opts(&key, "bob"))).await {
            Some(Ok(_)) => {
                // Granted in time: the lock is bob's, released by an operator's hand.
                match observer.unlock(&key, "bob").await {
                    Ok(()) | Err(LockError::Closed) => {}
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            Some(Err(e)) => panic!("round {round}: lock of a free key failed: {e:?}"),
            None => dropped += 1,
        }
        p.close().await.unwrap();
        let left = observer.is_locked(&key).await.expect("is_locked");
        assert_eq!(left, None, "round {round}: a lock dropped in flight outlived the close of its provider");
    }
    eprintln!("{dropped} of 20 lock calls were dropped in flight");
    assert!(dropped > 0, "no call was dropped in flight: the case tested nothing");
}

/// Closing a provider while its `lock` calls are in flight leaves no lock behind, as soon as
/// `close` has returned. Only locks that outlive their provider (a distributed backend) can be
/// left behind; the case needs providers that are separate clients.
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
        // `close` returns once what its calls left under way (a grant being given back, an
        // entry being withdrawn) is done: the key is free now, not once a background task or
        // the lock's TTL gets to it.
        let left = observer.is_locked(&key).await.expect("is_locked");
        assert_eq!(left, None, "round {round}: a lock survived the close of its provider");
    }
    eprintln!("{raced} of 10 lock calls were unfinished when the close began");
    assert!(raced > 0, "every lock call had finished before the close: the case tested nothing");
}
