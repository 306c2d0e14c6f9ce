//! Published waits (deadlock detection): one key per waiting call, on a lease of its own so
//! that it ends with the waiting process, in a range no lock operation reads.
//!
//! ```text
//! <prefix> NUL "wait" NUL <lock key> NUL <wait id, 16 hex digits>   =   "<since ms> <owner>"
//! ```
//!
//! A lock's entries start with `<prefix><lock key> NUL` and lock keys are never empty nor
//! contain NUL, so no lock's range covers a wait, and `list` skips them (see
//! [`Layout::lock_key`](crate::keys::Layout::lock_key)). Renewing a wait is one keep-alive of
//! its lease; withdrawing it revokes the lease, which deletes the key.

use std::time::{Duration, UNIX_EPOCH};

use etcd_client::{GetOptions, PutOptions};
use lock_core::{LockError, Result, WaitInfo};

use crate::inspect::each_in_flight;
use crate::leases::secs;
use crate::provider::Inner;

const WAITS: &[u8] = b"\0wait\0";

impl Inner {
    fn waits_dir(&self) -> Vec<u8> {
        let mut v = self.layout.scan("");
        v.extend_from_slice(WAITS);
        v
    }

    fn wait_key(&self, key: &str, id: u64) -> Vec<u8> {
        let mut v = self.waits_dir();
        v.extend_from_slice(key.as_bytes());
        v.push(0);
        v.extend_from_slice(format!("{id:016x}").as_bytes());
        v
    }

    /// Publishes `wait`, or renews it with one keep-alive when this provider published it
    /// before and its lease still lives.
    pub(crate) async fn post_wait(self: &std::sync::Arc<Self>, wait: &WaitInfo) -> Result<()> {
        let known = self.wait_leases.lock().unwrap().get(&wait.id).copied();
        if let Some(lease) = known {
            if self.keep_alive(lease).await? {
                return Ok(());
            }
        }
        let grant = self.grant(wait.remaining_ttl).await?;
        let since = wait.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let mut kv = self.client.kv_client();
        let put = kv.put(
            self.wait_key(&wait.key, wait.id),
            format!("{since} {}", wait.owner),
            Some(PutOptions::new().with_lease(grant.id)),
        );
        if let Err(e) = self.call(put).await {
            self.revoke_in_background(grant.id);
            return Err(e);
        }
        if let Some(old) = self.wait_leases.lock().unwrap().insert(wait.id, grant.id) {
            self.revoke_in_background(old);
        }
        Ok(())
    }

    /// Withdraws a wait this provider published: revokes its lease, and with it the key.
    pub(crate) async fn drop_wait(self: &std::sync::Arc<Self>, key: &str, id: u64) -> Result<()> {
        let lease = self.wait_leases.lock().unwrap().remove(&id);
        match lease {
            Some(lease) => self.revoke(lease).await,
            // Published elsewhere (or never): delete the key itself.
            None => self.call(self.client.kv_client().delete(self.wait_key(key, id), None)).await.map(drop),
        }
    }

    /// Every wait under `prefix`, sorted by key, then since.
    pub(crate) async fn waits(self: &std::sync::Arc<Self>, prefix: &str) -> Result<Vec<WaitInfo>> {
        let dir = self.waits_dir();
        let mut start = dir.clone();
        start.extend_from_slice(prefix.as_bytes());
        let end = prefix_end(&start);
        let resp =
            self.call(self.client.kv_client().get(start, Some(GetOptions::new().with_range(end)))).await?;
        let mut posted = Vec::new();
        for kv in resp.kvs() {
            let Some(rest) = kv.key().strip_prefix(dir.as_slice()) else { continue };
            let Some(nul) = rest.iter().rposition(|&b| b == 0) else { continue };
            let (Ok(key), Ok(id)) =
                (std::str::from_utf8(&rest[..nul]), std::str::from_utf8(&rest[nul + 1..]))
            else {
                continue;
            };
            let Ok(id) = u64::from_str_radix(id, 16) else { continue };
            let Some((since, owner)) = std::str::from_utf8(kv.value()).ok().and_then(|v| v.split_once(' '))
            else {
                continue;
            };
            let Ok(since) = since.parse::<u64>() else { continue };
            posted.push((key.to_owned(), owner.to_owned(), id, since, kv.lease()));
        }
        let inner = self.clone();
        let answers = each_in_flight(posted, move |(key, owner, id, since, lease)| {
            let inner = inner.clone();
            async move {
                let resp = inner.call(inner.client.lease_client().time_to_live(lease, None)).await?;
                Ok::<_, LockError>((resp.ttl() >= 0).then(|| WaitInfo {
                    key,
                    owner,
                    id,
                    since: UNIX_EPOCH + Duration::from_millis(since),
                    remaining_ttl: secs(resp.ttl()),
                }))
            }
        })
        .await?;
        let mut out: Vec<WaitInfo> = answers.into_iter().flatten().collect();
        out.sort_by(|a, b| (&a.key, a.since, a.id).cmp(&(&b.key, b.since, b.id)));
        Ok(out)
    }
}

/// The end (exclusive) of the range of keys starting with `start`.
fn prefix_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
