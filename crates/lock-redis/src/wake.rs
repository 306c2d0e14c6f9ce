//! Release wake-ups over pub/sub: one subscriber connection per provider, one channel per key
//! that local callers are waiting for.
//!
//! A `lock` call that may wait registers an [`Interest`] in its key (a reference count per key).
//! When an attempt finds the key busy, the key's channel is subscribed (once for all local
//! waiters of that key) before the caller goes to sleep, and an attempt is made again right
//! after the subscription is confirmed so that a release in between is not missed. The release
//! script publishes on the channel when a lock becomes free; the message wakes **one** local
//! waiter ([`Notify::notify_one`]), which tries at once, so a release does not start a herd.
//! When the last local waiter of a key is gone, the channel is unsubscribed.
//!
//! Subscribe and unsubscribe commands go through one task in the order they were asked for,
//! so an unsubscribe of a key nobody waits for can never overtake the subscribe of a new
//! waiter. A lost message (a reconnect, a full buffer) only costs latency: the wait loop's
//! timer still fires. After a reconnect fred subscribes the channels again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::{mpsc, oneshot, Notify, OnceCell};

/// One key's local waiters.
#[derive(Debug)]
struct Entry {
    /// Local `lock` calls currently interested in the key.
    refs: usize,
    notify: Arc<Notify>,
    sub: Arc<Subscription>,
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
    entries: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The provider's wake-up machinery: a subscriber connection, created on first need.
pub(crate) struct Wakers {
    registry: Arc<Registry>,
    commands: OnceCell<mpsc::UnboundedSender<Command>>,
    make_subscriber: Box<dyn Fn() -> SubscriberClient + Send + Sync>,
}

impl std::fmt::Debug for Wakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakers")
            .field("keys", &self.registry.entries().len())
            .field("connected", &self.commands.initialized())
            .finish()
    }
}

impl Wakers {
    /// Wake-ups whose subscriber connection is built by `make_subscriber` when first needed.
    pub(crate) fn new(make_subscriber: impl Fn() -> SubscriberClient + Send + Sync + 'static) -> Self {
        Wakers {
            registry: Arc::default(),
            commands: OnceCell::new(),
            make_subscriber: Box::new(make_subscriber),
        }
    }

    /// Registers a local caller's interest in `channel` for as long as the returned value lives.
    pub(crate) fn interest(self: &Arc<Self>, channel: &str) -> Interest {
        let mut entries = self.registry.entries();
        let e = entries.entry(channel.to_owned()).or_insert_with(|| Entry {
            refs: 0,
            notify: Arc::new(Notify::new()),
            sub: Arc::default(),
        });
        e.refs += 1;
        Interest {
            wakers: self.clone(),
            channel: channel.to_owned(),
            notify: e.notify.clone(),
            sub: e.sub.clone(),
        }
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
                let subscriber = (self.make_subscriber)();
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
    let dispatcher = tokio::spawn(dispatch(subscriber.message_rx(), registry));
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
async fn dispatch(mut rx: tokio::sync::broadcast::Receiver<fred::types::Message>, registry: Arc<Registry>) {
    loop {
        match rx.recv().await {
            Ok(msg) => {
                if let Some(e) = registry.entries().get(&*msg.channel) {
                    e.notify.notify_one();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Messages were dropped: wake one waiter of every key rather than guess.
                for e in registry.entries().values() {
                    e.notify.notify_one();
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// A local caller's interest in one key's releases.
#[derive(Debug)]
pub(crate) struct Interest {
    wakers: Arc<Wakers>,
    channel: String,
    notify: Arc<Notify>,
    sub: Arc<Subscription>,
}

impl Interest {
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
                let Some(tx) = self.wakers.sender().await else { return false };
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
        let mut entries = self.wakers.registry.entries();
        let Some(e) = entries.get_mut(&self.channel) else { return };
        e.refs -= 1;
        if e.refs > 0 {
            return;
        }
        let e = entries.remove(&self.channel).expect("present");
        drop(entries);
        // Only a channel that was subscribed needs unsubscribing. The request is queued
        // behind the subscribe, so the order on the connection is right.
        if e.sub.requested.load(Ordering::Acquire) {
            if let Some(tx) = self.wakers.commands.get() {
                let _ = tx.send(Command::Unsubscribe(std::mem::take(&mut self.channel)));
            }
        }
    }
}
