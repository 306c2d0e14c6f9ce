//! The shared conformance suite against a Redis server (`DISTLOCK_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`).

use std::sync::Arc;

use lock_core::LockProvider;
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::Harness;

/// Each `provider()` call connects a new provider: a separate process, as far as the server
/// can tell. They share the server and the default key prefix.
struct Redis {
    config: RedisConfig,
}

#[async_trait::async_trait]
impl Harness for Redis {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        Arc::new(RedisLockProvider::connect(self.config.clone()).await.expect("connect to redis"))
    }
}

async fn harness() -> Result<Redis, String> {
    let url = std::env::var("DISTLOCK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = RedisConfig::new(url.as_str()).pool_size(2);
    // Probe once so a missing server is reported (or skipped) by the suite, not a panic.
    let probe = RedisLockProvider::connect(config.clone()).await.map_err(|e| format!("{url}: {e}"))?;
    probe.close().await.map_err(|e| e.to_string())?;
    Ok(Redis { config })
}

lock_testkit::conformance_suite!(harness);
