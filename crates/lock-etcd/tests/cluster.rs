//! Leader failover on a 3-node etcd cluster that this test starts on loopback ports
//! (clients 23791-23793, peers 23801-23803, data in a temporary directory; every node is
//! killed when the test ends, also on panic).
//!
//! A holder holds a lock while three waiters queue; the leader is killed. The test checks
//! that no two callers ever held valid leases at the same time, that the holder either keeps
//! its lock (its refresh succeeds and the server still shows it) or is told it lost it
//! (`LeaseLost`), and that the waiters acquire in turn once a new leader is elected.
//!
//! Needs the `etcd` binary (`DISTLOCK_TEST_ETCD_BIN`, else `/usr/bin/etcd` or `etcd` on the
//! path); without it the test is skipped, or fails under `DISTLOCK_REQUIRE_SERVICES=1`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{LockError, LockOptions, LockProvider, WaitPolicy};
use lock_etcd::{EtcdConfig, EtcdLockProvider};
use tokio::time::Instant;

const NODES: usize = 3;
const CLIENT_PORT: u16 = 23791;
const PEER_PORT: u16 = 23801;
const TTL: Duration = Duration::from_secs(10);

/// The cluster's processes and data; `Drop` kills every node and removes the data.
struct Cluster {
    nodes: Vec<Option<Child>>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_url(i: usize) -> String {
    format!("http://127.0.0.1:{}", CLIENT_PORT + i as u16)
}

fn peer_url(i: usize) -> String {
    format!("http://127.0.0.1:{}", PEER_PORT + i as u16)
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let bin = lock_testkit::env::etcd_bin()?;
        for i in 0..NODES {
            for port in [CLIENT_PORT + i as u16, PEER_PORT + i as u16] {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Err(format!("port {port} is already in use"));
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("distlock-etcd-cluster-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cluster = Cluster { nodes: Vec::new(), dir };
        let initial: Vec<String> = (0..NODES).map(|i| format!("n{i}={}", peer_url(i))).collect();
        let token = format!("distlock-test-{:08x}", fastrand::u32(..));
        for i in 0..NODES {
            let log =
                std::fs::File::create(cluster.dir.join(format!("n{i}.log"))).map_err(|e| e.to_string())?;
            let child = Command::new(&bin)
                .args(["--name", &format!("n{i}")])
                .arg("--data-dir")
                .arg(cluster.dir.join(format!("n{i}")))
                .args(["--listen-client-urls", &client_url(i), "--advertise-client-urls", &client_url(i)])
                .args(["--listen-peer-urls", &peer_url(i), "--initial-advertise-peer-urls", &peer_url(i)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", &token])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            cluster.nodes.push(Some(child));
        }
        Ok(cluster)
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log_tail(&self) -> String {
        (0..NODES)
            .map(|i| {
                let text = std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default();
                let lines: Vec<_> = text.lines().rev().take(5).collect();
                format!("n{i}: {}", lines.into_iter().rev().collect::<Vec<_>>().join("\n    "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `(member id, leader id)` as node `i` sees it.
async fn status(i: usize) -> Option<(u64, u64)> {
    let config = EtcdConfig::new([client_url(i)]).connect_timeout(Duration::from_secs(1));
    let p = EtcdLockProvider::connect(config).await.ok()?;
    let mut client = p.client().clone();
    let s = tokio::time::timeout(Duration::from_secs(2), client.status()).await.ok()?.ok()?;
    Some((s.header()?.member_id(), s.leader()))
}

/// Index of the node that leads, once `alive` nodes agree on a leader among them.
async fn leader(alive: &[usize], deadline: Duration) -> Option<usize> {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        let mut seen = Vec::new();
        for &i in alive {
            if let Some(s) = status(i).await {
                seen.push((i, s));
            }
        }
        if seen.len() == alive.len() {
            let leader = seen[0].1 .1;
            if leader != 0 && seen.iter().all(|(_, (_, l))| *l == leader) {
                if let Some((i, _)) = seen.iter().find(|(_, (member, _))| *member == leader) {
                    return Some(*i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn provider(prefix: &str) -> EtcdLockProvider {
    let config = EtcdConfig::new((0..NODES).map(client_url))
        .prefix(prefix)
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(3));
    EtcdLockProvider::connect(config).await.expect("connect to the cluster")
}

/// When somebody held the lock: from `lock` returning until `unlock` was called, cut at the
/// lease's local deadline (after which the holder must not trust it).
#[derive(Debug, Clone)]
struct Held {
    who: String,
    token: u64,
    from: Instant,
    until: Instant,
}

/// Retries an operation through an election: `Unavailable` is the cluster changing leader.
async fn through_election<T, F, Fut>(what: &str, mut op: F) -> lock_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = lock_core::Result<T>>,
{
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Err(e @ LockError::Unavailable { .. }) if Instant::now() < until => {
                eprintln!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_one_holder_and_the_queue_moves_on() {
    let cluster = lock_testkit::require_or_skip("leader_failover", Cluster::start());
    let Some(mut cluster) = cluster else { return };
    let Some(first_leader) = leader(&[0, 1, 2], Duration::from_secs(30)).await else {
        panic!("the cluster elected no leader within 30 s:\n{}", cluster.log_tail());
    };

    let prefix = format!("distlock-failover/{:08x}/", fastrand::u32(..));
    let key = "job";
    let history = Arc::new(Mutex::new(Vec::<Held>::new()));

    // The holder takes the lock.
    let holder = provider(&prefix).await;
    let opts = LockOptions::new(key, "holder").ttl(TTL).no_wait();
    let lease = holder.lock(&opts).await.expect("holder acquires");
    let held_from = Instant::now();

    // Three waiters queue behind it, each on its own client.
    let mut waiters = Vec::new();
    for w in 0..3 {
        let p = provider(&prefix).await;
        let history = history.clone();
        waiters.push(tokio::spawn(async move {
            let owner = format!("waiter-{w}");
            let o = LockOptions::new(key, owner.as_str())
                .ttl(TTL)
                .wait(WaitPolicy::deadline(Duration::from_secs(90)));
            let l = p.lock(&o).await.unwrap_or_else(|e| panic!("{owner} never acquired: {e:?}"));
            let from = Instant::now();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let until = Instant::now().min(l.valid_until);
            history.lock().unwrap().push(Held { who: owner.clone(), token: l.token.0, from, until });
            through_election("waiter unlock", || p.unlock(key, &owner)).await.expect("waiter unlocks");
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued = holder.list(&prefix).await;
    assert!(queued.is_ok(), "{queued:?}");
    // The case is about a queue that waits through an election: every waiter must have its
    // entry in the queue before the leader goes (a waiter still on its first round trip is
    // told `Unavailable`, which is a different case).
    let entries = |holder: &EtcdLockProvider| {
        let mut kv = holder.client().kv_client();
        let prefix = prefix.clone();
        async move {
            let opts = etcd_client::GetOptions::new().with_prefix().with_count_only();
            kv.get(prefix, Some(opts)).await.map(|r| r.count()).unwrap_or(0)
        }
    };
    let queued_by = Instant::now() + Duration::from_secs(30);
    while entries(&holder).await < 4 {
        assert!(Instant::now() < queued_by, "the three waiters did not queue within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Kill the leader while the lock is held and the queue waits.
    cluster.kill(first_leader);
    let alive: Vec<usize> = (0..NODES).filter(|&i| i != first_leader).collect();
    let Some(new_leader) = leader(&alive, Duration::from_secs(30)).await else {
        panic!("no new leader within 30 s:\n{}", cluster.log_tail());
    };
    assert_ne!(new_leader, first_leader);

    // The holder either keeps its lock or is told it lost it.
    let mut valid_until = lease.valid_until;
    match through_election("holder refresh", || holder.refresh_lock(key, "holder", TTL)).await {
        Ok(refreshed) => {
            eprintln!(
                "failover: leader n{first_leader} killed, n{new_leader} leads; the holder kept its lock"
            );
            assert_eq!(refreshed.token, lease.token, "a refresh keeps the token");
            valid_until = refreshed.valid_until;
            let info = through_election("is_locked", || holder.is_locked(key)).await.unwrap();
            let info = info.expect("a refreshed lock is held");
            assert_eq!((info.owner.as_str(), info.token), ("holder", lease.token));
            let until = Instant::now().min(valid_until);
            history.lock().unwrap().push(Held {
                who: "holder".into(),
                token: lease.token.0,
                from: held_from,
                until,
            });
            through_election("holder unlock", || holder.unlock(key, "holder")).await.expect("holder unlocks");
        }
        Err(LockError::LeaseLost { .. }) => {
            eprintln!(
                "failover: leader n{first_leader} killed, n{new_leader} leads; the holder lost its lock"
            );
            // Told it lost the lock: it held it at most until its lease's local deadline.
            history.lock().unwrap().push(Held {
                who: "holder".into(),
                token: lease.token.0,
                from: held_from,
                until: valid_until.min(Instant::now()),
            });
        }
        Err(e) => panic!("the holder learned nothing about its lock: {e:?}\n{}", cluster.log_tail()),
    }

    // The queue moves on under the new leader.
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("waiters finish after the election")
            .expect("waiter task");
    }
    let mut history = history.lock().unwrap().clone();
    history.sort_by_key(|h| h.from);
    assert_eq!(history.len(), 4, "{history:?}");
    for pair in history.windows(2) {
        assert!(pair[0].until <= pair[1].from, "two holders at once: {:?} and {:?}", pair[0], pair[1]);
        assert!(pair[0].token < pair[1].token, "fencing tokens out of order: {history:?}");
    }
    let waiters_order: Vec<_> = history.iter().map(|h| h.who.as_str()).collect();
    assert_eq!(waiters_order, ["holder", "waiter-0", "waiter-1", "waiter-2"], "FIFO across the failover");
    assert_eq!(through_election("is_locked", || holder.is_locked(key)).await.unwrap(), None);
}
