//! Default configuration: the orchestrator hands its MySQL
//! pool to the lock manager and takes every default (MySQL, table `distributed_locks`,
//! TTL 5 min, 3 retries 1 s apart).
//!
//! `cargo run -p distlock --features mysql --example default_config`
//! (database from `DISTLOCK_EXAMPLE_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`)

use distlock::mysql::MySqlPool;
use distlock::{LockConfig, LockManager};

/// An orchestrator service, reduced to its lock use.
struct OrchestratorService {
    locks: LockManager,
}

impl OrchestratorService {
    async fn new(db: MySqlPool) -> distlock::Result<Self> {
        Ok(OrchestratorService { locks: LockManager::new(Some(db), LockConfig::default()).await? })
    }

    async fn run_execution(&self, execution_id: &str) -> distlock::Result<()> {
        let handle = self.locks.workflow_lock_provider().lock_workflow_execution(execution_id).await?;
        println!(
            "running {execution_id} as {} with fencing token {}",
            handle.owner(),
            handle.fencing_token()
        );
        handle.unlock().await
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DISTLOCK_EXAMPLE_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let db = MySqlPool::connect(&url).await?;
    let service = OrchestratorService::new(db).await?;
    service.run_execution("execution_123").await?;
    println!("table in use: {}", service.locks.config().mysql.table_name);
    service.locks.close().await?;
    Ok(())
}
