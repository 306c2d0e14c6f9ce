//! How cost grows with the number of waiters on one key and of locks held at once, on every
//! backend: series, not single points, printed as one markdown table per backend for
//! docs/benchmarks.md ("How cost grows").
//!
//! ```sh
//! cargo bench -p distlock --features all-backends --bench scale                 # full sizes
//! DISTLOCK_SCALE=quick cargo bench -p distlock --features all-backends --bench scale
//! DISTLOCK_SCALE_BACKENDS=redis,etcd cargo bench -p distlock --features all-backends --bench scale
//! ```
//!
//! Under `cargo test` (no `--bench` argument) the sizes are the quick ones and nothing waits
//! for a backend's cleanup, so the smoke run stays short. `DISTLOCK_SCALE_SERIES` picks series
//! (`waiters,held,leftovers`), `DISTLOCK_SCALE_MAX_HELD` caps the held locks. Servers come from the `DISTLOCK_TEST_*` variables; a server that cannot be
//! reached skips its backend, loudly, unless `DISTLOCK_REQUIRE_SERVICES=1`.
//!
//! - **Waiters**: W tasks wait on one held key; then the holder releases and each waiter takes
//!   the lock and releases it at once. Hand-over: from a release call's start to the next
//!   holder's `lock` returning. Also what W idle waiters cost per second before the release.
//! - **Held locks**: N locks held at once, taken, refreshed once each and released by 64
//!   tasks; `list`, `is_locked` and this process's RSS in between.
//! - **Leftovers**: many distinct keys locked and released through a provider with short
//!   cleanup settings; what the server keeps right after and once the cleanup ran.
//!
//! Server CPU is the utime + stime of the process listening on the server's port (for
//! PostgreSQL with its backend processes, live and exited), read from `/proc`: the servers
//! are shared, so whatever else they served at the time is in it too.
//!
//! The providers are built from each backend's config, without the factory's layers
//! (`backends`).

mod backends;
mod leftovers;
mod procfs;
mod series;

use std::time::Duration;

use lock_testkit::bench::{fmt_dur, runtime};

use backends::Backend;
use leftovers::LeftoversRow;
use series::{Cost, HeldRow, WaitersRow};

/// Sizes of one run; an empty list skips its series.
struct Sizes {
    waiters: Vec<usize>,
    held: Vec<usize>,
    leftovers: Vec<usize>,
    /// How long the leftovers series waits for the backend's cleanup (none in a smoke run).
    patience: Duration,
    idle: Duration,
}

impl Sizes {
    /// `DISTLOCK_SCALE=quick|full`; unset: full under `cargo bench`, quick under `cargo test`.
    /// `DISTLOCK_SCALE_MAX_HELD` caps the held-locks series (see docs/benchmarks.md).
    fn from_env() -> Sizes {
        let bench = std::env::args().any(|a| a == "--bench");
        let full = match std::env::var("DISTLOCK_SCALE").as_deref() {
            Ok("full") => true,
            Ok("quick") => false,
            _ => bench,
        };
        let cap =
            std::env::var("DISTLOCK_SCALE_MAX_HELD").ok().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
        let mut sizes = if full {
            Sizes {
                waiters: vec![10, 100, 1_000],
                held: [1_000, 10_000, 100_000].into_iter().filter(|&n| n <= cap).collect(),
                leftovers: vec![100_000],
                patience: Duration::from_secs(120),
                idle: Duration::from_secs(2),
            }
        } else {
            Sizes {
                waiters: vec![10],
                held: vec![200],
                leftovers: vec![200],
                patience: Duration::ZERO,
                idle: Duration::from_secs(1),
            }
        };
        // `DISTLOCK_SCALE_SERIES=waiters,held,leftovers` (default: all three).
        if let Ok(series) = std::env::var("DISTLOCK_SCALE_SERIES") {
            let on = |name: &str| series.split(',').any(|s| s.trim() == name);
            for (name, list) in [
                ("waiters", &mut sizes.waiters),
                ("held", &mut sizes.held),
                ("leftovers", &mut sizes.leftovers),
            ] {
                if !on(name) {
                    list.clear();
                }
            }
        }
        sizes
    }
}

