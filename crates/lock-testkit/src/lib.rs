//! # lock-testkit
//!
//! The behaviour of a distlock backend, written once. Every backend runs the whole
//! [conformance suite](cases) through [`conformance_suite!`], which expands into one
//! `#[tokio::test]` per case; cases a backend does not claim in its
//! [`lock_core::Capabilities`] are reported and skipped.
//!
//! ```ignore
//! struct Mem(std::sync::Arc<MemoryLockProvider>);
//! #[async_trait::async_trait]
//! impl lock_testkit::Harness for Mem {
//!     async fn provider(&self) -> std::sync::Arc<dyn lock_core::LockProvider> { self.0.clone() }
//! }
//! async fn harness() -> Result<Mem, String> { Ok(Mem(Default::default())) }
//! lock_testkit::conformance_suite!(harness);
//! ```
//!
//! Server-backed suites return `Err("why")` from their harness function when the server is
//! missing: the case then fails if `DISTLOCK_REQUIRE_SERVICES=1` and is otherwise skipped with a
//! loud message on stderr. Each case uses its own random key prefix, so runs against shared
//! servers never collide.
//!
//! [`service::provide`] gives a test its MySQL, PostgreSQL, Redis or etcd server: the one its
//! variable names, else (with the `docker` feature) a container of its own.
//!
//! [`bench`](mod@bench) holds the workloads and the `main` the criterion benches of every
//! backend share; [`env`](mod@env) reads the variables that name the test services.
//!
//! Fault-injection tools for the cases that break things on purpose:
//! [`proxy::FaultProxy`] sits between a client and its server and delays, swallows or resets
//! traffic; [`history::History`] records every grant and release of a stress case and judges
//! mutual exclusion by time intervals; [`servers::PrivateServer`] runs a throwaway Redis, etcd
//! or MariaDB on a port of its own, to restart, kill or pause.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_core::{Capabilities, LockProvider};

pub mod bench;
pub mod cases;
pub mod env;
pub mod faults;
pub mod floors;
pub mod history;
pub mod ports;
pub mod process;
pub mod proxy;
pub mod restart;
pub mod servers;
pub mod service;
pub mod tls;

pub use env::{long_run, services_required, LONG_ENV, REQUIRE_SERVICES_ENV};

