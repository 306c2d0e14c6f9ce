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
    /// Stores or renews `wait`.
    pub(crate) fn post(&self, wait: &WaitInfo) {
        let until = Instant::now() + wait.remaining_ttl;
        lock(&self.records).insert((wait.key.clone(), wait.owner.clone(), wait.id), (wait.since, until));
    }

    /// Drops the records that expired by `now` (waits their waiter stopped renewing without
    /// withdrawing them); the reaper's pass calls it. Returns how many it dropped.
    pub(crate) fn reap(&self, now: Instant) -> usize {
        let mut records = lock(&self.records);
        let before = records.len();
        records.retain(|_, (_, until)| *until > now);
        before - records.len()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn wait(key: &str, id: u64, ttl: Duration) -> WaitInfo {
        WaitInfo { key: key.into(), owner: "o".into(), id, since: SystemTime::now(), remaining_ttl: ttl }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_records_are_hidden_at_once_and_dropped_by_the_reaper() {
        let waits = Waits::default();
        waits.post(&wait("a", 1, Duration::from_secs(1)));
        waits.post(&wait("b", 2, Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(2)).await;
        let listed: Vec<String> = waits.list("").into_iter().map(|w| w.key).collect();
        assert_eq!(listed, ["b"], "an expired wait is never listed");
        // Posting does not walk the map; the reaper's pass does.
        waits.post(&wait("c", 3, Duration::from_secs(10)));
        assert_eq!(lock(&waits.records).len(), 3);
        assert_eq!(waits.reap(Instant::now()), 1);
        assert_eq!(lock(&waits.records).len(), 2);
        assert_eq!(waits.reap(Instant::now()), 0);
    }
}
