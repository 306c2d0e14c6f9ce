//! Waiting: wake-ups, expiry while waiting, FIFO order, long waits and mutual exclusion under contention.

use super::*;

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
