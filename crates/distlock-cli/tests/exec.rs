//! `distlock exec` run as a separate process, on every backend.
//!
//! The memory backend keeps its locks inside one process, so a second `distlock exec` (or
//! this test) can never see a lock an exec holds there: on memory only what one process shows
//! is checked (environment, exit statuses, usage errors, signal passing). Every server
//! backend also runs the cases between processes: a lock held elsewhere makes `--wait` run out
//! (75), two execs on one key never overlap, and a lease taken away from a running exec stops
//! its command (76).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::distlock;
use distlock::{LockConfig, LockOptions, LockProvider, LockProviderFactory};

const EX_USAGE: i32 = 64;
const EX_UNAVAILABLE: i32 = 69;
const EX_TEMPFAIL: i32 = 75;
const LEASE_LOST: i32 = 76;

/// Longest any case waits for a process to reach a point; only a hang gets there.
const PATIENCE: Duration = Duration::from_secs(90);

/// A directory of its own for one case's files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(case: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "distlock-exec-{case}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `ready` holds, failing the test after [`PATIENCE`].
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + PATIENCE;
    while !ready() {
        assert!(Instant::now() < until, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `distlock exec`, killed if the test fails before it ended. Its stderr goes to
/// a file, not a pipe: a process the command left behind must not keep the test waiting for
/// the end of the output.
struct Running {
    child: Child,
    stderr: PathBuf,
}

impl Running {
    fn start(cmd: &mut Command, scratch: &Scratch) -> Running {
        let stderr = scratch.path("stderr");
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().expect("start distlock exec");
        Running { child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit, failing after [`PATIENCE`]; returns the code and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let until = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < until, "distlock exec did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of live (not zombie) processes in process group `pgid`.
fn live_members(pgid: u32) -> Vec<u32> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its `)`.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X" {
            live.push(pid);
        }
    }
    live
}

/// Kills what is left of a process group when a case ends, so that a failing case leaves no
/// endless loop behind.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if !live_members(self.0).is_empty() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0)]).status();
        }
    }
}

/// A backend: the configuration file the exec processes read, and a provider of this test's
/// own to hold and take away locks.
struct Backend {
    name: &'static str,
    config_file: PathBuf,
    provider: Arc<dyn LockProvider>,
    rt: tokio::runtime::Runtime,
    _scratch: Scratch,
}

impl Backend {
    /// Connects to `name`'s test server; `None` (a loud skip) when it is missing, a failure
    /// with `DISTLOCK_REQUIRE_SERVICES=1`.
    fn connect(name: &'static str, case: &str) -> Option<Backend> {
        let scratch = Scratch::new(&format!("{name}-config"));
        let config_file = scratch.path("distlock.toml");
        std::fs::write(&config_file, common::config_toml(name)).unwrap();
        let config =
            LockConfig::load_over(LockConfig::memory(), Some(&config_file)).expect("test configuration");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let connected = rt
            .block_on(LockProviderFactory::new(None).create_lock_provider(&config))
            .map_err(|e| e.to_string());
        let provider = lock_testkit::require_or_skip(&format!("{case} on {name}"), connected)?;
        Some(Backend { name, config_file, provider, rt, _scratch: scratch })
    }

    fn key(&self, case: &str) -> String {
        format!("cli-exec/{}/{case}/{}-{}", self.name, std::process::id(), fastrand::u64(..))
    }

