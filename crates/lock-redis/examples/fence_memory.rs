//! What a burst of distinct keys leaves in Redis: the server's `used_memory` before, right
//! after N distinct keys were locked (leases of 1 s) and released, and then every few seconds until the
//! fencing counters have expired (`fence_idle`, set short here).
//!
//! ```sh
//! cargo run --release -p lock-redis --example fence_memory [KEYS] [FENCE_IDLE_SECS]
//! ```
//!
//! The server comes from `DISTLOCK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`); run it
//! on a server nothing else writes to meanwhile, the figure is the whole server's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::ClientLike;
use fred::types::InfoKind;
use lock_core::{LockOptions, LockProvider};
use lock_redis::{RedisConfig, RedisLockProvider};

const TASKS: usize = 64;

async fn used_memory(client: &fred::clients::Client) -> Result<f64, Box<dyn std::error::Error>> {
    let info: String = client.info(Some(InfoKind::Memory)).await?;
    let bytes: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .ok_or("no used_memory in INFO")?
        .trim()
        .parse()?;
    Ok(bytes / (1024.0 * 1024.0))
}

/// Keys in database 0, from `INFO keyspace`.
async fn key_count(client: &fred::clients::Client) -> Result<i64, Box<dyn std::error::Error>> {
    let info: String = client.info(Some(InfoKind::Keyspace)).await?;
    let keys = info
        .lines()
        .find_map(|l| l.strip_prefix("db0:keys="))
        .and_then(|rest| rest.split(',').next())
        .map_or(Ok(0), str::parse)?;
    Ok(keys)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let idle = Duration::from_secs(args.next().map_or(Ok(2), |n| n.parse())?);
    let url = std::env::var("DISTLOCK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let raw = fred::types::Builder::from_config(fred::types::config::Config::from_url(&url)?).build()?;
    raw.init().await?;
    let provider =
        Arc::new(RedisLockProvider::connect(RedisConfig::new(url.as_str()).fence_idle(idle)).await?);
    let run = format!("fence-memory/{:08x}/", fastrand::u32(..));
    let (before, keys_before): (f64, i64) = (used_memory(&raw).await?, key_count(&raw).await?);
    println!("before: used_memory {before:.1} MiB, {keys_before} keys");
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (provider, run) = (provider.clone(), run.clone());
            tokio::spawn(async move {
                for i in (t..keys).step_by(TASKS) {
                    let key = format!("{run}{i}");
                    provider
                        .lock(&LockOptions::new(key.as_str(), "owner").ttl(Duration::from_secs(1)).no_wait())
                        .await?;
                    provider.unlock(&key, "owner").await?;
                }
                Ok::<_, lock_core::LockError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let (after, keys_after): (f64, i64) = (used_memory(&raw).await?, key_count(&raw).await?);
    println!(
        "{keys} distinct keys locked and released in {:.1?}: used_memory {after:.1} MiB, {keys_after} keys",
        start.elapsed()
    );
    let idle_start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (now, keys_now): (f64, i64) = (used_memory(&raw).await?, key_count(&raw).await?);
        println!("{:>4.0?} later: used_memory {now:.1} MiB, {keys_now} keys", idle_start.elapsed());
        if keys_now <= keys_before || idle_start.elapsed() > Duration::from_secs(180) {
            break;
        }
    }
    provider.close().await?;
    raw.quit().await?;
    Ok(())
}
