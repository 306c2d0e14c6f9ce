//! [`Heard`]: what the server last said about a held key, kept for a short while so that a
//! waiter's timer attempts can be answered from it instead of asking again; [`KeyNews`]: that
//! answer together with the provider's last release of the key, so that an answer to a
//! question asked before that release is never kept.
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

    /// Who holds the key, as the server said.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// When the lease the server spoke of ends, at the latest.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// The holder and the lease left, if it was said less than `fresh` ago and that lease has
    /// not ended yet.
    pub fn fresh(&self, fresh: Duration) -> Option<(String, Duration)> {
        let now = Instant::now();
        (now.duration_since(self.at) < fresh && self.until > now)
            .then(|| (self.holder.clone(), self.until - now))
    }
}

/// What a provider knows of one key: the server's last "held" answer, and when the provider
/// last heard of a release of the key. A release may come after the server answered a question
/// and before the answer arrives, so an answer to a question asked before the last release is
/// dropped: the waiter that release woke must ask the server.
#[derive(Debug, Clone, Default)]
pub struct KeyNews {
    held: Option<Heard>,
    released: Option<Instant>,
}

impl KeyNews {
    /// The server, asked at `asked`, said the key is held by `holder` for `left` more; kept
    /// unless a release was heard of at or after `asked`.
    pub fn held(&mut self, asked: Instant, holder: &str, left: Duration) {
        if self.released.is_some_and(|at| at >= asked) {
            return;
        }
        self.held = Some(Heard::new(asked, holder, left));
    }

    /// A release of the key was heard of (or what was known may be lost): forget the answer,
    /// and drop any answer to a question asked before now.
    pub fn released(&mut self) {
        self.held = None;
        self.released = Some(Instant::now());
    }

    /// The last answer that stands.
    pub fn heard(&self) -> Option<&Heard> {
        self.held.as_ref()
    }

    /// Whether an answer was heard, or a release, less than `within` ago (older news can go).
    pub fn is_recent(&self, within: Duration) -> bool {
        self.held.as_ref().is_some_and(|h| h.is_fresh(within))
            || self.released.is_some_and(|at| at.elapsed() < within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_asked_before_the_last_release_is_dropped() {
        let mut news = KeyNews::default();
        let asked = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        news.released();
        news.held(asked, "alice", Duration::from_secs(30));
        assert!(news.heard().is_none(), "the release may have come after the answer");
        assert!(news.is_recent(Duration::from_millis(10)));
        tokio::time::advance(Duration::from_millis(1)).await;
        news.held(Instant::now(), "bob", Duration::from_secs(30));
        assert_eq!(news.heard().map(Heard::holder), Some("bob"), "asked after the release");
        news.released();
        assert!(news.heard().is_none(), "a release forgets the answer");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!news.is_recent(Duration::from_millis(10)));
    }

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
