//! Helpers of the Redis integration tests: the shared server's URL and throwaway
//! `redis-server` processes on free loopback ports.

#![allow(dead_code)] // each test file uses a part

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared test server.
pub(crate) fn url() -> String {
    std::env::var("DISTLOCK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The `redis-server` binary (`REDIS_SERVER` overrides the Debian path).
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".into())
}

/// Whether this machine can start throwaway servers; otherwise the caller skips (loudly) or,
/// with `DISTLOCK_REQUIRE_SERVICES=1`, fails.
pub(crate) fn can_start_servers(test: &str) -> bool {
    if std::path::Path::new(&binary()).exists() {
        return true;
    }
    if lock_testkit::services_required() {
        panic!("{test}: {} not found and DISTLOCK_REQUIRE_SERVICES=1", binary());
    }
    eprintln!("SKIPPED {test}: {} not found", binary());
    false
}

/// A `redis-server` without persistence on a free loopback port, stopped on drop.
pub(crate) struct Server {
    pub(crate) port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn reachable(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(100)).is_ok()
}

impl Server {
    /// Starts a server on a free port and waits until it accepts connections.
    pub(crate) fn start() -> Server {
        let mut s = Server { port: free_port(), child: None };
        s.restart();
        s
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (no shutdown save: its data is gone).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let until = Instant::now() + Duration::from_secs(10);
        while reachable(self.port) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port, empty.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !reachable(self.port) {
            assert!(Instant::now() < until, "redis-server did not open port {} in 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