/// How the suite reaches a backend.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// A provider on the backend under test. Providers returned by one harness share one lock
    /// space (the same server, table or prefix); a server backend returns a new client per
    /// call so that cases can model two processes.
    async fn provider(&self) -> Arc<dyn LockProvider>;

    /// A TTL that the backend grants reliably and a test can afford to wait out.
    fn short_ttl(&self) -> Duration {
        Duration::from_millis(250)
    }

    /// A provider on the backend under test whose every connection to the server runs
    /// through fault proxies, for the [fault cases](faults). `None` (the default) for a
    /// backend without connections; those cases are then skipped, loudly.
    async fn faulty_provider(&self) -> Option<faults::Faulty> {
        None
    }

    /// Has the server itself kill `connections` (MariaDB `KILL` of the `processlist` rows
    /// whose `HOST` is a connection's client address, Redis `CLIENT KILL ADDR`), for
    /// [`fault_server_killed_connections`](faults::fault_server_killed_connections). Returns how
    /// many the servers killed. Must touch nothing but the named connections: other clients of
    /// a shared server are not the test's to kill. `None` (the default) for a server without
    /// such a command; the case is then skipped, loudly.
    async fn kill_server_side(&self, connections: &[faults::ServerConnection]) -> Option<usize> {
        let _ = connections;
        None
    }

    /// The kind of private server this backend runs on, for the [restart and pause
    /// cases](restart); `None` (the default) skips them, loudly.
    fn private_server(&self) -> Option<servers::Kind> {
        None
    }

    /// A provider on the server at `url` (a private server of [`private_server`]'s kind).
    ///
    /// [`private_server`]: Harness::private_server
    async fn provider_at(&self, url: &str) -> Arc<dyn LockProvider> {
        panic!("the harness names a private server kind but cannot connect to {url}")
    }

    /// How many private servers one deployment of this backend spans, for the [restart and
    /// pause cases](restart): Redlock's masters, a cluster's primaries. 1 (the default) for a
    /// single server.
    fn private_server_count(&self) -> usize {
        1
    }

    /// Whether a lock outlives the loss of a minority of the deployment's servers (a quorum,
    /// such as Redlock's masters). The minority cases of [`restart`] run only then. `false` by
    /// default, and for a deployment where each lock lives on one server (a cluster's
    /// primaries without replicas).
    fn private_majority_keeps_locks(&self) -> bool {
        false
    }

    /// Joins freshly started private servers (at `urls`, one per server) into one
    /// deployment, before any provider connects: forming a cluster, for instance. Nothing to
    /// do by default; `Err` fails the case.
    async fn prepare_private(&self, urls: &[String]) -> Result<(), String> {
        let _ = urls;
        Ok(())
    }

    /// A provider on the deployment made of the private servers at `urls` (one per server, as
    /// many as [`private_server_count`]). The default connects to the only one through
    /// [`provider_at`].
    ///
    /// [`private_server_count`]: Harness::private_server_count
    /// [`provider_at`]: Harness::provider_at
    async fn provider_on(&self, urls: &[String]) -> Arc<dyn LockProvider> {
        match urls {
            [url] => self.provider_at(url).await,
            _ => panic!("the harness spans one private server, not {}", urls.len()),
        }
    }

    /// Whether a provider built by this harness in another process (the test binary run
    /// again, see [`process`]) reaches the same servers, given the environment of
    /// [`child_env`](Harness::child_env). `false` for harnesses whose servers cannot be
    /// reached from another process.
    fn processes_share_servers(&self) -> bool {
        true
    }

    /// Environment variables a holder process (see [`process`]) needs so that its harness
    /// reaches this harness's servers: a harness that starts servers of its own per case
    /// names them here, and its harness function connects to them instead of starting new
    /// ones when it finds the variables set. Empty by default.
    fn child_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Slack added when a case waits for a lease to run out: covers clock granularity and
    /// the backend's expiry mechanism (a reaper period, a lease checkpoint, ...).
    fn expiry_slack(&self) -> Duration {
        Duration::from_millis(250)
    }
}

/// Turns a harness that could not reach its service into a skip (loud, on stderr) or, with
/// `DISTLOCK_REQUIRE_SERVICES=1`, a failure.
pub fn require_or_skip<H>(case: &str, harness: Result<H, String>) -> Option<H> {
    match harness {
        Ok(h) => Some(h),
        Err(why) if services_required() => {
            panic!("{case}: required service unavailable ({REQUIRE_SERVICES_ENV}=1): {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED {case}: service unavailable: {why} (set {REQUIRE_SERVICES_ENV}=1 to fail instead)"
            );
            None
        }
    }
}

/// What a case gets: the harness and a key namespace of its own.
pub struct Ctx {
    harness: Arc<dyn Harness>,
    prefix: String,
    case: &'static str,
}

impl Ctx {
    /// A context for `case` with a fresh random prefix.
    pub fn new(harness: Arc<dyn Harness>, case: &'static str) -> Self {
        let prefix = format!("distlock-test/{:016x}/{case}/", fastrand::u64(..));
        Ctx { harness, prefix, case }
    }

    /// A key unique to this run and case.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// This case's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A provider on the backend under test.
    pub async fn provider(&self) -> Arc<dyn LockProvider> {
        self.harness.provider().await
    }

    /// See [`Harness::short_ttl`].
    pub fn short_ttl(&self) -> Duration {
        self.harness.short_ttl()
    }

    /// How long to sleep so that a lease of [`short_ttl`](Self::short_ttl) is surely over.
    pub fn outlive_short_ttl(&self) -> Duration {
        self.harness.short_ttl() + self.harness.expiry_slack()
    }

    /// Returns `false` (and says so on stderr) when the backend lacks a capability.
    pub fn requires(&self, caps: Capabilities, need: fn(&Capabilities) -> bool, what: &str) -> bool {
        if need(&caps) {
            true
        } else {
            eprintln!("SKIPPED {}: backend does not claim `{what}`", self.case);
            false
        }
    }
}

