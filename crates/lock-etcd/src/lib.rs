//! # lock-etcd
//!
//! The etcd backend of [distlock](https://docs.rs/distlock), on the `etcd-client` crate.
//! Applications normally use it through the facade (feature `etcd`).
//!
//! ## Protocol
//!
//! - **One lease per attempt.** `lock` grants a lease with the lock's TTL (rounded up to whole
//!   seconds, at least etcd's minimum lease TTL, 2 s with default election settings) under a
//!   lease id chosen by the client, and writes an *entry* `<prefix><key> NUL <lease id hex>`
//!   attached to it, whose value records depth, granted TTL and owner. Expiry is etcd's:
//!   when the lease runs out, etcd deletes the entry.
//! - **Holder = oldest entry.** The entry with the lowest create revision in the lock's
//!   range holds the lock. A free lock is taken in one transaction ("if the range is empty,
//!   put"); otherwise the attempt queues by putting its entry.
//! - **FIFO by revision, no herd.** A waiter watches only the newest entry older than its own
//!   (its predecessor), for a delete; then it looks again (the predecessor may have been a
//!   waiter that gave up). While waiting it keeps its own lease alive. When nothing is
//!   ahead, it checks that its entry still exists and renews its lease before reporting
//!   success, so an attempt whose lease ran out while waiting never believes it holds the
//!   lock (the lesson of etcd issue 11456).
//! - **Fencing token = create revision** of the holder's entry: cluster-wide monotonic, so
//!   strictly increasing per key and never reused.
//! - **Re-entry** by the same owner bumps the depth on the holder's entry in a transaction
//!   guarded by its mod revision, moving the entry to the attempt's own lease (with the
//!   longer of the two TTLs). That lease is known only to the attempt, so a transaction whose
//!   answer is lost is settled by a write of the unchanged value on the old mod revision:
//!   either the entry is on the new lease (the level was added) or the lost transaction can
//!   no longer apply. An error is reported only for a level that was not added; when even
//!   that cannot be settled, the error says so and a background check takes the level back
//!   (else it ends with its lease). `unlock` decrements or deletes the entry the same way.
//! - **Refresh.** Same TTL: a keep-alive. Another TTL (a lease's TTL is fixed at grant): a new
//!   lease, then a transaction guarded by the entry's mod revision re-puts the entry under
//!   it; the entry keeps its key and create revision, so the token and queue order stay; the
//!   old lease is revoked. A lease that is gone (expired, revoked) gives
//!   [`LeaseLost`](lock_core::LockError::LeaseLost).
//! - **Round trips.** `unlock` compares the entry's mod revision as this provider last wrote
//!   it and deletes it in one transaction (falling back to a read when it changed). The empty
//!   lease of a released lock is kept (up to 64, TTL up to 10 min, while younger than half its
//!   TTL) and reused by the next acquisition with the same TTL: an uncontended `lock` +
//!   `unlock` costs two writes, like a bare put-if-absent and delete. A kept lease renewed
//!   less than min(1 s, TTL/10) ago is used as it is (the lock then ends that much earlier
//!   than asked, and `Lease::valid_until` says so); an older one is renewed by a keep-alive
//!   sent alongside the acquiring transaction. A kept lease that died is never trusted: the
//!   keep-alive or the put says so and the attempt starts over with a new grant.
//! - **Cancel safety.** The acquisition runs in its own task. A dropped or timed-out caller,
//!   and an acquisition nobody received, take back exactly one level of their own entry
//!   (compare on its create and mod revisions): another call of the same owner may have
//!   re-entered on it. A lease is revoked only once it is known to carry no entry; a lease
//!   whose contents are unknown is left to run out. A lease is kept for reuse only if this
//!   provider saw its last grant or renewal answered: `Lease::valid_until` is always the send
//!   time of that request plus the TTL.
//!
//! See `docs/etcd.md` in the repository for failover behaviour and measurements.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> lock_core::Result<()> {
//! use std::time::Duration;
//! use lock_core::{LockOptions, LockProvider};
//! use lock_etcd::{EtcdConfig, EtcdLockProvider};
//!
//! let locks = EtcdLockProvider::connect(EtcdConfig::new(["http://127.0.0.1:2379"])).await?;
//! let lease = locks.lock(&LockOptions::new("jobs:nightly", "worker-1").ttl(Duration::from_secs(30))).await?;
//! // The token is the entry's create revision: pass it to the storage the lock protects.
//! locks.unlock(&lease.key, &lease.owner).await?;
//! # Ok(()) }
//! ```

//!
//! ## Modules
//!
//! | module | holds |
//! |---|---|
//! | `config` | [`EtcdConfig`]: the settings and their defaults |
//! | `keys` | the key layout: where a lock's entries live, what an entry's value says |
//! | `provider` | [`EtcdLockProvider`], its shared state, connecting, bounded requests |
//! | `error` | etcd-client errors as [`LockError`](lock_core::LockError)s |
//! | `leases` | lease grant, keep-alive, revocation, kept leases for reuse |
//! | `held` | what a provider remembers of the locks it holds |
//! | `acquire` | the acquisition task, the free-lock fast path, joining the queue |
//! | `queue` | the FIFO wait on the predecessor |
//! | `reenter` | re-entry by the holder's owner |
//! | `release` | unlock and refresh |
//! | `takeback` | undoing what a cancelled or unanswered call may have written |
//! | `inspect` | `is_locked`, `list`, `health` |
//! | `backend` | the [`LockBackend`](lock_core::raw::LockBackend) impl, delegating to the above |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod acquire;
mod backend;
mod config;
mod error;
mod held;
mod inspect;
mod keys;
mod leases;
mod provider;
mod queue;
mod reenter;
mod release;
mod takeback;
mod waits;

pub use config::TlsFiles;
pub use config::{
    EtcdConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_ENDPOINT, DEFAULT_KEEP_ALIVE_INTERVAL, DEFAULT_PREFIX,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use provider::EtcdLockProvider;

/// The client crate, re-exported so that callers name the same version.
pub use etcd_client;
