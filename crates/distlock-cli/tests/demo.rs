//! `distlock demo --processes`: the race across worker processes on every server backend, and
//! with `--chaos` (paused and killed workers) on one of them; the memory backend refuses it.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::distlock;
use distlock::{LockConfig, LockProviderFactory};

/// A configuration file for `name`'s test server, removed at the end.
struct Backend {
    config_file: PathBuf,
}

impl Backend {
    /// `name`'s test server; `None` (a loud skip) when it is missing, a failure with
    /// `DISTLOCK_REQUIRE_SERVICES=1`.
    fn connect(name: &str, case: &str) -> Option<Backend> {
        let config_file = std::env::temp_dir().join(format!(
            "distlock-demo-{name}-{}-{:016x}.toml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&config_file, common::config_toml(name)).unwrap();
        let backend = Backend { config_file };
        let config =
            LockConfig::load_over(LockConfig::memory(), Some(&backend.config_file)).expect("configuration");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reached = rt.block_on(async {
            let provider = LockProviderFactory::new(None).create_lock_provider(&config).await?;
            provider.health().await?;
            provider.close().await
        });
        lock_testkit::require_or_skip(&format!("{case} on {name}"), reached.map_err(|e| e.to_string()))?;
        Some(backend)
    }

    fn demo(&self, args: &[&str]) -> Output {
        distlock()
            .arg("--config")
            .arg(&self.config_file)
            .arg("demo")
            .args(args)
            .output()
            .expect("run distlock demo")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_file);
    }
}

/// The number at the start of what follows `label` on its line of `out`.
fn figure(out: &str, label: &str) -> Option<u64> {
    let rest = out.lines().find_map(|l| l.trim_start().strip_prefix(label))?;
    rest.split_whitespace().next()?.split('/').next()?.parse().ok()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Two worker processes complete every execution exactly once and every check passes.
fn two_processes(b: &Backend) {
    let out = b.demo(&["--processes", "2", "--workers", "4", "--executions", "60"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 worker processes of 4 tasks"), "{stdout}");
    assert_eq!(figure(&stdout, "every execution completed exactly once"), Some(60), "{stdout}");
    assert_eq!(figure(&stdout, "lock operations and workers failed"), Some(0), "{stdout}");
    assert!(stdout.contains("PASS: 0 violations"), "{stdout}");
    assert!(!stdout.contains("faults:"), "no chaos without --chaos: {stdout}");
}

/// Paused and killed workers: exactly once still holds, paused holders' writes are rejected
/// by fencing, and every fault is reported.
fn chaos(b: &Backend) {
    let out = b.demo(&["--processes", "4", "--chaos"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(figure(&stdout, "every execution completed exactly once"), Some(300), "{stdout}");
    let rejected = figure(&stdout, "stale writes rejected by fencing").unwrap_or(0);
    assert!(rejected > 0, "a paused holder's write must have been rejected: {stdout}");
    let faults: Vec<&str> = stdout.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    assert!(faults.iter().any(|l| l.contains("SIGSTOP, SIGCONT after")), "{stdout}");
    assert!(faults.iter().any(|l| l.contains("SIGKILL, ")), "{stdout}");
    assert!(faults.iter().all(|l| l.contains("executions taken over")), "{stdout}");
    assert!(stdout.contains("PASS: 0 violations"), "{stdout}");
}

#[test]
fn the_memory_backend_refuses_processes() {
    let out = distlock().args(["demo", "--processes", "2"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("--processes") && stderr.contains("memory backend"), "{stderr}");
    assert!(stdout.is_empty(), "refused before anything ran: {stdout}");
}

#[test]
fn chaos_and_ttl_need_processes() {
    let out = distlock().args(["demo", "--chaos"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--processes"), "{stderr}");
    let out =
        distlock().args(["--provider", "redis", "demo", "--processes", "1", "--chaos"]).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("at least 2 worker processes"), "{stderr}");
    let out = distlock().args(["demo", "--ttl", "2s"]).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--ttl") && stderr.contains("--processes"), "{stderr}");
}

macro_rules! server_backend {
    ($($backend:ident),* $(,)?) => {$(
        mod $backend {
            #[test]
            fn two_processes() {
                if let Some(b) = super::Backend::connect(stringify!($backend), "two_processes") {
                    super::two_processes(&b);
                }
            }
        }
    )*};
}

server_backend!(mysql, postgres, redis, etcd);

#[test]
fn redis_chaos() {
    if let Some(b) = Backend::connect("redis", "chaos") {
        chaos(&b);
    }
}

#[test]
fn an_unreachable_backend_fails_before_any_worker_starts() {
    let out = distlock()
        .args(["--provider", "redis", "demo", "--processes", "2"])
        .env("DISTLOCK_REDIS__URL", "redis://127.0.0.1:1")
        .env("DISTLOCK_REDIS__CONNECT_TIMEOUT", "2s")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("unavailable"), "{stderr}");
    assert!(stdout.is_empty(), "no run started: {stdout}");
}
