//! The toolkit for backend authors; applications never need it.
//!
//! A backend implements [`LockBackend`] (the server protocol only: the
//! [checks layer](crate::layer::checks) validates input and enforces the closed state for it)
//! and builds on:
//! - [`Gate`]: the open/closed state its waits and background tasks watch;
//! - [`Lease::counted_from`](crate::Lease::counted_from): the one way to build a lease, its
//!   validity counted from when the granting request was *sent*;
//! - [`wait`]: the attempt schedule ([`Backoff`]) and the wait loop
//!   ([`acquire_with_backoff`]) that retries on a wake-up or on the timer;
//! - [`wake`]: per-key wake-up signals ([`Wakers`]) for the waiters of one process;
//! - [`heard`]: the server's last "held by H for T more" about a key ([`Heard`]), which
//!   answers a waiter's timer attempts while it is fresh, and [`KeyNews`], which keeps it
//!   only if no release was heard of after the question was asked;
//! - [`bounded`](bounded()): a round trip with a time limit, past which it is `Unavailable`;
//! - [`detach`]: cancel safety for server round trips ([`finish_on_drop`],
//!   [`attempt_detached`] and its [`Undo`]);
//! - [`inflight`]: the work under way for callers that may have left ([`Inflight`]), which
//!   `close` lets finish before it closes the connections;
//! - [`reaper`]: the periodic clean-up loop ([`spawn_reaper`]) and the count of what it
//!   cleaned ([`report_expired_cleaned`]).
//!
//! `docs/architecture.md` ("Adding a backend") walks through the memory backend as the worked
//! example.

pub mod backend;
pub mod bounded;
pub mod detach;
pub mod gate;
pub mod heard;
pub mod inflight;
pub mod reaper;
pub mod wait;
pub mod wake;

pub use backend::LockBackend;
pub use bounded::bounded;
pub use detach::{attempt_detached, finish_on_drop, FinishOnDrop, Undo};
pub use gate::Gate;
pub use heard::{Heard, KeyNews};
pub use inflight::{Inflight, InflightGuard};
pub use reaper::{report_expired_cleaned, spawn_reaper};
pub use wait::{acquire_with_backoff, acquire_with_backoff_since, Attempt, Backoff};
pub use wake::Wakers;
