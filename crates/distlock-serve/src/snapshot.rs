//! [`Snapshot`]: what an operator sees of a provider at one moment: its health, the held locks,
//! the published waits, the deadlock cycles among them and, from this process's metrics
//! recorder, acquisitions and contention by key class.
//!
//! `GET /locks` serves it as JSON; the page and `distlock top` render it, both through the
//! same column lists ([`LOCK_COLUMNS`], [`WAIT_COLUMNS`]), so a column added there shows
//! everywhere.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lock_core::deadlock::{Cycle, WaitForGraph, WaitInfo};
use lock_core::layer::metrics::{
    ACQUIRE_TOTAL, ACQUIRE_WAIT_SECONDS, CONTENTION_TOTAL, HELD_LOCKS, LEASE_LOST_TOTAL, WAITERS,
};
use lock_core::{LockInfo, LockProvider};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

/// A provider as seen at one moment (see the [module docs](self)).
///
/// Its JSON form (`GET /locks`):
///
/// ```json
/// {
///   "provider": "memory",
///   "taken_at": 1795766400000,
///   "prefix": "",
///   "health": { "healthy": true, "latency_ms": 0.004, "detail": "in-process" },
///   "locks": [ { "key": "reports:daily", "owner": "worker-1", "token": 7,
///                "remaining_ttl_ms": 297000, "depth": 1, "held_for_ms": 3000 } ],
///   "waits": [ { "key": "reports:daily", "owner": "worker-2", "id": 42, "since": 1795766399000,
///                "waited_ms": 1000, "remaining_ttl_ms": 2500, "holder": "worker-1" } ],
///   "cycles": [ { "edges": [ { "waiter": "alice", "key": "a", "holder": "bob", "id": 1,
///                              "since": 1795766398000 }, ... ] } ],
///   "classes": [ { "class": "reports", "acquired": 12, "timeouts": 1, ... } ],
///   "errors": []
/// }
/// ```
///
/// Times are milliseconds since the Unix epoch, durations milliseconds. `classes` is `null`
/// when no metrics recorder was given.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The provider's name (`memory`, `mysql`, `redis`, `etcd`).
    pub provider: String,
    /// When the snapshot was taken, by this process's clock.
    #[serde(serialize_with = "unix_millis")]
    pub taken_at: SystemTime,
    /// The key prefix the locks and waits were read under (empty: all).
    pub prefix: String,
    /// The outcome of the provider's health probe.
    pub health: HealthView,
    /// The held locks under the prefix, sorted by key.
    pub locks: Vec<LockView>,
    /// The published waits under the prefix, sorted by key, then oldest first.
    pub waits: Vec<WaitView>,
    /// The deadlocks among those waits and locks (each cycle's victim is its youngest wait,
    /// [`Cycle::victim`]).
    pub cycles: Vec<Cycle>,
    /// Acquisitions and contention by key class as this process recorded them, from the
    /// Prometheus recorder; `None` without one.
    pub classes: Option<Vec<ClassStats>>,
    /// The parts that could not be read (`locks: ...`, `waits: ...`); empty when all were.
    pub errors: Vec<String>,
}

/// The outcome of a health probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthView {
    /// The probe succeeded.
    pub healthy: bool,
    /// Round-trip time of a successful probe, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// What a successful probe reported (server version, node count, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Why a failed probe failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&lock_core::Result<lock_core::Health>> for HealthView {
    fn from(r: &lock_core::Result<lock_core::Health>) -> Self {
        match r {
            Ok(h) => HealthView {
                healthy: true,
                latency_ms: Some(h.latency.as_secs_f64() * 1e3),
                detail: Some(h.detail.clone()),
                error: None,
            },
            Err(e) => {
                HealthView { healthy: false, latency_ms: None, detail: None, error: Some(e.to_string()) }
            }
        }
    }
}

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockView {
    /// The key.
    pub key: String,
    /// The holder.
    pub owner: String,
    /// The holder's fencing token.
    pub token: u64,
    /// Time left on the lease by the server's clock, in milliseconds.
    pub remaining_ttl_ms: u64,
    /// Reentry depth.
    pub depth: u32,
    /// How long the current holder has held the lock, in milliseconds.
    pub held_for_ms: u64,
}

