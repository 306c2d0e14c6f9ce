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
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (key, h)) in heads.into_iter().enumerate() {
            let inner = self.clone();
            tasks.spawn(async move { (i, inner.info(key, h).await) });
        }
        let mut found = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (i, info) = done.map_err(|e| LockError::backend(NAME, e))?;
            if let Some(info) = info? {
                found.push((i, info));
            }
        }
        found.sort_by_key(|(i, _)| *i);
        Ok(found.into_iter().map(|(_, info)| info).collect())
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
