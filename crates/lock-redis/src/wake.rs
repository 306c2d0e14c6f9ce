//! Release wake-ups over pub/sub: one subscriber connection per provider, one channel per key
//! that local callers are waiting for.
//!
//! A `lock` call that may wait registers an [`Interest`] in its key (a reference count per key).
//! When an attempt finds the key busy, the key's channel is subscribed (once for all local
//! waiters of that key) before the caller goes to sleep, and an attempt is made again right
//! after the subscription is confirmed so that a release in between is not missed. The release
//! script publishes the released token on the channel when a lock becomes free; the message
//! wakes **one** local waiter ([`Notify::notify_one`]), which tries at once, so a release does
//! not start a herd. A release through this provider's own `unlock` wakes that waiter as soon
//! as the reply arrives; the message for the same token then wakes nobody else. When the last
//! local waiter of a key is gone, the channel is unsubscribed.
//!
//! While subscribed, the provider also keeps what it knows about the key: the lease it
//! granted and has not seen end, and the holder and lease end of the last busy answer. With
//! it, a waiter's timer retry while a lease it knows of runs costs no round trip, and a new
//! caller queues behind the local waiters instead of racing the one a release wakes (see
//! [`Interest::settled`]). Every release heard of forgets the busy answer, and an answer to an
//! attempt sent before a release it missed is not kept.
//! That knowledge only ever delays an attempt; every grant is the server's.
//!
//! Subscribe and unsubscribe commands go through one task in the order they were asked for,
//! so an unsubscribe of a key nobody waits for can never overtake the subscribe of a new
//! waiter. A lost message only costs latency: the wait loop's timer still fires, and after a
//! reconnect (when fred subscribes the channels again) or a dropped message the local
//! knowledge is forgotten and one waiter per key is woken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use futures::future::BoxFuture;
use lock_core::raw::{Attempt, KeyNews};
use lock_core::Lease;
use tokio::sync::{broadcast, mpsc, oneshot, Notify, OnceCell};
use tokio::time::Instant;

/// What this provider knows about one key while local callers wait for it.
#[derive(Debug)]
struct Entry {
    /// Local `lock` calls currently interested in the key.
    refs: usize,
    /// Those of them that found the key busy and are waiting.
    waiting: usize,
    /// A lease this provider granted and has not seen end.
    holder: Option<LocalHolder>,
    /// The last busy answer that stands (see [`KeyNews`]).
    seen: KeyNews,
    /// The release (by token) a waiter was last woken for: the local `unlock` and the
    /// message both report a release, and only the first of the two wakes a waiter.
    woken_for: Option<u64>,
    notify: Arc<Notify>,
    sub: Arc<Subscription>,
}

/// A lease granted through this provider: until its local deadline, nobody else can get the
/// key unless it is released, which this provider hears of (its own `unlock`, or the release
/// message on the channel).
#[derive(Debug)]
struct LocalHolder {
    owner: Arc<str>,
    token: u64,
    until: Instant,
}

impl LocalHolder {
    fn of(lease: &Lease) -> Self {
        LocalHolder { owner: lease.owner.clone(), token: lease.token.0, until: lease.valid_until }
    }
}

/// The state of one key's channel subscription.
#[derive(Debug, Default)]
struct Subscription {
    /// Set once the subscription is confirmed (`true`) or failed (`false`).
    ready: OnceCell<bool>,
    /// A subscribe command was sent (so the channel needs unsubscribing at the end).
    requested: AtomicBool,
}

#[derive(Debug)]
enum Command {
    Subscribe(String, oneshot::Sender<bool>),
    Unsubscribe(String),
    Quit,
}

/// The local waiters of one provider, by channel.
#[derive(Debug, Default)]
struct Registry {
    entries: Mutex<HashMap<String, Entry, foldhash::fast::RandomState>>,
    /// Whether a release's token identifies the lease this provider recorded (one node), or
    /// is only one master's token among several (Redlock).
    match_tokens: bool,
}

impl Registry {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry, foldhash::fast::RandomState>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn released(&self, channel: &str, owner: Option<&str>, token: Option<u64>) {
        let token = token.filter(|_| self.match_tokens);
        if let Some(e) = self.entries().get_mut(channel) {
            let ended = e
                .holder
                .as_ref()
                .is_some_and(|h| owner.is_none_or(|o| *h.owner == *o) && token.is_none_or(|t| t == h.token));
            if ended {
                e.holder = None;
            }
            // Any release may have ended the lease the last busy answer named (that answer
            // may even be older than the release it missed): forget it.
            e.seen.released();
        }
    }

