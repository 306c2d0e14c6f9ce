//! Inspection: who holds a lock (`is_locked`), every lock under a prefix (`list`), and the
//! cluster's health. Reads only; nothing here writes.
//!
//! The holder of a lock is its entry with the lowest create revision; its remaining TTL is its
//! lease's. A lease that ended between the read of the entry and the question about its TTL
//! means the entry ended with it, unless the entry moved to another lease meanwhile (a
//! re-entry or a refresh): then the entry is read again.

use std::sync::Arc;

use etcd_client::GetOptions;
use lock_core::{FencingToken, Health, LockError, LockInfo, Result};
use tokio::time::Instant;

use crate::error::NAME;
use crate::keys::Entry;
use crate::leases::secs;
use crate::provider::Inner;

/// The most lease questions (`TimeToLive`) one `list` has in flight: a list of thousands of
/// locks asks them a window at a time instead of all at once, which kept the answers of every
/// one of them in the client's memory and queued them all on the server together.
const IN_FLIGHT: usize = 64;

/// Runs `ask` on every item, at most [`IN_FLIGHT`] at a time, each in a task of its own; the
/// answers in the items' order. The first error ends it (the tasks still running are
/// aborted).
pub(crate) async fn each_in_flight<I, T, F, Fut>(items: Vec<I>, ask: F) -> Result<Vec<T>>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut answers: Vec<Option<T>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    let mut waiting = items.into_iter().enumerate();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, item) in waiting.by_ref().take(IN_FLIGHT) {
        let asked = ask(item);
        tasks.spawn(async move { (i, asked.await) });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, answer) = done.map_err(|e| LockError::backend(NAME, e))?;
        answers[i] = Some(answer?);
        if let Some((i, item)) = waiting.next() {
            let asked = ask(item);
            tasks.spawn(async move { (i, asked.await) });
        }
    }
    Ok(answers.into_iter().map(|a| a.expect("every item was answered")).collect())
}

impl Inner {
    /// What `h`, the holder of `key`, says about the lock, with its lease's remaining TTL;
    /// `None` when the entry ended meanwhile.
    async fn info(&self, key: String, mut h: Entry) -> Result<Option<LockInfo>> {
        let remaining = loop {
            if h.lease == 0 {
                break 0;
            }
            let resp = self.call(self.client.lease_client().time_to_live(h.lease, None)).await?;
            if resp.ttl() >= 0 {
                break resp.ttl();
            }
            // The lease ended after the read: the entry is gone with it, unless it moved to
            // another lease meanwhile (a re-entry or a refresh).
            match self.entry(&h.key).await? {
                Some(e) if e.lease != h.lease && e.create_revision == h.create_revision => h = e,
                _ => return Ok(None),
            }
        };
        let held_for = h.value.held_for();
        Ok(Some(LockInfo {
            key,
            owner: h.value.owner,
            token: FencingToken(h.create_revision as u64),
            remaining_ttl: secs(remaining),
            depth: h.value.depth,
            held_for,
        }))
    }

    /// Who holds `key`, if anybody.
    pub(crate) async fn is_locked(&self, key: &str) -> Result<Option<LockInfo>> {
        match self.head(key).await? {
            Some(h) => self.info(key.to_string(), h).await,
            None => Ok(None),
        }
    }

    /// Every held lock whose key starts with `prefix`, in key order.
    pub(crate) async fn list(self: &Arc<Self>, prefix: &str) -> Result<Vec<LockInfo>> {
        let layout = &self.layout;
        let resp = self
            .call(
                self.client
                    .kv_client()
                    .get(layout.scan(prefix), Some(GetOptions::new().with_range(layout.scan_end(prefix)))),
            )
            .await?;
        // Entries come sorted by key, so each lock's entries are adjacent; its holder is the
        // one with the lowest create revision.
        let mut heads: Vec<(String, Entry)> = Vec::new();
        for kv in resp.kvs() {
            let Some(key) = layout.lock_key(kv.key()) else { continue };
            let e = Entry::from_kv(kv);
            match heads.last_mut() {
                Some((k, h)) if k == key => {
                    if e.create_revision < h.create_revision {
                        *h = e;
                    }
                }
                _ => heads.push((key.to_string(), e)),
            }
        }
        let inner = self.clone();
        let infos = each_in_flight(heads, move |(key, h)| {
            let inner = inner.clone();
            async move { inner.info(key, h).await }
        })
        .await?;
        Ok(infos.into_iter().flatten().collect())
    }

    /// The member's status and the round trip it took.
    pub(crate) async fn health(&self) -> Result<Health> {
        let started = Instant::now();
        let status = self.call(self.client.maintenance_client().status()).await?;
        let latency = started.elapsed();
        let member = status.header().map_or(0, |h| h.member_id());
        Ok(Health {
            backend: NAME,
            latency,
            detail: format!(
                "etcd {} (member {member:x}, leader {:x}, raft term {})",
                status.version(),
                status.leader(),
                status.raft_term()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn answers_come_in_order_with_a_bounded_number_in_flight() {
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (n, m) = (now.clone(), most.clone());
        let answers = each_in_flight((0..300u64).collect(), move |i| {
            let (now, most) = (n.clone(), m.clone());
            async move {
                let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(in_flight, Ordering::SeqCst);
                // Later items answer sooner, so completion order is not item order.
                tokio::time::sleep(std::time::Duration::from_micros(300 - i)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(i * 2)
            }
        })
        .await
        .unwrap();
        assert_eq!(answers, (0..300u64).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), IN_FLIGHT, "the window is filled, never exceeded");
    }

    #[tokio::test]
    async fn the_first_error_ends_it() {
        let answer = each_in_flight((0..10u32).collect(), |i| async move {
            if i == 7 {
                Err(LockError::backend(NAME, "no answer"))
            } else {
                Ok(i)
            }
        })
        .await;
        assert!(answer.is_err());
    }
}