impl From<&LockInfo> for LockView {
    fn from(l: &LockInfo) -> Self {
        LockView {
            key: l.key.clone(),
            owner: l.owner.clone(),
            token: l.token.get(),
            remaining_ttl_ms: millis(l.remaining_ttl),
            depth: l.depth,
            held_for_ms: millis(l.held_for),
        }
    }
}

/// A published wait: `owner` waits for `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaitView {
    /// The key waited for.
    pub key: String,
    /// The waiting owner.
    pub owner: String,
    /// The waiting call's id (tells apart concurrent calls of one owner).
    pub id: u64,
    /// When the wait started, by the waiter's clock.
    #[serde(serialize_with = "unix_millis")]
    pub since: SystemTime,
    /// How long it has waited, by this process's clock, in milliseconds.
    pub waited_ms: u64,
    /// Time left on the published record unless the waiter renews it, in milliseconds.
    pub remaining_ttl_ms: u64,
    /// The key's holder when the snapshot was taken (`None`: free, or not read).
    pub holder: Option<String>,
}

impl WaitView {
    fn new(w: &WaitInfo, holder: Option<&str>) -> Self {
        WaitView {
            key: w.key.clone(),
            owner: w.owner.clone(),
            id: w.id,
            since: w.since,
            waited_ms: millis(w.waited()),
            remaining_ttl_ms: millis(w.remaining_ttl),
            holder: holder.map(str::to_string),
        }
    }
}

/// What this process recorded for one key class of the provider (from its Prometheus
/// recorder: `distlock_acquire_total`, `distlock_contention_total`, `distlock_waiters`,
/// `distlock_held_locks`, `distlock_lease_lost_total`, `distlock_acquire_wait_seconds`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClassStats {
    /// The class label.
    pub class: String,
    /// `lock`/`try_lock` calls that acquired.
    pub acquired: u64,
    /// Calls that timed out (busy until the wait policy ran out).
    pub timeouts: u64,
    /// Calls dropped before they finished.
    pub cancelled: u64,
    /// Calls failed with `Deadlock` (the victim of a cycle, under the fail-youngest policy).
    pub deadlocked: u64,
    /// Calls that failed otherwise (unavailable, invalid, closed, ...).
    pub failed: u64,
    /// Calls whose first attempt found the lock held (recorded by the waiting layer).
    pub contended: u64,
    /// Calls waiting now (recorded by the waiting layer).
    pub waiting: u64,
    /// Locks held now through the metrics layer.
    pub held: u64,
    /// Refreshes answered `LeaseLost`.
    pub lease_lost: u64,
    /// Seconds spent in calls that acquired, in total.
    pub wait_seconds_sum: f64,
    /// Number of calls in [`wait_seconds_sum`](Self::wait_seconds_sum).
    pub wait_count: u64,
}

impl ClassStats {
    /// Mean time spent in a call that acquired (`None` before the first).
    pub fn mean_wait(&self) -> Option<Duration> {
        (self.wait_count > 0).then(|| Duration::from_secs_f64(self.wait_seconds_sum / self.wait_count as f64))
    }

