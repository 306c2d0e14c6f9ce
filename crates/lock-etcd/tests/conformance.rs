//! The shared conformance suite against a real etcd (`DISTLOCK_TEST_ETCD_ENDPOINTS`, else a
//! container with lock-testkit's `docker` feature, else `http://127.0.0.1:2379`; `cargo xtask
//! services up` starts one; see `lock_testkit::service`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_etcd::{EtcdConfig, EtcdLockProvider};
use lock_testkit::faults::{through, upstream_of, Faulty};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::service::{provide, Provided, Service};
use lock_testkit::Harness;

/// Every `provider()` is a new client: cases model separate processes.
struct Etcd {
    service: Provided,
}

impl Etcd {
    fn config(&self) -> EtcdConfig {
        EtcdConfig::from_list(self.service.url()).connect_timeout(Duration::from_secs(3))
    }
}

#[async_trait::async_trait]
impl Harness for Etcd {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        Arc::new(EtcdLockProvider::connect(self.config()).await.expect("etcd answered a moment ago"))
    }

    fn private_server(&self) -> Option<lock_testkit::servers::Kind> {
        Some(lock_testkit::servers::Kind::Etcd)
    }

    async fn provider_at(&self, url: &str) -> Arc<dyn LockProvider> {
        let config = EtcdConfig::from_list(url)
            .connect_timeout(Duration::from_secs(3))
            .request_timeout(Duration::from_secs(1));
        Arc::new(EtcdLockProvider::connect(config).await.expect("connect to the private server"))
    }

    /// Every connection through a fault proxy (one per endpoint), with a short request
    /// timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let urls: Vec<String> = self.service.url().split(',').map(|u| u.trim().to_string()).collect();
        let addrs: Vec<_> = urls.iter().map(|u| upstream_of(u)).collect();
        let proxies = FaultProxy::start_many(&addrs).await.expect("start fault proxies");
        let list: Vec<String> = urls.iter().zip(&proxies).map(|(u, p)| through(u, p)).collect();
        let config = EtcdConfig::from_list(&list.join(","))
            .connect_timeout(Duration::from_secs(3))
            .request_timeout(Duration::from_secs(1));
        let provider = EtcdLockProvider::connect(config).await.expect("connect through the proxies");
        Some(Faulty::new(Arc::new(provider), proxies))
    }

    /// etcd leases count in whole seconds and have a minimum TTL (2 s with the default
    /// election timeout): a shorter request is granted 2 s.
    fn short_ttl(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// The leader checks for expired leases every 500 ms, then revokes them through raft.
    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(1500)
    }
}

async fn harness() -> Result<Etcd, String> {
    let h = Etcd { service: provide(Service::Etcd).await? };
    let p = EtcdLockProvider::connect(h.config()).await.map_err(|e| e.to_string())?;
    p.health().await.map_err(|e| e.to_string())?;
    Ok(h)
}

lock_testkit::conformance_suite!(harness);
