//! Helpers of the Redis integration tests: throwaway `redis-server` processes on free loopback
//! ports, and Redis Clusters of private cluster nodes.

#![allow(dead_code)] // each test file uses a part

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lock_testkit::servers::{Kind, PrivateServer};

/// The `redis-server` binary (`REDIS_SERVER` overrides the Debian path).
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".into())
}

/// The `redis-cli` binary, installed with `redis-server` (`REDIS_CLI` overrides it).
fn cli() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "/usr/bin/redis-cli".into())
}

/// Whether this machine can start throwaway servers; otherwise the caller skips (loudly) or,
/// with `DISTLOCK_REQUIRE_SERVICES=1`, fails.
pub(crate) fn can_start_servers(test: &str) -> bool {
    let missing: Vec<_> =
        [binary(), cli()].into_iter().filter(|b| !std::path::Path::new(b).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    if lock_testkit::services_required() {
        panic!("{test}: {missing:?} not found and DISTLOCK_REQUIRE_SERVICES=1");
    }
    eprintln!("SKIPPED {test}: {missing:?} not found");
    false
}

/// A `redis-server` without persistence on a free loopback port, stopped on drop.
pub(crate) struct Server {
    pub(crate) port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    lock_testkit::ports::free_port().expect("a free port")
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
        let mut cmd = Command::new(binary());
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()]).args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        let child = cmd
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

/// Number of keys on the server at `port` (`DBSIZE`).
pub(crate) fn dbsize(port: u16) -> u64 {
    let out = Command::new(cli()).args(["-p", &port.to_string(), "dbsize"]).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("DBSIZE answers a number")
}

/// Joins the cluster nodes on `ports` (slots not assigned yet) into one cluster of primaries
/// with `redis-cli --cluster create`, and waits until every node reports the cluster up.
pub(crate) fn create_cluster(ports: &[u16]) -> Result<(), String> {
    let addrs: Vec<_> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new(cli())
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run redis-cli --cluster create: {e}"))?;
    if !out.status.success() {
        return Err(format!("cluster create failed: {}", String::from_utf8_lossy(&out.stdout)));
    }
    let until = Instant::now() + Duration::from_secs(30);
    for port in ports {
        loop {
            let info = Command::new(cli())
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .map_err(|e| format!("redis-cli cluster info: {e}"))?;
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            if Instant::now() >= until {
                return Err(format!("cluster on {addrs:?} not up in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The URL fred connects to a cluster with, seeded with every node.
pub(crate) fn cluster_url(ports: &[u16]) -> String {
    let (first, others) = ports.split_first().expect("at least one node");
    let others: Vec<_> = others.iter().map(|p| format!("node=127.0.0.1:{p}")).collect();
    format!("redis-cluster://127.0.0.1:{first}?{}", others.join("&"))
}

/// A Redis Cluster of `n` primaries (no replicas) on free loopback ports, stopped on drop.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<PrivateServer>,
}

impl Cluster {
    /// Starts the nodes, assigns every slot, and waits until every node reports the cluster up.
    pub(crate) fn start(n: usize) -> Cluster {
        let nodes: Vec<_> = (0..n)
            .map(|_| PrivateServer::start(Kind::RedisClusterNode).expect("start a cluster node"))
            .collect();
        create_cluster(&nodes.iter().map(PrivateServer::port).collect::<Vec<_>>()).expect("form the cluster");
        Cluster { nodes }
    }

    /// The cluster's URL for fred.
    pub(crate) fn url(&self) -> String {
        cluster_url(&self.nodes.iter().map(PrivateServer::port).collect::<Vec<_>>())
    }
}

/// Has each server kill the named client connection (`CLIENT KILL ADDR ip:port`, which
/// matches one client exactly); returns how many the servers killed.
pub(crate) async fn client_kill(connections: &[lock_testkit::faults::ServerConnection]) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let mut killed = 0;
    for c in connections {
        let stream = tokio::net::TcpStream::connect(c.server).await.expect("connect to kill a client");
        let mut stream = BufReader::new(stream);
        let addr = c.client.to_string();
        let command =
            format!("*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nADDR\r\n${}\r\n{addr}\r\n", addr.len());
        stream.get_mut().write_all(command.as_bytes()).await.expect("send CLIENT KILL");
        let mut reply = String::new();
        stream.read_line(&mut reply).await.expect("read the answer to CLIENT KILL");
        // The filter form answers the number of clients it killed (`:1`, or `:0` for a
        // connection that closed meanwhile).
        let n: usize = reply
            .strip_prefix(':')
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("CLIENT KILL ADDR {addr}: {reply:?}"));
        killed += n;
    }
    killed
}
