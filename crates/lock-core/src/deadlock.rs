//! Deadlock detection across processes: published waits, the wait-for graph and its cycles.
//!
//! Owner `alice` holds `a` and waits for `b`, while `bob` holds `b` and waits for `a`: without
//! help both wait until their wait policies run out. To see this from any process, every
//! waiting `lock` call **publishes** a [`WaitInfo`] ("owner O waits for key K since T") in the
//! backend itself, with a TTL it renews while it waits
//! ([`crate::LockProvider::publish_wait`]). Anyone can then read
//! the [`WaitForGraph`]: an edge from each waiting owner to the holder of the key it waits for,
//! built from the published waits and the holders of the waited keys. A cycle in that graph
//! is a deadlock.
//!
//! The [waiting layer](crate::layer::waiting) publishes the waits and, while a call of its
//! process waits, looks for cycles every [`DeadlockConfig::interval`]. Every cycle has one
//! **victim**, the same for every process that looks: its youngest wait (latest `since`; ties
//! broken by owner, key and wait id). The process that hosts the victim reports the cycle
//! once (a `WARN` event, `distlock_deadlocks_total`) and, under
//! [`DeadlockPolicy::FailYoungest`], fails the victim's call at once with
//! [`LockError::Deadlock`](crate::LockError::Deadlock). The victim still holds whatever it held
//! before: it should release its locks and start over, which lets the other members proceed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lease::LockInfo;
use crate::provider::LockProvider;

/// A published wait: `owner` waits for `key` (one `lock` call, told apart by `id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitInfo {
    /// The key waited for.
    pub key: String,
    /// The waiting owner.
    pub owner: String,
    /// Tells apart concurrent calls of one owner on one key (random per call).
    pub id: u64,
    /// When the call started waiting, by the waiting process's clock.
    pub since: SystemTime,
    /// When publishing: how long the record lives unless renewed. When read: the time left.
    pub remaining_ttl: Duration,
}

impl WaitInfo {
    /// How long the wait has lasted, by this process's clock (zero if `since` is ahead of it).
    pub fn waited(&self) -> Duration {
        SystemTime::now().duration_since(self.since).unwrap_or_default()
    }
}

/// What to do about a deadlock found by the waiting layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlockPolicy {
    /// Report it (a `WARN` event and `distlock_deadlocks_total`); every member waits on until
    /// its own wait policy runs out.
    #[default]
    Report,
    /// Report it and fail the youngest wait of the cycle with
    /// [`LockError::Deadlock`](crate::LockError::Deadlock) at once.
    FailYoungest,
}

/// Settings of deadlock detection (`[deadlock]` in the facade's `LockConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadlockConfig {
    /// Publish waits and look for cycles while a call waits. Off: `lock` calls wait as they
    /// would without the waiting layer's bookkeeping, and no wait is visible to other processes.
    pub enabled: bool,
    /// How often a process with a waiting call looks for cycles; a wait is published once it
    /// has lasted half of this, so short waits cost no writes.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// What to do about a cycle.
    pub policy: DeadlockPolicy,
}

impl Default for DeadlockConfig {
    fn default() -> Self {
        DeadlockConfig { enabled: true, interval: DEFAULT_DETECT_INTERVAL, policy: DeadlockPolicy::Report }
    }
}

/// Default [`DeadlockConfig::interval`].
pub const DEFAULT_DETECT_INTERVAL: Duration = Duration::from_secs(1);

impl DeadlockConfig {
    /// The TTL of a published wait: three intervals (at least three seconds), renewed every
    /// interval, so one late renewal does not drop it.
    pub fn wait_ttl(&self) -> Duration {
        (self.interval * 3).max(Duration::from_secs(3))
    }

    /// Rejects an unusable interval.
    pub fn validate(&self) -> Result<()> {
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(3600) {
            return Err(crate::LockError::invalid("deadlock.interval", "must be within 10ms..=1h"));
        }
        Ok(())
    }
}

/// One edge of the wait-for graph: `waiter` waits (wait `id`, since `since`) for `key`, which
/// `holder` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaitEdge {
    /// The waiting owner.
    pub waiter: String,
    /// The key it waits for.
    pub key: String,
    /// The key's holder.
    pub holder: String,
    /// The wait's id.
    pub id: u64,
    /// When the wait started (by the waiter's clock).
    #[serde(with = "unix_millis")]
    pub since: SystemTime,
}

impl WaitEdge {
    /// Orders waits from oldest to youngest, ties broken by owner, key and id: the same order
    /// in every process.
    fn age_order(&self) -> (SystemTime, &str, &str, u64) {
        (self.since, &self.waiter, &self.key, self.id)
    }
}

/// A deadlock: each edge's holder is the next edge's waiter, the last edge's holder the first
/// edge's waiter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cycle {
    /// The edges, starting at the smallest waiter name.
    pub edges: Vec<WaitEdge>,
}

