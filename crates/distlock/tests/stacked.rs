//! The shared conformance suite through the layers the factory puts around every backend
//! (`LockProviderFactory::layered`: tracing and the waiting layer with deadlock detection):
//! no layer may weaken a guarantee (cancel safety, FIFO, fencing, fault behaviour...).
//!
//! Two backends: memory (one provider per case, every call layered anew) and Redis (a new
//! client per call, and the fault cases through a fault proxy). The metrics layer is left
//! out here: the suite's metrics case wraps its own, and two would count every operation
//! twice; it is part of every other run of the factory.

use std::sync::Arc;
use std::time::Duration;

use distlock::memory::MemoryLockProvider;
use distlock::redis::{RedisConfig, RedisLockProvider};
use distlock::{LockConfig, LockProvider, LockProviderFactory};
use lock_testkit::faults::{through, upstream_of, Faulty};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::Harness;

fn layers() -> LockConfig {
    LockConfig { metrics: false, ..LockConfig::memory() }
}

mod memory {
    use super::*;

    struct Stacked(Arc<MemoryLockProvider>);

    #[async_trait::async_trait]
    impl Harness for Stacked {
        async fn provider(&self) -> Arc<dyn LockProvider> {
            LockProviderFactory::layered(self.0.clone(), &layers())
        }

        fn processes_share_servers(&self) -> bool {
            false
        }
    }

    async fn harness() -> Result<Stacked, String> {
        Ok(Stacked(Arc::new(MemoryLockProvider::new())))
    }

    lock_testkit::conformance_suite!(harness);
}

mod redis {
    use super::*;

    struct Stacked {
        config: RedisConfig,
    }

    #[async_trait::async_trait]
    impl Harness for Stacked {
        async fn provider(&self) -> Arc<dyn LockProvider> {
            let backend = RedisLockProvider::connect(self.config.clone()).await.expect("connect to redis");
            LockProviderFactory::layered(Arc::new(backend), &layers())
        }

        async fn faulty_provider(&self) -> Option<Faulty> {
            let proxy = FaultProxy::start(upstream_of(&self.config.url)).await.expect("start a fault proxy");
            let mut config = self.config.clone().command_timeout(Duration::from_secs(1));
            config.url = through(&self.config.url, &proxy);
            let backend = RedisLockProvider::connect(config).await.expect("connect through the proxy");
            Some(Faulty::new(LockProviderFactory::layered(Arc::new(backend), &layers()), vec![proxy]))
        }
    }

    async fn harness() -> Result<Stacked, String> {
        let url = lock_testkit::env::redis_url();
        let config = RedisConfig::new(url.as_str()).pool_size(2);
        let probe = RedisLockProvider::connect(config.clone()).await.map_err(|e| format!("{url}: {e}"))?;
        probe.close().await.map_err(|e| e.to_string())?;
        Ok(Stacked { config })
    }

    lock_testkit::conformance_suite!(harness);
}
