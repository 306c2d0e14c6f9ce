//! The two series: many waiters on one key, and many locks held at once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock::{LockOptions, LockProvider, WaitPolicy};
use lock_testkit::bench::Latencies;

use crate::backends::Backend;
use crate::procfs::{own_cpu, own_rss};

/// Lease of every lock the series take: long enough that none expires while 100,000 are
/// taken, inspected and refreshed on a busy machine (a SQL backend needs more than a minute
/// for that here). The length costs nothing: no backend does work per lease while it runs.
const TTL: Duration = Duration::from_secs(600);

/// Concurrent tasks taking, refreshing and releasing the held locks.
pub(crate) const TASKS: usize = 64;

/// Counters read before and after a stretch of work.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    attempts: Option<u64>,
    server: Option<Duration>,
    client: Duration,
}

impl Snapshot {
    fn now(b: &Backend) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            attempts: b.attempts(),
            server: b.server.map(|s| s.cpu()),
            client: own_cpu(),
        }
    }
}

/// What a stretch of work cost, per operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cost {
    /// Wall time of the stretch.
    pub(crate) elapsed: Duration,
    /// Round trips counted by the backend per operation.
    pub(crate) attempts: Option<f64>,
    /// Server CPU time per operation.
    pub(crate) server: Option<Duration>,
    /// This process's CPU time per operation.
    pub(crate) client: Duration,
}

impl Cost {
    fn between(a: Snapshot, b: Snapshot, ops: usize) -> Cost {
        let ops = ops.max(1);
        Cost {
            elapsed: b.at - a.at,
            attempts: a.attempts.zip(b.attempts).map(|(x, y)| (y - x) as f64 / ops as f64),
            server: a.server.zip(b.server).map(|(x, y)| y.saturating_sub(x) / ops as u32),
            client: b.client.saturating_sub(a.client) / ops as u32,
        }
    }

