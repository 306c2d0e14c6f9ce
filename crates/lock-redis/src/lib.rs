//! # lock-redis
//!
//! The Redis backend of distlock, on [fred](https://docs.rs/fred). Use it through the
//! `distlock` facade (feature `redis`).
//!
//! - **One round trip per operation.** Acquire (including re-entry and the fencing token),
//!   release and refresh are Lua scripts, loaded once and called by digest (`EVALSHA`); a
//!   server that lost its script cache gets them again on `NOSCRIPT`.
//! - **Server clock.** A lease is the lock key's `PEXPIRE`; a busy answer carries the
//!   holder's `PTTL`, so a waiter tries again right when the lease runs out.
//! - **Owner-checked.** Release and refresh compare the owner inside the script: a stale
//!   holder can never delete or extend somebody else's lock.
//! - **Fencing tokens** from a per-key counter that never expires, raised to at least the
//!   server's time in microseconds, so tokens keep increasing even after the counter is lost.
//! - **Reentrant** by owner: depth counted, each `lock` needs its `unlock`.
//! - **Wake-ups over pub/sub.** A release publishes on the key's channel; the provider's single
//!   subscriber connection (subscribed to the keys its callers wait for) wakes one local waiter.
//! - **Cancel safe.** The caller polls each attempt in place; if it stops waiting while the
//!   request is on the wire, the rest of the request finishes in a task of its own and a lock
//!   granted meanwhile is given back (matched by owner and token).
//! - **Any key.** Keys with `{`, `}`, `*`, `?`, `[`, spaces or any UTF-8 are plain keys: the
//!   layout escapes braces so the lock and its counter always share a cluster slot, and `list`
//!   escapes glob characters in its `SCAN MATCH`.
//! - **Three deployments** ([`RedisMode`]): one server; a Redis Cluster (`redis-cluster://`
//!   URL; every script touches one slot); or Redlock over independent masters, where a lock
//!   is held when a majority granted it within its validity time (TTL minus the time the round
//!   took minus clock drift) and is given back on every master otherwise.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> lock_core::Result<()> {
//! use std::time::Duration;
//! use lock_core::{LockOptions, LockProvider, WaitPolicy};
//! use lock_redis::{RedisConfig, RedisLockProvider};
//!
//! let locks = RedisLockProvider::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! let lease = locks
//!     .lock(&LockOptions::new("jobs:nightly", "worker-1")
//!         .ttl(Duration::from_secs(30))
//!         .wait(WaitPolicy::deadline(Duration::from_secs(5))))
//!     .await?;
//! // ... pass lease.token along with every write the lock protects ...
//! locks.unlock(&lease.key, &lease.owner).await?;
//! locks.close().await?;
//! # Ok(()) }
//! ```
//!
//! See `docs/redis.md` in the repository for the key layout, the scripts and what each mode
//! guarantees.
//!
//! | module | holds |
//! |---|---|
//! | `config` | [`RedisConfig`] and [`RedisMode`], every setting and default |
//! | `provider` | [`RedisLockProvider`], its shared state, connecting, the acquire request that outlives a caller who leaves |
//! | `backend` | `impl LockBackend`: the hooks, one script round trip each |
//! | `deployment` | one server (or cluster) vs. a Redlock quorum: who is asked, how answers combine, take-backs of failed rounds |
//! | `node` | one connection pool, the scripts' calls and answers, error mapping |
//! | `scripts` | the Lua scripts |
//! | `keys` | the key layout (hash tags, escaping, scan patterns) |
//! | `wake` | the release listener: pub/sub wake-ups and what the provider knows of a key while it waits |

mod backend;
mod config;
mod deployment;
mod keys;
mod node;
mod provider;
mod scripts;
#[cfg(feature = "tls")]
mod tls;
mod waits;
mod wake;

pub use config::{
    RedisConfig, RedisMode, DEFAULT_CLOCK_DRIFT_FACTOR, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FENCE_IDLE, DEFAULT_KEY_PREFIX, DEFAULT_POOL_SIZE, FENCE_IDLE_RANGE, MAX_PREFIX_LEN,
};
pub use provider::RedisLockProvider;

/// The backend's name, as reported by `LockProvider::name`.
pub const NAME: &str = "redis";
