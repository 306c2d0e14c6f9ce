//! Wake-ups across processes: one connection per provider LISTENs on the table's channel, and
//! every notification of a release wakes one local waiter of its key.
//!
//! A release that frees a lock sends, in the same statement, `pg_notify(channel, payload)` with
//! the payload `target || sender || key`: `target` is the tag of the provider whose turn it is
//! (recorded in the row by busy attempts and handed on by acquisitions, see the acquire
//! statement in `table.rs`), `sender` the releasing provider's tag. Only the target wakes one
//! local waiter of the key; a release whose next waiter waits in the releasing provider sends
//! nothing and wakes it directly. So one release wakes one waiter in one process, not one in
//! every process.
//!
//! Notifications are best effort: PostgreSQL delivers them only to connections that listen at
//! commit time, so a notification sent while the listener reconnects is lost. The listener
//! therefore wakes every local waiter after each (re)connection, checks its connection with a
//! query when nothing arrived for a while, and the wait loop falls back to jittered backoff for
//! any wake-up that never comes: a lost notification costs latency, never correctness.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::Executor;

use crate::core::Inner;
use crate::error::NAME;
use crate::table::TAG_LEN;

/// With nothing received for this long, the listener checks its connection with a query.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Longest pause between attempts to reconnect the listener.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// The key a notification's payload names, if it is addressed to the provider tagged `tag`;
/// `None` for a payload this provider ignores (its own release, another provider's turn, a
/// foreign format).
pub(crate) fn addressed<'p>(payload: &'p str, tag: &str) -> Option<&'p str> {
    let target = payload.get(..TAG_LEN)?;
    let sender = payload.get(TAG_LEN..2 * TAG_LEN)?;
    let key = payload.get(2 * TAG_LEN..)?;
    (target == tag && sender != tag && !key.is_empty()).then_some(key)
}

/// Starts the listener task of `inner`: it lives until the provider is dropped or closed.
pub(crate) fn spawn(inner: &Arc<Inner>, pool: PgPool) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(inner);
    let channel = inner.table.channel().to_string();
    let tag = inner.tag.clone();
    let check_within = inner.client_timeout;
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(20);
        let mut reconnecting = false;
        loop {
            if !alive(&weak) {
                return;
            }
            let listener = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(&channel).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut listener = match tokio::time::timeout(check_within, listener).await {
                Ok(Ok(l)) => l,
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::debug!(backend = NAME, %error, ?pause, "wake-up listener cannot connect; retrying");
                    tokio::time::sleep(pause.mul_f64(0.5 + fastrand::f64())).await;
                    pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                    continue;
                }
            };
            pause = Duration::from_millis(20);
            if let Some(inner) = weak.upgrade() {
                inner.waiters.listening.store(true, Ordering::Release);
                // Releases may have gone unnoticed while the listener was away. (Before the
                // first connection no waiter relied on it: their attempts all went to the
                // server.)
                if reconnecting {
                    inner.waiters.wake_all();
                }
            }
            reconnecting = true;
            let why = serve(&mut listener, &weak, &tag, check_within).await;
            tracing::debug!(backend = NAME, why, "wake-up listener lost its connection; reconnecting");
            if let Some(inner) = weak.upgrade() {
                inner.waiters.listening.store(false, Ordering::Release);
                inner.waiters.wake_all();
            }
        }
    })
}

fn alive(weak: &Weak<Inner>) -> bool {
    weak.upgrade().is_some_and(|inner| !inner.gate.is_closed())
}

/// Hands notifications to the waiters until the connection fails; returns why it stopped.
async fn serve(
    listener: &mut PgListener,
    weak: &Weak<Inner>,
    tag: &str,
    check_within: Duration,
) -> &'static str {
    loop {
        match tokio::time::timeout(IDLE_CHECK, listener.try_recv()).await {
            Ok(Ok(Some(n))) => {
                let Some(inner) = weak.upgrade() else { return "provider dropped" };
                if let Some(key) = addressed(n.payload(), tag) {
                    inner.notifications.fetch_add(1, Ordering::Relaxed);
                    inner.waiters.wake_one(key);
                }
            }
            // Reconnected by sqlx: notifications in between are lost.
            Ok(Ok(None)) => {
                if let Some(inner) = weak.upgrade() {
                    inner.waiters.wake_all();
                }
            }
            Ok(Err(_)) => return "receive failed",
            Err(_idle) => {
                if !alive(weak) {
                    return "provider closed";
                }
                let check = tokio::time::timeout(check_within, listener.execute("SELECT 1")).await;
                if !matches!(check, Ok(Ok(_))) {
                    return "connection check failed";
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_addressed_by_tag_and_skip_the_sender() {
        let (me, other) = ("00000000000000aa", "00000000000000bb");
        assert_eq!(addressed(&format!("{me}{other}k:1"), me), Some("k:1"));
        assert_eq!(addressed(&format!("{me}{me}k"), me), None, "own release");
        assert_eq!(addressed(&format!("{other}{me}k"), me), None, "someone else's waiter");
        assert_eq!(addressed(&format!("{other}{other}k"), me), None);
        assert_eq!(addressed("short", me), None);
        assert_eq!(addressed(&format!("{me}{other}"), me), None, "no key");
    }
}
