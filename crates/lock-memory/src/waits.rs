//! The published waits of the memory backend: a map beside the lock table, each record with
//! its own deadline on the process's (tokio) clock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use lock_core::WaitInfo;
use tokio::time::Instant;

use crate::table::lock;

/// A wait's identity: key, owner, id.
type WaitId = (String, String, u64);

/// Waits by identity: since when, and until when the record lives.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    records: Mutex<BTreeMap<WaitId, (SystemTime, Instant)>>,
}

impl Waits {
    /// Stores or renews `wait`; drops expired records on the way.
    pub(crate) fn post(&self, wait: &WaitInfo) {
        let now = Instant::now();
        let mut records = lock(&self.records);
        records.retain(|_, (_, until)| *until > now);
        records
            .insert((wait.key.clone(), wait.owner.clone(), wait.id), (wait.since, now + wait.remaining_ttl));
    }

    /// Deletes the record, if present.
    pub(crate) fn drop_wait(&self, key: &str, owner: &str, id: u64) {
        lock(&self.records).remove(&(key.to_string(), owner.to_string(), id));
    }

    /// Unexpired records whose key starts with `prefix`, sorted by key, then `since`.
    pub(crate) fn list(&self, prefix: &str) -> Vec<WaitInfo> {
        let now = Instant::now();
        let records = lock(&self.records);
        let mut out: Vec<WaitInfo> = records
            .range((prefix.to_string(), String::new(), 0)..)
            .take_while(|((key, _, _), _)| key.starts_with(prefix))
            .filter(|(_, (_, until))| *until > now)
            .map(|((key, owner, id), (since, until))| WaitInfo {
                key: key.clone(),
                owner: owner.clone(),
                id: *id,
                since: *since,
                remaining_ttl: until.saturating_duration_since(now),
            })
            .collect();
        out.sort_by(|a, b| (&a.key, a.since).cmp(&(&b.key, b.since)));
        out
    }
}