    /// `distlock --config FILE exec ARGS`.
    fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = distlock();
        cmd.arg("--config").arg(&self.config_file).arg("exec").args(args);
        cmd
    }

    fn output(&self, args: &[&str]) -> Output {
        self.exec(args).output().expect("run distlock exec")
    }

    fn holder(&self, key: &str) -> Option<String> {
        self.rt.block_on(self.provider.is_locked(key)).expect("is_locked").map(|i| i.owner)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.provider.close());
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command sees the key, owner and fencing token; its exit status, also death by a
/// signal, comes back as `distlock`'s; the lock is released afterwards.
fn status_and_environment(b: &Backend) {
    let key = b.key("env");
    let out = b.output(&[
        "--key",
        &key,
        "--owner",
        "ops-1",
        "--",
        "sh",
        "-c",
        r#"printf '%s|%s|%s\n' "$DISTLOCK_KEY" "$DISTLOCK_OWNER" "$DISTLOCK_FENCING_TOKEN"; exit 3"#,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let line = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields[..2], [key.as_str(), "ops-1"], "{line}");
    assert!(fields[2].parse::<u64>().is_ok(), "a numeric fencing token: {line}");

    let out = b.output(&["--key", &key, "--", "sh", "-c", r#"echo "$DISTLOCK_OWNER"; kill -KILL $$"#]);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
    let owner = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = owner.trim_end().split(':').collect();
    assert_eq!(parts.len(), 3, "default owner host:pid:random: {owner}");
    assert!(parts[1].parse::<u32>().is_ok(), "{owner}");

    let out = b.output(&["--key", &key, "--wait", "0s", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    if b.name != "memory" {
        assert_eq!(b.holder(&key), None, "released after the command");
    }
}

/// A lock held by another client: `--wait 1s` gives up with 75 and never starts the command.
fn wait_runs_out(b: &Backend) {
    let key = b.key("busy");
    let scratch = Scratch::new("busy");
    let marker = scratch.path("ran");
    b.rt.block_on(
        b.provider.lock(&LockOptions::new(key.as_str(), "holder-1").ttl(Duration::from_secs(60)).no_wait()),
    )
    .expect("free key");
    let out = b.output(&["--key", &key, "--wait", "1s", "--", "touch", marker.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(EX_TEMPFAIL), "{}", stderr(&out));
    assert!(stderr(&out).contains("not acquired"), "{}", stderr(&out));
    assert!(!marker.exists(), "the command must not run without the lock");
    assert_eq!(b.holder(&key).as_deref(), Some("holder-1"), "the holder keeps its lock");
    b.rt.block_on(b.provider.unlock(&key, "holder-1")).unwrap();
}

/// SIGTERM to an exec that waits for a busy lock ends the wait: 128 + 15, the command never
/// runs, the holder keeps its lock. The exec is known to wait once its wait is published.
fn signal_ends_the_wait(b: &Backend) {
    let key = b.key("signal-wait");
    let scratch = Scratch::new("signal-wait");
    let marker = scratch.path("ran");
    let hold = LockOptions::new(key.as_str(), "holder-1").ttl(Duration::from_secs(60)).no_wait();
    b.rt.block_on(b.provider.lock(&hold)).expect("free key");
    let owner = format!("waiter-{}", fastrand::u64(..));
    let mut cmd =
        b.exec(&["--key", &key, "--owner", &owner, "--wait", "60s", "--", "touch", marker.to_str().unwrap()]);
    let running = Running::start(&mut cmd, &scratch);
    wait_for("the exec's published wait", || {
        b.rt.block_on(b.provider.waits(&key)).expect("waits").iter().any(|w| *w.owner == *owner)
    });
    let kill = Command::new("kill").args(["-TERM", &running.pid().to_string()]).status().expect("kill");
    assert!(kill.success());
    let (code, err) = running.finish();
    assert_eq!(code, Some(128 + 15), "{err}");
    assert!(err.contains("signal 15 while waiting"), "{err}");
    assert!(!marker.exists(), "the command must not run without the lock");
    assert_eq!(b.holder(&key).as_deref(), Some("holder-1"), "the holder keeps its lock");
    b.rt.block_on(b.provider.unlock(&key, "holder-1")).unwrap();
}

/// Two processes each run several `distlock exec` rounds on one key; every command appends
/// `start T`, sleeps, appends `end T`. The file must show whole pairs only, with strictly
/// increasing tokens.
fn execs_never_overlap(b: &Backend) {
    const ROUNDS: usize = 4;
    let key = b.key("overlap");
    let scratch = Scratch::new("overlap");
    let log = scratch.path("log");
    let script = r#"echo "start $DISTLOCK_FENCING_TOKEN" >> "$LOG"; sleep 0.2; echo "end $DISTLOCK_FENCING_TOKEN" >> "$LOG""#;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (key, log) = (&key, &log);
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        let out = b
                            .exec(&["--key", key, "--wait", "60s", "--", "sh", "-c", script])
                            .env("LOG", log)
                            .output()
                            .expect("run distlock exec");
                        assert_eq!(out.status.code(), Some(0), "worker {w} round {round}: {}", stderr(&out));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
    });
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * 2 * ROUNDS, "{text}");
    let mut last: Option<u64> = None;
    for pair in lines.chunks(2) {
        let start = pair[0].strip_prefix("start ").unwrap_or_else(|| panic!("a start line: {text}"));
        assert_eq!(pair[1], format!("end {start}"), "a command ran inside another's hold:\n{text}");
        let token: u64 = start.parse().expect("token");
        assert!(last.is_none_or(|l| token > l), "tokens must strictly increase:\n{text}");
        last = Some(token);
    }
}

/// The lock is taken away from a running exec (released as its owner by another client);
/// the exec's next refresh finds the lease gone, and the command's whole process group is
/// stopped: by SIGTERM, or by SIGKILL after `--grace` when it ignores SIGTERM. Exit 76.
fn lost_lease_stops_the_command(b: &Backend, ignore_term: bool) {
    let key = b.key(if ignore_term { "lost-kill" } else { "lost-term" });
    let scratch = Scratch::new("lost");
    let pidfile = scratch.path("pid");
    let owner = format!("exec-{}", fastrand::u64(..));
    let trap = if ignore_term { "trap '' TERM; " } else { "" };
    let script = format!(
        r#"{trap}echo $$ > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE"; while :; do sleep 0.1; done"#
    );
    // A grace no test machine reaches when SIGTERM works; a short one when it cannot.
    let grace = if ignore_term { "1s" } else { "60s" };
    let mut cmd = b.exec(&[
        "--key", &key, "--owner", &owner, "--ttl", "3s", "--grace", grace, "--", "sh", "-c", &script,
    ]);
    let running = Running::start(cmd.env("PIDFILE", &pidfile), &scratch);
    wait_for("the command to start", || pidfile.exists());
    let pgid: u32 = scratch.read("pid").trim().parse().expect("pid");
    let _cleanup = GroupGuard(pgid);
    assert!(!live_members(pgid).is_empty(), "the command runs");
    assert_eq!(b.holder(&key).as_deref(), Some(owner.as_str()));

    b.rt.block_on(b.provider.unlock(&key, &owner)).expect("release the exec's lock from outside");
    let (code, err) = running.finish();
    assert_eq!(code, Some(LEASE_LOST), "{err}");
    assert!(err.contains(&format!("the lease on `{key}` was lost")), "{err}");
    assert_eq!(
        err.contains("sending SIGKILL"),
        ignore_term,
        "SIGKILL only for the command that ignores SIGTERM: {err}"
    );
    wait_for("the command's process group to end", || live_members(pgid).is_empty());
}

/// SIGTERM to `distlock` reaches the command, which ends as it chooses; its status is the exec's.
fn signals_reach_the_command(b: &Backend) {
    let key = b.key("signal");
    let scratch = Scratch::new("signal");
    let script =
        r#"trap 'echo got-term > "$DIR/term"; exit 9' TERM; touch "$DIR/ready"; while :; do sleep 0.1; done"#;
    let mut cmd = b.exec(&["--key", &key, "--", "sh", "-c", script]);
    let running = Running::start(cmd.env("DIR", &scratch.0), &scratch);
    wait_for("the command to start", || scratch.path("ready").exists());
    let kill = Command::new("kill").args(["-TERM", &running.pid().to_string()]).status().expect("kill");
    assert!(kill.success());
    let (code, err) = running.finish();
    assert_eq!(code, Some(9), "{err}");
    assert_eq!(scratch.read("term"), "got-term\n");
}

#[test]
fn memory_status_and_environment() {
    status_and_environment(&Backend::connect("memory", "status_and_environment").unwrap());
}

#[test]
fn memory_signals_reach_the_command() {
    signals_reach_the_command(&Backend::connect("memory", "signals_reach_the_command").unwrap());
}

#[test]
fn bad_arguments_are_usage_errors_before_any_server_is_asked() {
    // A server that is not there: bad input must be refused before connecting.
    let nowhere = ["--provider", "redis"];
    let cases: [&[&str]; 5] = [
        &["exec", "--key", "k", "--ttl", "0s", "--", "true"],
        &["exec", "--key", "", "--", "true"],
        &["exec", "--key", "k", "--wait", "2days", "--", "true"],
        &["exec", "--key", "k", "--ttl", "soon", "--", "true"],
        &["exec", "--key", "k"],
    ];
    for args in cases {
        let out = distlock()
            .args(nowhere)
            .args(args)
            .env("DISTLOCK_REDIS__URL", "redis://127.0.0.1:1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(EX_USAGE), "{args:?}: {}", stderr(&out));
    }
    let out = distlock()
        .args(["--config", "/nonexistent/distlock.toml", "exec", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", stderr(&out));
    let out = distlock().args(["inspect", "--older-than", "soon"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "other commands keep clap's status: {}", stderr(&out));
}

#[test]
fn an_unreachable_backend_is_69_and_a_missing_command_127() {
    let out = distlock()
        .args(["--provider", "redis", "exec", "--key", "k", "--", "true"])
        .env("DISTLOCK_REDIS__URL", "redis://127.0.0.1:1")
        .env("DISTLOCK_REDIS__CONNECT_TIMEOUT", "2s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(EX_UNAVAILABLE), "{}", stderr(&out));
    let out = distlock().args(["exec", "--key", "k", "--", "/nonexistent/command"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let dir = Scratch::new("not-executable");
    std::fs::write(dir.path("script"), "#!/bin/sh\n").unwrap();
    let out =
        distlock().args(["exec", "--key", "k", "--", dir.path("script").to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

macro_rules! server_backend {
    ($($backend:ident),* $(,)?) => {$(
        mod $backend {
            use super::*;

            fn connect(case: &str) -> Option<Backend> {
                Backend::connect(stringify!($backend), case)
            }

            #[test]
            fn status_and_environment() {
                if let Some(b) = connect("status_and_environment") {
                    super::status_and_environment(&b);
                }
            }

            #[test]
            fn wait_runs_out() {
                if let Some(b) = connect("wait_runs_out") {
                    super::wait_runs_out(&b);
                }
            }

            #[test]
            fn signal_ends_the_wait() {
                if let Some(b) = connect("signal_ends_the_wait") {
                    super::signal_ends_the_wait(&b);
                }
            }

            #[test]
            fn execs_never_overlap() {
                if let Some(b) = connect("execs_never_overlap") {
                    super::execs_never_overlap(&b);
                }
            }

            #[test]
            fn lost_lease_terminates_the_command() {
                if let Some(b) = connect("lost_lease_terminates_the_command") {
                    lost_lease_stops_the_command(&b, false);
                }
            }

            #[test]
            fn lost_lease_kills_a_command_that_ignores_sigterm() {
                if let Some(b) = connect("lost_lease_kills_a_command_that_ignores_sigterm") {
                    lost_lease_stops_the_command(&b, true);
                }
            }
        }
    )*};
}

server_backend!(mysql, postgres, redis, etcd);
