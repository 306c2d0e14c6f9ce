//! A holder in a process of its own, frozen (SIGSTOP) past its lease and then thawed: the
//! "paused worker" of a garbage-collection pause or a frozen VM.
//!
//! The test binary runs itself again as the holder: [`conformance_suite!`](crate::conformance_suite)
//! adds an ignored test, `distlock_holder_process`, that does nothing unless
//! [`CHILD_ENV`] is set. With it set, it takes the lock named there, prints its fencing token,
//! and then answers `refresh` and `unlock` commands on stdin with one line each. The child
//! also gets the harness's [`child_env`](crate::Harness::child_env), so that a harness whose
//! servers are its own (started per case) connects the child to the same ones.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{DeadlockPolicy, LockError, LockOptions, LockProvider, WaitPolicy};
use tokio::time::Instant;

use crate::history::assert_nothing_held;
use crate::{Ctx, Harness};

/// Environment variable that turns the child test into a holder: `<key>\t<ttl in ms>`.
pub const CHILD_ENV: &str = "DISTLOCK_TESTKIT_HOLDER";

/// Name of the child test the suite adds to every test binary.
pub const CHILD_TEST: &str = "distlock_holder_process";

/// The path of the child test inside the test binary whose module is `module` (as
/// `module_path!()` gives it): the module's path without the crate.
pub fn child_test(module: &str) -> String {
    match module.split_once("::") {
        Some((_, inner)) => format!("{inner}::{CHILD_TEST}"),
        None => CHILD_TEST.to_string(),
    }
}

/// Marks the child's answers in its output (the test harness prints on the same stream, and
/// may put `test NAME ... ` before them on one line).
const MARK: &str = "distlock-holder: ";

/// How a command's outcome is printed: `ok`, `denied` (not the holder any more) or
/// `error <retryable> <message>`.
fn outcome<T>(r: lock_core::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(LockError::NotHeld { .. } | LockError::NotOwner { .. } | LockError::LeaseLost { .. }) => {
            "denied".into()
        }
        Err(e) => format!("error {} {e}", e.is_retryable()),
    }
}

/// The child's side: runs only when [`CHILD_ENV`] is set.
pub async fn child(harness: &dyn Harness) {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let (key, ttl) = spec.split_once('\t').expect("key<TAB>ttl");
    let ttl = Duration::from_millis(ttl.parse().expect("ttl in ms"));
    let p = harness.provider().await;
    let owner = format!("paused-{}", std::process::id());
    let lease = p.lock(&LockOptions::new(key, owner.as_str()).ttl(ttl).no_wait()).await.expect("child lock");
    println!("{MARK}token {}", lease.token);
    std::io::stdout().flush().unwrap();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let reply = match line.expect("stdin").trim() {
            "refresh" => outcome(p.refresh_lock(key, &owner, ttl).await),
            "unlock" => outcome(p.unlock(key, &owner).await),
            "quit" | "" => break,
            // Waits for another key through a deadlock-detecting layer (the youngest wait of
            // a cycle fails): `deadlock`, or the outcome.
            cmd if cmd.starts_with("wait ") => {
                let other = &cmd["wait ".len()..];
                let detecting = crate::cases::deadlock::detecting(p.clone(), DeadlockPolicy::FailYoungest);
                // A short lease: this process may exit right after its wait was failed, before a
                // backend's background clean-up of the abandoned attempt (etcd's queue entry)
                // ran; what it leaves then ends with the lease.
                let o = LockOptions::new(other, owner.as_str())
                    .ttl(Duration::from_secs(2))
                    .wait(WaitPolicy::deadline(Duration::from_secs(30)));
                match detecting.lock(&o).await {
                    Err(e) if e.is_deadlock() => "deadlock".into(),
                    r => outcome(r),
                }
            }
            other => format!("error false unknown command {other}"),
        };
        println!("{MARK}{reply}");
        std::io::stdout().flush().unwrap();
    }
}

struct Holder {
    child: Child,
    stdin: ChildStdin,
    /// The child's output, line by line, read by a thread of its own so that a silent child
    /// fails the case instead of hanging it.
    lines: Receiver<String>,
}

/// The longest the case waits for one answer of the holder process.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

