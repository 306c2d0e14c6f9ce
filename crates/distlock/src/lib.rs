//! # distlock
//!
//! Distributed locks with one API over several backends. Business code holds an
//! `Arc<dyn LockProvider>` and never names the backend; switching from the in-memory backend
//! in tests to a server backend in production is a configuration change.
//!
//! | feature | backend | crate |
//! |---|---|---|
//! | `memory` (default) | in-process | `memory` (`lock-memory`) |
//! | `mysql` | MySQL / MariaDB table, on sqlx | `mysql` (`lock-mysql`) |
//! | `redis` | Redis: single node, cluster, Redlock | `redis` (`lock-redis`) |
//! | `etcd` | etcd v3 (leases, revisions, watch) | `etcd` (`lock-etcd`) |
//! | `all-backends` | every backend above | |
//!
//! Every backend passes the same conformance suite (`lock-testkit`) and keeps the same
//! rules: fencing tokens, owner-checked release and refresh, input checked before any server
//! is touched, and a [`LockError`] that tells a lock timeout apart from a system error.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> distlock::Result<()> {
//! use std::{sync::Arc, time::Duration};
//! use distlock::{LockOptions, LockProvider, WaitPolicy};
//!
//! let locks: Arc<dyn LockProvider> = Arc::new(distlock::memory::MemoryLockProvider::new());
//! let lease = locks
//!     .lock(&LockOptions::new("workflow:execution:42", "worker-1")
//!         .ttl(Duration::from_secs(60))
//!         .wait(WaitPolicy::deadline(Duration::from_secs(5))))
//!     .await?;
//! // Hand lease.token to the storage the lock protects; it rejects stale writers.
//! locks.unlock(&lease.key, &lease.owner).await?;
//! # Ok(()) }
//! ```

pub use lock_core::*;

pub mod config;
pub mod factory;
pub mod manager;

pub use config::{EtcdConfig, LockConfig, LockProviderType, MySqlConfig, PostgresConfig, RedisConfig};
pub use factory::{Db, LockProviderFactory};
pub use manager::LockManager;

/// The in-process backend (feature `memory`).
#[cfg(feature = "memory")]
pub mod memory {
    pub use lock_memory::*;
}

/// The MySQL / MariaDB backend (feature `mysql`).
#[cfg(feature = "mysql")]
pub mod mysql {
    pub use lock_mysql::*;
}

/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use lock_postgres::*;
}

/// The etcd backend (feature `etcd`).
#[cfg(feature = "etcd")]
pub mod etcd {
    pub use lock_etcd::*;
}

/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use lock_redis::*;
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