    /// The stats of `provider`'s classes in `text`, a Prometheus text exposition (what
    /// [`PrometheusHandle::render`] returns), sorted by class.
    pub fn from_prometheus(text: &str, provider: &str) -> Vec<ClassStats> {
        let wait_sum = format!("{ACQUIRE_WAIT_SECONDS}_sum");
        let wait_count = format!("{ACQUIRE_WAIT_SECONDS}_count");
        let mut by_class: BTreeMap<String, ClassStats> = BTreeMap::new();
        for sample in text.lines().filter_map(prometheus::sample) {
            if sample.label("provider") != Some(provider) {
                continue;
            }
            let Some(class) = sample.label("class") else { continue };
            let name = sample.name;
            let known = [ACQUIRE_TOTAL, CONTENTION_TOTAL, WAITERS, HELD_LOCKS, LEASE_LOST_TOTAL];
            if !known.contains(&name) && name != wait_sum && name != wait_count {
                continue;
            }
            let stats = by_class
                .entry(class.to_string())
                .or_insert_with(|| ClassStats { class: class.to_string(), ..ClassStats::default() });
            let count = sample.value.max(0.0).round() as u64;
            match name {
                ACQUIRE_TOTAL => match sample.label("outcome") {
                    Some("acquired") => stats.acquired += count,
                    Some("timeout") => stats.timeouts += count,
                    Some("cancelled") => stats.cancelled += count,
                    Some("deadlock") => stats.deadlocked += count,
                    _ => stats.failed += count,
                },
                CONTENTION_TOTAL => stats.contended += count,
                WAITERS => stats.waiting += count,
                HELD_LOCKS => stats.held += count,
                LEASE_LOST_TOTAL => stats.lease_lost += count,
                n if n == wait_sum => stats.wait_seconds_sum += sample.value,
                _ => stats.wait_count += count,
            }
        }
        by_class.into_values().collect()
    }
}

impl Snapshot {
    /// Reads `provider` under `prefix` (its health, held locks and published waits, at once),
    /// finds the cycles among them, and takes the class stats of `provider` from `metrics`.
    ///
    /// A part that cannot be read is left empty and named in [`errors`](Self::errors); only a
    /// prefix the provider would refuse fails the whole read (`InvalidArgument`).
    pub async fn read(
        provider: &dyn LockProvider,
        prefix: &str,
        metrics: Option<&PrometheusHandle>,
    ) -> lock_core::Result<Snapshot> {
        lock_core::validate::prefix(prefix)?;
        let (health, locks, waits) =
            tokio::join!(provider.health(), provider.list(prefix), provider.waits(prefix));
        let taken_at = SystemTime::now();
        let mut errors = Vec::new();
        let locks = locks.unwrap_or_else(|e| {
            errors.push(format!("locks: {e}"));
            Vec::new()
        });
        let waits = waits.unwrap_or_else(|e| {
            errors.push(format!("waits: {e}"));
            Vec::new()
        });
        let holders: HashMap<&str, &str> = locks.iter().map(|l| (l.key.as_str(), l.owner.as_str())).collect();
        let wait_views =
            waits.iter().map(|w| WaitView::new(w, holders.get(w.key.as_str()).copied())).collect();
        let cycles = WaitForGraph::build(waits, |key| holders.get(key).map(|o| o.to_string())).cycles();
        Ok(Snapshot {
            provider: provider.name().to_string(),
            taken_at,
            prefix: prefix.to_string(),
            health: HealthView::from(&health),
            locks: locks.iter().map(LockView::from).collect(),
            waits: wait_views,
            cycles,
            classes: metrics.map(|m| ClassStats::from_prometheus(&m.render(), provider.name())),
            errors,
        })
    }

    /// `true` when the held locks were read (the rest may still have failed).
    pub fn locks_read(&self) -> bool {
        !self.errors.iter().any(|e| e.starts_with("locks:"))
    }

    /// `true` when `wait` is an edge of a deadlock cycle.
    pub fn wait_in_cycle(&self, wait: &WaitView) -> bool {
        self.cycles
            .iter()
            .flat_map(|c| &c.edges)
            .any(|e| e.id == wait.id && e.key == wait.key && e.waiter == wait.owner)
    }

    /// `true` when `lock` is waited for in a deadlock cycle.
    pub fn lock_in_cycle(&self, lock: &LockView) -> bool {
        self.cycles.iter().flat_map(|c| &c.edges).any(|e| e.key == lock.key && e.holder == lock.owner)
    }
}

/// One column of a table of a snapshot: its header, whether it is a number (right-aligned),
/// and the cell of a row.
#[derive(Clone, Copy, Debug)]
pub struct Column<T> {
    /// The header.
    pub header: &'static str,
    /// The cells are numbers or durations (aligned right).
    pub numeric: bool,
    /// The cell of one row.
    pub cell: fn(&T) -> String,
}

