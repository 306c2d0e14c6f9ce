//! The lock manager used directly, with the lock released
//! however the business logic ends. The provider comes from `distlock.toml` and `DISTLOCK_*`
//! variables when present, else the embedded memory backend.
//!
//! `cargo run -p distlock --example manager`

use std::path::Path;

use distlock::{LockConfig, LockManager};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = Path::new("distlock.toml");
    let lock_config = if file.exists() { LockConfig::load(Some(file))? } else { LockConfig::memory() };
    let lock_manager = LockManager::new(None, lock_config).await?;

    let workflow_provider = lock_manager.workflow_lock_provider();
    let lock_handle = workflow_provider.lock_workflow_execution("execution_123").await?;
    let outcome = tokio::select! {
        // The lease can no longer be trusted: stop, do not finish the work.
        _ = lock_handle.lost().cancelled() => Err("lock lost"),
        // Business logic, passing the fencing token to every write it makes.
        done = business_logic(lock_handle.fencing_token().get()) => Ok(done),
    };
    lock_handle.unlock().await?;
    println!("execution_123: {outcome:?}");
    lock_manager.close().await?;
    Ok(())
}

async fn business_logic(token: u64) -> String {
    format!("written with fencing token {token}")
}
