//! Layers: behaviour applied around a provider, once for every backend.
//!
//! - [`forward`]: [`forward_to_inner!`](crate::forward_to_inner), the methods a layer
//!   leaves unchanged;
//! - [`checks`]: input validation and the closed state, the [`LockProvider`](crate::LockProvider)
//!   of every [`LockBackend`](crate::raw::LockBackend);
//! - [`trace`]: [`Traced`](trace::Traced), a `tracing` event per operation;
//! - [`metrics`]: [`Metered`](metrics::Metered), counters, histograms and a gauge per
//!   provider and key class, through the `metrics` facade;
//! - [`waiting`]: [`Waiting`](waiting::Waiting), waits published in the backend, contention
//!   and waiter metrics, and [deadlock](crate::deadlock) detection.
//!
//! The [workflow layer](crate::workflow) builds execution, template and resource locks with
//! auto-refresh on top of any provider.

pub mod checks;
pub mod forward;
pub mod metrics;
pub mod trace;
pub mod waiting;