/// The most locks a backend holds at once in this bench. etcd: a lease per lock, and `list`
/// asks each lease's TTL in a call of its own, so 100,000 held locks make `list("")` 100,000
/// calls, five times over; the 10,000 row shows the slope (docs/benchmarks.md).
fn max_held(backend: &str) -> usize {
    if backend == "etcd" {
        10_000
    } else {
        usize::MAX
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".into(), f)
}

fn per_op(d: Option<Duration>) -> String {
    opt(d, fmt_dur)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn print_waiters(b: &Backend, rows: &[WaitersRow]) {
    let counter = if b.counter_name.is_empty() { "round trips".into() } else { b.counter_name.to_string() };
    println!("\n{}: waiters on one key\n", b.name);
    println!(
        "| waiters | hand-over p50 | hand-over p99 | whole chain | hand-overs/s | {counter} per acquisition | \
         server CPU per hand-over | client CPU per hand-over | idle waiters: {counter}/s | idle waiters: server CPU/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let c: &Cost = &r.chain;
        println!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            r.waiters,
            fmt_dur(r.handover.quantile(0.5)),
            fmt_dur(r.handover.quantile(0.99)),
            fmt_dur(c.elapsed),
            c.rate(r.waiters),
            opt(c.attempts, |a| format!("{a:.2}")),
            per_op(c.server),
            fmt_dur(c.client),
            opt(r.idle.attempts, |a| format!("{a:.0}")),
            per_op(r.idle.server),
        );
    }
}

fn print_held(b: &Backend, rows: &[HeldRow]) {
    println!("\n{}: locks held at once (64 tasks)\n", b.name);
    println!(
        "| locks | take: locks/s | server CPU per take | list(\"\") | list(1 %) | is_locked p50 | is_locked p99 | \
         refresh pass | refreshes/s | server CPU per refresh | release: locks/s | client CPU per take | \
         RSS before / held / after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {} | {} ({}) | {} ({}) | {} | {} | {} | {:.0} | {} | {:.0} | {} | {} / {} / {} |",
            r.locks,
            r.take.rate(r.locks),
            per_op(r.take.server),
            fmt_dur(r.list_all.0),
            r.list_all.1,
            fmt_dur(r.list_some.0),
            r.list_some.1,
            fmt_dur(r.is_locked.quantile(0.5)),
            fmt_dur(r.is_locked.quantile(0.99)),
            fmt_dur(r.refresh.elapsed),
            r.refresh.rate(r.locks),
            per_op(r.refresh.server),
            r.release.rate(r.locks),
            fmt_dur(r.take.client),
            mib(r.rss[0]),
            mib(r.rss[1]),
            mib(r.rss[2]),
        );
    }
}

fn print_leftovers(b: &Backend, rows: &[LeftoversRow]) {
    let bytes = match b.name {
        "Redis" => "server used_memory",
        "etcd" => "server db size",
        _ => "table size",
    };
    println!("\n{}: what stays after the locks are gone\n", b.name);
    println!(
        "| distinct keys locked and released | entries before / right after / after cleanup | cleaned within | \
         {bytes} before / right after / after cleanup |"
    );
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} / {} / {} | {} | {} / {} / {} |",
            r.keys,
            r.before.entries,
            r.after.entries,
            r.cleaned.1.entries,
            opt(r.cleaned.0, |d| format!("{:.0} s", d.as_secs_f64())),
            mib(r.before.bytes),
            mib(r.after.bytes),
            mib(r.cleaned.1.bytes),
        );
    }
}

async fn run() {
    let sizes = Sizes::from_env();
    let run = format!("{:08x}", fastrand::u32(..));
    for name in backends::selected() {
        let b = match backends::connect(&name, &run, false).await {
            Ok(b) => b,
            Err(e) if lock_testkit::env::services_required() => panic!("{name}: {e}"),
            Err(e) => {
                eprintln!("SKIPPED {name}: {e} (set DISTLOCK_REQUIRE_SERVICES=1 to fail instead)");
                continue;
            }
        };
        match b.server {
            Some(s) => eprintln!("{}: server CPU from pid {}", b.name, s.pid()),
            None if name != "memory" => {
                eprintln!("{}: server not a local process this bench can see", b.name)
            }
            None => {}
        }
        let mut rows = Vec::new();
        for &w in &sizes.waiters {
            eprintln!("{}: {w} waiters", b.name);
            rows.push(series::waiters(&b, &format!("w{w}"), w, sizes.idle).await);
        }
        if !rows.is_empty() {
            print_waiters(&b, &rows);
        }
        let mut rows = Vec::new();
        for n in sizes.held.iter().copied().filter(|&n| n <= max_held(&name)) {
            eprintln!("{}: {n} locks held", b.name);
            rows.push(series::held(&b, &format!("n{n}/"), n).await);
        }
        if !rows.is_empty() {
            print_held(&b, &rows);
        }
        b.finish().await;
        if sizes.leftovers.is_empty() || name == "memory" {
            continue;
        }
        let b = backends::connect(&name, &format!("{run}g"), true).await.expect("second connection");
        let mut rows = Vec::new();
        for n in sizes.leftovers.iter().map(|&n| n.min(max_held(&name))) {
            eprintln!("{}: {n} distinct keys, then what stays", b.name);
            rows.extend(leftovers::leftovers(&b, n, sizes.patience).await);
        }
        print_leftovers(&b, &rows);
        b.finish().await;
    }
}

fn main() {
    runtime().block_on(run());
}
