//! Published waits (deadlock detection): a key per waiting call beside its lock, in the
//! lock's cluster slot, expiring unless renewed, and its name in a sorted set per prefix (see
//! [`keys`](crate::keys)), so that reading the waits costs a range of that set and a read per
//! wait, not a `SCAN` of every lock and counter.
//!
//! The index is scored with the time each wait expires by the publisher's clock. A wait found
//! gone when read is taken out of the index; entries older than [`STALE_AFTER`] by the
//! reader's clock are dropped before reading, so withdrawals that were lost cannot make the
//! index grow.
//!
//! With Redlock a wait is written to every master and counts as published when one took it;
//! reading merges what every reachable master has. A wait only informs the detector, so it
//! needs no quorum: a lost one is published again at its next renewal.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use futures::future::join_all;
use futures::StreamExt;
use lock_core::{LockError, Result, WaitInfo};

use crate::deployment::Deployment;
use crate::keys::KeySpace;
use crate::node::map_err;
use crate::NAME;

/// How long after its expiry (by the reader's clock) an index entry is dropped unread: wide
/// enough for the clocks of publisher and reader to differ.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);

/// Writes `wait` to every node; fine when at least one took it.
pub(crate) async fn post(deployment: &Deployment, keys: &KeySpace, wait: &WaitInfo) -> Result<()> {
    let (index, name) = (keys.waits_index(), keys.wait_key(&wait.key, wait.id));
    let since = wait.since.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let value = format!("{since} {}", wait.owner);
    let results =
        join_all(deployment.nodes().iter().map(|n| n.post_wait(&index, &name, &value, wait.remaining_ttl)))
            .await;
    first_success(results)
}

/// Deletes wait `id` for `key` on every node.
pub(crate) async fn drop(deployment: &Deployment, keys: &KeySpace, key: &str, id: u64) -> Result<()> {
    let (index, name) = (keys.waits_index(), keys.wait_key(key, id));
    first_success(join_all(deployment.nodes().iter().map(|n| n.drop_wait(&index, &name))).await)
}

fn first_success(results: Vec<std::result::Result<(), fred::error::Error>>) -> Result<()> {
    let mut error = None;
    for r in results {
        match r {
            Ok(()) => return Ok(()),
            Err(e) => error = Some(e),
        }
    }
    Err(error.map(map_err).unwrap_or_else(|| LockError::unavailable(NAME, "no node")))
}

/// Every unexpired wait under `prefix` on any reachable node, sorted by key, then since.
pub(crate) async fn list(deployment: &Deployment, keys: &KeySpace, prefix: &str) -> Result<Vec<WaitInfo>> {
    let index = keys.waits_index();
    let nodes = deployment.nodes();
    // Wait name -> (user key, id, the first node that has it).
    let mut found: BTreeMap<String, (String, u64, usize)> = BTreeMap::new();
    let mut read_any = false;
    for (i, node) in nodes.iter().enumerate() {
        match node.indexed_waits(&index, STALE_AFTER).await {
            Ok(names) => {
                read_any = true;
                for name in names {
                    if let Some((key, id)) =
                        keys.decode_wait_key(&name).filter(|(k, _)| k.starts_with(prefix))
                    {
                        found.entry(name).or_insert((key, id, i));
                    }
                }
            }
            Err(e) if nodes.len() > 1 => {
                tracing::debug!(error = %e, "waits: a master's index could not be read")
            }
            Err(e) => return Err(map_err(e)),
        }
    }
    if !read_any {
        return Err(LockError::unavailable(NAME, "waits: no master's index could be read"));
    }
    let reads = found.into_iter().map(|(name, (key, id, i))| async move {
        let read = nodes[i].read_wait(&name).await.map_err(map_err)?;
        let wait = read.and_then(|(value, left)| {
            let (since, owner) = value.split_once(' ')?;
            Some(WaitInfo {
                key,
                owner: owner.to_owned(),
                id,
                since: UNIX_EPOCH + Duration::from_millis(since.parse().ok()?),
                remaining_ttl: left,
            })
        });
        Ok::<_, LockError>((name, i, wait))
    });
    let mut out = Vec::new();
    let mut gone: Vec<Vec<String>> = vec![Vec::new(); nodes.len()];
    let mut reads = futures::stream::iter(reads).buffered(64);
    while let Some(read) = reads.next().await {
        match read? {
            (_, _, Some(wait)) => out.push(wait),
            (name, i, None) => gone[i].push(name),
        }
    }
    for (node, names) in nodes.iter().zip(gone) {
        if let Err(e) = node.unindex_waits(&index, names).await {
            tracing::debug!(error = %e, "waits: expired entries left in the index");
        }
    }
    out.sort_by(|a, b| (&a.key, a.since).cmp(&(&b.key, b.since)));
    Ok(out)
}
