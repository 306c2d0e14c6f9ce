//! [`EtcdLockProvider`]: the lock protocol on etcd's leases, transactions and watches.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseGrantOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchFilterType, WatchOptions,
};
use lock_core::raw::{Backoff, Gate, LockBackend};
use lock_core::{
    validate, Capabilities, FencingToken, Health, Lease, LockError, LockInfo, LockOptions, Result,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::EtcdConfig;
use crate::keys::{Entry, Layout, Value};

const BACKEND: &str = "etcd";

/// Pause before a waiter retries after its connection to the cluster failed (a member going
/// down, a leader election): the wait goes on until its own deadline.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The etcd backend.
///
/// Each acquisition attempt grants its own lease (TTL = the lock's TTL in whole seconds,
/// at least etcd's minimum) and writes one entry attached to it; the entry with the lowest
/// create revision holds the lock and its create revision is the fencing token. A waiter
/// watches only the entry just ahead of it, so a release wakes exactly one waiter, in FIFO
/// order. See the crate documentation for the whole protocol.
///
/// ```no_run
/// # async fn demo() -> lock_core::Result<()> {
/// use std::time::Duration;
/// use lock_core::{LockOptions, LockProvider};
/// use lock_etcd::{EtcdConfig, EtcdLockProvider};
///
/// let locks = EtcdLockProvider::connect(EtcdConfig::new(["http://127.0.0.1:2379"])).await?;
/// let lease = locks.lock(&LockOptions::new("reports:daily", "worker-7").ttl(Duration::from_secs(30))).await?;
/// // ... pass lease.token (the entry's create revision) to the storage the lock protects ...
/// locks.unlock(&lease.key, &lease.owner).await?;
/// # Ok(()) }
/// ```
pub struct EtcdLockProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    layout: Layout,
    request_timeout: Duration,
    /// The open/closed state the checks layer keeps; `closed` mirrors it for the watchers
    /// that select on a `watch` channel.
    gate: Gate,
    closed: watch::Sender<bool>,
    /// Locks this provider acquired and has not released. Lets `unlock` release in one round
    /// trip, and tell "your lease was lost" ([`LockError::LeaseLost`]) from "never held".
    held: Mutex<HashMap<(String, String), Held>>,
    /// Empty leases of released locks, reused by the next acquisition with the same TTL.
    spares: Mutex<Vec<Spare>>,
}

/// Past this many remembered locks, those whose lease has surely ended are forgotten.
const MAX_REMEMBERED: usize = 4096;
/// At most this many empty leases are kept for reuse.
const MAX_SPARES: usize = 64;
/// Leases longer than this are not kept for reuse (an idle spare lives until its TTL ends).
const MAX_SPARE_TTL: i64 = 600;
/// A kept lease renewed less than this long ago (and less than a tenth of its TTL) is used
/// as it is: the lock then ends at most this much earlier than asked, and its `valid_until`
/// says so. An older one is renewed alongside the acquiring transaction.
const FRESH_SPARE: Duration = Duration::from_secs(1);

/// What this provider knows about a lock it holds: enough to release it in one round trip.
#[derive(Clone, Debug)]
struct Held {
    token: i64,
    entry: Vec<u8>,
    /// The entry's mod revision after this provider's last write to it.
    mod_revision: i64,
    lease: i64,
    depth: u32,
    /// The lease's TTL in seconds as asked for (before etcd's minimum) and as granted.
    want: i64,
    ttl: i64,
    /// When the request that last granted or renewed the lease was sent: the lease cannot
    /// end before `renewed + ttl`. `None` for a lease this provider never granted or renewed
    /// (a lock taken through another provider): it is never kept for reuse.
    renewed: Option<Instant>,
}

/// An empty lease kept for reuse.
#[derive(Debug)]
struct Spare {
    id: i64,
    want: i64,
    ttl: i64,
    renewed: Instant,
}

impl fmt::Debug for EtcdLockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLockProvider")
            .field("layout", &self.inner.layout)
            .field("closed", &*self.inner.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl EtcdLockProvider {
    /// Connects to the cluster described by `config`.
    ///
    /// Fails with [`LockError::Config`] for an unusable configuration and with
    /// [`LockError::Unavailable`] when no endpoint answers within the connect timeout.
    pub async fn connect(config: EtcdConfig) -> Result<Self> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(Duration::from_secs(5), config.request_timeout)
            // A member cut off from the leader refuses requests instead of serving a watch
            // that can never fire.
            .with_require_leader(true);
        if let Some((name, password)) = &config.user {
            options = options.with_user(name.clone(), password.clone());
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.clone());
        }
        let client =
            tokio::time::timeout(config.connect_timeout, Client::connect(&config.endpoints, Some(options)))
                .await
                .map_err(|_| {
                    LockError::unavailable(
                        BACKEND,
                        format!("no endpoint answered within {:?}", config.connect_timeout),
                    )
                })?
                .map_err(map_err)?;
        Ok(Self::with_client(client, &config))
    }

    /// A provider on an already connected client; only `config.prefix` and
    /// `config.request_timeout` are used.
    pub fn with_client(client: Client, config: &EtcdConfig) -> Self {
        EtcdLockProvider {
            inner: Arc::new(Inner {
                client,
                layout: Layout::new(&config.prefix),
                request_timeout: config.request_timeout,
                gate: Gate::new(),
                closed: watch::channel(false).0,
                held: Mutex::new(HashMap::new()),
                spares: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The underlying client (for operations this crate does not wrap).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The etcd key of the entry currently holding `key`, with the id of the lease it is
    /// attached to, if the lock is held. For tools and tests that inspect the raw state.
    pub async fn holder_entry(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
        validate::key(key)?;
        self.inner.check_open()?;
        Ok(self.inner.head(key).await?.map(|e| (e.key, e.lease)))
    }
}

/// Maps a client error: transport trouble and a cluster without leader are retryable.
fn map_err(e: etcd_client::Error) -> LockError {
    use etcd_client::Error as E;
    use tonic::Code;
    let retryable = match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
        ),
        _ => false,
    };
    if retryable {
        LockError::unavailable(BACKEND, e)
    } else {
        LockError::backend(BACKEND, e)
    }
}

/// Whole seconds for a lease: etcd's leases count in seconds, so a TTL is rounded up.
fn lease_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    secs.max(1) as i64
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// A fresh client-chosen lease id: known before the grant is sent, so an attempt cancelled
/// in any state can still be revoked by id.
fn new_lease_id() -> i64 {
    fastrand::i64(1..i64::MAX)
}

fn gets(resp: &TxnResponse) -> Vec<Vec<Entry>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().iter().map(Entry::from_kv).collect()),
            _ => None,
        })
        .collect()
}

