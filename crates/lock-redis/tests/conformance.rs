//! The shared conformance suite against a Redis server (`DISTLOCK_TEST_REDIS_URL`, else a
//! container with lock-testkit's `docker` feature, else `redis://127.0.0.1:6379`; see
//! `lock_testkit::service`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::faults::{through, upstream_of, Faulty, ServerConnection};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::service::{provide, Provided, Service};
use lock_testkit::Harness;

/// Each `provider()` call connects a new provider: a separate process, as far as the server
/// can tell. They share the server and the default key prefix.
struct Redis {
    config: RedisConfig,
    /// Keeps a container, if the server is one, up while the case runs.
    _service: Provided,
}

#[async_trait::async_trait]
impl Harness for Redis {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        Arc::new(RedisLockProvider::connect(self.config.clone()).await.expect("connect to redis"))
    }

    fn private_server(&self) -> Option<lock_testkit::servers::Kind> {
        Some(lock_testkit::servers::Kind::Redis)
    }

    async fn provider_at(&self, url: &str) -> Arc<dyn LockProvider> {
        let config = RedisConfig::new(url).pool_size(2).command_timeout(Duration::from_secs(1));
        Arc::new(RedisLockProvider::connect(config).await.expect("connect to the private server"))
    }

    /// Every connection through a fault proxy, with a short command timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let proxy = FaultProxy::start(upstream_of(&self.config.url)).await.expect("start a fault proxy");
        let mut config = self.config.clone().command_timeout(Duration::from_secs(1));
        config.url = through(&self.config.url, &proxy);
        let provider = RedisLockProvider::connect(config).await.expect("connect through the proxy");
        Some(Faulty::new(Arc::new(provider), vec![proxy]))
    }

    /// `CLIENT KILL ADDR` of each connection.
    async fn kill_server_side(&self, connections: &[ServerConnection]) -> Option<usize> {
        Some(common::client_kill(connections).await)
    }
}

async fn harness() -> Result<Redis, String> {
    let service = provide(Service::Redis).await?;
    let url = service.url().to_string();
    let config = RedisConfig::new(url.as_str()).pool_size(2);
    // Probe once so a missing server is reported (or skipped) by the suite, not a panic.
    let probe = RedisLockProvider::connect(config.clone()).await.map_err(|e| format!("{url}: {e}"))?;
    probe.close().await.map_err(|e| e.to_string())?;
    Ok(Redis { config, _service: service })
}

lock_testkit::conformance_suite!(harness);
