//! Redlock over three throwaway `redis-server` masters on free loopback ports: the whole
//! conformance suite (the restart and pause cases on three masters of their own, the
//! paused-process case with its holder process on the case's masters), then what happens
//! when masters stop.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockOptions, LockProvider};
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::faults::{through, upstream_of, Faulty, ServerConnection};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::servers::{Kind, PrivateServer as Server};
use lock_testkit::Harness;

async fn masters(n: usize) -> Vec<Server> {
    tokio::task::spawn_blocking(move || {
        (0..n).map(|_| Server::start(Kind::Redis).expect("start redis-server")).collect()
    })
    .await
    .unwrap()
}

fn config(servers: &[Server]) -> RedisConfig {
    urls_config(&servers.iter().map(Server::url).collect::<Vec<_>>())
}

fn urls_config(urls: &[String]) -> RedisConfig {
    RedisConfig::redlock(urls.iter().cloned()).pool_size(2).command_timeout(Duration::from_secs(2))
}

/// Names the masters of the case to its holder process (`paused_holder_process`), which then
/// connects to them instead of starting masters of its own: URLs separated by spaces.
const MASTERS_ENV: &str = "DISTLOCK_TEST_REDLOCK_MASTERS";

/// Three masters per case, stopped when the case ends (or, in a holder process, the case's
/// masters named by `MASTERS_ENV`).
struct Redlock {
    urls: Vec<String>,
    _servers: Vec<Server>,
}

#[async_trait::async_trait]
impl Harness for Redlock {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        Arc::new(RedisLockProvider::connect(urls_config(&self.urls)).await.expect("connect to the masters"))
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![(MASTERS_ENV.into(), self.urls.join(" "))]
    }

    /// One fault proxy per master, with a short command timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let addrs: Vec<_> = self.urls.iter().map(|u| upstream_of(u)).collect();
        let proxies = FaultProxy::start_many(&addrs).await.expect("start fault proxies");
        let config = RedisConfig::redlock(self.urls.iter().zip(&proxies).map(|(u, p)| through(u, p)))
            .pool_size(2)
            .command_timeout(Duration::from_secs(1));
        let provider = RedisLockProvider::connect(config).await.expect("connect through the proxies");
        Some(Faulty::new(Arc::new(provider), proxies))
    }

    /// `CLIENT KILL ADDR` of each connection, on the master it is connected to.
    async fn kill_server_side(&self, connections: &[ServerConnection]) -> Option<usize> {
        Some(common::client_kill(connections).await)
    }

    /// The restart and pause cases start three masters of their own.
    fn private_server(&self) -> Option<Kind> {
        Some(Kind::Redis)
    }

    fn private_server_count(&self) -> usize {
        3
    }

    fn private_majority_keeps_locks(&self) -> bool {
        true
    }

    async fn provider_on(&self, urls: &[String]) -> Arc<dyn LockProvider> {
        let config =
            RedisConfig::redlock(urls.iter().cloned()).pool_size(2).command_timeout(Duration::from_secs(1));
        Arc::new(RedisLockProvider::connect(config).await.expect("connect to the private masters"))
    }
}

async fn harness() -> Result<Redlock, String> {
    if let Ok(urls) = std::env::var(MASTERS_ENV) {
        return Ok(Redlock { urls: urls.split(' ').map(String::from).collect(), _servers: Vec::new() });
    }
    if !common::can_start_servers("redlock conformance") {
        return Err("redis-server not installed".into());
    }
    let servers = masters(3).await;
    Ok(Redlock { urls: servers.iter().map(Server::url).collect(), _servers: servers })
}

lock_testkit::conformance_suite!(harness);

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

