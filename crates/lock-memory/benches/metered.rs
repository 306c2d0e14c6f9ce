//! The cost of the metrics layer: the memory backend's uncontended acquire/release cycle bare,
//! wrapped in [`Metered`] with no recorder installed, and wrapped with a recorder installed.
//!
//! `cargo bench -p lock-memory --bench metered`. The groups run in that order in one process:
//! the recorder (`metrics-util`'s `DebuggingRecorder`, drained between batches) is installed
//! only before the last one, since a global recorder cannot be removed again.

use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use lock_core::{LockProvider, Metered};
use lock_memory::MemoryLockProvider;
use lock_testkit::bench::{self, Cycle, ProviderCycle};
use metrics_util::debugging::DebuggingRecorder;

const KEY: &str = "bench:uncontended";

fn cycle(c: &mut Criterion, name: &str, cycle: Arc<dyn Cycle>, after_batch: &dyn Fn()) {
    let rt = bench::runtime();
    c.bench_function(name, |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let cycle = cycle.clone();
            async move {
                let elapsed = bench::uncontended(&*cycle, KEY, iters).await;
                after_batch();
                elapsed
            }
        });
    });
}

fn metered(c: &mut Criterion) {
    let bare: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    cycle(c, "memory uncontended cycle", Arc::new(ProviderCycle::new(bare)), &|| {});

    let inner: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let wrapped = Arc::new(ProviderCycle::new(Arc::new(Metered::new(inner))));
    cycle(c, "memory uncontended cycle, Metered, no recorder", wrapped.clone(), &|| {});

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("the first recorder of this process");
    // Draining keeps the recorded histogram samples from piling up across batches.
    cycle(c, "memory uncontended cycle, Metered, recorder installed", wrapped, &|| {
        snapshotter.snapshot();
    });
}

fn main() {
    let mut c = Criterion::default().measurement_time(Duration::from_secs(5)).configure_from_args();
    metered(&mut c);
    c.final_summary();
}