    /// Operations per second over the stretch.
    pub(crate) fn rate(&self, ops: usize) -> f64 {
        ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn opts(key: &str, owner: &str, wait: WaitPolicy) -> LockOptions {
    LockOptions::new(key, owner).ttl(TTL).wait(wait)
}

/// One row of the waiters series.
#[derive(Debug)]
pub(crate) struct WaitersRow {
    /// Waiters on the key.
    pub(crate) waiters: usize,
    /// Release call start to the next holder's `lock` returning.
    pub(crate) handover: Latencies,
    /// The whole chain: the first release to the last waiter's release.
    pub(crate) chain: Cost,
    /// While all waiters wait and nothing is released: per second.
    pub(crate) idle: Cost,
}

/// `w` tasks wait on one key (`lock` with a long deadline) while it is held; after a quiet
/// window of `idle` the holder releases, and each waiter in turn takes the lock and releases it
/// at once.
pub(crate) async fn waiters(b: &Backend, key: &str, w: usize, idle: Duration) -> WaitersRow {
    let p = b.provider.clone();
    p.lock(&opts(key, "holder", WaitPolicy::NoWait)).await.expect("holder lock");
    let base = Instant::now();
    let released_at = Arc::new(AtomicU64::new(u64::MAX));
    let started = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..w)
        .map(|i| {
            let (p, key, released_at, started) =
                (p.clone(), key.to_owned(), released_at.clone(), started.clone());
            tokio::spawn(async move {
                let owner = format!("waiter-{i}");
                started.fetch_add(1, Ordering::SeqCst);
                p.lock(&opts(&key, &owner, WaitPolicy::deadline(Duration::from_secs(900))))
                    .await
                    .expect("waiter lock");
                let got = base.elapsed().as_nanos() as u64;
                let handover = Duration::from_nanos(got.saturating_sub(released_at.load(Ordering::SeqCst)));
                released_at.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
                p.unlock(&key, &owner).await.expect("waiter unlock");
                handover
            })
        })
        .collect();
    while started.load(Ordering::SeqCst) < w {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every waiter has made its first attempt and is queued or backing off by then.
    tokio::time::sleep(Duration::from_secs(1).max(Duration::from_millis(3) * w as u32)).await;
    let quiet = Snapshot::now(b);
    tokio::time::sleep(idle).await;
    let start = Snapshot::now(b);
    let idle = Cost::between(quiet, start, idle.as_secs().max(1) as usize);
    released_at.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
    p.unlock(key, "holder").await.expect("holder unlock");
    let mut all = Vec::with_capacity(w);
    for h in handles {
        all.push(h.await.expect("waiter task"));
    }
    let end = Snapshot::now(b);
    WaitersRow { waiters: w, handover: Latencies::new(all), chain: Cost::between(start, end, w), idle }
}

/// One row of the held-locks series.
#[derive(Debug)]
pub(crate) struct HeldRow {
    /// Locks held at once.
    pub(crate) locks: usize,
    /// Taking them, [`TASKS`] at a time.
    pub(crate) take: Cost,
    /// `list("")`: median of 5, and how many it returned.
    pub(crate) list_all: (Duration, usize),
    /// `list(prefix)` for a prefix matching 1 % of the locks: median of 5, and how many.
    pub(crate) list_some: (Duration, usize),
    /// `is_locked` on held keys, one at a time.
    pub(crate) is_locked: Latencies,
    /// One `refresh_lock` of every lock, [`TASKS`] at a time.
    pub(crate) refresh: Cost,
    /// Releasing them all, [`TASKS`] at a time.
    pub(crate) release: Cost,
    /// This process's RSS before, while held, and after the release.
    pub(crate) rss: [u64; 3],
}

/// Runs `op(i)` for every `i` in `0..n` on [`TASKS`] tasks.
pub(crate) async fn fan_out<F, Fut>(n: usize, op: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (op, next) = (Arc::new(op), Arc::new(AtomicUsize::new(0)));
    let handles: Vec<_> = (0..TASKS)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    op(i).await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
}

async fn median_of_5(p: &Arc<dyn LockProvider>, prefix: &str) -> (Duration, usize) {
    let mut times = Vec::with_capacity(5);
    let mut count = 0;
    for _ in 0..5 {
        let t = Instant::now();
        count = p.list(prefix).await.expect("list").len();
        times.push(t.elapsed());
    }
    (Latencies::new(times).quantile(0.5), count)
}

/// Takes `n` locks under `prefix` (1 % of them under `{prefix}p00/`), inspects, refreshes and
/// releases them.
pub(crate) async fn held(b: &Backend, prefix: &str, n: usize) -> HeldRow {
    let p = b.provider.clone();
    let key = {
        let prefix = prefix.to_owned();
        move |i: usize| format!("{prefix}p{:02}/{i}", i % 100)
    };
    let rss_before = own_rss();

    let s0 = Snapshot::now(b);
    let (pp, k) = (p.clone(), key.clone());
    fan_out(n, move |i| {
        let (p, key) = (pp.clone(), k(i));
        async move {
            p.lock(&opts(&key, "scale", WaitPolicy::NoWait)).await.expect("take");
        }
    })
    .await;
    let s1 = Snapshot::now(b);
    let rss_held = own_rss();

    let list_all = median_of_5(&p, "").await;
    let list_some = median_of_5(&p, &format!("{prefix}p00/")).await;
    let mut lookups = Vec::with_capacity(200);
    for j in 0..200 {
        let k = key(j * n / 200);
        let t = Instant::now();
        let info = p.is_locked(&k).await.expect("is_locked");
        lookups.push(t.elapsed());
        assert!(info.is_some(), "{k} is held");
    }

    let s2 = Snapshot::now(b);
    let (pp, k) = (p.clone(), key.clone());
    fan_out(n, move |i| {
        let (p, key) = (pp.clone(), k(i));
        async move {
            p.refresh_lock(&key, "scale", TTL).await.expect("refresh");
        }
    })
    .await;
    let s3 = Snapshot::now(b);

    let s4 = Snapshot::now(b);
    let (pp, k) = (p.clone(), key.clone());
    fan_out(n, move |i| {
        let (p, key) = (pp.clone(), k(i));
        async move {
            p.unlock(&key, "scale").await.expect("release");
        }
    })
    .await;
    let s5 = Snapshot::now(b);

    HeldRow {
        locks: n,
        take: Cost::between(s0, s1, n),
        list_all,
        list_some,
        is_locked: Latencies::new(lookups),
        refresh: Cost::between(s2, s3, n),
        release: Cost::between(s4, s5, n),
        rss: [rss_before, rss_held, own_rss()],
    }
}