fn revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// Resolves once the provider is closed.
async fn is_closed(closed: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the provider was dropped, as good as closed.
    let _ = closed.wait_for(|c| *c).await;
}

/// `true` for etcd's answer to a put on a lease that does not exist.
fn lease_not_found(e: &LockError) -> bool {
    matches!(e, LockError::Backend { source, .. } if source.to_string().contains("lease not found"))
}

/// A lease for one attempt: freshly granted, or a spare to be renewed before it is trusted.
#[derive(Clone, Copy, Debug)]
struct Granted {
    id: i64,
    /// TTL in seconds as asked for.
    want: i64,
    /// TTL in seconds as granted (etcd raises a TTL below its minimum).
    ttl: i64,
    /// When the grant (or last renewal) was sent: the lease cannot end before `sent + ttl`.
    sent: Instant,
    /// A kept lease to renew: the first request of the attempt renews it at the same time.
    reused: bool,
}

/// What an acquisition hands back, and how to take it back if nobody receives it.
#[derive(Debug)]
struct Acquired {
    lease: Lease,
    undo: Undo,
}

/// Taking back an acquisition (first or re-entry) releases exactly one level of its entry,
/// and only while the entry is still that acquisition (same create revision): never the
/// levels the same owner added through other calls. `at` is the entry as written.
#[derive(Debug)]
struct Undo {
    mine: Mine,
    at: Entry,
}

/// An attempt's own entry: which lock, which owner, its etcd key and, once known, its
/// create revision (the token).
#[derive(Clone, Debug)]
struct Mine {
    key: String,
    owner: String,
    entry: Vec<u8>,
    token: Option<i64>,
}

impl Mine {
    fn of(opts: &LockOptions, entry: Vec<u8>, token: i64) -> Mine {
        Mine { key: opts.key.to_string(), owner: opts.owner.to_string(), entry, token: Some(token) }
    }
}

/// What is left of an entry after one level of it was taken back.
#[derive(Debug, PartialEq, Eq)]
enum Left {
    /// It stays, with other levels (or it is another acquisition), on this lease.
    Stays(i64),
    /// It was deleted; this lease carried it.
    Deleted(i64),
    /// It was not there.
    Gone,
}

/// Why a waiter stopped waiting on its predecessor.
enum Wake {
    /// Something changed (a delete, a lost watch, a lease check): look again.
    Recheck,
    Deadline,
    Cancelled,
    Closed,
}

/// What an acquisition waits within: its wait budget, the provider's close signal and the
/// caller still listening, whichever ends first.
struct Budget<'a> {
    started: Instant,
    deadline: Instant,
    closed: watch::Receiver<bool>,
    caller: &'a mut oneshot::Sender<Result<Acquired>>,
}

impl Budget<'_> {
    fn left(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Resolves with the reason the wait must end.
    async fn ended(&mut self) -> Wake {
        tokio::select! {
            biased;
            _ = is_closed(&mut self.closed) => Wake::Closed,
            _ = self.caller.closed() => Wake::Cancelled,
            _ = tokio::time::sleep_until(self.deadline) => Wake::Deadline,
        }
    }
}

fn timeout(opts: &LockOptions, holder: String, budget: &Budget<'_>) -> LockError {
    LockError::Timeout { key: opts.key.to_string(), holder: Some(holder), waited: budget.started.elapsed() }
}

/// Takes an attempt's lease back when dropped unless disarmed: whatever path an attempt
/// leaves by, its lease (and so its entry) does not outlive it unless the attempt succeeded.
/// While the attempt's entry may exist (`mine`), it first takes back exactly that entry's own
/// level: another call of the same owner may have re-entered on it, and the lease is revoked
/// only if it does not carry those levels.
struct LeaseGuard {
    inner: Arc<Inner>,
    id: Option<i64>,
    mine: Option<Mine>,
}

impl LeaseGuard {
    fn new(inner: &Arc<Inner>, id: i64) -> Self {
        LeaseGuard { inner: inner.clone(), id: Some(id), mine: None }
    }

    fn disarm(&mut self) {
        self.id = None;
    }

