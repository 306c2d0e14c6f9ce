//! Project chores as code (`cargo xtask <command>`):
//!
//! - `test [--long]`: make sure the services the backends need are up, then run the whole test
//!   suite with `DISTLOCK_REQUIRE_SERVICES=1` (a missing service fails the run, never skips
//!   it); `--long` runs the stress and fault cases with more rounds.
//! - `test --docker`: every backend's conformance suite with no service URL set, so that the
//!   tests start their services in containers, on an engine and images xtask sets up from
//!   Debian packages (see [`docker`]); `--docker --quick` runs the part of it `ci` runs.
//! - `ci`: `cargo fmt --check`, clippy with `-D warnings` on every target and feature,
//!   `deploy-check`, `test`, a part of `test --docker`, the examples (the README's main job among them), `bare-check`,
//!   `serve-check` and the docs with warnings denied.
//! - `deploy-check`: the Prometheus alert rules and the Grafana dashboard under `deploy/`:
//!   `promtool check rules` and `promtool test rules` (installing Debian's `prometheus` when
//!   running as root), the dashboard's panels and queries, and every metric name they use
//!   against the constants of `lock-core`'s metrics layer (see `deploy.rs`).
//! - `services up|down|status`: start (installing from Debian packages when running as root)
//!   or stop the local services, or show which are reachable.
//! - `bench`: the criterion benches of every backend, with their summaries, then distlock
//!   against other Rust lock crates (`benches/peers`).
//! - `serve-check`: `distlock serve` end to end: its endpoints over HTTP and its page in
//!   headless Chromium (see [`serve_check`]); part of `ci`.
//! - `bare-check`: the README's main command built and run where `protoc` cannot be found, in
//!   its own target directory (see [`bare_check`]); part of `ci`.
//! - `deny-check`: `cargo deny check licenses bans sources` with the policy of `deny.toml`,
//!   installing cargo-deny when missing (see [`deny`]); part of `ci`.
//! - `rust-version-check`: the workspace's `rust-version` is at least the highest one its
//!   dependency graph declares, on Linux, Windows and macOS (see [`rust_version`]); part of
//!   `ci`.
//! - `package-check`: every published crate has the metadata crates.io and docs.rs need and
//!   packages without a warning (see [`package`]); part of `ci`.

mod bare_check;
mod deny;
mod deploy;
mod docker;
mod package;
mod rust_version;
mod serve_check;
mod services;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

type Result<T = (), E = String> = std::result::Result<T, E>;

const USAGE: &str =
    "usage: cargo xtask <test [--long | --docker [--quick]] | ci | deploy-check | serve-check | bare-check | deny-check | package-check | rust-version-check | services up|down|status | bench> [-- extra cargo test args]";

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        exit(2);
    }
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]).map(drop),
        Some("ci") => ci(),
        Some("deploy-check") => deploy::check(),
        Some("services") => match args.get(1).map(String::as_str) {
            Some("up") => services::up(&services::needed()).map(|_| ()),
            Some("down") => services::down(&services::needed()),
            Some("status") | None => {
                services::status(&services::needed());
                Ok(())
            }
            Some(other) => Err(format!("unknown services command `{other}`\n{USAGE}")),
        },
        Some("bench") => bench(),
        Some("serve-check") => serve_check::serve_check(),
        Some("bare-check") => bare_check::bare_check(),
        Some("package-check") => package::check(),
        Some("deny-check") => deny::check(),
        Some("rust-version-check") => rust_version::check(),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