    /// Wakes one local waiter for the release of acquisition `token` (unless already woken
    /// for it); `None`: a release of unknown token, always wakes.
    fn wake_one(&self, channel: &str, token: Option<u64>) {
        if let Some(e) = self.entries().get_mut(channel) {
            if token.is_some() && e.woken_for == token {
                return;
            }
            e.woken_for = token;
            e.notify.notify_one();
        }
    }

    /// After messages may have been lost: forget every local lease, wake one waiter per key.
    fn forget_all(&self) {
        for e in self.entries().values_mut() {
            e.holder = None;
            e.seen.released();
            e.notify.notify_one();
        }
    }
}

/// The provider's wake-up machinery: a subscriber connection, created on first need.
pub(crate) struct ReleaseListener {
    registry: Arc<Registry>,
    commands: OnceCell<mpsc::UnboundedSender<Command>>,
    make_subscriber: Box<dyn Fn() -> BoxFuture<'static, SubscriberClient> + Send + Sync>,
}

impl std::fmt::Debug for ReleaseListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseListener")
            .field("keys", &self.registry.entries().len())
            .field("connected", &self.commands.initialized())
            .finish()
    }
}

impl ReleaseListener {
    /// Wake-ups whose subscriber connection is built by `make_subscriber` when first needed.
    ///
    /// `match_tokens`: release tokens identify leases (a single node; not Redlock).
    pub(crate) fn new(
        match_tokens: bool,
        make_subscriber: impl Fn() -> BoxFuture<'static, SubscriberClient> + Send + Sync + 'static,
    ) -> Self {
        ReleaseListener {
            registry: Arc::new(Registry { entries: Mutex::default(), match_tokens }),
            commands: OnceCell::new(),
            make_subscriber: Box::new(make_subscriber),
        }
    }

    /// Whether any local caller has an interest in `channel` now.
    pub(crate) fn watched(&self, channel: &str) -> bool {
        self.registry.entries().contains_key(channel)
    }

    /// Registers a local caller's interest in `channel` for as long as the returned value lives.
    pub(crate) fn interest(self: &Arc<Self>, channel: &str) -> Interest {
        let mut entries = self.registry.entries();
        let e = entries.entry(channel.to_owned()).or_insert_with(|| Entry {
            refs: 0,
            waiting: 0,
            holder: None,
            seen: KeyNews::default(),
            woken_for: None,
            notify: Arc::new(Notify::new()),
            sub: Arc::default(),
        });
        e.refs += 1;
        Interest {
            listener: self.clone(),
            channel: channel.to_owned(),
            notify: e.notify.clone(),
            sub: e.sub.clone(),
            waiting: AtomicBool::new(false),
        }
    }

    /// Forgets a local lease of `owner` on `channel`'s key (of acquisition `token`, or any)
    /// that has ended: released, found gone, or given back.
    pub(crate) fn released(&self, channel: &str, owner: Option<&str>, token: Option<u64>) {
        self.registry.released(channel, owner, token);
    }

    /// A local `unlock` freed the key (acquisition `token`): wake one local waiter now rather
    /// than when the release message comes back.
    pub(crate) fn freed(&self, channel: &str, token: Option<u64>) {
        self.registry.wake_one(channel, token);
    }

    /// Wakes every local waiter (used on close, where each then sees the provider closed).
    pub(crate) fn wake_all(&self) {
        for e in self.registry.entries().values() {
            e.notify.notify_waiters();
        }
    }

    /// Stops the subscriber connection.
    pub(crate) fn close(&self) {
        if let Some(tx) = self.commands.get() {
            let _ = tx.send(Command::Quit);
        }
    }

    async fn sender(&self) -> Option<&mpsc::UnboundedSender<Command>> {
        self.commands
            .get_or_try_init(|| async {
                let subscriber = (self.make_subscriber)().await;
                if let Err(e) = subscriber.init().await {
                    tracing::warn!(error = %e, "cannot open the pub/sub connection; waiters fall back to polling");
                    return Err(());
                }
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_commands(subscriber, self.registry.clone(), rx));
                Ok(tx)
            })
            .await
            .ok()
    }
}

