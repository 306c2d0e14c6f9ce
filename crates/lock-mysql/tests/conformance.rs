//! The shared conformance suite against MySQL/MariaDB (`DISTLOCK_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;

use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
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
        let config = MySqlLockConfig { table: TABLE.into(), max_connections: 4, ..Default::default() };
        Arc::new(MySqlLockProvider::connect(&url(), config).await.expect("connect to MySQL"))
    }
}

async fn harness() -> Result<MySql, String> {
    let config = MySqlLockConfig { table: TABLE.into(), max_connections: 1, ..Default::default() };
    let probe = MySqlLockProvider::connect(&url(), config).await.map_err(|e| format!("{}: {e}", url()))?;
    probe.close().await.map_err(|e| e.to_string())?;
    Ok(MySql)
}

lock_testkit::conformance_suite!(harness);
