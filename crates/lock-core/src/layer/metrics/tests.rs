use super::*;

#[test]
fn workflow_keys_are_classed_by_kind() {
    let c = Classifier::default();
    assert_eq!(&*c.classify("distlock:workflow:execution:e-17"), "execution");
    assert_eq!(&*c.classify("distlock:workflow:template:nightly"), "template");
    assert_eq!(&*c.classify("distlock:workflow:template:nightly:slot:3"), "template");
    assert_eq!(&*c.classify("distlock:workflow:resource:gpu-0"), "resource");
    // An unknown kind under the prefix falls back to the first-`:` rule.
    assert_eq!(&*c.classify("distlock:workflow:other-kind:x"), "distlock");
}

#[test]
fn a_custom_workflow_prefix_is_honoured() {
    let c = Classifier::default().workflow_prefix("wf/");
    assert_eq!(&*c.classify("wf/execution:e"), "execution");
    assert_eq!(&*c.classify("distlock:workflow:execution:e"), "distlock");
}

#[test]
fn other_keys_are_classed_by_their_part_before_the_first_colon() {
    let c = Classifier::default();
    assert_eq!(&*c.classify("reports:daily:2024"), "reports");
    assert_eq!(&*c.classify("reports:weekly"), "reports");
    assert_eq!(&*c.classify(":leading"), "");
    assert_eq!(&*c.classify("no-colon-at-all"), OTHER_CLASS);
}

#[test]
fn classes_beyond_the_cap_are_other() {
    let c = Classifier::default().max_classes(2);
    assert_eq!(&*c.classify("a:1"), "a");
    assert_eq!(&*c.classify("b:1"), "b");
    assert_eq!(&*c.classify("c:1"), OTHER_CLASS);
    // Classes seen before the cap was reached keep their name.
    assert_eq!(&*c.classify("a:2"), "a");
    assert_eq!(&*c.classify("b:2"), "b");
    // `other` itself never takes a place.
    let c = Classifier::default().max_classes(1);
    assert_eq!(&*c.classify("plain"), OTHER_CLASS);
    assert_eq!(&*c.classify("x:1"), "x");
    assert_eq!(&*c.classify("y:1"), OTHER_CLASS);
}

#[test]
fn the_default_cap_is_64() {
    let c = Classifier::default();
    for i in 0..DEFAULT_MAX_CLASSES {
        assert_eq!(&*c.classify(&format!("c{i}:k")), format!("c{i}"));
    }
    assert_eq!(&*c.classify("one-more:k"), OTHER_CLASS);
    assert_eq!(&*c.classify("c0:k"), "c0");
}

#[test]
fn a_custom_rule_replaces_the_default_and_is_capped() {
    let c =
        Classifier::default().max_classes(1).with_fn(|key| key.split('/').next().unwrap_or("").to_string());
    assert_eq!(&*c.classify("tenant-a/job:1"), "tenant-a");
    assert_eq!(&*c.classify("tenant-b/job:1"), OTHER_CLASS);
}

#[test]
fn clones_share_the_classes_handed_out() {
    let c = Classifier::default().max_classes(1);
    let d = c.clone();
    assert_eq!(&*c.classify("a:1"), "a");
    assert_eq!(&*d.classify("b:1"), OTHER_CLASS);
}

mod layer {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::super::holds::wall_clock;
    use super::*;
    use crate::lease::{FencingToken, LockInfo};
    use crate::provider::Capabilities;

    /// Reentrant locks in a map; a key starting with `never` is never granted.
    #[derive(Debug, Default)]
    struct Fake(Mutex<HashMap<String, (String, u32)>>);

