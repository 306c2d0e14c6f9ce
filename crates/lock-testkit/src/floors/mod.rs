//! The floors the benches compare the backends with: the raw client of a server doing the
//! least a lock needs, written once for every bench that measures against it (the backend's
//! own bench and the peer benches). Each floor is a [`Cycle`](crate::bench::Cycle); each
//! module is behind a feature of its client (`floors-mysql`, `floors-redis`), so that the
//! suites that do not measure pull in no client.

#[cfg(feature = "floors-mysql")]
pub mod mysql;
#[cfg(feature = "floors-redis")]
pub mod redis;

use std::time::Duration;

/// The pause of a floor that polls a busy lock: 0.5–1.5 ms, 1 ms on average, drawn anew for
/// each retry (the same schedule for every polling contender).
pub async fn poll_pause() {
    tokio::time::sleep(Duration::from_micros(500 + fastrand::u64(..1000))).await;
}