impl Cycle {
    /// The wait the cycle is broken at: the youngest (see the [module docs](self)).
    pub fn victim(&self) -> &WaitEdge {
        self.edges.iter().max_by(|a, b| a.age_order().cmp(&b.age_order())).expect("a cycle has edges")
    }
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.edges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} waits for `{}` held by {}", e.waiter, e.key, e.holder)?;
        }
        Ok(())
    }
}

/// The wait-for graph at one moment: who waits for whom, and through which key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitForGraph {
    /// Published waits whose key was held by someone else when read, sorted.
    pub edges: Vec<WaitEdge>,
    /// Published waits whose key was free or held by the waiter itself when read (the wait is
    /// about to end).
    pub loose: Vec<WaitInfo>,
}

impl WaitForGraph {
    /// Reads the waits published under `prefix` and the holder of every key waited for.
    pub async fn read(provider: &dyn LockProvider, prefix: &str) -> Result<WaitForGraph> {
        let waits = provider.waits(prefix).await?;
        let keys: BTreeSet<String> = waits.iter().map(|w| w.key.clone()).collect();
        let holders = futures::future::try_join_all(keys.iter().map(|k| provider.is_locked(k))).await?;
        let holders: HashMap<String, LockInfo> =
            keys.into_iter().zip(holders).filter_map(|(k, h)| Some((k, h?))).collect();
        Ok(Self::build(waits, |key| holders.get(key).map(|h| h.owner.clone())))
    }

    /// The graph of `waits`, with `holder` giving each key's holder.
    pub fn build(waits: Vec<WaitInfo>, holder: impl Fn(&str) -> Option<String>) -> WaitForGraph {
        let mut graph = WaitForGraph::default();
        for w in waits {
            match holder(&w.key) {
                Some(h) if h != w.owner => graph.edges.push(WaitEdge {
                    waiter: w.owner,
                    key: w.key,
                    holder: h,
                    id: w.id,
                    since: w.since,
                }),
                _ => graph.loose.push(w),
            }
        }
        graph.edges.sort_by(|a, b| (&a.waiter, &a.key, a.id).cmp(&(&b.waiter, &b.key, b.id)));
        graph
    }

    /// One cycle per group of owners that wait for each other (a strongly connected component
    /// of the graph), each starting at its smallest owner name and following the smallest
    /// edges, so every process that reads the same waits finds the same cycles.
    pub fn cycles(&self) -> Vec<Cycle> {
        let components = strongly_connected(&self.edges);
        let mut cycles = Vec::new();
        for component in components {
            if component.len() < 2 {
                continue; // a self-loop cannot be: a waiter holding its key re-enters
            }
            let start = *component.iter().next().expect("not empty");
            if let Some(path) = path_back(start, &component, &self.edges) {
                cycles.push(Cycle { edges: path.into_iter().cloned().collect() });
            }
        }
        cycles.sort_by(|a, b| a.edges[0].waiter.cmp(&b.edges[0].waiter));
        cycles
    }
}

/// The strongly connected components of the owner graph (Tarjan), as sorted sets of owners.
fn strongly_connected(edges: &[WaitEdge]) -> Vec<BTreeSet<&str>> {
    let mut next: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        next.entry(&e.waiter).or_default().insert(&e.holder);
        next.entry(&e.holder).or_default();
    }
    struct State<'a> {
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<&'a str>>,
    }
    fn visit<'a>(v: &'a str, next: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in &next[v] {
            if !s.index.contains_key(w) {
                visit(w, next, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in next.keys() {
        if !s.index.contains_key(v) {
            visit(v, &next, &mut s);
        }
    }
    s.out
}

/// The shortest path of edges inside `component` from `start` back to `start` (breadth first
/// over the sorted edges, so the result is the same everywhere).
fn path_back<'a>(
    start: &'a str,
    component: &BTreeSet<&str>,
    edges: &'a [WaitEdge],
) -> Option<Vec<&'a WaitEdge>> {
    let mut came_by: HashMap<&str, &WaitEdge> = HashMap::new();
    let mut frontier = vec![start];
    while !frontier.is_empty() {
        let mut following = Vec::new();
        for v in frontier {
            for e in edges.iter().filter(|e| e.waiter == v && component.contains(e.holder.as_str())) {
                if e.holder == start {
                    let mut path = vec![e];
                    let mut at = v;
                    while at != start {
                        let by = came_by[at];
                        path.push(by);
                        at = &by.waiter;
                    }
                    path.reverse();
                    return Some(path);
                }
                if !came_by.contains_key(e.holder.as_str()) {
                    came_by.insert(&e.holder, e);
                    following.push(e.holder.as_str());
                }
            }
        }
        frontier = following;
    }
    None
}

/// Serializes a `SystemTime` as milliseconds since the Unix epoch.
mod unix_millis {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        s.serialize_u64(ms)
    }
}

#[cfg(test)]
mod tests;