impl Holder {
    fn spawn(test_path: &str, key: &str, ttl: Duration, env: Vec<(String, String)>) -> Holder {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args([test_path, "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
            .envs(crate::service::child_env())
            .envs(env)
            .env(CHILD_ENV, format!("{key}\t{}", ttl.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the holder process");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                if line.is_err() || tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
        Holder { child, stdin, lines }
    }

    /// The next line the child printed that is meant for us (the test harness prints too).
    fn line(&mut self) -> String {
        loop {
            let line = match self.lines.recv_timeout(ANSWER_WITHIN) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the holder process said nothing for {ANSWER_WITHIN:?}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("the holder process exited early"),
            };
            if let Some(at) = line.find(MARK) {
                return line[at + MARK.len()..].trim().to_string();
            }
            // The test harness's own lines (a failure report, say): keep them visible.
            eprintln!("holder process: {line}");
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("write to the holder");
        self.stdin.flush().unwrap();
        self.line()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} failed");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks a thawed holder `command` until the answer is not a retryable error (its connections
/// may need a moment after the freeze).
fn settled(holder: &mut Holder, command: &str) -> String {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = holder.ask(command);
        if !reply.starts_with("error true") || std::time::Instant::now() >= until {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A holder process frozen past its TTL: another process takes the lock (with a larger
/// token), and once thawed the first one's refresh and unlock are refused.
pub async fn paused_holder_process(ctx: &Ctx, child_test: &str) {
    let p: Arc<dyn LockProvider> = ctx.provider().await;
    if !ctx.requires(p.capabilities(), |c| c.distributed, "distributed") {
        return;
    }
    let key = ctx.key("paused");
    let ttl = (ctx.short_ttl() * 4).max(Duration::from_secs(2));
    let (k, test, env) = (key.clone(), child_test.to_string(), ctx.harness.child_env());
    let (mut holder, token) = tokio::task::spawn_blocking(move || {
        let mut holder = Holder::spawn(&test, &k, ttl, env);
        let token: u64 = holder.line().strip_prefix("token ").unwrap().parse().unwrap();
        (holder, token)
    })
    .await
    .unwrap();
    assert!(p.is_locked(&key).await.unwrap().is_some(), "the holder process holds the lock");
    holder.signal("-STOP");
    let frozen = Instant::now();
    let o = LockOptions::new(key.as_str(), "next")
        .ttl(ttl * 4)
        .wait(WaitPolicy::deadline(Duration::from_secs(60)));
    let lease = p.lock(&o).await.expect("the frozen holder's lease runs out");
    assert!(frozen.elapsed() >= ttl / 2, "granted while the frozen holder's lease was young");
    if p.capabilities().fencing {
        assert!(lease.token.get() > token, "token {} after the frozen holder's {token}", lease.token);
    }
    holder.signal("-CONT");
    let (refresh, unlock) = tokio::task::spawn_blocking(move || {
        let r = settled(&mut holder, "refresh");
        let u = settled(&mut holder, "unlock");
        // Ends the child's command loop; it answers nothing.
        let _ = writeln!(holder.stdin, "quit");
        (r, u)
    })
    .await
    .unwrap();
    assert_eq!(refresh, "denied", "the thawed holder's refresh");
    assert_eq!(unlock, "denied", "the thawed holder's unlock");
    assert_eq!(p.is_locked(&key).await.unwrap().map(|i| i.owner).as_deref(), Some("next"));
    p.unlock(&key, "next").await.unwrap();
    assert_nothing_held(&*p, ctx.prefix(), Duration::from_secs(10)).await;
}

/// Deadlock across processes: this process's `alice` holds `a` and waits for `b`; the holder
/// process holds `b` and then waits for `a`. The holder's wait, the younger, fails with
/// `Deadlock` (found by its own detector, from the waits both processes published); alice's
/// does not, and she gets `b` once the holder lets go.
pub async fn deadlock_across_processes(ctx: &Ctx, child_test: &str) {
    let raw: Arc<dyn LockProvider> = ctx.provider().await;
    if !ctx.requires(raw.capabilities(), |c| c.distributed, "distributed") {
        return;
    }
    let p = crate::cases::deadlock::detecting(raw.clone(), DeadlockPolicy::FailYoungest);
    let (ka, kb) = (ctx.key("a"), ctx.key("b"));
    let ttl = Duration::from_secs(30);
    p.lock(&LockOptions::new(ka.as_str(), "alice").ttl(ttl).no_wait()).await.expect("a is free");
    let (k, test, env) = (kb.clone(), child_test.to_string(), ctx.harness.child_env());
    let mut holder = tokio::task::spawn_blocking(move || {
        let mut holder = Holder::spawn(&test, &k, ttl, env);
        assert!(holder.line().starts_with("token "), "the holder process holds b");
        holder
    })
    .await
    .unwrap();
    let (pa, o) = (
        p.clone(),
        LockOptions::new(kb.as_str(), "alice").ttl(ttl).wait(WaitPolicy::deadline(Duration::from_secs(60))),
    );
    let alice = tokio::spawn(async move { pa.lock(&o).await });
    crate::cases::deadlock::published(&*raw, ctx.prefix(), "alice").await;
    let command = format!("wait {ka}");
    let (holder_said, mut holder) =
        tokio::task::spawn_blocking(move || (holder.ask(&command), holder)).await.unwrap();
    assert_eq!(holder_said, "deadlock", "the holder process's younger wait is failed");
    assert!(!alice.is_finished(), "alice's older wait goes on");
    let unlocked = tokio::task::spawn_blocking(move || {
        let u = holder.ask("unlock");
        let _ = writeln!(holder.stdin, "quit");
        u
    })
    .await
    .unwrap();
    assert_eq!(unlocked, "ok");
    let lease = tokio::time::timeout(Duration::from_secs(30), alice).await.expect("alice gets b").unwrap();
    assert_eq!(lease.expect("alice proceeds").owner.as_ref(), "alice");
    p.unlock(&kb, "alice").await.unwrap();
    p.unlock(&ka, "alice").await.unwrap();
    assert_nothing_held(&*raw, ctx.prefix(), Duration::from_secs(10)).await;
}