    #[async_trait]
    impl LockProvider for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn lock(&self, opts: &LockOptions) -> Result<Lease> {
            if opts.key.starts_with("never") {
                std::future::pending::<()>().await;
            }
            let mut m = self.0.lock().unwrap();
            let e = m.entry(opts.key.to_string()).or_insert_with(|| (opts.owner.to_string(), 0));
            if *e.0 != *opts.owner {
                return Err(LockError::Timeout {
                    key: opts.key.to_string(),
                    holder: Some(e.0.clone()),
                    waited: Duration::ZERO,
                });
            }
            e.1 += 1;
            Ok(Lease::counted_from(
                Instant::now(),
                opts.key.clone(),
                opts.owner.clone(),
                FencingToken(1),
                opts.ttl,
                e.1,
            ))
        }
        async fn unlock(&self, key: &str, owner: &str) -> Result<()> {
            let mut m = self.0.lock().unwrap();
            match m.get_mut(key) {
                Some((o, depth)) if o == owner => {
                    *depth -= 1;
                    if *depth == 0 {
                        m.remove(key);
                    }
                    Ok(())
                }
                _ => Err(LockError::NotHeld { key: key.into() }),
            }
        }
        async fn refresh_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
            match self.0.lock().unwrap().get(key) {
                Some((o, depth)) if o == owner => {
                    Ok(Lease::counted_from(Instant::now(), key, owner, FencingToken(1), ttl, *depth))
                }
                _ => Err(LockError::LeaseLost { key: key.into() }),
            }
        }
        async fn is_locked(&self, _key: &str) -> Result<Option<LockInfo>> {
            Ok(None)
        }
        async fn list(&self, _prefix: &str) -> Result<Vec<LockInfo>> {
            Ok(Vec::new())
        }
        async fn health(&self) -> Result<Health> {
            Err(LockError::Closed)
        }
        async fn close(&self) -> Result<()> {
            Ok(())
        }
    }

    /// `name{labels}` of each series, sorted, with its value (the oldest-hold gauge, a wall
    /// clock reading, as `0` or `set`). Counters still at zero and histograms without a new
    /// sample are left out: the layer registers a class's frequent series at its first
    /// operation, so they exist, at zero, before anything is recorded to them.
    fn read(s: &Snapshotter) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = s
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n > 0,
                DebugValue::Histogram(h) => !h.is_empty(),
                DebugValue::Gauge(_) => true,
            })
            .map(|(k, _, _, v)| {
                let labels: Vec<String> =
                    k.key().labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
                let v = match v {
                    DebugValue::Gauge(g) if k.key().name() == OLDEST_HOLD_START_SECONDS => {
                        if g.into_inner() == 0.0 { "0" } else { "set" }.to_string()
                    }
                    DebugValue::Counter(n) => n.to_string(),
                    DebugValue::Gauge(g) => g.to_string(),
                    DebugValue::Histogram(h) => format!("{} samples", h.len()),
                };
                (format!("{}{{{}}}", k.key().name(), labels.join(",")), v)
            })
            .collect();
        out.sort();
        out
    }

    fn want(rows: &[(&str, &str)]) -> Vec<(String, String)> {
        rows.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn opts(key: &str, owner: &str) -> LockOptions {
        LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
    }

    /// Handles are kept per class, but never past a change of recorder: operations before an
    /// application installs its recorder must not leave the layer recording into the no-op one.
    #[tokio::test]
    async fn a_recorder_installed_after_the_first_operations_gets_everything_after() {
        let p = Metered::new(Arc::new(Fake::default()));
        p.lock(&opts("a:1", "o")).await.unwrap();
        p.unlock("a:1", "o").await.unwrap();

        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        let local = metrics::set_default_local_recorder(&recorder);
        p.lock(&opts("a:1", "o")).await.unwrap();
        p.unlock("a:1", "o").await.unwrap();
        let got = read(&s);
        assert!(
            got.contains(&(
                "distlock_acquire_total{provider=fake,class=a,outcome=acquired}".into(),
                "1".into()
            )),
            "{got:?}"
        );
        assert!(
            got.contains(&("distlock_hold_seconds{provider=fake,class=a}".into(), "1 samples".into())),
            "{got:?}"
        );
        drop(local);

        // And a second recorder, after the first is gone, gets its own series.
        let second = DebuggingRecorder::new();
        let s2 = second.snapshotter();
        let _local = metrics::set_default_local_recorder(&second);
        p.lock(&opts("a:1", "o")).await.unwrap();
        let got = read(&s2);
        assert!(
            got.contains(&(
                "distlock_acquire_total{provider=fake,class=a,outcome=acquired}".into(),
                "1".into()
            )),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn holds_follow_depth_and_end_unseen_without_a_sample() {
        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let p = Metered::new(Arc::new(Fake::default()));

        p.lock(&opts("a:1", "o")).await.unwrap();
        p.lock(&opts("a:1", "o")).await.unwrap();
        p.unlock("a:1", "o").await.unwrap();
        assert_eq!(
            read(&s),
            want(&[
                ("distlock_acquire_total{provider=fake,class=a,outcome=acquired}", "2"),
                ("distlock_acquire_wait_seconds{provider=fake,class=a}", "2 samples"),
                ("distlock_held_locks{provider=fake,class=a}", "1"),
                ("distlock_oldest_hold_start_seconds{provider=fake,class=a}", "set"),
            ])
        );
        // The last level: one hold sample.
        p.unlock("a:1", "o").await.unwrap();
        let got = read(&s);
        assert!(
            got.contains(&("distlock_hold_seconds{provider=fake,class=a}".into(), "1 samples".into())),
            "{got:?}"
        );

        // An unlock answered `NotHeld` stops tracking without a hold sample; so does close.
        p.lock(&opts("b:1", "o")).await.unwrap();
        p.lock(&opts("b:2", "o")).await.unwrap();
        let _ = p.inner().unlock("b:1", "o").await;
        assert!(p.unlock("b:1", "o").await.is_err());
        p.close().await.unwrap();
        let got = read(&s);
        assert!(got.contains(&("distlock_held_locks{provider=fake,class=b}".into(), "0".into())), "{got:?}");
        assert!(
            !got.iter().any(|(k, _)| k.starts_with("distlock_hold_seconds{provider=fake,class=b")),
            "{got:?}"
        );
        assert!(
            !got.iter().any(|(k, _)| k.starts_with("distlock_hold_seconds{provider=fake,class=a")),
            "no new hold sample of a: {got:?}"
        );
    }

    /// A lease that expired unseen while another owner took the key: both are tracked until
    /// each is seen to end.
    #[tokio::test]
    async fn two_owners_of_one_key_are_tracked_apart() {
        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let p = Metered::new(Arc::new(Fake::default()));
        // Each snapshot takes the gauge's value (it starts again from 0): the change since the last.
        let held = |s: &Snapshotter| {
            read(s)
                .into_iter()
                .find(|(k, _)| k == "distlock_held_locks{provider=fake,class=d}")
                .map(|(_, v)| v)
        };

        p.lock(&opts("d:1", "o0")).await.unwrap();
        let _ = p.inner().unlock("d:1", "o0").await; // "expired"
        p.lock(&opts("d:1", "o1")).await.unwrap();
        let _ = p.inner().unlock("d:1", "o1").await; // "expired" too: three owners tracked
        p.lock(&opts("d:1", "o2")).await.unwrap();
        p.lock(&opts("d:1", "o2")).await.unwrap();
        assert_eq!(held(&s).as_deref(), Some("3"));
        assert!(matches!(p.unlock("d:1", "o0").await, Err(LockError::NotHeld { .. })));
        assert_eq!(held(&s).as_deref(), Some("-1"), "o0's hold was still tracked");
        p.unlock("d:1", "o2").await.unwrap();
        assert_eq!(held(&s).as_deref(), Some("0"), "o2 still holds one level");
        p.unlock("d:1", "o2").await.unwrap();
        let got = read(&s);
        assert!(got.contains(&("distlock_held_locks{provider=fake,class=d}".into(), "-1".into())), "{got:?}");
        assert!(
            got.contains(&("distlock_hold_seconds{provider=fake,class=d}".into(), "1 samples".into())),
            "{got:?}"
        );
        assert!(matches!(p.unlock("d:1", "o1").await, Err(LockError::NotHeld { .. })));
        let got = read(&s);
        assert!(got.contains(&("distlock_held_locks{provider=fake,class=d}".into(), "-1".into())), "{got:?}");
        assert!(
            !got.iter().any(|(k, _)| k.starts_with("distlock_hold_seconds")),
            "o1's end is unseen: {got:?}"
        );
    }

    #[tokio::test]
    async fn dropped_acquisitions_and_lost_leases_are_counted() {
        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let p = Metered::new(Arc::new(Fake::default()));

        let dropped = tokio::time::timeout(Duration::from_millis(10), p.lock(&opts("never:1", "o"))).await;
        assert!(dropped.is_err());
        p.lock(&opts("c:1", "o")).await.unwrap();
        assert!(p.try_lock(&opts("c:1", "other")).await.unwrap_err().is_timeout());
        p.refresh_lock("c:1", "o", Duration::from_secs(30)).await.unwrap();
        let _ = p.inner().unlock("c:1", "o").await;
        assert!(p.refresh_lock("c:1", "o", Duration::from_secs(30)).await.unwrap_err().is_lease_lost());
        assert_eq!(
            read(&s),
            want(&[
                ("distlock_acquire_total{provider=fake,class=c,outcome=acquired}", "1"),
                ("distlock_acquire_total{provider=fake,class=c,outcome=timeout}", "1"),
                ("distlock_acquire_total{provider=fake,class=never,outcome=cancelled}", "1"),
                ("distlock_acquire_wait_seconds{provider=fake,class=c}", "1 samples"),
                ("distlock_held_locks{provider=fake,class=c}", "0"),
                // A class's gauges exist, at zero, from its first operation.
                ("distlock_held_locks{provider=fake,class=never}", "0"),
                ("distlock_hold_seconds{provider=fake,class=c}", "1 samples"),
                ("distlock_lease_lost_total{provider=fake,class=c}", "1"),
                ("distlock_oldest_hold_start_seconds{provider=fake,class=c}", "0"),
                ("distlock_oldest_hold_start_seconds{provider=fake,class=never}", "0"),
                ("distlock_refresh_total{provider=fake,class=c,outcome=lease_lost}", "1"),
                ("distlock_refresh_total{provider=fake,class=c,outcome=refreshed}", "1"),
            ])
        );
    }

    /// Keeps the last value set on each class's oldest-hold gauge (the debugging recorder's
    /// snapshots swap gauges to 0, which would read like "no hold" here).
    #[derive(Clone, Default)]
    struct Oldest(Arc<Mutex<HashMap<String, f64>>>);

    struct OldestOf(String, Oldest);

    impl metrics::GaugeFn for OldestOf {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.1 .0.lock().unwrap().insert(self.0.clone(), value);
        }
    }

    impl metrics::Recorder for Oldest {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            let class = key.labels().find(|l| l.key() == "class").map(|l| l.value().to_string());
            match class {
                Some(class) if key.name() == OLDEST_HOLD_START_SECONDS => {
                    metrics::Gauge::from_arc(Arc::new(OldestOf(class, self.clone())))
                }
                _ => metrics::Gauge::noop(),
            }
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    impl Oldest {
        /// The last value of `class`'s gauge, if it was ever set.
        fn of(&self, class: &str) -> Option<f64> {
            self.0.lock().unwrap().get(class).copied()
        }
    }

    /// Locks (key, owner) and returns the wall clock before and after, in seconds.
    async fn lock_between(p: &Metered, key: &str, owner: &str) -> (f64, f64) {
        let before = wall_clock().as_secs_f64();
        p.lock(&opts(key, owner)).await.unwrap();
        let after = wall_clock().as_secs_f64();
        // The next hold starts strictly later by the wall clock.
        std::thread::sleep(Duration::from_millis(2));
        (before, after)
    }

    #[tokio::test]
    async fn oldest_hold_start_follows_the_oldest_hold_of_each_class() {
        let s = Oldest::default();
        let _local = metrics::set_default_local_recorder(&s);
        let p = Metered::new(Arc::new(Fake::default()));
        // The gauge is a wall time worked out from a monotonic instant: allow the two clocks
        // a millisecond between their reads (holds start 2 ms apart, so the order still shows).
        let within = |g: Option<f64>, (before, after): (f64, f64)| {
            let g = g.expect("gauge set");
            assert!(before - 0.001 <= g && g <= after + 0.001, "{g} not in [{before}, {after}] ± 1 ms");
        };

        let first = lock_between(&p, "a:1", "o").await;
        lock_between(&p, "a:2", "o").await;
        let third = lock_between(&p, "a:3", "o").await;
        let other_class = lock_between(&p, "b:1", "o").await;
        within(s.of("a"), first);
        within(s.of("b"), other_class);

        // A re-entry of the oldest, or the end of a younger hold, leaves it.
        p.lock(&opts("a:1", "o")).await.unwrap();
        p.unlock("a:2", "o").await.unwrap();
        p.unlock("a:1", "o").await.unwrap();
        within(s.of("a"), first);

        // The oldest ends: the next oldest is the one left.
        p.unlock("a:1", "o").await.unwrap();
        within(s.of("a"), third);
        within(s.of("b"), other_class);

        // A hold that ended unseen and starts again counts from its new start.
        let _ = p.inner().unlock("a:3", "o").await;
        let again = lock_between(&p, "a:3", "o").await;
        within(s.of("a"), again);
        let fourth = lock_between(&p, "a:4", "o").await;

        // A refresh answered `LeaseLost` ends the hold too; the class's last hold sets 0.
        let _ = p.inner().unlock("a:3", "o").await;
        assert!(p.refresh_lock("a:3", "o", Duration::from_secs(30)).await.unwrap_err().is_lease_lost());
        within(s.of("a"), fourth);
        p.unlock("a:4", "o").await.unwrap();
        assert_eq!(s.of("a"), Some(0.0));

        // A class starts over after being empty; close sets every class to 0.
        let fifth = lock_between(&p, "a:5", "o").await;
        within(s.of("a"), fifth);
        assert!(fifth.0 > first.1);
        p.close().await.unwrap();
        assert_eq!((s.of("a"), s.of("b")), (Some(0.0), Some(0.0)));
    }
}