/// The columns of the held-locks tables, on the page and in `distlock top`.
pub const LOCK_COLUMNS: &[Column<LockView>] = &[
    Column { header: "key", numeric: false, cell: |l| l.key.clone() },
    Column { header: "owner", numeric: false, cell: |l| l.owner.clone() },
    Column { header: "token", numeric: true, cell: |l| l.token.to_string() },
    Column { header: "ttl left", numeric: true, cell: |l| human_millis(l.remaining_ttl_ms) },
    Column { header: "depth", numeric: true, cell: |l| l.depth.to_string() },
    Column { header: "held", numeric: true, cell: |l| human_millis(l.held_for_ms) },
];

/// How many of the longest holds the page and `distlock top` list apart.
pub const LONGEST_HOLDS: usize = 5;

impl Snapshot {
    /// The [`LONGEST_HOLDS`] locks held longest, longest first.
    pub fn longest_holds(&self) -> Vec<&LockView> {
        let mut locks: Vec<&LockView> = self.locks.iter().collect();
        locks.sort_by(|a, b| b.held_for_ms.cmp(&a.held_for_ms).then_with(|| a.key.cmp(&b.key)));
        locks.truncate(LONGEST_HOLDS);
        locks
    }
}

/// The columns of the waits tables, on the page and in `distlock top`.
pub const WAIT_COLUMNS: &[Column<WaitView>] = &[
    Column { header: "key", numeric: false, cell: |w| w.key.clone() },
    Column { header: "waiter", numeric: false, cell: |w| w.owner.clone() },
    Column { header: "holder", numeric: false, cell: |w| w.holder.clone().unwrap_or_else(|| "-".into()) },
    Column { header: "waited", numeric: true, cell: |w| human_millis(w.waited_ms) },
    Column { header: "wait id", numeric: true, cell: |w| w.id.to_string() },
];

/// The columns of the contention-by-class tables, on the page and in `distlock top`.
pub const CLASS_COLUMNS: &[Column<ClassStats>] = &[
    Column { header: "class", numeric: false, cell: |c| c.class.clone() },
    Column { header: "acquired", numeric: true, cell: |c| c.acquired.to_string() },
    Column { header: "timeouts", numeric: true, cell: |c| c.timeouts.to_string() },
    Column { header: "deadlocked", numeric: true, cell: |c| c.deadlocked.to_string() },
    Column { header: "failed", numeric: true, cell: |c| c.failed.to_string() },
    Column { header: "contended", numeric: true, cell: |c| c.contended.to_string() },
    Column { header: "waiting", numeric: true, cell: |c| c.waiting.to_string() },
    Column { header: "held", numeric: true, cell: |c| c.held.to_string() },
    Column { header: "lease lost", numeric: true, cell: |c| c.lease_lost.to_string() },
    Column {
        header: "mean wait",
        numeric: true,
        cell: |c| c.mean_wait().map(human).unwrap_or_else(|| "-".into()),
    },
];

/// A duration for people: `120µs`, `850ms`, `4.2s`, `3m07s`, `2h05m`, `3d04h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 if d.as_millis() == 0 => format!("{}µs", d.as_micros()),
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn human_millis(ms: u64) -> String {
    human(Duration::from_millis(ms))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(millis(t.duration_since(UNIX_EPOCH).unwrap_or_default()))
}

/// Just enough of the Prometheus text format to read samples back.
mod prometheus {
    /// One sample line: `name{label="value",...} value [timestamp]`.
    pub(super) struct Sample<'a> {
        pub(super) name: &'a str,
        labels: Vec<(&'a str, String)>,
        pub(super) value: f64,
    }

