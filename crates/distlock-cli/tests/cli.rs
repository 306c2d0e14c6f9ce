//! The `distlock` binary's `serve` and `top` commands, run as a separate process.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::distlock;
use distlock::redis::RedisConfig;
use distlock::{LockConfig, LockManager, LockOptions, LockProviderType};

/// `GET path` on `addr`: status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // HTTP/1.0: the server closes after one answer, which is never chunked.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    (status, body.to_string())
}

/// A `distlock serve` process, killed if the test fails before it stopped it.
struct Served {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Reads the announced address (printed after the `--hold` locks were taken).
    fn address(&mut self) -> SocketAddr {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("stdout");
            assert!(n > 0, "serve ended before it listened");
            if let Some(rest) = line.split("listening on http://").nth(1) {
                return rest.split('/').next().unwrap().parse().expect("an address");
            }
        }
    }
}

#[test]
fn serve_holds_locks_serves_them_and_stops_on_sigterm() {
    let mut child = distlock()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hold",
            r#"cli:<b>&"x":ops&1"#,
            "--hold",
            "cli:plain:worker-2",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start distlock serve");
    let pid = child.id();
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut served = Served { child, stdout };
    let addr = served.address();

    let (status, body) = get(addr, "/locks?prefix=cli%3A");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""key":"cli:<b>&\"x\"","owner":"ops&1""#), "{body}");
    assert!(body.contains(r#""key":"cli:plain","owner":"worker-2""#), "{body}");
    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("<td>cli:&lt;b&gt;&amp;&quot;x&quot;</td><td>ops&amp;1</td>"), "{page}");
    let (status, health) = get(addr, "/healthz");
    assert_eq!((status, health.contains(r#""healthy":true"#)), (200, true), "{health}");
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"distlock_held_locks{provider="memory",class="cli"} 2"#), "{metrics}");

    let kill = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(kill.success());
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = served.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < until, "serve did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean stop: {status}");
    let mut rest = String::new();
    served.stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("distlock serve: stopped"), "{rest}");
}

#[test]
fn serve_refuses_a_malformed_hold() {
    let out = distlock().args(["serve", "--listen", "127.0.0.1:0", "--hold", "no-owner"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`no-owner` is not KEY:OWNER"), "{out:?}");
}

#[test]
fn top_once_prints_one_plain_frame() {
    let out = distlock().args(["top", "--once"]).output().expect("run distlock top");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("distlock top: memory · every key · "), "{text}");
    assert!(text.contains("HELD LOCKS (0)\n  no lock held\n"), "{text}");
    assert!(text.contains("WAITS (0)\n  nobody waits\n"), "{text}");
    assert!(text.contains("CONTENTION BY CLASS"), "{text}");
    assert!(!text.contains('\x1b'), "no screen control codes with --once: {text:?}");
}

/// `top` in one process shows a lock another process holds, on a server backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_lock_held_by_another_process() {
    let url = lock_testkit::env::redis_url();
    let config = LockConfig {
        provider: LockProviderType::Redis,
        redis: RedisConfig::new(url.as_str()),
        ..LockConfig::memory()
    };
    let manager = match LockManager::new(None, config).await {
        Ok(m) => m,
        Err(e) if lock_testkit::services_required() => panic!("Redis at {url} is required: {e}"),
        Err(e) => {
            eprintln!("SKIPPED top_shows_a_lock_held_by_another_process: Redis at {url}: {e}");
            return;
        }
    };
    let prefix = format!("cli-top-{}:", fastrand::u64(..));
    let key = format!("{prefix}<b>&\"x\"");
    let provider = manager.lock_provider();
    let lease = provider
        .lock(&LockOptions::new(key.as_str(), "holder-1").ttl(Duration::from_secs(60)))
        .await
        .unwrap();

    let out = tokio::task::spawn_blocking({
        let (prefix, url) = (prefix.clone(), url.clone());
        move || {
            distlock()
                .args(["--provider", "redis", "top", &prefix, "--once"])
                .env("DISTLOCK_REDIS__URL", url)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("run distlock top");
    provider.unlock(&key, "holder-1").await.unwrap();
    manager.close().await.unwrap();

    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with(&format!("distlock top: redis · under `{prefix}`")), "{text}");
    let row = text.lines().find(|l| l.contains(&key)).unwrap_or_else(|| panic!("{key} shown: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], [key.as_str(), "holder-1", &lease.token.to_string()], "{text}");
}
