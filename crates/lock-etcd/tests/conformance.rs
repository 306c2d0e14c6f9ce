//! The shared conformance suite against a real etcd (`DISTLOCK_TEST_ETCD_ENDPOINTS`, default
//! `http://127.0.0.1:2379`; `cargo xtask services up` starts one).

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_etcd::{EtcdConfig, EtcdLockProvider};
use lock_testkit::Harness;

fn config() -> EtcdConfig {
    let endpoints =
        std::env::var("DISTLOCK_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    EtcdConfig::from_list(&endpoints).connect_timeout(Duration::from_secs(3))
}

/// Every `provider()` is a new client: cases model separate processes.
struct Etcd;

#[async_trait::async_trait]
impl Harness for Etcd {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        Arc::new(EtcdLockProvider::connect(config()).await.expect("etcd answered a moment ago"))
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
    let p = EtcdLockProvider::connect(config()).await.map_err(|e| e.to_string())?;
    p.health().await.map_err(|e| e.to_string())?;
    Ok(Etcd)
}

lock_testkit::conformance_suite!(harness);