    impl Sample<'_> {
        pub(super) fn label(&self, name: &str) -> Option<&str> {
            self.labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
        }
    }

    /// The sample on `line`; `None` for comments, blank lines and anything malformed.
    pub(super) fn sample(line: &str) -> Option<Sample<'_>> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            rest = body;
            loop {
                rest = rest.trim_start_matches([',', ' ']);
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = rest.split_once('=')?;
                let (value, after) = quoted(after)?;
                labels.push((key.trim(), value));
                rest = after;
            }
        }
        let value = match rest.split_whitespace().next()? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().ok()?,
        };
        Some(Sample { name, labels, value })
    }

    /// A quoted label value at the start of `s` (escapes `\\`, `\"`, `\n`) and what follows it.
    fn quoted(s: &str) -> Option<(String, &str)> {
        let s = s.strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = s.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Some((out, &s[i + 1..])),
                '\\' => match chars.next()?.1 {
                    'n' => out.push('\n'),
                    other => out.push(other),
                },
                c => out.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_stats_are_read_from_a_rendered_recorder() {
        let text = r#"
# TYPE distlock_acquire_total counter
distlock_acquire_total{provider="memory",class="reports",outcome="acquired"} 5
distlock_acquire_total{provider="memory",class="reports",outcome="timeout"} 2
distlock_acquire_total{provider="memory",class="reports",outcome="unavailable"} 1
distlock_acquire_total{provider="memory",class="reports",outcome="cancelled"} 3
distlock_acquire_total{provider="memory",class="reports",outcome="deadlock"} 6
distlock_acquire_total{provider="redis",class="reports",outcome="acquired"} 100
distlock_acquire_total{provider="memory",class="we\"ird\\ one",outcome="acquired"} 1
distlock_contention_total{provider="memory",class="reports"} 4
distlock_waiters{provider="memory",class="reports"} 1
distlock_held_locks{provider="memory",class="reports"} 2
distlock_lease_lost_total{provider="memory",class="reports"} 1
distlock_acquire_wait_seconds_bucket{provider="memory",class="reports",le="0.001"} 3
distlock_acquire_wait_seconds_bucket{provider="memory",class="reports",le="+Inf"} 5
distlock_acquire_wait_seconds_sum{provider="memory",class="reports"} 2.5
distlock_acquire_wait_seconds_count{provider="memory",class="reports"} 5
distlock_provider_healthy{provider="memory"} 1
unrelated_total{provider="memory",class="reports"} 9
"#;
        let stats = ClassStats::from_prometheus(text, "memory");
        assert_eq!(stats.len(), 2, "{stats:?}");
        let reports = &stats[0];
        assert_eq!(
            reports,
            &ClassStats {
                class: "reports".into(),
                acquired: 5,
                timeouts: 2,
                cancelled: 3,
                deadlocked: 6,
                failed: 1,
                contended: 4,
                waiting: 1,
                held: 2,
                lease_lost: 1,
                wait_seconds_sum: 2.5,
                wait_count: 5,
            }
        );
        assert_eq!(reports.mean_wait(), Some(Duration::from_millis(500)));
        assert_eq!(stats[1].class, "we\"ird\\ one");
        assert_eq!(stats[1].acquired, 1);
        assert_eq!(stats[1].mean_wait(), None);
        assert!(ClassStats::from_prometheus(text, "etcd").is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in ["", "# HELP x", "x{a=\"unterminated} 1", "x{a=\"v\"}", "x nan-ish"] {
            assert!(prometheus::sample(line).is_none(), "{line}");
        }
        let s = prometheus::sample("x_total 3 1700000000").expect("a sample with a timestamp");
        assert_eq!((s.name, s.value), ("x_total", 3.0));
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        let cases = [
            (Duration::from_micros(120), "120µs"),
            (Duration::from_millis(850), "850ms"),
            (Duration::from_millis(4200), "4.2s"),
            (Duration::from_secs(187), "3m07s"),
            (Duration::from_secs(2 * 3600 + 5 * 60 + 9), "2h05m"),
            (Duration::from_secs(3 * 86400 + 4 * 3600), "3d04h"),
        ];
        for (d, want) in cases {
            assert_eq!(human(d), want);
        }
    }
}