#[tokio::test]
async fn with_one_master_stopped_a_quorum_still_grants_and_with_two_it_fails_clearly() {
    if !common::can_start_servers(
        "with_one_master_stopped_a_quorum_still_grants_and_with_two_it_fails_clearly",
    ) {
        return;
    }
    let mut servers = masters(3).await;
    let p = RedisLockProvider::connect(config(&servers)).await.unwrap();
    let first = p.lock(&opts("job", "alice")).await.unwrap();

    let mut stopped = servers.remove(2);
    tokio::task::spawn_blocking(move || stopped.stop()).await.unwrap();
    // Two of three masters still hold alice's lock: bob is refused, alice refreshes and
    // releases, and the next lock is granted by the two that are left.
    assert!(p.try_lock(&opts("job", "bob")).await.unwrap_err().is_timeout());
    assert_eq!(p.is_locked("job").await.unwrap().unwrap().owner, "alice");
    p.refresh_lock("job", "alice", Duration::from_secs(30)).await.expect("a quorum refreshes");
    p.unlock("job", "alice").await.unwrap();
    let second = p.lock(&opts("job", "bob")).await.expect("two of three masters are a quorum");
    assert!(second.token > first.token);
    assert!(p.health().await.unwrap().detail.contains("2 of 3 masters up"));

    let mut stopped = servers.remove(1);
    tokio::task::spawn_blocking(move || stopped.stop()).await.unwrap();
    // One master left: no quorum, and the error says so instead of "busy".
    let err = p.lock(&opts("other", "carol")).await.unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("only 1 of 3 masters answered, a quorum needs 2"), "{err}");
    let err = p.refresh_lock("job", "bob", Duration::from_secs(30)).await.unwrap_err();
    assert!(err.is_system() && err.is_retryable(), "{err:?}");
    assert!(p.health().await.unwrap_err().is_system());
    // The one master that answered must not keep carol's minority grant.
    let single = RedisLockProvider::connect(RedisConfig::new(servers[0].url())).await.unwrap();
    assert_eq!(single.is_locked("other").await.unwrap(), None, "a minority grant was left behind");
    p.close().await.unwrap();
}

#[tokio::test]
async fn a_lock_held_on_a_minority_of_masters_is_not_held() {
    if !common::can_start_servers("a_lock_held_on_a_minority_of_masters_is_not_held") {
        return;
    }
    let servers = masters(3).await;
    // Somebody holds "job" on one master only (a leftover of a failed round).
    let single = RedisLockProvider::connect(RedisConfig::new(servers[0].url())).await.unwrap();
    single.lock(&opts("job", "mallory")).await.unwrap();
    let p = RedisLockProvider::connect(config(&servers)).await.unwrap();
    assert_eq!(p.is_locked("job").await.unwrap(), None);
    let lease = p.lock(&opts("job", "alice")).await.expect("two free masters are a quorum");
    assert!(lease.ttl <= Duration::from_secs(30) && lease.ttl > Duration::from_secs(29), "{:?}", lease.ttl);
    assert_eq!(p.is_locked("job").await.unwrap().unwrap().owner, "alice");
    p.close().await.unwrap();
}

/// A round that failed because two masters did not answer in time must not leave the lock
/// with them: a paused master applies the queued request when it resumes, and that grant
/// (a quorum, here) has to be given back, not stand until its TTL.
#[tokio::test]
async fn grants_applied_by_masters_that_answered_too_late_are_given_back() {
    if !common::can_start_servers("grants_applied_by_masters_that_answered_too_late_are_given_back") {
        return;
    }
    let servers = masters(3).await;
    let config = RedisConfig::redlock(servers.iter().map(Server::url))
        .pool_size(1)
        .command_timeout(Duration::from_millis(300));
    let p = RedisLockProvider::connect(config).await.unwrap();
    servers[1].pause();
    servers[2].pause();
    let err = p.lock(&opts("job", "carol")).await.expect_err("two of three masters are frozen");
    assert!(err.is_retryable(), "{err:?}");
    servers[1].resume();
    servers[2].resume();
    // Carol was told the lock is not hers, so two masters must not go on holding it for her
    // whole 30 s TTL: bob gets it well within his 10 s budget.
    let patient = opts("job", "bob").wait(lock_core::WaitPolicy::deadline(Duration::from_secs(10)));
    let lease = p.lock(&patient).await.expect("carol's late grants were given back");
    assert_eq!(&*lease.owner, "bob");
    p.unlock("job", "bob").await.unwrap();
    for s in &servers {
        let single = RedisLockProvider::connect(RedisConfig::new(s.url())).await.unwrap();
        assert_eq!(single.is_locked("job").await.unwrap(), None, "a master still holds the lock");
    }
    p.close().await.unwrap();
}
