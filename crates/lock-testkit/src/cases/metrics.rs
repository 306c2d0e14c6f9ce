//! The metrics layer ([`Metered`]) on each backend: what a sequence of operations records.
//!
//! The metrics go to this module's [`Recorder`], which keeps the current value of every
//! series (counters' totals, gauges as last set or moved, histograms' samples) and is installed
//! as the global recorder once per test process ([`recorded`]). Each case run uses a key
//! class of its own (`m<random hex>`): cases running at the same time never see each other's
//! series.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use ::metrics::{CounterFn, GaugeFn, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use lock_core::deadlock::DeadlockConfig;
use lock_core::layer::metrics::{
    Classifier, Metered, ACQUIRE_TOTAL, ACQUIRE_WAIT_SECONDS, CONTENTION_TOTAL, HELD_LOCKS, HOLD_SECONDS,
    LEASE_LOST_TOTAL, OLDEST_HOLD_START_SECONDS, REFRESH_TOTAL, WAITERS,
};
use lock_core::layer::waiting::Waiting;

use super::*;

/// A metric series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// What a series holds now.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value.
    Gauge(f64),
    /// A histogram's samples.
    Histogram(Vec<f64>),
}

type Store = Arc<Mutex<BTreeMap<Series, Recorded>>>;

/// The process-wide recorder: the current value of every series recorded so far.
#[derive(Clone, Default)]
pub struct Recorder {
    store: Store,
}