    /// Takes back now and waits for the answer.
    async fn revoke(mut self) {
        if let Some(id) = self.id.take() {
            self.inner.leave(id, self.mine.take()).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        match self.mine.take() {
            None => self.inner.revoke_in_background(id),
            Some(mine) => {
                let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
                let inner = self.inner.clone();
                rt.spawn(async move { inner.leave(id, Some(mine)).await });
            }
        }
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        self.gate.check()
    }

    /// One request, bounded by the request timeout.
    async fn call<T>(&self, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => {
                Err(LockError::unavailable(BACKEND, format!("no answer within {:?}", self.request_timeout)))
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call(self.client.kv_client().txn(txn)).await
    }

    fn head_get(&self, key: &str) -> GetOptions {
        GetOptions::new()
            .with_range(self.layout.dir_end(key))
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
    }

    /// The entry holding `key`: the one with the lowest create revision.
    async fn head(&self, key: &str) -> Result<Option<Entry>> {
        let resp =
            self.call(self.client.kv_client().get(self.layout.dir(key), Some(self.head_get(key)))).await?;
        Ok(resp.kvs().first().map(Entry::from_kv))
    }

    async fn grant(self: &Arc<Self>, ttl: Duration) -> Result<Granted> {
        let want = lease_secs(ttl);
        let mut attempts = 0;
        loop {
            let id = new_lease_id();
            let sent = Instant::now();
            let mut client = self.client.lease_client();
            let grant = client.grant(want, Some(LeaseGrantOptions::new().with_id(id)));
            match tokio::time::timeout(self.request_timeout, grant).await {
                Ok(Ok(resp)) => {
                    return Ok(Granted { id: resp.id(), want, ttl: resp.ttl(), sent, reused: false })
                }
                // A random id that is taken (by somebody else's lease: never revoke it): pick
                // another.
                Ok(Err(e)) if e.to_string().contains("lease already exists") => {
                    attempts += 1;
                    if attempts > 3 {
                        return Err(map_err(e));
                    }
                }
                Ok(Err(e)) => {
                    // The grant may have been applied before the error: do not leave it.
                    self.revoke_in_background(id);
                    return Err(map_err(e));
                }
                Err(_) => {
                    self.revoke_in_background(id);
                    return Err(LockError::unavailable(
                        BACKEND,
                        format!("lease grant: no answer within {:?}", self.request_timeout),
                    ));
                }
            }
        }
    }

    async fn revoke(&self, id: i64) -> Result<()> {
        match self.call(self.client.lease_client().revoke(id)).await {
            Err(LockError::Backend { source, .. }) if source.to_string().contains("not found") => Ok(()),
            other => other.map(drop),
        }
    }

    fn revoke_in_background(self: &Arc<Self>, id: i64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let inner = self.clone();
        rt.spawn(async move {
            for attempt in 0..5u32 {
                match inner.revoke(id).await {
                    Ok(()) => return,
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(RETRY_PAUSE * (attempt + 1)).await;
                    }
                    Err(e) => {
                        tracing::warn!(lease = id, error = %e, "cannot revoke lease; it expires on its own");
                        return;
                    }
                }
            }
        });
    }

    /// One keep-alive round trip. `Ok(false)`: the lease no longer exists.
    async fn keep_alive(&self, id: i64) -> Result<bool> {
        let mut client = self.client.lease_client();
        match tokio::time::timeout(self.request_timeout, client.keep_alive(id)).await {
            Ok(Ok(_stream)) => Ok(true),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => Ok(false),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(LockError::unavailable(
                BACKEND,
                format!("lease keep-alive: no answer within {:?}", self.request_timeout),
            )),
        }
    }

    fn remember(&self, key: &str, owner: &str, held: Held) {
        let mut all = self.held.lock().unwrap();
        if all.len() >= MAX_REMEMBERED {
            // Locks that expired without an unlock: long past their lease, forget them (an
            // unlock of one then answers NotHeld rather than LeaseLost).
            let now = Instant::now();
            all.retain(|_, h| h.renewed.is_some_and(|r| r + secs(h.ttl) > now));
        }
        all.insert((key.to_string(), owner.to_string()), held);
    }

    fn recall(&self, key: &str, owner: &str) -> Option<Held> {
        self.held.lock().unwrap().get(&(key.to_string(), owner.to_string())).cloned()
    }

    /// A lease for a new attempt: a spare with the same TTL that is still young, else a new
    /// grant.
    async fn lease_for(self: &Arc<Self>, ttl: Duration) -> Result<Granted> {
        let want = lease_secs(ttl);
        loop {
            let spare = {
                let mut spares = self.spares.lock().unwrap();
                spares.iter().rposition(|s| s.want == want).map(|i| spares.swap_remove(i))
            };
            let Some(s) = spare else { break };
            let age = s.renewed.elapsed();
            if age < FRESH_SPARE.min(secs(s.ttl) / 10) {
                return Ok(Granted { id: s.id, want, ttl: s.ttl, sent: s.renewed, reused: false });
            }
            if age < secs(s.ttl) / 2 {
                return Ok(Granted { id: s.id, want, ttl: s.ttl, sent: s.renewed, reused: true });
            }
            self.revoke_in_background(s.id);
        }
        self.grant(ttl).await
    }

    /// Keeps the lease of a released lock for reuse, or revokes it.
    /// Only a lease whose last renewal this provider saw answered is kept: its age is known.
    fn park(self: &Arc<Self>, h: &Held) {
        let young = h.renewed.filter(|r| r.elapsed() < secs(h.ttl) / 2);
        if let Some(renewed) = young.filter(|_| h.ttl <= MAX_SPARE_TTL && !*self.closed.borrow()) {
            let mut spares = self.spares.lock().unwrap();
            if spares.len() < MAX_SPARES {
                spares.push(Spare { id: h.lease, want: h.want, ttl: h.ttl, renewed });
                return;
            }
        }
        self.revoke_in_background(h.lease);
    }

    /// Forgets a lock; what this provider knew about it, if it thought it held it.
    fn forget(&self, key: &str, owner: &str) -> Option<Held> {
        self.held.lock().unwrap().remove(&(key.to_string(), owner.to_string()))
    }

    // ---- taking back ---------------------------------------------------------------------

    /// Leaves an attempt with lease `lease`: takes back the attempt's own level (if its entry
    /// may exist), then revokes the lease unless the entry, with other levels, stays on it.
    /// When the outcome is unknown the lease is left to run out on its own: it may carry
    /// levels that are not this attempt's.
    async fn leave(self: &Arc<Self>, lease: i64, mine: Option<Mine>) {
        let left = match mine {
            None => Left::Gone,
            Some(m) => match self.drop_level(&m, None).await {
                Ok(left) => left,
                Err(e) => {
                    tracing::debug!(key = %m.key, lease, error = %e, "cannot take back an entry; its lease runs out on its own");
                    return;
                }
            },
        };
        match left {
            Left::Stays(l) if l == lease => return,
            Left::Deleted(l) if l != lease => self.revoke_in_background(l),
            _ => {}
        }
        if let Err(e) = self.revoke(lease).await {
            tracing::debug!(lease, error = %e, "revoke failed; retrying in the background");
            self.revoke_in_background(lease);
        }
    }

    /// Takes back one level of `m`'s entry (`at`: as last known, saving a read), compare-and-
    /// act on its mod revision, so that a level added or removed meanwhile is never lost. An
    /// entry that is another acquisition (another create revision) is left alone.
    async fn drop_level(self: &Arc<Self>, m: &Mine, mut at: Option<Entry>) -> Result<Left> {
        loop {
            let e = match at.take() {
                Some(e) => e,
                None => match self.entry(&m.entry).await? {
                    Some(e) => e,
                    None => return Ok(Left::Gone),
                },
            };
            if m.token.is_some_and(|t| t != e.create_revision) || e.value.owner != m.owner {
                return Ok(Left::Stays(e.lease));
            }
            let lower = if e.value.depth > 1 {
                let value = Value { depth: e.value.depth - 1, ..e.value.clone() };
                TxnOp::put(e.key.clone(), value.encode(), Some(PutOptions::new().with_ignore_lease()))
            } else {
                TxnOp::delete(e.key.clone(), None)
            };
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(e.key.clone(), CompareOp::Equal, e.mod_revision)])
                        .and_then([lower])
                        .or_else([TxnOp::get(e.key.clone(), None)]),
                )
                .await?;
            if !resp.succeeded() {
                match gets(&resp).pop().and_then(|mut g| g.pop()) {
                    Some(now) => at = Some(now),
                    None => return Ok(Left::Gone),
                }
                continue;
            }
            // Bookkeeping of the lock this provider remembers, if it is this acquisition.
            let mut all = self.held.lock().unwrap();
            let id = (m.key.clone(), m.owner.clone());
            if let Some(h) = all.get_mut(&id).filter(|h| h.token == e.create_revision) {
                if e.value.depth > 1 {
                    h.depth = e.value.depth - 1;
                    h.mod_revision = revision(&resp);
                    if h.lease != e.lease {
                        h.lease = e.lease;
                        h.renewed = None;
                    }
                } else {
                    all.remove(&id);
                }
            }
            return Ok(if e.value.depth > 1 { Left::Stays(e.lease) } else { Left::Deleted(e.lease) });
        }
    }

    /// The entry stored under the etcd key `entry`.
    async fn entry(&self, entry: &[u8]) -> Result<Option<Entry>> {
        let resp = self.call(self.client.kv_client().get(entry, None)).await?;
        Ok(resp.kvs().first().map(Entry::from_kv))
    }

    /// After a transaction that moves `head` (guarded by its mod revision) to the lease
    /// `target` went unanswered: was it applied? `Some`: yes (the entry as it is now).
    /// `None`: no, and it never will be: unless it was applied, a write of the unchanged value
    /// moves the mod revision on, so that the lost transaction can no longer match.
    async fn settle(&self, head: &Entry, target: i64, within: Duration) -> Result<Option<Entry>> {
        let fence = Txn::new()
            .when([Compare::mod_revision(head.key.clone(), CompareOp::Equal, head.mod_revision)])
            .and_then([TxnOp::put(
                head.key.clone(),
                head.value.encode(),
                Some(PutOptions::new().with_ignore_lease()),
            )])
            .or_else([TxnOp::get(head.key.clone(), None)]);
        let resp = match tokio::time::timeout(within, self.client.kv_client().txn(fence)).await {
            Ok(r) => r.map_err(map_err)?,
            Err(_) => return Err(LockError::unavailable(BACKEND, format!("no answer within {within:?}"))),
        };
        if resp.succeeded() {
            return Ok(None);
        }
        // Only this attempt ever put the entry on `target`.
        Ok(gets(&resp).pop().and_then(|mut g| g.pop()).filter(|e| e.lease == target))
    }

    /// [`settle`](Self::settle) in the background, with growing timeouts, for a re-entry whose
    /// caller was told it failed: a level that was added is taken back, a lease that carries
    /// nothing is revoked.
    fn settle_in_background(self: &Arc<Self>, mine: Mine, head: Entry, target: i64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let inner = self.clone();
        rt.spawn(async move {
            for attempt in 1..=6u32 {
                tokio::time::sleep(RETRY_PAUSE * attempt).await;
                match inner.settle(&head, target, inner.request_timeout * 2u32.pow(attempt)).await {
                    Ok(Some(now)) => {
                        if let Err(e) = inner.drop_level(&mine, Some(now)).await {
                            tracing::warn!(key = %mine.key, error = %e, "cannot take back an unanswered re-entry; it ends with its lease");
                        }
                        return;
                    }
                    Ok(None) => {
                        inner.revoke_in_background(target);
                        return;
                    }
                    Err(_) => {}
                }
            }
            tracing::warn!(key = %mine.key, "unanswered re-entry unresolved; its level ends with its lease");
        });
    }

    // ---- acquire -------------------------------------------------------------------------

    /// The whole acquisition, run in its own task so that a caller dropping its future
    /// cannot interrupt it between a request and the bookkeeping of its answer. `tx` tells
    /// whether anybody is still waiting for the result.
    async fn acquire(
        self: &Arc<Self>,
        opts: &LockOptions,
        tx: &mut oneshot::Sender<Result<Acquired>>,
    ) -> Result<Acquired> {
        let mut budget = Budget {
            started: Instant::now(),
            deadline: Backoff::new(&opts.wait).deadline(),
            closed: self.closed.subscribe(),
            caller: tx,
        };
        loop {
            let grant = self.lease_for(opts.ttl).await?;
            let guard = LeaseGuard::new(self, grant.id);
            if let Some(got) = self.attempt(opts, grant, guard, &mut budget).await? {
                return Ok(got);
            }
            // The attempt's lease is gone: a reused spare had expired, or the queued entry
            // vanished while waiting (its lease ran out while the cluster was unreachable).
            // Start again with a new lease, within the same deadline.
            tracing::debug!(key = %opts.key, "attempt lost its lease; starting over");
        }
    }

    /// A new acquisition with `grant`, recorded as held.
    fn fresh(&self, opts: &LockOptions, grant: &Granted, token: i64, valid_from: Instant) -> Acquired {
        let entry = self.layout.entry(&opts.key, grant.id);
        let at = Entry {
            key: entry.clone(),
            create_revision: token,
            mod_revision: token,
            lease: grant.id,
            value: Value { depth: 1, ttl: grant.ttl, owner: opts.owner.to_string() },
        };
        self.remember(
            &opts.key,
            &opts.owner,
            Held {
                token,
                entry: entry.clone(),
                mod_revision: token,
                lease: grant.id,
                depth: 1,
                want: grant.want,
                ttl: grant.ttl,
                renewed: Some(valid_from),
            },
        );
        Acquired {
            lease: Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(token as u64),
                ttl: secs(grant.ttl),
                valid_until: valid_from + secs(grant.ttl),
                depth: 1,
            },
            undo: Undo { mine: Mine::of(opts, entry, token), at },
        }
    }

    /// The attempt's entry, moved to another lease (renewed at `sent`) by another call of the
    /// same owner, recorded as held.
    fn adopt(&self, opts: &LockOptions, at: Entry, sent: Instant) -> Acquired {
        let held = Held {
            token: at.create_revision,
            entry: at.key.clone(),
            mod_revision: at.mod_revision,
            lease: at.lease,
            depth: at.value.depth,
            want: at.value.ttl,
            ttl: at.value.ttl,
            renewed: Some(sent),
        };
        self.remember(&opts.key, &opts.owner, held);
        Acquired {
            lease: Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(at.create_revision as u64),
                ttl: secs(at.value.ttl),
                valid_until: sent + secs(at.value.ttl),
                depth: at.value.depth,
            },
            undo: Undo { mine: Mine::of(opts, at.key.clone(), at.create_revision), at },
        }
    }

    /// One attempt with one lease. `Ok(None)`: the lease is gone; start over with another.
    async fn attempt(
        self: &Arc<Self>,
        opts: &LockOptions,
        mut grant: Granted,
        mut guard: LeaseGuard,
        budget: &mut Budget<'_>,
    ) -> Result<Option<Acquired>> {
        let key = &*opts.key;
        let dir = self.layout.dir(key);
        let end = self.layout.dir_end(key);
        let entry = self.layout.entry(key, grant.id);
        let value = Value { depth: 1, ttl: grant.ttl, owner: opts.owner.to_string() }.encode();
        let put = || TxnOp::put(entry.clone(), value.clone(), Some(PutOptions::new().with_lease(grant.id)));

        // Fast path: take a free lock in one transaction; otherwise learn who holds it.
        let head = loop {
            let take = Txn::new()
                .when([Compare::create_revision(dir.clone(), CompareOp::Equal, 0).with_range(end.clone())])
                .and_then([put()])
                .or_else([TxnOp::get(dir.clone(), Some(self.head_get(key)))]);
            // Until the answer says otherwise, the entry may have been written.
            guard.mine = Some(Mine {
                key: key.to_string(),
                owner: opts.owner.to_string(),
                entry: entry.clone(),
                token: None,
            });
            let resp = if grant.reused {
                // A spare is renewed in the same round trip; only a live lease is trusted.
                let sent = Instant::now();
                let (alive, resp) = tokio::join!(self.keep_alive(grant.id), self.txn(take));
                if !alive? {
                    return Ok(None);
                }
                grant.sent = sent;
                grant.reused = false;
                resp
            } else {
                self.txn(take).await
            };
            let resp = match resp {
                Err(e) if lease_not_found(&e) => {
                    guard.mine = None;
                    return Ok(None);
                }
                r => r?,
            };
            if resp.succeeded() {
                guard.disarm();
                return Ok(Some(self.fresh(opts, &grant, revision(&resp), grant.sent)));
            }
            guard.mine = None;
            match gets(&resp).pop().and_then(|mut g| g.pop()) {
                Some(head) if head.value.owner == *opts.owner => {
                    match self.reenter(opts, &head, grant, &mut guard).await {
                        Ok(Some(got)) => return Ok(Some(got)),
                        Ok(None) => continue,
                        // A kept lease that died, met when moving to it: start over.
                        Err(e) if lease_not_found(&e) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
                Some(head) => break head,
                // Emptied between the compare and the read cannot happen inside one
                // transaction; a foreign write in between just means: try again.
                None => continue,
            }
        };
        let mut holder = head.value.owner;
        if !budget.left() {
            guard.revoke().await;
            return Err(timeout(opts, holder, budget));
        }

        // Queue: the entry's create revision is its place; the newest entry before it is the
        // one to watch.
        guard.mine = Some(Mine {
            key: key.to_string(),
            owner: opts.owner.to_string(),
            entry: entry.clone(),
            token: None,
        });
        let resp = self
            .txn(
                Txn::new().and_then([
                    put(),
                    TxnOp::get(
                        dir.clone(),
                        Some(
                            GetOptions::new()
                                .with_range(end.clone())
                                .with_sort(SortTarget::Create, SortOrder::Descend)
                                .with_limit(2),
                        ),
                    ),
                ]),
            )
            .await;
        let resp = match resp {
            Err(e) if lease_not_found(&e) => {
                guard.mine = None;
                return Ok(None);
            }
            r => r?,
        };
        let mine = revision(&resp);
        // From here on, leaving takes back exactly this entry's own level: once it is the
        // oldest, another call of the same owner may re-enter on it.
        guard.mine.as_mut().expect("set above").token = Some(mine);
        let pred = gets(&resp).pop().unwrap_or_default().into_iter().find(|e| e.create_revision < mine);
        let mut watch_from = mine + 1;
        let Some(mut p) = pred else {
            // The holder left between the two transactions: ours is the oldest entry.
            guard.disarm();
            return Ok(Some(self.fresh(opts, &grant, mine, grant.sent)));
        };

        // Wait for each predecessor in turn to go away.
        loop {
            let wake = match self.wait_deleted(&p.key, watch_from, &mut grant, budget).await {
                Ok(w) => w,
                Err(e) if e.is_retryable() && budget.left() => {
                    tracing::debug!(key, error = %e, "watch failed; checking again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    Wake::Recheck
                }
                Err(e) => return Err(e),
            };
            match wake {
                Wake::Recheck => {}
                Wake::Deadline => {
                    guard.revoke().await;
                    return Err(timeout(opts, holder, budget));
                }
                Wake::Cancelled | Wake::Closed => {
                    guard.revoke().await;
                    return Err(LockError::Closed);
                }
            }
            // Who is ahead now, and is our own entry still there? Success needs our entry: a
            // waiter whose lease ran out (its entry deleted with it) must not believe it holds
            // the lock (etcd issue 11456). Unless the lease was renewed under min(1 s, TTL/10)
            // ago, it is renewed in the same round trip, restarting the TTL for the new holder
            // (and only a live lease counts).
            let check = Txn::new().and_then([
                TxnOp::get(
                    dir.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_max_create_revision(mine - 1)
                            .with_sort(SortTarget::Create, SortOrder::Descend)
                            .with_limit(1),
                    ),
                ),
                TxnOp::get(entry.clone(), None),
                TxnOp::get(dir.clone(), Some(self.head_get(key))),
            ]);
            let renew = grant.sent.elapsed() >= FRESH_SPARE.min(secs(grant.ttl) / 10);
            let sent = Instant::now();
            let (resp, alive) = if renew {
                tokio::join!(self.txn(check), self.keep_alive(grant.id))
            } else {
                (self.txn(check).await, Ok(true))
            };
            let (resp, alive) = match (resp, alive) {
                (Ok(r), Ok(a)) => (r, a),
                (Err(e), _) | (_, Err(e)) if e.is_retryable() && budget.left() => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                (Err(e), _) | (_, Err(e)) => return Err(e),
            };
            let mut results = gets(&resp).into_iter();
            let ahead = results.next().unwrap_or_default().pop();
            let ours = results.next().unwrap_or_default().pop();
            if let Some(h) = results.next().unwrap_or_default().pop() {
                holder = h.value.owner;
            }
            let Some(ours) = ours.filter(|e| e.create_revision == mine) else { return Ok(None) };
            if ours.lease != grant.id {
                // Another call of the same owner re-entered on (or refreshed) the entry once it
                // was the oldest, moving it to its own lease: it holds the lock, with that
                // lease, whose renewal is this attempt's to confirm.
                let sent = Instant::now();
                if !self.keep_alive(ours.lease).await? {
                    return Ok(None);
                }
                guard.mine = None; // `grant` carries nothing any more
                return Ok(Some(self.adopt(opts, ours, sent)));
            }
            if !alive {
                return Ok(None);
            }
            match ahead {
                Some(next) => p = next,
                None => {
                    guard.disarm();
                    let valid_from = if renew { sent } else { grant.sent };
                    return Ok(Some(self.fresh(opts, &grant, mine, valid_from)));
                }
            }
            watch_from = revision(&resp) + 1;
        }
    }

    /// Re-entry by the holder: one more level on its entry, guarded by the entry's mod
    /// revision, which moves to a lease of this attempt: `grant`, or a new one with the
    /// entry's TTL when `grant`'s is shorter (a re-entry never shortens the lock). That lease
    /// is this attempt's alone, so a transaction whose answer is lost is told applied or not
    /// by the lease the entry is on ([`settle`](Self::settle)): an error is reported only
    /// for a level that was not added, and a lease that may carry the entry is never
    /// revoked. `Ok(None)`: the entry changed meanwhile; look again.
    async fn reenter(
        self: &Arc<Self>,
        opts: &LockOptions,
        head: &Entry,
        grant: Granted,
        guard: &mut LeaseGuard,
    ) -> Result<Option<Acquired>> {
        let mut own = None;
        let target = if grant.ttl >= head.value.ttl {
            grant
        } else {
            let g = self.grant(secs(head.value.ttl)).await?;
            own = Some(LeaseGuard::new(self, g.id));
            g
        };
        let value = Value { depth: head.value.depth + 1, ttl: target.ttl, owner: head.value.owner.clone() };
        let moved = Txn::new()
            .when([Compare::mod_revision(head.key.clone(), CompareOp::Equal, head.mod_revision)])
            .and_then([TxnOp::put(
                head.key.clone(),
                value.encode(),
                Some(PutOptions::new().with_lease(target.id)),
            )]);
        let mine = Mine::of(opts, head.key.clone(), head.create_revision);
        let at = match self.txn(moved).await {
            Ok(resp) if resp.succeeded() => Entry {
                key: head.key.clone(),
                create_revision: head.create_revision,
                mod_revision: revision(&resp),
                lease: target.id,
                value,
            },
            Ok(_) => return Ok(None),
            // Refused: the lease is gone, nothing was written.
            Err(e) if lease_not_found(&e) => return Err(e),
            Err(e) => match self.settle(head, target.id, self.request_timeout).await {
                Ok(Some(now)) => now,
                Ok(None) => return Err(e),
                Err(_) => {
                    // Unknown: `target` may carry the entry now. It is not revoked; the
                    // background check takes the level back if it was added.
                    own.as_mut().unwrap_or(guard).disarm();
                    self.settle_in_background(mine, head.clone(), target.id);
                    return Err(LockError::unavailable(
                        BACKEND,
                        format!(
                            "re-entry of {:?} unanswered ({e}); a level it may have added is taken back in \
                             the background, or ends with its lease",
                            opts.key
                        ),
                    ));
                }
            },
        };
        own.as_mut().unwrap_or(guard).disarm();
        if head.lease != 0 {
            // The entry left its old lease, which now carries nothing.
            self.revoke_in_background(head.lease);
        }
        self.remember(
            &opts.key,
            &opts.owner,
            Held {
                token: head.create_revision,
                entry: head.key.clone(),
                mod_revision: at.mod_revision,
                lease: target.id,
                depth: at.value.depth,
                want: target.want,
                ttl: target.ttl,
                renewed: Some(target.sent),
            },
        );
        Ok(Some(Acquired {
            lease: Lease {
                key: opts.key.clone(),
                owner: opts.owner.clone(),
                token: FencingToken(head.create_revision as u64),
                ttl: secs(target.ttl),
                valid_until: target.sent + secs(target.ttl),
                depth: at.value.depth,
            },
            undo: Undo { mine, at },
        }))
    }

    /// Waits until the entry `key` is deleted (or something else calls for a look), keeping
    /// the waiter's own lease alive meanwhile (`grant.sent` follows the renewals).
    async fn wait_deleted(
        &self,
        key: &[u8],
        from: i64,
        grant: &mut Granted,
        budget: &mut Budget<'_>,
    ) -> Result<Wake> {
        let every = (secs(grant.ttl) / 3).max(Duration::from_millis(500));
        let mut next_keep_alive = Instant::now() + every;
        let options = WatchOptions::new().with_start_revision(from).with_filters([WatchFilterType::NoPut]);
        let mut client = self.client.watch_client();
        let mut stream = tokio::select! {
            biased;
            end = budget.ended() => return Ok(end),
            s = self.call(client.watch(key, Some(options))) => s?,
        };
        loop {
            tokio::select! {
                biased;
                end = budget.ended() => return Ok(end),
                _ = tokio::time::sleep_until(next_keep_alive) => {
                    let sent = Instant::now();
                    if !self.keep_alive(grant.id).await? {
                        return Ok(Wake::Recheck);
                    }
                    grant.sent = sent;
                    next_keep_alive = Instant::now() + every;
                }
                msg = stream.message() => match msg.map_err(map_err)? {
                    Some(resp) => {
                        let deleted = resp.events().iter().any(|e| e.event_type() == EventType::Delete);
                        // A cancelled watch (compaction, server shutdown) also ends the wait.
                        if deleted || resp.canceled() {
                            return Ok(Wake::Recheck);
                        }
                    }
                    None => return Ok(Wake::Recheck),
                },
            }
        }
    }

    /// Takes back an acquisition nobody received: exactly its one level.
    async fn undo(self: &Arc<Self>, undo: Undo) {
        match self.drop_level(&undo.mine, Some(undo.at)).await {
            Ok(Left::Deleted(lease)) => self.revoke_in_background(lease),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(key = %undo.mine.key, error = %e, "cannot take back an unreceived acquisition; it ends with its lease")
            }
        }
    }

    // ---- release and refresh -------------------------------------------------------------

    /// One level of `key` held by `owner` (and carrying `token`, when given).
    async fn release(self: &Arc<Self>, key: &str, owner: &str, token: Option<i64>) -> Result<()> {
        let lower = |c: &Held| {
            if c.depth > 1 {
                let value = Value { depth: c.depth - 1, ttl: c.ttl, owner: owner.to_string() };
                TxnOp::put(c.entry.clone(), value.encode(), Some(PutOptions::new().with_ignore_lease()))
            } else {
                TxnOp::delete(c.entry.clone(), None)
            }
        };
        // Fast path: the entry exactly as this provider last wrote it, released in one round
        // trip; if it changed, the same transaction reads who holds the lock now.
        let mut seen = None;
        if let Some(c) = self.recall(key, owner).filter(|c| token.map_or(true, |t| t == c.token)) {
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(c.entry.clone(), CompareOp::Equal, c.mod_revision)])
                        .and_then([lower(&c)])
                        .or_else([TxnOp::get(self.layout.dir(key), Some(self.head_get(key)))]),
                )
                .await?;
            if resp.succeeded() {
                self.lowered(key, owner, &c, revision(&resp));
                return Ok(());
            }
            seen = Some(gets(&resp).pop().and_then(|mut g| g.pop()));
        }
        loop {
            let head = match seen.take() {
                Some(head) => head,
                None => self.head(key).await?,
            };
            let Some(h) = head else {
                return Err(if self.forget(key, owner).is_some() {
                    LockError::LeaseLost { key: key.to_string() }
                } else {
                    LockError::NotHeld { key: key.to_string() }
                });
            };
            if h.value.owner != owner || token.is_some_and(|t| t != h.create_revision) {
                self.forget(key, owner);
                return Err(LockError::NotOwner { key: key.to_string(), holder: Some(h.value.owner) });
            }
            let known =
                self.recall(key, owner).filter(|c| c.token == h.create_revision && c.lease == h.lease);
            let c = match known {
                Some(c) => Held { mod_revision: h.mod_revision, depth: h.value.depth, ..c },
                None => Held {
                    token: h.create_revision,
                    entry: h.key.clone(),
                    mod_revision: h.mod_revision,
                    lease: h.lease,
                    depth: h.value.depth,
                    want: h.value.ttl,
                    ttl: h.value.ttl,
                    // Never renewed by this provider: its age is unknown.
                    renewed: None,
                },
            };
            let resp = self
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(h.key.clone(), CompareOp::Equal, h.mod_revision)])
                        .and_then([lower(&c)]),
                )
                .await?;
            if resp.succeeded() {
                // A lock taken elsewhere (`!is_known`) has a lease of unknown age: `park`
                // revokes it rather than keeping it for reuse.
                self.lowered(key, owner, &c, revision(&resp));
                return Ok(());
            }
        }
    }

    /// Bookkeeping after one level of `c` was released at `revision`.
    fn lowered(self: &Arc<Self>, key: &str, owner: &str, c: &Held, revision: i64) {
        if c.depth > 1 {
            let next = Held { depth: c.depth - 1, mod_revision: revision, ..c.clone() };
            self.remember(key, owner, next);
        } else {
            self.forget(key, owner);
            // The entry is gone; its lease holds nothing any more.
            self.park(c);
        }
    }

    async fn refresh(self: &Arc<Self>, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        let lost = || LockError::LeaseLost { key: key.to_string() };
        let want = lease_secs(ttl);
        loop {
            let Some(h) = self.head(key).await?.filter(|h| h.value.owner == owner) else {
                self.forget(key, owner);
                return Err(lost());
            };
            let lease = |ttl: i64, valid_from: Instant| Lease {
                key: key.into(),
                owner: owner.into(),
                token: FencingToken(h.create_revision as u64),
                ttl: secs(ttl),
                valid_until: valid_from + secs(ttl),
                depth: h.value.depth,
            };
            // Remember the entry as it is now, so that `unlock` takes the fast path.
            let note = |lease: i64, want: i64, ttl: i64, mod_revision: i64, renewed: Instant| {
                let held = Held {
                    token: h.create_revision,
                    entry: h.key.clone(),
                    mod_revision,
                    lease,
                    depth: h.value.depth,
                    want,
                    ttl,
                    renewed: Some(renewed),
                };
                self.remember(key, owner, held);
            };
            if want == h.value.ttl {
                // Same TTL: a keep-alive restarts the lease.
                let sent = Instant::now();
                if self.keep_alive(h.lease).await? {
                    note(h.lease, want, h.value.ttl, h.mod_revision, sent);
                    return Ok(lease(h.value.ttl, sent));
                }
                continue; // gone: the next read says so
            }
            // A lease's TTL is fixed at grant: move the entry to a new lease. The entry keeps
            // its key and create revision, so the token and the queue order stay.
            let grant = self.grant(ttl).await?;
            let mut guard = LeaseGuard::new(self, grant.id);
            if grant.ttl == h.value.ttl {
                // etcd raised the TTL to what the entry already has.
                drop(guard);
                let sent = Instant::now();
                if self.keep_alive(h.lease).await? {
                    note(h.lease, want, h.value.ttl, h.mod_revision, sent);
                    return Ok(lease(h.value.ttl, sent));
                }
                continue;
            }
            let value = Value { ttl: grant.ttl, ..h.value.clone() };
            let moved = Txn::new()
                .when([Compare::mod_revision(h.key.clone(), CompareOp::Equal, h.mod_revision)])
                .and_then([TxnOp::put(
                    h.key.clone(),
                    value.encode(),
                    Some(PutOptions::new().with_lease(grant.id)),
                )]);
            let mod_revision = match self.txn(moved).await {
                Ok(resp) if resp.succeeded() => revision(&resp),
                Ok(_) => continue,
                Err(e) if lease_not_found(&e) => return Err(e),
                // Unanswered: the new lease may carry the entry now; it is revoked only once
                // it is known not to (and never will).
                Err(e) => match self.settle(&h, grant.id, self.request_timeout).await {
                    Ok(Some(now)) => now.mod_revision,
                    Ok(None) => return Err(e),
                    Err(_) => {
                        guard.disarm();
                        return Err(e);
                    }
                },
            };
            guard.disarm();
            // The entry left its old lease, which now carries nothing.
            self.revoke_in_background(h.lease);
            note(grant.id, grant.want, grant.ttl, mod_revision, grant.sent);
            return Ok(lease(grant.ttl, grant.sent));
        }
    }

    // ---- inspection ----------------------------------------------------------------------

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
        Ok(Some(LockInfo {
            key,
            owner: h.value.owner,
            token: FencingToken(h.create_revision as u64),
            remaining_ttl: secs(remaining),
            depth: h.value.depth,
        }))
    }
}

