//! The conformance cases. Each is a `pub async fn(&Ctx)` that panics on a violation; this
//! module re-exports them all (the `conformance_suite!` macro names them as
//! `cases::<name>`), grouped by theme in its submodules and in [`faults`](crate::faults),
//! [`restart`](crate::restart) and [`process`](crate::process).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
use lock_core::{validate, LockError, LockOptions, LockProvider, WaitPolicy};
use tokio::time::Instant;

use crate::Ctx;

pub use crate::faults::{
    fault_chaos_mix, fault_hung_refresh, fault_killed_connections, fault_lost_answer_on_acquire,
    fault_lost_answer_on_handover, fault_lost_answer_on_reentry, fault_lost_answer_on_refresh,
    fault_lost_answer_on_unlock, fault_partitioned_holder, fault_server_killed_connections,
    fault_slow_server,
};
pub use crate::restart::{
    pause_minority_while_held_and_awaited, pause_server_while_held_and_awaited,
    restart_minority_while_held_and_awaited, restart_server_while_held_and_awaited,
};

mod basics;
mod cancel;
mod checks;
pub mod deadlock;
pub mod metrics;
mod waiting;
mod workflow;

pub use basics::*;
pub use cancel::*;
pub use checks::*;
pub use deadlock::{
    deadlock_fails_the_youngest_waiter, deadlock_is_detected_and_reported, fault_partitioned_waiter,
    waits_are_published_listed_and_withdrawn,
};
pub use metrics::metrics_record_each_operation;
pub use waiting::*;
pub use workflow::*;

/// A generous bound on any single case: a hang is a failure, not a stuck CI run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a case under [`CASE_TIMEOUT`].
pub async fn run(name: &str, case: impl Future<Output = ()>) {
    if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
        panic!("{name}: did not finish within {CASE_TIMEOUT:?}");
    }
}

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

fn patient(key: &str, owner: &str) -> LockOptions {
    opts(key, owner).wait(WaitPolicy::deadline(Duration::from_secs(30)))
}

/// Waits (bounded) until `key` is free: for backends whose cleanup runs in the background.
async fn eventually_free(p: &dyn LockProvider, key: &str) -> Option<lock_core::LockInfo> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let held = p.is_locked(key).await.expect("is_locked");
        if held.is_none() || Instant::now() >= until {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
