//! [`History`]: a record of every acquisition and release in a stress or fault case, judged
//! for mutual exclusion by time intervals (the lock model of Jepsen) rather than by counters;
//! and [`assert_nothing_held`], the clean-up check that ends such a case.
//!
//! A grant is held from the instant the caller records it (after the lock call returned) until
//! the earliest of its release, the moment its holder learnt it was lost, and its lease's
//! conservative `valid_until`. Two grants of one key whose intervals overlap must belong to the
//! same owner with the same token (a re-entry); anything else is a violation.
//!
//! ```ignore
//! let history = History::new();
//! let lease = provider.lock(&opts).await?;
//! let id = history.granted(&lease);
//! // ... critical section ...
//! history.released(id); // before sending unlock
//! provider.unlock(&lease.key, &lease.owner).await?;
//! history.assert_ok(caps.fencing);
//! ```

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{FencingToken, Lease, LockProvider};
use tokio::time::Instant;

/// Identifies one recorded grant of a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantId(usize);

/// How a grant's interval ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Released,
    Lost,
}

#[derive(Clone, Debug)]
struct Grant {
    key: Arc<str>,
    owner: Arc<str>,
    token: FencingToken,
    depth: u32,
    granted_at: Instant,
    valid_until: Instant,
    ended: Option<(Ended, Instant)>,
}

impl Grant {
    /// The end of the interval in which the holder trusted this grant.
    fn end(&self) -> Instant {
        match self.ended {
            Some((_, at)) => at.min(self.valid_until),
            None => self.valid_until,
        }
    }
}

struct Inner {
    start: Instant,
    grants: Vec<Grant>,
    /// Violations found while recording (a refresh that answered for another lock, ...).
    recorded: Vec<String>,
    /// Violations of fencing found while recording (a refresh that changed the token).
    recorded_fencing: Vec<String>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            start: Instant::now(),
            grants: Vec::new(),
            recorded: Vec::new(),
            recorded_fencing: Vec::new(),
        }
    }
}

impl Inner {
    /// An instant relative to the history's start, for messages.
    fn at(&self, t: Instant) -> String {
        format!("{:?}", t.saturating_duration_since(self.start))
    }

    fn describe(&self, g: &Grant) -> String {
        let end = match g.ended {
            Some((how, at)) if at < g.valid_until => {
                format!("{} at {}", if how == Ended::Released { "released" } else { "lost" }, self.at(at))
            }
            _ => format!("valid until {}", self.at(g.valid_until)),
        };
        format!(
            "owner {:?} token {} depth {} granted at {}, {end}",
            g.owner,
            g.token,
            g.depth,
            self.at(g.granted_at)
        )
    }
}

/// A thread-safe record of grants, cheap to clone (clones share the record).
#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("grants", &self.len()).finish()
    }
}

impl History {
    /// An empty history; instants in its messages count from now.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a grant just received: held from now until `lease.valid_until`. A lease with
    /// depth > 1 is a re-entry: recorded, but not a new exclusive grant (the same owner and
    /// the same token as the enclosing grant are expected).
    pub fn granted(&self, lease: &Lease) -> GrantId {
        let mut inner = self.inner();
        inner.grants.push(Grant {
            key: lease.key.clone(),
            owner: lease.owner.clone(),
            token: lease.token,
            depth: lease.depth,
            granted_at: Instant::now(),
            valid_until: lease.valid_until,
            ended: None,
        });
        GrantId(inner.grants.len() - 1)
    }

    fn end(&self, id: GrantId, how: Ended) {
        let now = Instant::now();
        let mut inner = self.inner();
        let grant = inner.grants.get_mut(id.0).expect("a GrantId of this history");
        // The first end counts: a lease released and later reported lost ended at release.
        grant.ended.get_or_insert((how, now));
    }

    /// The holder stops trusting the lease now (call this *before* sending the unlock): its
    /// interval ends at `min(now, valid_until)`.
    pub fn released(&self, id: GrantId) {
        self.end(id, Ended::Released);
    }

    /// The holder learnt the lease is lost (a lost signal, a `LeaseLost` error): its interval
    /// ends at `min(now, valid_until)`.
    pub fn lost(&self, id: GrantId) {
        self.end(id, Ended::Lost);
    }

