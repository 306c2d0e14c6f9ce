//! Runs uncontended lock/unlock cycles on the memory backend through the layers the factory
//! stacks, for counting what each layer costs with a tool that counts instructions (the
//! count is the same from run to run, whatever else the machine does):
//!
//! ```sh
//! cargo build --release -p lock-memory --example layer_cycles
//! valgrind --tool=callgrind target/release/examples/layer_cycles on 100000
//! ```
//!
//! Stacks: `bare` (the backend), `off` (`Waiting`, as the factory stacks it with metrics
//! off), `on` (`Metered(Waiting)`, no recorder), `prom` (the same with the Prometheus
//! recorder installed). Divide the difference of two runs' totals by the cycles.

use std::sync::Arc;

use lock_core::{Classifier, DeadlockConfig, LockOptions, LockProvider, Metered, Waiting};
use lock_memory::MemoryLockProvider;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let stack = args.next().unwrap_or_else(|| "on".into());
    let cycles: u64 = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let backend: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let provider: Arc<dyn LockProvider> = match stack.as_str() {
        "bare" => backend,
        "off" => Arc::new(Waiting::new(backend, DeadlockConfig::default(), None)),
        "on" | "prom" => {
            let classifier = Classifier::default();
            let waiting =
                Arc::new(Waiting::new(backend, DeadlockConfig::default(), Some(classifier.clone())));
            Arc::new(Metered::with_classifier(waiting, classifier))
        }
        other => return Err(format!("unknown stack {other:?}: bare, off, on or prom").into()),
    };
    if stack == "prom" {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let opts = LockOptions::new("bench:uncontended", "bench-owner").no_wait();
    let cycles = runtime.spawn(async move {
        for _ in 0..cycles {
            provider.lock(&opts).await?;
            provider.unlock("bench:uncontended", "bench-owner").await?;
        }
        Ok::<_, lock_core::LockError>(())
    });
    runtime.block_on(cycles)??;
    Ok(())
}
