//! [`Heard`]: what the server last said about a held key, kept for a short while so that a
//! waiter's timer attempts can be answered from it instead of asking again.
//!
//! Only ever a reason to wait a little longer, never to grant: a backend answers a timer
//! attempt "busy" from it while it is fresh, and asks the server once it is not (or when a
//! wake-up says the lock may be free).

use std::time::Duration;

use tokio::time::Instant;

/// "Held by `holder` for `left` more", as the server said it at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    at: Instant,
    holder: String,
    until: Instant,
}

impl Heard {
    /// The server, asked at `asked`, said the key is held by `holder` for `left` more (an
    /// empty `holder`: the backend is handing the lock to a waiter of its own).
    pub fn new(asked: Instant, holder: &str, left: Duration) -> Self {
        Heard { at: asked, holder: holder.to_owned(), until: asked + left }
    }

    /// Whether it was said less than `fresh` ago.
    pub fn is_fresh(&self, fresh: Duration) -> bool {
        self.at.elapsed() < fresh
    }

    /// The holder and the lease left, if it was said less than `fresh` ago and that lease has
    /// not ended yet.
    pub fn fresh(&self, fresh: Duration) -> Option<(String, Duration)> {
        let now = Instant::now();
        (now.duration_since(self.at) < fresh && self.until > now)
            .then(|| (self.holder.clone(), self.until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stands_while_fresh_and_the_lease_lasts() {
        let fresh = Duration::from_millis(100);
        let heard = Heard::new(Instant::now(), "alice", Duration::from_secs(30));
        assert_eq!(heard.fresh(fresh).map(|(h, _)| h).as_deref(), Some("alice"));
        assert!(heard.is_fresh(fresh));
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(heard.fresh(fresh), None, "too old");
        assert!(!heard.is_fresh(fresh));

        let short = Heard::new(Instant::now(), "bob", Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(short.fresh(fresh), None, "the lease it spoke of has ended");
    }
}
