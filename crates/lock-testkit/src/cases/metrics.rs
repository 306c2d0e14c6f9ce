//! The metrics layer ([`Metered`]) on each backend: what a sequence of operations records.
//!
//! The metrics go to `metrics-util`'s `DebuggingRecorder`, installed as the global recorder
//! once per test process ([`recorded`]). Its snapshots reset what they read, so every read
//! goes through one process-wide accumulator, and each case run uses a key class of its own
//! (`m<random hex>`): cases running at the same time never see each other's counts.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use lock_core::deadlock::DeadlockConfig;
use lock_core::layer::metrics::{
    Classifier, Metered, ACQUIRE_TOTAL, ACQUIRE_WAIT_SECONDS, CONTENTION_TOTAL, HELD_LOCKS, HOLD_SECONDS,
    LEASE_LOST_TOTAL, REFRESH_TOTAL, WAITERS,
};
use lock_core::layer::waiting::Waiting;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::*;

/// A metric series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// What a series recorded since the recorder was installed.
#[derive(Clone, Debug, PartialEq)]
pub enum Recorded {
    /// A counter's total.
    Counter(u64),
    /// A gauge's value (the layer only increments and decrements).
    Gauge(f64),
    /// A histogram's samples.
    Histogram(Vec<f64>),
}

/// The process-wide recorder and the totals read from it so far.
pub struct Recorder {
    snapshotter: Snapshotter,
    totals: Mutex<BTreeMap<Series, Recorded>>,
}

impl Recorder {
    /// Everything recorded so far by series whose `class` label is `class`, keyed by name
    /// and the other labels (`provider`, `outcome`).
    pub fn by_class(&self, class: &str) -> BTreeMap<Series, Recorded> {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let mut labels: Vec<(String, String)> =
                key.key().labels().map(|l| (l.key().to_string(), l.value().to_string())).collect();
            labels.sort();
            let series = (key.key().name().to_string(), labels);
            let total = totals.entry(series).or_insert_with(|| match value {
                DebugValue::Counter(_) => Recorded::Counter(0),
                DebugValue::Gauge(_) => Recorded::Gauge(0.0),
                DebugValue::Histogram(_) => Recorded::Histogram(Vec::new()),
            });
            match (total, value) {
                (Recorded::Counter(t), DebugValue::Counter(n)) => *t += n,
                // Read values are reset to zero and the layer only adds and subtracts: the
                // value is the sum of what each snapshot read.
                (Recorded::Gauge(t), DebugValue::Gauge(v)) => *t += v.into_inner(),
                (Recorded::Histogram(t), DebugValue::Histogram(v)) => {
                    t.extend(v.into_iter().map(|f| f.into_inner()))
                }
                (total, value) => panic!("series changed kind: {total:?} then {value:?}"),
            }
        }
        totals
            .iter()
            .filter(|((_, labels), _)| labels.iter().any(|(k, v)| k == "class" && v == class))
            .map(|((name, labels), value)| {
                let rest = labels.iter().filter(|(k, _)| k != "class").cloned().collect();
                ((name.clone(), rest), value.clone())
            })
            .collect()
    }
}

impl Recorder {
    /// The total of counter `name` over every series with `provider` (whatever the other
    /// labels): for series without a class label, such as `distlock_deadlocks_total`.
    pub fn total(&self, name: &str, provider: &str) -> u64 {
        let _ = self.by_class("");
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        totals
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
}

/// The `DebuggingRecorder` of this process, installed as the global recorder on first use.
///
/// Panics if another global recorder was installed first (`metrics` allows one per process).
pub fn recorded() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::set_global_recorder(recorder)
            .expect("another metrics recorder is installed in this test process");
        Recorder { snapshotter, totals: Mutex::default() }
    })
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
/// hold, and the held and waiting gauges follow.
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

    // Acquire, refresh, and a contender that times out.
    let k1 = key("k1");
    p.lock(&opts(&k1, "alice")).await.expect("free key");
    assert_eq!(held(rec), 1.0);
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
    p.unlock(&k1, "alice").await.unwrap();
    assert_eq!(held(rec), 0.0);

    // A waiting `lock` dropped before it finished.
    let k2 = key("k2");
    raw.lock(&opts(&k2, "carol")).await.expect("free key");
    let gauge =
        |rec: &Recorder, name: &str| match rec.by_class(&class).get(&series(name, &[("provider", provider)]))
        {
            Some(Recorded::Gauge(v)) => *v,
            _ => 0.0,
        };
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
        // bob's try on k1 and his wait on k2 found their locks held.
        (series(CONTENTION_TOTAL, &[("provider", provider)]), Recorded::Counter(2)),
        (series(WAITERS, &[("provider", provider)]), Recorded::Gauge(0.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(counters, expected);
}
