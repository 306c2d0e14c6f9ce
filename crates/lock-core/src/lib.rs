//! # lock-core
//!
//! The contracts of [distlock](https://docs.rs/distlock): the [`LockProvider`] trait every
//! backend implements, the [`LockOptions`] a caller passes, the [`Lease`] it gets back (with its
//! [`FencingToken`]), the [`LockError`] that tells a lock timeout apart from a system error, the
//! [input rules](validate) and the shared [wait loop](wait).
//!
//! This crate has no server clients and starts no runtime. Applications use the `distlock`
//! facade, which re-exports it together with the backends enabled by features.

#![deny(unsafe_code)]

pub mod detach;
pub mod error;
pub mod lease;
pub mod observe;
pub mod options;
pub mod provider;
pub mod reaper;
pub mod validate;
pub mod wait;
pub mod wake;
pub mod workflow;

pub use detach::{attempt_detached, finish_on_drop, FinishOnDrop, Undo};
pub use error::{BoxError, LockError, Result};
pub use lease::{FencingToken, Lease, LockInfo};
pub use observe::Traced;
pub use options::{LockOptions, WaitPolicy, DEFAULT_RETRY_COUNT, DEFAULT_RETRY_DELAY, DEFAULT_TTL};
pub use provider::{Capabilities, Health, LockProvider};
pub use reaper::spawn_reaper;
/// Re-exported: the type of [`WorkflowLockHandle::lost`].
pub use tokio_util::sync::CancellationToken;
pub use wait::{acquire_with_backoff, Attempt, Backoff};
pub use wake::Wakers;
pub use workflow::{WorkflowConfig, WorkflowLockHandle, WorkflowLockProvider};

/// Re-exported so backends and users name the same `async_trait`.
pub use async_trait::async_trait;
