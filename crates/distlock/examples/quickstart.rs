//! The original design's usage on the embedded memory backend: an orchestrator's workers race
//! for workflow executions; each execution must run exactly once, even though every execution
//! is offered to several workers.
//!
//! Run: `cargo run -p distlock --example quickstart`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::memory::MemoryLockProvider;
use distlock::{LockError, LockOptions, LockProvider, WaitPolicy};

const WORKERS: usize = 4;
const EXECUTIONS: usize = 50;

/// Execution id -> the (worker, fencing token) of each run it got.
type Runs = HashMap<usize, Vec<(usize, u64)>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // "Switching implementation": the memory provider needs no database.
    let locks: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let runs: Arc<Mutex<Runs>> = Arc::default();

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (locks, runs) = (locks.clone(), runs.clone());
        workers.push(tokio::spawn(async move {
            let owner = format!("worker-{w}");
            for e in 0..EXECUTIONS {
                let key = format!("workflow:execution:{e}");
                let opts = LockOptions::new(key.as_str(), owner.as_str())
                    .ttl(Duration::from_secs(300))
                    .wait(WaitPolicy::NoWait);
                match locks.lock(&opts).await {
                    Ok(lease) => {
                        // The execution is ours unless it already ran.
                        {
                            let mut runs = runs.lock().unwrap();
                            let entry = runs.entry(e).or_default();
                            if entry.is_empty() {
                                entry.push((w, lease.token.get()));
                            }
                        }
                        locks.unlock(&key, &owner).await?;
                    }
                    // Tell a busy lock apart from a broken lock service.
                    Err(err) if err.is_timeout() => {}
                    Err(err) => return Err(err),
                }
            }
            Ok::<_, LockError>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let runs = std::mem::take(&mut *runs.lock().unwrap());
    let ran_once = (0..EXECUTIONS).filter(|e| runs.get(e).is_some_and(|r| r.len() == 1)).count();
    println!("{WORKERS} workers, {EXECUTIONS} executions: {ran_once} ran exactly once");
    for e in 0..3 {
        let (w, token) = runs[&e][0];
        println!("  workflow:execution:{e} ran on worker-{w} with fencing token {token}");
    }
    if ran_once != EXECUTIONS {
        return Err(format!("{} executions did not run exactly once", EXECUTIONS - ran_once).into());
    }
    locks.close().await?;
    Ok(())
}
