//! The shared conformance suite against MySQL/MariaDB (`DISTLOCK_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::faults::{through, upstream_of, Faulty};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::Harness;

const TABLE: &str = "distlock_conformance";

fn url() -> String {
    std::env::var("DISTLOCK_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Every provider is a separate client with its own pool on the same table: two processes.
struct MySql;

#[async_trait::async_trait]
impl Harness for MySql {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        let config = MySqlLockConfig::default().table_name(TABLE).max_connections(4);
        Arc::new(MySqlLockProvider::connect(&url(), config).await.expect("connect to MySQL"))
    }

    fn private_server(&self) -> Option<lock_testkit::servers::Kind> {
        Some(lock_testkit::servers::Kind::MariaDb)
    }

    async fn provider_at(&self, url: &str) -> Arc<dyn LockProvider> {
        let config = MySqlLockConfig::default()
            .table_name(TABLE)
            .max_connections(4)
            .command_timeout(Duration::from_secs(1));
        Arc::new(MySqlLockProvider::connect(url, config).await.expect("connect to the private server"))
    }

    /// Every connection through a fault proxy, with a short statement timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let proxy = FaultProxy::start(upstream_of(&url())).await.expect("start a fault proxy");
        let config = MySqlLockConfig::default()
            .table_name(TABLE)
            .max_connections(4)
            .command_timeout(Duration::from_secs(1))
            .acquire_timeout(Duration::from_secs(2));
        let provider = MySqlLockProvider::connect(&through(&url(), &proxy), config)
            .await
            .expect("connect through the proxy");
        Some(Faulty::new(Arc::new(provider), vec![proxy]))
    }
}

async fn harness() -> Result<MySql, String> {
    let config = MySqlLockConfig::default().table_name(TABLE).max_connections(1);
    let probe = MySqlLockProvider::connect(&url(), config).await.map_err(|e| format!("{}: {e}", url()))?;
    probe.close().await.map_err(|e| e.to_string())?;
    Ok(MySql)
}

lock_testkit::conformance_suite!(harness);
