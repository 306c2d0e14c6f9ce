//! Switching implementation: the memory provider, no
//! database, for tests and single-node deployments. Business code is unchanged.
//!
//! `cargo run -p distlock --example memory`

use std::sync::Arc;
use std::time::Duration;

use distlock::{LockConfig, LockManager, WaitPolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manager = Arc::new(LockManager::new(None, LockConfig::memory()).await?);

    // Two workers offered the same execution: exactly one runs it.
    let mut workers = Vec::new();
    for w in 0..2 {
        let manager = manager.clone();
        workers.push(tokio::spawn(async move {
            let workflows = manager.workflow_lock_provider();
            match workflows.lock_workflow_execution_with("execution_7", &WaitPolicy::NoWait).await {
                Ok(handle) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    handle.unlock().await.map(|_| format!("worker {w} ran execution_7"))
                }
                Err(e) if e.is_timeout() => Ok(format!("worker {w} skipped execution_7: already running")),
                Err(e) => Err(e),
            }
        }));
    }
    for w in workers {
        println!("{}", w.await??);
    }
    manager.close().await?;
    Ok(())
}