/// Applies subscribe and unsubscribe requests in order until asked to quit (or the provider
/// is gone), with the tasks that dispatch messages and subscribe again after a reconnect.
async fn run_commands(
    subscriber: SubscriberClient,
    registry: Arc<Registry>,
    mut rx: mpsc::UnboundedReceiver<Command>,
) {
    let resubscribe = subscriber.manage_subscriptions();
    let dispatcher = tokio::spawn(dispatch(subscriber.message_rx(), subscriber.reconnect_rx(), registry));
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Subscribe(channel, done) => {
                let ok = match subscriber.subscribe(channel.as_str()).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(%channel, error = %e, "subscribe failed; waiters fall back to polling");
                        false
                    }
                };
                let _ = done.send(ok);
            }
            Command::Quit => break,
            Command::Unsubscribe(channel) => {
                if let Err(e) = subscriber.unsubscribe(channel.as_str()).await {
                    tracing::debug!(%channel, error = %e, "unsubscribe failed");
                }
            }
        }
    }
    resubscribe.abort();
    dispatcher.abort();
    let _ = subscriber.quit().await;
}

/// Turns each release message into one wake-up of a local waiter of that key.
async fn dispatch(
    mut messages: broadcast::Receiver<fred::types::Message>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    registry: Arc<Registry>,
) {
    loop {
        tokio::select! {
            msg = messages.recv() => match msg {
                Ok(msg) => {
                    // The message carries the released token: forget that lease, wake a waiter.
                    let token = msg.value.as_u64();
                    registry.released(&msg.channel, None, token);
                    registry.wake_one(&msg.channel, token);
                }
                // Messages were dropped: rather than guess, start over for every key.
                Err(broadcast::error::RecvError::Lagged(_)) => registry.forget_all(),
                Err(broadcast::error::RecvError::Closed) => break,
            },
            // Releases during the outage sent no message that reached us.
            Ok(_) = reconnects.recv() => registry.forget_all(),
        }
    }
}

/// A local caller's interest in one key's releases.
#[derive(Debug)]
pub(crate) struct Interest {
    listener: Arc<ReleaseListener>,
    channel: String,
    notify: Arc<Notify>,
    sub: Arc<Subscription>,
    /// Counted in the entry's `waiting`.
    waiting: AtomicBool,
}

impl Interest {
    /// An answer for the next attempt of `owner` that needs no round trip, when this
    /// provider's own knowledge settles it:
    ///
    /// - a lease this provider granted to another owner is still running: busy;
    /// - on a caller's `first` attempt, other local callers already wait for the key held by
    ///   another owner: busy, so the newcomer queues behind them instead of racing the one a
    ///   release wakes;
    /// - on a later attempt (a timer retry), the last busy answer named another owner whose
    ///   lease still runs: busy, so idle waiters do not poll the server while a lease they
    ///   know of lasts. A release of the key (its message, or this provider's own unlock)
    ///   forgets that answer before it wakes a waiter, and a refreshed lease is asked about
    ///   again when the time the answer gave is up.
    ///
    /// Only while the key's channel is subscribed, which is how a release elsewhere ends that
    /// knowledge. Being wrong costs latency only (the caller tries again when woken, on its
    /// timer, or when the lease would end), never safety: the server decides every grant. A
    /// key deleted without a release (by an operator) is noticed when the lease it had would
    /// have ended.
    pub(crate) fn settled(&self, owner: &str, first: bool) -> Option<Attempt> {
        if self.sub.ready.get() != Some(&true) {
            return None;
        }
        let mut entries = self.listener.registry.entries();
        let e = entries.get_mut(&self.channel)?;
        let now = Instant::now();
        let busy = if let Some(h) = e.holder.as_ref().filter(|h| h.until > now) {
            (*h.owner != *owner)
                .then(|| Attempt::Busy { holder: Some(h.owner.to_string()), expires_in: Some(h.until - now) })
        } else if !first {
            e.seen.heard().filter(|h| h.holder() != owner && h.until() > now).map(|h| Attempt::Busy {
                holder: Some(h.holder().to_owned()),
                expires_in: Some(h.until() - now),
            })
        } else if e.waiting > 0 {
            match e.seen.heard() {
                // The holder's lease may have run out; or it may be the caller re-entering.
                Some(h) if h.holder() == owner || h.until() <= now => None,
                Some(h) => Some(Attempt::Busy {
                    holder: Some(h.holder().to_owned()),
                    expires_in: Some(h.until() - now),
                }),
                None => Some(Attempt::Busy { holder: None, expires_in: None }),
            }
        } else {
            None
        };
        if busy.is_some() {
            self.count_waiting(e);
        }
        busy
    }