/// The caller's side of an acquisition: if the caller's future is dropped, an acquisition
/// that completed but was never received is taken back.
struct Pending {
    rx: Option<oneshot::Receiver<Result<Acquired>>>,
    inner: Arc<Inner>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // After `close`, a send either already happened (and the value is here) or fails,
        // in which case the acquiring task undoes it itself.
        rx.close();
        if let Ok(Ok(got)) = rx.try_recv() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let inner = self.inner.clone();
                rt.spawn(async move { inner.undo(got.undo).await });
            }
        }
    }
}

#[async_trait]
impl LockBackend for EtcdLockProvider {
    const NAME: &'static str = BACKEND;

    fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    fn command_timeout(&self) -> Option<Duration> {
        Some(self.inner.request_timeout)
    }

    fn promises(&self) -> Capabilities {
        Capabilities {
            reentrant: true,
            fencing: true,
            wakes_waiters: true,
            fifo: true,
            distributed: true,
            server_clock: true,
            durable: true,
        }
    }

    async fn acquire(&self, opts: &LockOptions) -> Result<Lease> {
        let (mut tx, rx) = oneshot::channel();
        let (inner, task_opts) = (self.inner.clone(), opts.clone());
        tokio::spawn(async move {
            let result = inner.acquire(&task_opts, &mut tx).await;
            if let Err(Ok(unreceived)) = tx.send(result) {
                inner.undo(unreceived.undo).await;
            }
        });
        let mut pending = Pending { rx: Some(rx), inner: self.inner.clone() };
        let result = pending.rx.as_mut().expect("receiver present until received").await;
        pending.rx = None;
        match result {
            Ok(r) => r.map(|got| got.lease),
            Err(_) => Err(LockError::backend(BACKEND, "the acquiring task ended without an answer")),
        }
    }