impl Recorder {
    /// Every series whose `class` label is `class`, keyed by name and the other labels
    /// (`provider`, `outcome`).
    pub fn by_class(&self, class: &str) -> BTreeMap<Series, Recorded> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .iter()
            .filter(|((_, labels), _)| labels.iter().any(|(k, v)| k == "class" && v == class))
            .map(|((name, labels), value)| {
                let rest = labels.iter().filter(|(k, _)| k != "class").cloned().collect();
                ((name.clone(), rest), value.clone())
            })
            .collect()
    }

    /// The total of counter `name` over every series with `provider` (whatever the other
    /// labels): for series without a class label, such as `distlock_deadlocks_total`.
    pub fn total(&self, name: &str, provider: &str) -> u64 {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .iter()
            .filter(|((n, labels), _)| {
                n == name && labels.iter().any(|(k, v)| k == "provider" && v == provider)
            })
            .map(|(_, value)| match value {
                Recorded::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    fn handle(&self, key: &Key) -> Arc<Handle> {
        let mut labels: Vec<(String, String)> =
            key.labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
        labels.sort();
        Arc::new(Handle { series: (key.name().to_string(), labels), store: self.store.clone() })
    }
}

/// One series' handle: every update goes to the recorder's store.
struct Handle {
    series: Series,
    store: Store,
}

impl Handle {
    /// Runs `f` on the series' value, created as `empty` on first use; `f` answers `false`
    /// for a value of another kind.
    fn update(&self, empty: Recorded, f: impl FnOnce(&mut Recorded) -> bool) {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let value = store.entry(self.series.clone()).or_insert(empty);
        if !f(value) {
            panic!("{:?} changed kind: it holds {value:?}", self.series);
        }
    }

    fn counter(&self, f: impl FnOnce(&mut u64)) {
        self.update(Recorded::Counter(0), |v| {
            let Recorded::Counter(t) = v else { return false };
            f(t);
            true
        });
    }

    fn gauge(&self, f: impl FnOnce(&mut f64)) {
        self.update(Recorded::Gauge(0.0), |v| {
            let Recorded::Gauge(g) = v else { return false };
            f(g);
            true
        });
    }
}

impl CounterFn for Handle {
    fn increment(&self, n: u64) {
        self.counter(|t| *t += n);
    }

    fn absolute(&self, n: u64) {
        self.counter(|t| *t = (*t).max(n));
    }
}

impl GaugeFn for Handle {
    fn increment(&self, x: f64) {
        self.gauge(|g| *g += x);
    }

    fn decrement(&self, x: f64) {
        self.gauge(|g| *g -= x);
    }

    fn set(&self, x: f64) {
        self.gauge(|g| *g = x);
    }
}

impl HistogramFn for Handle {
    fn record(&self, x: f64) {
        self.update(Recorded::Histogram(Vec::new()), |v| {
            let Recorded::Histogram(h) = v else { return false };
            h.push(x);
            true
        });
    }
}

impl ::metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> ::metrics::Counter {
        ::metrics::Counter::from_arc(self.handle(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> ::metrics::Gauge {
        ::metrics::Gauge::from_arc(self.handle(key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> ::metrics::Histogram {
        ::metrics::Histogram::from_arc(self.handle(key))
    }
}

/// The [`Recorder`] of this process, installed as the global recorder on first use.
///
/// Panics if another global recorder was installed first (`metrics` allows one per process).
pub fn recorded() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = Recorder::default();
        ::metrics::set_global_recorder(recorder.clone())
            .expect("another metrics recorder is installed in this test process");
        recorder
    })
}

/// The wall clock in seconds since the Unix epoch, as the oldest-hold gauge counts.
fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    let mut labels: Vec<(String, String)> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    labels.sort();
    (name.to_string(), labels)
}

/// Lock, contend, re-enter, unlock twice, cancel a wait, then let a short lease expire and
/// refresh it: [`Metered`] over [`Waiting`] (as the factory stacks them) records exactly the
/// expected counts per label set, one wait sample per acquisition, one hold sample per ended
/// hold, and the held, oldest-hold and waiting gauges follow.
pub async fn metrics_record_each_operation(ctx: &Ctx) {
    let rec = recorded();
    let raw = ctx.provider().await;
    let waiting = Waiting::new(raw.clone(), DeadlockConfig::default(), Some(Classifier::default()));
    let p = Metered::new(Arc::new(waiting));
    let reentrant = raw.capabilities().reentrant;
    let provider = p.name();
    let class = format!("m{:016x}", fastrand::u64(..));
    let key = |name: &str| format!("{class}:{}{name}", ctx.prefix());
    let held = |rec: &Recorder| match rec.by_class(&class).get(&series(HELD_LOCKS, &[("provider", provider)]))
    {
        Some(Recorded::Gauge(v)) => *v,
        other => panic!("no held gauge: {other:?}"),
    };
    let gauge =
        |rec: &Recorder, name: &str| match rec.by_class(&class).get(&series(name, &[("provider", provider)]))
        {
            Some(Recorded::Gauge(v)) => *v,
            _ => 0.0,
        };

    // Acquire, refresh, and a contender that times out.
    let k1 = key("k1");
    let before = unix_now();
    p.lock(&opts(&k1, "alice")).await.expect("free key");
    let after = unix_now();
    assert_eq!(held(rec), 1.0);
    let oldest = gauge(rec, OLDEST_HOLD_START_SECONDS);
    assert!(
        before <= oldest && oldest <= after,
        "oldest hold started at {oldest}, not in [{before}, {after}]"
    );
    p.refresh_lock(&k1, "alice", Duration::from_secs(30)).await.expect("holder refreshes");
    let err = p.try_lock(&opts(&k1, "bob")).await.expect_err("held by alice");
    assert!(err.is_timeout(), "{err:?}");
    // Re-entry is one more acquisition but the same held lock.
    let mut acquired = 1;
    if reentrant {
        assert_eq!(p.lock(&opts(&k1, "alice")).await.expect("re-entry").depth, 2);
        acquired += 1;
        assert_eq!(held(rec), 1.0);
        p.unlock(&k1, "alice").await.unwrap();
        assert_eq!(held(rec), 1.0, "the outer level is still held");
    }
    assert_eq!(gauge(rec, OLDEST_HOLD_START_SECONDS), oldest, "refresh and re-entry keep the start");
    p.unlock(&k1, "alice").await.unwrap();
    assert_eq!(held(rec), 0.0);
    assert_eq!(gauge(rec, OLDEST_HOLD_START_SECONDS), 0.0, "the class holds nothing");

    // A waiting `lock` dropped before it finished.
    let k2 = key("k2");
    raw.lock(&opts(&k2, "carol")).await.expect("free key");
    let bob = patient(&k2, "bob");
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            r = p.lock(&bob) => panic!("bob got {r:?} while carol holds k2"),
            _ = async {
                while gauge(rec, WAITERS) != 1.0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } => {}
        }
    })
    .await;
    // The select dropped bob's waiting `lock`.
    assert!(counted.is_ok(), "the waiting call is counted in {WAITERS}");
    assert_eq!(gauge(rec, WAITERS), 0.0, "a dropped waiter is no longer counted");
    raw.unlock(&k2, "carol").await.unwrap();

    // A short lease that expires: its refresh is answered `LeaseLost` and ends the hold.
    let k3 = key("k3");
    p.lock(&opts(&k3, "alice").ttl(ctx.short_ttl())).await.expect("free key");
    acquired += 1;
    assert_eq!(held(rec), 1.0);
    tokio::time::sleep(ctx.outlive_short_ttl()).await;
    let err = p.refresh_lock(&k3, "alice", Duration::from_secs(30)).await.expect_err("expired");
    assert!(err.is_lease_lost(), "{err:?}");

    let got = rec.by_class(&class);
    let samples = |name: &str| match got.get(&series(name, &[("provider", provider)])) {
        Some(Recorded::Histogram(v)) => {
            assert!(v.iter().all(|s| s.is_finite() && *s >= 0.0), "{name}: {v:?}");
            v.len()
        }
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(samples(ACQUIRE_WAIT_SECONDS), acquired, "one wait sample per acquisition");
    assert_eq!(samples(HOLD_SECONDS), 2, "one hold sample per ended hold: the unlock and the lost lease");
    let counters: BTreeMap<Series, Recorded> = got
        .into_iter()
        .filter(|((name, _), _)| name != ACQUIRE_WAIT_SECONDS && name != HOLD_SECONDS)
        .collect();
    let expected: BTreeMap<Series, Recorded> = [
        (
            series(ACQUIRE_TOTAL, &[("provider", provider), ("outcome", "acquired")]),
            Recorded::Counter(acquired as u64),
        ),
        (series(ACQUIRE_TOTAL, &[("provider", provider), ("outcome", "timeout")]), Recorded::Counter(1)),
        (series(ACQUIRE_TOTAL, &[("provider", provider), ("outcome", "cancelled")]), Recorded::Counter(1)),
        (series(REFRESH_TOTAL, &[("provider", provider), ("outcome", "refreshed")]), Recorded::Counter(1)),
        (series(REFRESH_TOTAL, &[("provider", provider), ("outcome", "lease_lost")]), Recorded::Counter(1)),
        (series(LEASE_LOST_TOTAL, &[("provider", provider)]), Recorded::Counter(1)),
        (series(HELD_LOCKS, &[("provider", provider)]), Recorded::Gauge(0.0)),
        (series(OLDEST_HOLD_START_SECONDS, &[("provider", provider)]), Recorded::Gauge(0.0)),
        // bob's try on k1 and his wait on k2 found their locks held.
        (series(CONTENTION_TOTAL, &[("provider", provider)]), Recorded::Counter(2)),
        (series(WAITERS, &[("provider", provider)]), Recorded::Gauge(0.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(counters, expected);
}
