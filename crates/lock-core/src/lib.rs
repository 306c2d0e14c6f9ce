//! # lock-core
//!
//! The contracts of [distlock](https://docs.rs/distlock): the [`LockProvider`] trait every
//! backend implements, the [`LockOptions`] a caller passes, the [`Lease`] it gets back (with its
//! [`FencingToken`]), the [`LockError`] that tells a lock timeout apart from a system error and
//! the [input rules](validate).
//!
//! It comes in three parts:
//! - **the public types** above, at the crate root: what applications read;
//! - **[`layer`]s** applied around every provider: [input checks and the closed
//!   state](layer::checks), [tracing](layer::trace), [metrics](layer::metrics), [waits and deadlock
//!   detection](layer::waiting), and on top the [workflow] layer
//!   (execution, template and resource locks with auto-refresh and a lost-lease signal);
//! - **[`raw`]**, the toolkit for backend authors: the [`LockBackend`](raw::LockBackend) hooks
//!   a backend implements, the wait loop, wake-ups, cancel safety and the reaper.
//!
//! This crate has no server clients and starts no runtime. Applications use the `distlock`
//! facade, which re-exports it together with the backends enabled by features.
//!
//! ```
//! use std::time::Duration;
//! use lock_core::{validate, LockError, LockOptions, WaitPolicy};
//!
//! // What a caller asks for: a lease of 60 s, waiting up to 5 s for a busy lock.
//! let opts = LockOptions::new("workflow:execution:42", "worker-1")
//!     .ttl(Duration::from_secs(60))
//!     .wait(WaitPolicy::deadline(Duration::from_secs(5)));
//! assert_eq!(&*opts.key, "workflow:execution:42");
//!
//! // Bad input is refused before any backend sees it, and is not worth retrying.
//! let err = validate::key("").unwrap_err();
//! assert!(matches!(err, LockError::InvalidArgument { .. }));
//! assert!(!err.is_retryable() && !err.is_timeout());
//! ```

#![deny(unsafe_code)]

pub mod deadlock;
pub mod error;
pub mod layer;
pub mod lease;
pub mod options;
pub mod provider;
pub mod raw;
pub mod tls;
pub mod validate;
pub mod workflow;

pub use deadlock::{Cycle, DeadlockConfig, DeadlockPolicy, WaitForGraph, WaitInfo};
pub use error::{BoxError, LockError, Result};
pub use layer::metrics::{Classifier, Metered};
pub use layer::trace::Traced;
pub use layer::waiting::Waiting;
pub use lease::{FencingToken, Lease, LockInfo};
pub use options::{LockOptions, WaitPolicy, DEFAULT_RETRY_COUNT, DEFAULT_RETRY_DELAY, DEFAULT_TTL};
pub use provider::{Capabilities, Health, LockProvider};
/// Re-exported: the type of [`WorkflowLockHandle::lost`].
pub use tokio_util::sync::CancellationToken;
pub use workflow::{WorkflowConfig, WorkflowLockHandle, WorkflowLockProvider};

/// Re-exported so backends and users name the same `async_trait`.
pub use async_trait::async_trait;