    async fn release(&self, key: &str, owner: &str) -> Result<()> {
        self.inner.release(key, owner, None).await
    }

    async fn extend(&self, key: &str, owner: &str, ttl: Duration) -> Result<Lease> {
        self.inner.refresh(key, owner, ttl).await
    }

    async fn holder(&self, key: &str) -> Result<Option<LockInfo>> {
        match self.inner.head(key).await? {
            Some(h) => self.inner.info(key.to_string(), h).await,
            None => Ok(None),
        }
    }

    async fn held(&self, prefix: &str) -> Result<Vec<LockInfo>> {
        let layout = &self.inner.layout;
        let resp = self
            .inner
            .call(
                self.inner
                    .client
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
            let inner = self.inner.clone();
            tasks.spawn(async move { (i, inner.info(key, h).await) });
        }
        let mut found = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (i, info) = done.map_err(|e| LockError::backend(BACKEND, e))?;
            if let Some(info) = info? {
                found.push((i, info));
            }
        }
        found.sort_by_key(|(i, _)| *i);
        Ok(found.into_iter().map(|(_, info)| info).collect())
    }

    async fn probe(&self) -> Result<Health> {
        let started = Instant::now();
        let status = self.inner.call(self.inner.client.maintenance_client().status()).await?;
        let latency = started.elapsed();
        let member = status.header().map_or(0, |h| h.member_id());
        Ok(Health {
            backend: BACKEND,
            latency,
            detail: format!(
                "etcd {} (member {member:x}, leader {:x}, raft term {})",
                status.version(),
                status.leader(),
                status.raft_term()
            ),
        })
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        let spares = std::mem::take(&mut *self.inner.spares.lock().unwrap());
        for s in spares {
            self.inner.revoke_in_background(s.id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_secs(Duration::from_millis(1500)), 2);
        assert_eq!(lease_secs(Duration::from_secs(30)), 30);
        assert!(new_lease_id() > 0);
    }

    #[test]
    fn transport_trouble_is_retryable_and_server_refusals_are_not() {
        let e = map_err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader")));
        assert!(e.is_retryable() && e.is_system());
        let e = map_err(etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no")));
        assert!(!e.is_retryable() && e.is_system());
    }
}
