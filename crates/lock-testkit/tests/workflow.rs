//! `lock_core::workflow`'s watchdog and lost signal under a paused clock, with the memory
//! backend as the provider underneath, also behind faults that hang refreshes or lose
//! answers. (Here rather than in lock-core: lock-core cannot use a backend in its own tests.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
use lock_core::{
    Capabilities, Health, Lease, LockError, LockInfo, LockOptions, LockProvider, Result, WaitPolicy,
};
use lock_memory::MemoryLockProvider;
use tokio::time::Instant;

/// The memory backend behind switchable faults, counting refreshes.
#[derive(Debug, Default)]
struct Faulty {
    inner: MemoryLockProvider,
    /// `refresh_lock` never answers.
    hang_refresh: AtomicBool,
    /// `lock` is applied, but the caller hears `Unavailable`.
    lose_lock_answer: AtomicBool,
    refreshes: AtomicU64,
    request_timeout: Option<Duration>,
}

#[async_trait::async_trait]
impl LockProvider for Faulty {
    fn name(&self) -> &'static str {
        "faulty-memory"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }
    async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
        let lease = self.inner.lock(opts).await?;
        if self.lose_lock_answer.load(Ordering::SeqCst) {
            return Err(LockError::unavailable("faulty-memory", "answer lost"));
        }
        Ok(lease)
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
        self.inner.unlock(key, owner).await
    }
    async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        self.refreshes.fetch_add(1, Ordering::SeqCst);
        if self.hang_refresh.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.refresh_lock(key, owner, ttl).await
    }
    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        self.inner.is_locked(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        self.inner.list(prefix).await
    }
    async fn health(&self) -> Result<Health> {
        self.inner.health().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

fn faulty(ttl_secs: u64, faults: Faulty) -> (Arc<Faulty>, WorkflowLockProvider) {
    let p = Arc::new(faults);
    let config = WorkflowConfig {
        ttl: Duration::from_secs(ttl_secs),
        wait: WaitPolicy::NoWait,
        ..WorkflowConfig::default()
    };
    (p.clone(), WorkflowLockProvider::new(p, config))
}

fn paused_memory() -> MemoryLockProvider {
    MemoryLockProvider::builder().reap_interval(None).build()
}

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
    let (p, wf) = faulty(30, Faulty { inner: paused_memory(), ..Faulty::default() });
    let h = wf.lock_workflow_execution("e").await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = p.refreshes.load(Ordering::SeqCst);
    assert_eq!(before, 1, "one refresh at a third of the TTL");
    let key = h.lock_key().to_string();
    h.unlock().await.unwrap();
    // Someone else takes the key; a watchdog still running would try to refresh (and fail,
    // harmlessly), but it must not exist at all.
    p.lock(&LockOptions::new(key.as_str(), "other").ttl(Duration::from_secs(300)).no_wait()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(p.refreshes.load(Ordering::SeqCst), before, "the watchdog outlived unlock");
}

#[tokio::test(start_paused = true)]
async fn a_hung_refresh_fires_lost_at_the_safety_margin_before_the_lease_ends() {
    let (p, wf) = faulty(30, Faulty { inner: paused_memory(), ..Faulty::default() });
    let h = wf.lock_workflow_execution("e").await.unwrap();
    p.hang_refresh.store(true, Ordering::SeqCst);
    let valid_until = h.valid_until();
    // Default margin: 10 % of the TTL, the provider bounding no request.
    assert_eq!(h.trusted_until(), valid_until - Duration::from_secs(3));
    tokio::time::timeout(Duration::from_secs(600), h.lost().cancelled())
        .await
        .expect("lost must fire although the refresh never answers");
    let fired = Instant::now();
    assert_eq!(fired, valid_until - Duration::from_secs(3), "lost fires at the margin, not at expiry");
    assert!(p.refreshes.load(Ordering::SeqCst) >= 1, "the watchdog did try to refresh");
    // The lease itself is still valid on the server: nobody else could have it yet.
    assert_eq!(p.is_locked(h.lock_key()).await.unwrap().unwrap().owner, h.owner());
}

#[tokio::test(start_paused = true)]
async fn the_margin_covers_twice_the_request_timeout_and_at_most_half_the_ttl() {
    let faults =
        Faulty { inner: paused_memory(), request_timeout: Some(Duration::from_secs(5)), ..Faulty::default() };
    let (_p, wf) = faulty(30, faults);
    let h = wf.lock_workflow_execution("e").await.unwrap();
    assert_eq!(h.valid_until() - h.trusted_until(), Duration::from_secs(10));
    let faults = Faulty {
        inner: paused_memory(),
        request_timeout: Some(Duration::from_secs(60)),
        ..Faulty::default()
    };
    let (_p, wf) = faulty(30, faults);
    let h = wf.lock_workflow_execution("e").await.unwrap();
    assert_eq!(h.valid_until() - h.trusted_until(), Duration::from_secs(15), "capped at half the TTL");
    let config = WorkflowConfig {
        ttl: Duration::from_secs(30),
        lost_margin: Some(Duration::from_secs(7)),
        ..WorkflowConfig::default()
    };
    let h = WorkflowLockProvider::new(Arc::new(paused_memory()), config)
        .lock_workflow_execution("e")
        .await
        .unwrap();
    assert_eq!(h.valid_until() - h.trusted_until(), Duration::from_secs(7), "configured");
}

#[tokio::test(start_paused = true)]
async fn an_acquisition_whose_answer_was_lost_is_released_in_the_background() {
    let (p, wf) = faulty(300, Faulty { inner: paused_memory(), ..Faulty::default() });
    p.lose_lock_answer.store(true, Ordering::SeqCst);
    let err = wf.lock_workflow_execution("e").await.expect_err("the answer was lost");
    assert!(err.is_retryable(), "{err:?}");
    // The server did grant it, to an owner id only the workflow layer knew.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        p.is_locked("distlock:workflow:execution:e").await.unwrap(),
        None,
        "the granted lock must not stay behind for its whole TTL"
    );
    p.lose_lock_answer.store(false, Ordering::SeqCst);
    wf.lock_workflow_execution("e").await.expect("free again").unlock().await.unwrap();
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

/// A runtime shut down under live handles: their watchdogs die with it, the handle dropped
/// afterwards cannot release in the background (no runtime is left to run it) and says so;
/// nothing panics or hangs, and the lock lives on until its TTL.
#[test]
fn dropping_a_runtime_with_live_handles_neither_panics_nor_hangs() {
    // Built outside any runtime: without a reaper it needs none.
    let mem = Arc::new(paused_memory());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let wf = WorkflowLockProvider::new(
        mem.clone(),
        WorkflowConfig {
            ttl: Duration::from_secs(30),
            wait: WaitPolicy::NoWait,
            ..WorkflowConfig::default()
        },
    );
    let (kept, dropped_inside) = rt.block_on(async {
        let kept = wf.lock_workflow_execution("kept").await.unwrap();
        let inside = wf.lock_workflow_execution("dropped-inside").await.unwrap();
        (kept, inside)
    });
    let key = kept.lock_key().to_string();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(dropped_inside);
        drop(rt);
        drop(kept);
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("dropping the runtime or a handle panicked or hung");
    let check = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let held = check.block_on(mem.is_locked(&key)).unwrap();
    assert!(held.is_some(), "without a runtime nothing could have released it: it waits for its TTL");
}
