//! Custom configuration: MySQL with a table of its own and
//! a 10-minute TTL for long workflows.
//!
//! `cargo run -p distlock --features mysql --example custom_config`
//! (database from `DISTLOCK_EXAMPLE_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`)

use std::time::Duration;

use distlock::mysql::MySqlPool;
use distlock::{LockConfig, LockManager, LockProviderType, MySqlConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DISTLOCK_EXAMPLE_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let db = MySqlPool::connect(&url).await?;
    let lock_config = LockConfig {
        provider: LockProviderType::Mysql,
        default_ttl: Duration::from_secs(10 * 60),
        mysql: MySqlConfig::default().table_name("custom_locks"),
        ..LockConfig::default()
    };
    let manager = LockManager::new(Some(db), lock_config).await?;
    let handle = manager.workflow_lock_provider().lock_workflow_template("nightly-report").await?;
    let info = manager.lock_provider().is_locked(handle.lock_key()).await?.expect("held");
    println!("{} held by {} in table custom_locks, {:?} left", info.key, info.owner, info.remaining_ttl);
    handle.unlock().await?;
    manager.close().await?;
    Ok(())
}
