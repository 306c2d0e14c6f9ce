//! # lock-memory
//!
//! The in-process backend of distlock: for tests, single-node deployments and as the
//! embedded default of the demo. Use it through the `distlock` facade (feature `memory`, on by
//! default).
//!
//! It keeps every promise of the [`LockProvider`](lock_core::LockProvider) contract:
//! - **TTL** per lease, judged by the process's (tokio) clock; tests can pause and advance it.
//! - **Reentrant** by owner: depth counted, each `lock` needs its `unlock`.
//! - **Fencing tokens** strictly increasing and never reused: they come from one counter
//!   shared by all keys, so they also survive release, expiry and cleanup of a key.
//! - **FIFO hand-over**: a release (or an expiry) grants the lock directly to the longest
//!   waiting caller and wakes only that one; nobody polls. The wait policy of
//!   [`LockOptions`](lock_core::LockOptions) sets how long a caller stays in the queue
//!   ([`Backoff::deadline`](lock_core::raw::Backoff::deadline)).
//! - **Cancel safe**: dropping a waiting `lock` future removes it from the queue, and a lock
//!   handed to it at that very moment is passed on to the next waiter.
//! - **Cleanup** of expired leases lazily on every touch of a key, plus a background reaper
//!   (when created inside a tokio runtime); [`MemoryLockProvider::expired_cleaned`] counts them.
//! - **No global lock**: keys are spread over independently locked shards.
//! - **Published waits** (for [deadlock detection](lock_core::deadlock)) in a map beside the
//!   table, expiring with their TTL on the same clock.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> lock_core::Result<()> {
//! use lock_core::{LockOptions, LockProvider};
//! use lock_memory::MemoryLockProvider;
//!
//! let locks = MemoryLockProvider::new();
//! let lease = locks.lock(&LockOptions::new("jobs:nightly", "worker-1")).await?;
//! assert_eq!(locks.is_locked("jobs:nightly").await?.unwrap().owner, "worker-1");
//! locks.unlock(&lease.key, &lease.owner).await?;
//! # Ok(()) }
//! ```

mod backend;
mod config;
mod provider;
mod table;
mod waits;

pub use config::MemoryConfig;
pub use provider::{MemoryLockProvider, MemoryLockProviderBuilder};
