//! What the memory backend keeps after a burst of keys is gone: the process's resident memory
//! (`VmRSS`, Linux) before, at the peak of a million held locks, after they expired and the
//! reaper's pass cleaned them, and after a million more locked and released.
//!
//! ```sh
//! cargo run --release -p lock-memory --example reap_rss [KEYS]
//! ```

use std::time::Duration;

use lock_core::{LockOptions, LockProvider};
use lock_memory::{MemoryConfig, MemoryLockProvider};

/// The process's resident memory in MiB, from `/proc/self/status` (0 where there is none).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys: usize = std::env::args().nth(1).map_or(Ok(1_000_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        // No reaper task: the passes run when this program says.
        let provider = MemoryLockProvider::with_config(MemoryConfig::default().reap_interval(None))?;
        println!("baseline: {:.1} MiB", rss_mib());
        let ttl = Duration::from_millis(500);
        for i in 0..keys {
            provider.lock(&LockOptions::new(format!("burst/{i}"), "owner").ttl(ttl).no_wait()).await?;
        }
        println!("{keys} locks held: {:.1} MiB", rss_mib());
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let cleaned = provider.reap_expired();
        println!("after the reaper's pass ({cleaned} expired leases cleaned): {:.1} MiB", rss_mib());
        for i in 0..keys {
            let key = format!("cycled/{i}");
            provider.lock(&LockOptions::new(key.as_str(), "owner").no_wait()).await?;
            provider.unlock(&key, "owner").await?;
        }
        println!("{keys} more locked and released: {:.1} MiB", rss_mib());
        provider.reap_expired();
        println!("after another pass: {:.1} MiB", rss_mib());
        provider.close().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