    /// A refresh of grant `id` succeeded: its validity now runs to `lease.valid_until`. A
    /// refresh that changed the token (or answers for another key or owner) is a violation.
    /// Only this grant is extended, not other nesting levels of the same lock.
    pub fn refreshed(&self, id: GrantId, lease: &Lease) {
        let mut inner = self.inner();
        let grant = inner.grants.get(id.0).expect("a GrantId of this history").clone();
        let token_changed = grant.token != lease.token;
        if token_changed || grant.key != lease.key || grant.owner != lease.owner {
            let msg = format!(
                "key {:?}: refresh at {} of grant ({}) returned key {:?} owner {:?} token {}",
                grant.key,
                inner.at(Instant::now()),
                inner.describe(&grant),
                lease.key,
                lease.owner,
                lease.token
            );
            // Another token for the same owner and key only breaks fencing.
            if grant.key == lease.key && grant.owner == lease.owner {
                inner.recorded_fencing.push(msg);
            } else {
                inner.recorded.push(msg);
            }
        }
        inner.grants[id.0].valid_until = lease.valid_until;
    }

    /// How many grants (re-entries included) were recorded.
    pub fn len(&self) -> usize {
        self.inner().grants.len()
    }

    /// `true` when no grant was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every violation, each a readable sentence naming key, owners, tokens and instants
    /// (relative to the history's start):
    ///
    /// - two grants of one key held in overlapping intervals `[granted_at, end)` by different
    ///   owners, or (with `fencing`) by the same owner with different tokens (intervals that
    ///   merely touch do not overlap);
    /// - with `fencing`, first-level grants (depth 1) of one key whose tokens do not strictly
    ///   increase in the order they were granted;
    /// - a refresh that answered for another key or owner, or (with `fencing`) changed the
    ///   token.
    pub fn violations(&self, fencing: bool) -> Vec<String> {
        let inner = self.inner();
        let mut out = inner.recorded.clone();
        if fencing {
            out.extend(inner.recorded_fencing.iter().cloned());
        }
        let mut by_key: std::collections::BTreeMap<&str, Vec<&Grant>> = Default::default();
        for g in &inner.grants {
            by_key.entry(&g.key).or_default().push(g);
        }
        for (key, mut grants) in by_key {
            // Stable: grants recorded at the same instant keep their recording order.
            grants.sort_by_key(|g| g.granted_at);
            for (i, a) in grants.iter().enumerate() {
                let a_end = a.end();
                for b in &grants[i + 1..] {
                    if b.granted_at >= a_end {
                        break;
                    }
                    let conflicting = a.owner != b.owner || (fencing && a.token != b.token);
                    if conflicting && b.end() > b.granted_at {
                        out.push(format!(
                            "key {key:?}: overlapping grants: ({}) and ({})",
                            inner.describe(a),
                            inner.describe(b)
                        ));
                    }
                }
            }
            if fencing {
                let firsts: Vec<&&Grant> = grants.iter().filter(|g| g.depth <= 1).collect();
                for pair in firsts.windows(2) {
                    // One owner may be granted its own token again: a level it could not know
                    // it held (an acquisition whose answer was lost, not yet taken back) kept
                    // the lock with that owner, so its next "first" acquisition was in truth a
                    // re-entry. Nobody else held the key in between, or the token had grown.
                    let same_holder = pair[1].token == pair[0].token && pair[1].owner == pair[0].owner;
                    if pair[1].token <= pair[0].token && !same_holder {
                        out.push(format!(
                            "key {key:?}: fencing token did not increase: ({}) then ({})",
                            inner.describe(pair[0]),
                            inner.describe(pair[1])
                        ));
                    }
                }
            }
        }
        out
    }

    /// Panics listing every violation, if there is any.
    pub fn assert_ok(&self, fencing: bool) {
        let violations = self.violations(fencing);
        if !violations.is_empty() {
            let mut msg = format!("{} lock history violation(s) in {} grants:", violations.len(), self.len());
            for v in &violations {
                let _ = write!(msg, "\n  - {v}");
            }
            panic!("{msg}");
        }
    }
}

/// Panics unless `list(prefix)` on `p` comes back empty within `within` (it is retried, so
/// background clean-up such as a reaper or a lease expiry may finish meanwhile).
pub async fn assert_nothing_held(p: &dyn LockProvider, prefix: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let last = match p.list(prefix).await {
            Ok(held) if held.is_empty() => return,
            Ok(held) => format!("still held: {held:?}"),
            Err(e) => format!("list failed: {e}"),
        };
        if Instant::now() >= deadline {
            panic!("{}: locks under {prefix:?} after waiting {within:?}: {last}", p.name());
        }
        tokio::time::sleep(Duration::from_millis(20).min(within)).await;
    }
}

#[cfg(test)]
mod tests;