    fn count_waiting(&self, e: &mut Entry) {
        if !self.waiting.swap(true, Ordering::AcqRel) {
            e.waiting += 1;
        }
    }

    /// Records the answer of an attempt that went to the server, sent at `asked`. A busy
    /// answer naming the holder and its lease is kept unless a release was heard of since
    /// `asked` (see [`KeyNews`]); one without them leaves what was known as it was.
    pub(crate) fn record(&self, answer: &Attempt, asked: Instant) {
        let mut entries = self.listener.registry.entries();
        let Some(e) = entries.get_mut(&self.channel) else { return };
        match answer {
            Attempt::Acquired(lease) => e.holder = Some(LocalHolder::of(lease)),
            Attempt::Busy { holder, expires_in } => {
                if let (Some(holder), Some(left)) = (holder, expires_in) {
                    e.seen.held(asked, holder, *left);
                }
                self.count_waiting(e);
            }
        }
    }

    /// The signal a release of the key fires.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    /// Makes sure the key's channel is subscribed. Returns `true` when this call had to wait
    /// for the subscription (a release may have slipped by before it: look again), `false`
    /// when it already was (or cannot be) in place.
    pub(crate) async fn ensure_subscribed(&self) -> bool {
        if self.sub.ready.initialized() {
            return false;
        }
        *self
            .sub
            .ready
            .get_or_init(|| async {
                let Some(tx) = self.listener.sender().await else { return false };
                let (done, ok) = oneshot::channel();
                self.sub.requested.store(true, Ordering::Release);
                if tx.send(Command::Subscribe(self.channel.clone(), done)).is_err() {
                    return false;
                }
                ok.await.unwrap_or(false)
            })
            .await
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        let mut entries = self.listener.registry.entries();
        let Some(e) = entries.get_mut(&self.channel) else { return };
        e.refs -= 1;
        if *self.waiting.get_mut() {
            e.waiting -= 1;
        }
        if e.refs > 0 {
            return;
        }
        let e = entries.remove(&self.channel).expect("present");
        drop(entries);
        // Only a channel that was subscribed needs unsubscribing. The request is queued
        // behind the subscribe, so the order on the connection is right.
        if e.sub.requested.load(Ordering::Acquire) {
            if let Some(tx) = self.listener.commands.get() {
                let _ = tx.send(Command::Unsubscribe(std::mem::take(&mut self.channel)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A listener whose channels count as subscribed without a server.
    fn subscribed(channel: &str) -> (Arc<ReleaseListener>, Interest) {
        let listener = Arc::new(ReleaseListener::new(true, || -> BoxFuture<'static, SubscriberClient> {
            panic!("these tests open no subscriber connection")
        }));
        let interest = listener.interest(channel);
        interest.sub.ready.set(true).expect("not yet set");
        (listener, interest)
    }

    fn busy(holder: &str) -> Attempt {
        Attempt::Busy { holder: Some(holder.into()), expires_in: Some(Duration::from_secs(30)) }
    }

    /// Instants one millisecond apart, so that "asked before" and "after" are never equal.
    async fn tick() -> Instant {
        tokio::time::advance(Duration::from_millis(1)).await;
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_retry_is_answered_from_the_last_busy_answer_until_a_release() {
        let (listener, interest) = subscribed("ch");
        interest.record(&busy("h"), tick().await);
        let answer = interest.settled("me", false);
        assert!(matches!(&answer, Some(Attempt::Busy { holder: Some(h), .. }) if h == "h"), "{answer:?}");
        assert!(interest.settled("h", false).is_none(), "the holder itself asks the server (re-entry)");
        listener.released("ch", None, Some(7));
        assert!(interest.settled("me", false).is_none(), "a release forgets the answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_answer_to_an_attempt_sent_before_a_release_is_not_kept() {
        let (listener, interest) = subscribed("ch");
        let asked = tick().await;
        // The release message overtakes the busy answer of an attempt already on its way.
        tick().await;
        listener.released("ch", None, Some(7));
        interest.record(&busy("h"), asked);
        assert!(interest.settled("me", false).is_none(), "the answer may name a holder that is gone");
        interest.record(&busy("h2"), tick().await);
        assert!(interest.settled("me", false).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_forgets_every_busy_answer() {
        let (listener, interest) = subscribed("ch");
        interest.record(&busy("h"), tick().await);
        listener.registry.forget_all();
        assert!(interest.settled("me", false).is_none());
    }
}
