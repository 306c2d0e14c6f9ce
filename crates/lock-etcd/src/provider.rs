//! [`EtcdLockProvider`] and the state its operations share: the connection, the key layout,
//! the close signal and the bookkeeping of held locks and kept leases; plus the bounded
//! requests every other module builds on.
//!
//! The protocol itself lives beside this module, one part each: `acquire` (taking a lock,
//! FIFO queueing), `queue` (waiting for the predecessor), `reenter`, `release` (unlock and
//! refresh), `takeback` (undoing what a cancelled or unanswered call may have written),
//! `leases` and `held` (what this provider keeps between calls), `inspect`, and `backend`
//! (the [`LockBackend`](lock_core::raw::LockBackend) impl, delegating here).
//!
//! Every request to the cluster goes through [`Inner::call`], bounded by the request timeout:
//! a request without an answer in time fails with a retryable
//! [`Unavailable`](LockError::Unavailable), its outcome unknown.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, GetOptions, SortOrder, SortTarget, Txn, TxnOpResponse, TxnResponse};
use lock_core::raw::{Gate, Inflight};
use lock_core::{validate, LockError, Result};
use tokio::sync::watch;

use crate::config::EtcdConfig;
use crate::error::{map_err, no_answer, NAME};
use crate::held::HeldEntry;
use crate::keys::{Entry, Layout};
use crate::leases::Spare;

/// Pause before a waiter retries after its connection to the cluster failed (a member going
/// down, a leader election): the wait goes on until its own deadline.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(200);

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
    pub(crate) inner: Arc<Inner>,
}

/// The state shared by a provider's operations and the tasks they spawn.
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) layout: Layout,
    pub(crate) request_timeout: Duration,
    /// The open/closed state the checks layer keeps; `closed` mirrors it for the watchers
    /// that select on a `watch` channel.
    pub(crate) gate: Gate,
    /// `true` once the provider is closed.
    pub(crate) closed: watch::Sender<bool>,
    /// Locks this provider acquired and has not released. Lets `unlock` release in one round
    /// trip, and tell "your lease was lost" ([`LockError::LeaseLost`]) from "never held".
    pub(crate) held: Mutex<HashMap<(String, String), HeldEntry>>,
    /// Empty leases of released locks, reused by the next acquisition with the same TTL.
    pub(crate) spares: Mutex<Vec<Spare>>,
    /// The lease of each wait this provider published, by wait id.
    pub(crate) wait_leases: Mutex<HashMap<u64, i64>>,
    /// Work under way in tasks of its own: acquisitions, take-backs of what a caller who left
    /// was granted, lease revocations. `close` lets it finish (boundedly) so that a closed
    /// provider leaves no entry behind to wait for its lease.
    pub(crate) inflight: Inflight,
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
        let options = config.connect_options()?;
        let client =
            tokio::time::timeout(config.connect_timeout, Client::connect(&config.endpoints, Some(options)))
                .await
                .map_err(|_| {
                    LockError::unavailable(
                        NAME,
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
                inflight: Inflight::new(),
                held: Mutex::new(HashMap::new()),
                spares: Mutex::new(Vec::new()),
                wait_leases: Mutex::new(HashMap::new()),
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

/// The results of a transaction's reads, in order.
pub(crate) fn gets(resp: &TxnResponse) -> Vec<Vec<Entry>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().iter().map(Entry::from_kv).collect()),
            _ => None,
        })
        .collect()
}

/// The cluster's revision after a transaction: the mod revision of what it wrote.
pub(crate) fn revision(resp: &TxnResponse) -> i64 {
    resp.header().map_or(0, |h| h.revision())
}

/// Resolves once the provider is closed.
pub(crate) async fn is_closed(closed: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the provider was dropped, as good as closed.
    let _ = closed.wait_for(|c| *c).await;
}

impl Inner {
    /// [`LockError::Closed`] once the provider is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        self.gate.check()
    }

    /// One request, bounded by the request timeout.
    pub(crate) async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r.map_err(map_err),
            Err(_) => Err(no_answer(None, self.request_timeout)),
        }
    }

    /// One transaction, bounded by the request timeout.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.call(self.client.kv_client().txn(txn)).await
    }

    /// Read options for the oldest entry of `key` (its holder), starting at its `dir`.
    pub(crate) fn head_get(&self, key: &str) -> GetOptions {
        GetOptions::new()
            .with_range(self.layout.dir_end(key))
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
    }

    /// The entry holding `key`: the one with the lowest create revision.
    pub(crate) async fn head(&self, key: &str) -> Result<Option<Entry>> {
        let resp =
            self.call(self.client.kv_client().get(self.layout.dir(key), Some(self.head_get(key)))).await?;
        Ok(resp.kvs().first().map(Entry::from_kv))
    }
    /// The entry stored under the etcd key `entry`.
    pub(crate) async fn entry(&self, entry: &[u8]) -> Result<Option<Entry>> {
        let resp = self.call(self.client.kv_client().get(entry, None)).await?;
        Ok(resp.kvs().first().map(Entry::from_kv))
    }
}
