//! What deadlock detection costs: the calls the [waiting layer](lock_core::layer::waiting)
//! makes besides the locks themselves, counted by a provider wrapper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::deadlock::{DeadlockConfig, DeadlockPolicy, WaitInfo};
use lock_core::layer::waiting::Waiting;
use lock_core::{LockInfo, LockOptions, LockProvider, Result, WaitPolicy};

/// Counts the calls that publish, withdraw and read waits, and the holder lookups of the
/// detector, on the wrapped provider.
#[derive(Debug)]
pub struct CountedWaits {
    inner: Arc<dyn LockProvider>,
    /// `publish_wait` calls (first publications and renewals).
    pub published: AtomicU64,
    /// `withdraw_wait` calls.
    pub withdrawn: AtomicU64,
    /// `waits` calls (one per detector scan).
    pub scans: AtomicU64,
    /// `is_locked` calls (the detector's holder lookups).
    pub lookups: AtomicU64,
}

impl CountedWaits {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LockProvider>) -> Arc<Self> {
        Arc::new(CountedWaits {
            inner,
            published: AtomicU64::new(0),
            withdrawn: AtomicU64::new(0),
            scans: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl LockProvider for CountedWaits {
    lock_core::forward_to_inner!(
        inner;
        name,
        capabilities,
        request_timeout,
        lock,
        try_lock,
        unlock,
        refresh_lock,
        list,
        health,
        close,
    );

    async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.is_locked(key).await
    }

    async fn publish_wait(&self, wait: &WaitInfo) -> Result<()> {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.inner.publish_wait(wait).await
    }

    async fn withdraw_wait(&self, key: &str, owner: &str, id: u64) -> Result<()> {
        self.withdrawn.fetch_add(1, Ordering::Relaxed);
        self.inner.withdraw_wait(key, owner, id).await
    }

    async fn waits(&self, prefix: &str) -> Result<Vec<WaitInfo>> {
        self.scans.fetch_add(1, Ordering::Relaxed);
        self.inner.waits(prefix).await
    }
}

/// Per acquisition: the detection calls of `tasks` tasks taking one key `iters` times each and
/// holding it `hold` every time, with deadlock detection every `interval`.
#[derive(Debug, Clone, Copy)]
pub struct WaitCosts {
    /// Acquisitions made.
    pub acquisitions: u64,
    /// Publications and renewals per acquisition.
    pub published: f64,
    /// Withdrawals per acquisition.
    pub withdrawn: f64,
    /// Detector scans (`waits` reads) per acquisition.
    pub scans: f64,
    /// Holder lookups per acquisition.
    pub lookups: f64,
}

/// Runs the workload of [`WaitCosts`] on `provider` and counts.
pub async fn wait_costs(
    provider: Arc<dyn LockProvider>,
    key: &str,
    tasks: usize,
    iters: u64,
    hold: Duration,
    interval: Duration,
) -> WaitCosts {
    let counted = CountedWaits::new(provider);
    let config = DeadlockConfig { enabled: true, interval, policy: DeadlockPolicy::Report };
    let layer: Arc<dyn LockProvider> = Arc::new(Waiting::new(counted.clone(), config, None));
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (p, key, owner) = (layer.clone(), key.to_owned(), format!("owner-{t}"));
            tokio::spawn(async move {
                for _ in 0..iters {
                    let o = LockOptions::new(key.as_str(), owner.as_str())
                        .ttl(Duration::from_secs(30))
                        .wait(WaitPolicy::deadline(Duration::from_secs(120)));
                    p.lock(&o).await.expect("lock");
                    tokio::time::sleep(hold).await;
                    p.unlock(&key, &owner).await.expect("unlock");
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
    // Withdrawals run in the background once a wait ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n = tasks as u64 * iters;
    let per = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / n as f64;
    WaitCosts {
        acquisitions: n,
        published: per(&counted.published),
        withdrawn: per(&counted.withdrawn),
        scans: per(&counted.scans),
        lookups: per(&counted.lookups),
    }
}

/// A bench's `main` for the cost of the waiting layer on one backend: criterion's groups
/// compare the bare provider, the layer with deadlock detection off and with it on (default
/// 1 s interval); then, under `cargo bench`, a summary counts the detection calls per
/// acquisition on a hot key with fast hand-overs and with holders that keep the lock 100 ms
/// (detection every 100 ms, so every wait is published).
pub fn main<F>(title: &'static str, connect: impl Fn() -> F)
where
    F: std::future::Future<Output = Option<Arc<dyn LockProvider>>>,
{
    let connect = &connect;
    let contenders = async {
        let bare = connect().await?;
        let off = DeadlockConfig { enabled: false, ..DeadlockConfig::default() };
        let without: Arc<dyn LockProvider> = Arc::new(Waiting::new(connect().await?, off, None));
        let with: Arc<dyn LockProvider> =
            Arc::new(Waiting::new(connect().await?, DeadlockConfig::default(), None));
        Some(vec![
            super::Contender::new("bare", Arc::new(super::ProviderCycle::new(bare))),
            super::Contender::new(
                "waiting layer, detection off",
                Arc::new(super::ProviderCycle::new(without)),
            ),
            super::Contender::new("waiting layer, detection on", Arc::new(super::ProviderCycle::new(with))),
        ])
    };
    super::main(super::Spec::new(title).without_hot_key_group(), contenders, |_| async move {
        let Some(p) = connect().await else { return };
        let prefix = format!("bench-waits/{:016x}/", fastrand::u64(..));
        println!("\n{title}: deadlock detection calls per acquisition (one key)");
        println!("{:<44} {:>9} {:>9} {:>9} {:>9}", "workload", "publish", "withdraw", "scans", "lookups");
        let fast =
            wait_costs(p.clone(), &format!("{prefix}fast"), 8, 200, Duration::ZERO, Duration::from_secs(1))
                .await;
        let slow = wait_costs(
            p,
            &format!("{prefix}slow"),
            4,
            5,
            Duration::from_millis(100),
            Duration::from_millis(100),
        )
        .await;
        for (name, c) in [
            ("8 tasks, no hold, detection every 1 s", fast),
            ("4 tasks, 100 ms holds, detection every 100 ms", slow),
        ] {
            println!(
                "{name:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2}   ({} acquisitions)",
                c.published, c.withdrawn, c.scans, c.lookups, c.acquisitions
            );
        }
    });
}
