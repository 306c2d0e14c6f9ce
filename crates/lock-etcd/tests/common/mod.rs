//! Helpers shared by the etcd integration tests.

use std::time::Duration;

use lock_core::LockProvider;
use lock_etcd::{EtcdConfig, EtcdLockProvider};

/// A provider on its own random prefix, or `None` (skip, or fail under
/// `DISTLOCK_REQUIRE_SERVICES=1`) when etcd is not there.
pub(crate) async fn provider(case: &str) -> Option<(EtcdLockProvider, String)> {
    let endpoints = lock_testkit::env::etcd_endpoints();
    let prefix = format!("distlock-test/{:016x}/{case}/", fastrand::u64(..));
    let config =
        EtcdConfig::from_list(&endpoints).prefix(prefix.clone()).connect_timeout(Duration::from_secs(3));
    let reached = match EtcdLockProvider::connect(config).await {
        Ok(p) => p.health().await.map(|_| p),
        Err(e) => Err(e),
    };
    let p = lock_testkit::require_or_skip(case, reached.map_err(|e| e.to_string()))?;
    Some((p, prefix))
}
