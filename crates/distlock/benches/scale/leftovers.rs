//! What a backend keeps on its server after the locks are gone: many distinct keys locked and
//! released, then what stays, right after and once the backend's own cleanup ran (on a
//! provider connected with short cleanup settings).

use std::time::{Duration, Instant};

use distlock::{LockOptions, WaitPolicy};

use crate::backends::{Backend, Footprint};
use crate::series::fan_out;

/// Lease of the leftovers' locks (released at once; a short lease only shortens how long the
/// Redis counters outlive them).
const TTL: Duration = Duration::from_secs(5);

/// One row of the leftovers table.
#[derive(Debug)]
pub(crate) struct LeftoversRow {
    /// Distinct keys locked and released.
    pub(crate) keys: usize,
    /// Before the first lock.
    pub(crate) before: Footprint,
    /// Right after the last release.
    pub(crate) after: Footprint,
    /// When the run's entries were back to what they were before, and what was left then; or
    /// what was left when the patience ran out.
    pub(crate) cleaned: (Option<Duration>, Footprint),
}

/// Locks and releases `n` distinct keys (64 tasks), then reads what is left every 2 s until
/// the run's entries are gone or `patience` ran out. `None` for the memory backend.
pub(crate) async fn leftovers(b: &Backend, n: usize, patience: Duration) -> Option<LeftoversRow> {
    let before = b.footprint().await?;
    let p = b.provider.clone();
    fan_out(n, move |i| {
        let p = p.clone();
        async move {
            let key = format!("gone/{i}");
            p.lock(&LockOptions::new(key.as_str(), "scale").ttl(TTL).wait(WaitPolicy::NoWait))
                .await
                .expect("lock");
            p.unlock(&key, "scale").await.expect("unlock");
        }
    })
    .await;
    let after = b.footprint().await?;
    let released = Instant::now();
    let mut last = after;
    while released.elapsed() < patience {
        tokio::time::sleep(Duration::from_secs(2)).await;
        last = b.footprint().await?;
        if last.entries <= before.entries {
            return Some(LeftoversRow { keys: n, before, after, cleaned: (Some(released.elapsed()), last) });
        }
    }
    Some(LeftoversRow { keys: n, before, after, cleaned: (None, last) })
}
