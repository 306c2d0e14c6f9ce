//! The cost of the metrics layer: the memory backend's uncontended acquire/release cycle bare,
//! through the layers the factory stacks with metrics off (`Waiting`), and with metrics on
//! (`Metered(Waiting)`) without a recorder and with the Prometheus exporter's recorder.
//!
//! `cargo bench -p lock-memory --bench metered`. The groups run in that order in one process:
//! the recorder (`metrics-exporter-prometheus`, with histogram buckets as `distlock serve`
//! installs it, its upkeep run between batches) is installed only before the last one, since a
//! global recorder cannot be removed again.

use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use lock_core::layer::metrics::{ACQUIRE_WAIT_SECONDS, HOLD_SECONDS};
use lock_core::{Classifier, DeadlockConfig, LockProvider, Metered, Waiting};
use lock_memory::MemoryLockProvider;
use lock_testkit::bench::{self, Cycle, ProviderCycle};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

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

    let backend: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let off: Arc<dyn LockProvider> = Arc::new(Waiting::new(backend, DeadlockConfig::default(), None));
    cycle(c, "memory uncontended cycle, metrics off (Waiting)", Arc::new(ProviderCycle::new(off)), &|| {});

    let backend: Arc<dyn LockProvider> = Arc::new(MemoryLockProvider::new());
    let classifier = Classifier::default();
    let waiting = Arc::new(Waiting::new(backend, DeadlockConfig::default(), Some(classifier.clone())));
    let on = Arc::new(ProviderCycle::new(Arc::new(Metered::with_classifier(waiting, classifier))));
    cycle(c, "memory uncontended cycle, metrics on (Metered(Waiting)), no recorder", on.clone(), &|| {});

    let buckets = [0.001, 0.01, 0.1, 1.0, 10.0, 60.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ACQUIRE_WAIT_SECONDS.into()), &buckets)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HOLD_SECONDS.into()), &buckets))
        .expect("buckets")
        .install_recorder()
        .expect("the first recorder of this process");
    cycle(c, "memory uncontended cycle, metrics on, Prometheus recorder", on, &|| handle.run_upkeep());
}

fn main() {
    let mut c = Criterion::default().measurement_time(Duration::from_secs(5)).configure_from_args();
    metered(&mut c);
    c.final_summary();
}