/// Expands into one `#[tokio::test]` per conformance case.
///
/// `$harness` names an `async fn() -> Result<impl Harness, String>`, called once per case.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:path) => {
        $crate::__conformance_cases!(
            $harness;
            free_acquire,
            busy_lock_times_out_with_holder,
            try_lock_does_not_wait,
            reentrant_lock_needs_matching_unlocks,
            reentry_extends_to_the_longer_ttl,
            owners_with_spaces_round_trip,
            unlock_by_non_owner_keeps_holder,
            unlock_of_free_key_is_not_held,
            refresh_extends_lease_and_keeps_token,
            refresh_by_non_owner_fails,
            expired_lock_can_be_taken,
            stale_holder_cannot_touch_new_holders_lock,
            fencing_tokens_strictly_increase,
            is_locked_reports_holder_and_ttl,
            held_for_counts_from_the_holders_acquisition,
            waiter_acquires_after_release,
            release_wakes_waiter,
            waiter_acquires_after_holder_expires,
            fifo_order,
            dropped_waiting_lock_leaves_no_lock,
            cancel_racing_release_leaves_no_orphan,
            cancel_racing_release_in_one_provider_leaves_no_orphan,
            dropped_lock_in_flight_leaves_no_lock,
            aborted_lock_task_leaves_no_lock,
            dropped_reentry_keeps_the_first_level,
            dropped_acquisition_keeps_the_owners_other_level,
            distinct_keys_are_independent,
            keys_extending_each_other_are_independent,
            long_waiter_gets_a_full_lease,
            mutual_exclusion_under_contention,
            invalid_inputs_rejected,
            invalid_input_rejected_before_anything_else,
            operations_after_close_fail_closed,
            close_fails_waiters,
            close_during_acquire_leaves_no_lock,
            close_after_dropped_lock_leaves_no_lock,
            list_shows_held_locks_by_prefix,
            health_reports_backend,
            metrics_record_each_operation,
            waits_are_published_listed_and_withdrawn,
            deadlock_is_detected_and_reported,
            deadlock_fails_the_youngest_waiter,
            fault_partitioned_waiter,
            workflow_execution_lock_is_exclusive,
            workflow_auto_refresh_outlives_ttl,
            workflow_lost_signal_fires_when_lease_is_revoked,
            workflow_handle_on_a_named_key_and_owner,
            workflow_lost_signal_fires_before_expiry_without_refresh,
            workflow_dropped_handle_is_released,
            workflow_template_limit_holds,
            fault_partitioned_holder,
            fault_hung_refresh,
            fault_lost_answer_on_acquire,
            fault_lost_answer_on_reentry,
            fault_lost_answer_on_refresh,
            fault_lost_answer_on_unlock,
            fault_lost_answer_on_handover,
            fault_killed_connections,
            fault_server_killed_connections,
            fault_slow_server,
            fault_chaos_mix,
            restart_server_while_held_and_awaited,
            pause_server_while_held_and_awaited,
            restart_minority_while_held_and_awaited,
            pause_minority_while_held_and_awaited
        );

        // Cases with a second process: a holder frozen past its lease, and two processes
        // waiting for each other's lock (see `lock_testkit::process`).
        $crate::__process_cases!($harness; paused_holder_process, deadlock_across_processes);

        /// The holder process of `paused_holder_process`; does nothing unless started by it.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "run by paused_holder_process in a process of its own"]
        async fn distlock_holder_process() {
            if let Ok(h) = $harness().await {
                $crate::process::child(&h).await;
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __process_cases {
    ($harness:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let name = concat!(module_path!(), "::", stringify!($case));
                let Some(h) = $crate::require_or_skip(name, $harness().await) else { return };
                if !$crate::Harness::processes_share_servers(&h) {
                    eprintln!("SKIPPED {name}: the harness's servers live in this process only");
                    return;
                }
                let child = $crate::process::child_test(module_path!());
                let ctx = $crate::Ctx::new(::std::sync::Arc::new(h), stringify!($case));
                $crate::cases::run(name, $crate::process::$case(&ctx, &child)).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($harness:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let name = concat!(module_path!(), "::", stringify!($case));
                let Some(h) = $crate::require_or_skip(name, $harness().await) else { return };
                let ctx = $crate::Ctx::new(::std::sync::Arc::new(h), stringify!($case));
                $crate::cases::run(name, $crate::cases::$case(&ctx)).await;
            }
        )*
    };
}