/// Runs a command, echoing it first; fails on a non-zero exit.
fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Test counts summed over every `test result:` line of cargo's output.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test ...`, echoing its output and adding up its `test result:` lines.
fn run_tests(cmd: &mut Command, counts: &mut Counts) -> Result {
    use std::io::{BufRead, BufReader, Write};
    eprintln!("$ {cmd:?}");
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let _ = writeln!(out, "{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let number = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    })
                    .unwrap_or(0)
            };
            counts.passed += number(" passed");
            counts.failed += number(" failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// `cargo xtask test [--long | --docker]`: services up, then every test of every crate with
/// every feature (the peer benches in a build of their own, without extra arguments). `--long` makes the stress and fault cases run more rounds; `--docker` runs
/// the conformance suites against containers instead (see [`docker`]).
fn test(extra: &[String]) -> Result<Counts> {
    let long = extra.iter().any(|a| a == "--long");
    let in_containers = extra.iter().any(|a| a == "--docker");
    let quick = extra.iter().any(|a| a == "--quick");
    let extra: Vec<&String> =
        extra.iter().filter(|a| !["--long", "--docker", "--quick"].contains(&a.as_str())).collect();
    if in_containers {
        let plan =
            if quick { docker::CI_PLAN } else { docker::Plan { full: docker::BACKENDS, one_case: None } };
        return docker::test(&plan, &extra);
    }
    let envs = services::up(&services::needed())?;
    let mut counts = Counts::default();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", PEER_BENCHES, "--all-features", "--all-targets"])
        .args(&extra)
        .env("DISTLOCK_REQUIRE_SERVICES", "1")
        .env("DISTLOCK_TEST_LONG", if long { "1" } else { "0" })
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    run_tests(&mut cmd, &mut counts)?;
    // The peer benches once each as smoke tests, in a build of their own: built together with
    // the library crates, their sqlx (native-tls, which sqlx prefers over rustls when both are
    // on) would replace the rustls that lock-mysql's and lock-postgres's `tls` features test.
    if extra.is_empty() {
        let mut cmd = cargo();
        cmd.args(["test", "-p", PEER_BENCHES, "--all-targets"])
            .env("DISTLOCK_REQUIRE_SERVICES", "1")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run_tests(&mut cmd, &mut counts)?;
    }
    // Doctests are not part of --all-targets.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", PEER_BENCHES, "--all-features", "--doc"])
        .env("DISTLOCK_REQUIRE_SERVICES", "1")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    run_tests(&mut cmd, &mut counts)?;
    if counts.passed == 0 {
        return Err("no test ran".into());
    }
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    Ok(counts)
}

/// The examples CI runs (each must exit 0): package, example, features.
const EXAMPLES: &[(&str, &str, &str)] = &[
    ("distlock", "memory", ""),
    ("distlock", "manager", ""),
    ("distlock", "default_config", "mysql"),
    ("distlock", "custom_config", "mysql"),
];

fn ci() -> Result {
    services::ensure_build_tools()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;
    deploy::check()?;
    rust_version::check()?;
    deny::check()?;
    package::check()?;
    let mut counts = test(&[])?;
    // The conformance suites against containers the tests start (a part of them: see docker.rs).
    let in_containers = docker::ci()?;
    counts.passed += in_containers.passed;
    // The facade without any backend: configuration still parses, backends fail with the
    // feature to enable.
    run_tests(cargo().args(["test", "-p", "distlock", "--no-default-features", "--lib"]), &mut counts)?;
    let envs = services::up(&services::needed())?;
    for (package, example, features) in EXAMPLES {
        run(cargo().args(["run", "--quiet", "-p", package, "--features", features, "--example", example]))?;
    }
    // The README's main job, on the embedded default and on every server backend.
    run(cargo().args(["run", "--quiet", "--bin", "distlock", "--", "demo"]))?;
    // The same on a machine without protoc, the way a fresh clone builds it.
    bare_check::bare_check()?;
    for (var, value) in &envs {
        let provider = match var.as_str() {
            "DISTLOCK_TEST_MYSQL_URL" => ("mysql", "DISTLOCK_MYSQL__URL"),
            "DISTLOCK_TEST_POSTGRES_URL" => ("postgres", "DISTLOCK_POSTGRES__URL"),
            "DISTLOCK_TEST_REDIS_URL" => ("redis", "DISTLOCK_REDIS__URL"),
            "DISTLOCK_TEST_ETCD_ENDPOINTS" => ("etcd", "DISTLOCK_ETCD__ENDPOINTS"),
            _ => continue,
        };
        let value = if provider.0 == "etcd" { format!("[{value}]") } else { value.clone() };
        // etcd is an opt-in feature of the CLI (its client's build needs protoc).
        run(cargo()
            .args(["run", "--quiet", "--features", provider.0, "--bin", "distlock", "--"])
            .args(["demo", "--provider", provider.0])
            .env(provider.1, &value))?;
        // The same across worker processes, paused past their TTL and killed meanwhile.
        run(cargo()
            .args(["run", "--quiet", "--features", provider.0, "--bin", "distlock", "--"])
            .args(["demo", "--provider", provider.0, "--processes", "4", "--chaos"])
            .env(provider.1, &value))?;
    }
    // The operator's HTTP view, as a scraper, a script and a browser see it.
    serve_check::serve_check()?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("xtask ci: all checks passed");
    // The closing line: what the whole run tested.
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

/// The bench-only package that measures distlock against other Rust lock crates (not
/// published, not a default member; see `benches/peers`).
const PEER_BENCHES: &str = "distlock-peer-benches";

/// Benches as (package, bench, features): one per backend crate, each printing a summary
/// table after criterion's output; the facade's series over every backend (`scale`: how cost
/// grows with waiters and held locks), which prints one table per backend; and distlock
/// against its Rust peers.
const BENCHES: &[(&str, &str, &str)] = &[
    ("lock-memory", "memory", ""),
    ("lock-mysql", "mysql", ""),
    ("lock-postgres", "postgres", ""),
    ("lock-redis", "redis", ""),
    ("lock-etcd", "etcd", ""),
    ("distlock", "scale", "all-backends"),
    (PEER_BENCHES, "peers_redis", ""),
    (PEER_BENCHES, "peers_mysql", ""),
];

fn bench() -> Result {
    let envs = services::up(&services::needed())?;
    for (package, bench, features) in BENCHES {
        let mut cmd = cargo();
        cmd.args(["bench", "-p", package, "--bench", bench]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        run(cmd.envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str()))))?;
    }
    Ok(())
}
