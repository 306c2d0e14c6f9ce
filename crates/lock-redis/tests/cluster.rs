//! The whole conformance suite on a Redis Cluster of three primaries started for each case:
//! every script touches one slot because a lock and its counter share a hash tag.
//!
//! The fault cases put a fault proxy in front of every node. The nodes announce their own
//! addresses (`CLUSTER SLOTS`), so the provider under test maps each of them to its node's
//! proxy with `RedisConfig::connect_to`, while the other providers of the case reach the
//! nodes directly. The paused-process case's holder process connects to the case's cluster
//! (named by `CLUSTER_ENV`). The restart and pause cases run on three private cluster nodes
//! the case joins into a cluster of its own; every lock lives on one primary, so the cluster
//! is no quorum and the minority cases do not apply.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use lock_core::{LockOptions, LockProvider};
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::faults::{upstream_of, Faulty, ServerConnection};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::servers::Kind;
use lock_testkit::Harness;

/// Names the case's cluster to its holder process (`paused_holder_process`), which then
/// connects to it instead of starting a cluster of its own: the cluster's URL.
const CLUSTER_ENV: &str = "DISTLOCK_TEST_REDIS_CLUSTER";

/// A cluster of the case's own, or (in a holder process) the case's cluster at `url`.
struct RedisCluster {
    url: String,
    cluster: Option<Cluster>,
}

#[async_trait::async_trait]
impl Harness for RedisCluster {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        let config = RedisConfig::new(self.url.as_str()).pool_size(2);
        Arc::new(RedisLockProvider::connect(config).await.expect("connect to the cluster"))
    }

    fn child_env(&self) -> Vec<(String, String)> {
        vec![(CLUSTER_ENV.into(), self.url.clone())]
    }

    /// `CLIENT KILL ADDR` of each connection, on the node it is connected to.
    async fn kill_server_side(&self, connections: &[ServerConnection]) -> Option<usize> {
        Some(common::client_kill(connections).await)
    }

    fn private_server(&self) -> Option<Kind> {
        Some(Kind::RedisClusterNode)
    }

    fn private_server_count(&self) -> usize {
        3
    }

    async fn prepare_private(&self, urls: &[String]) -> Result<(), String> {
        let ports: Vec<u16> = urls.iter().map(|u| upstream_of(u).port()).collect();
        tokio::task::spawn_blocking(move || common::create_cluster(&ports))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn provider_on(&self, urls: &[String]) -> Arc<dyn LockProvider> {
        let ports: Vec<u16> = urls.iter().map(|u| upstream_of(u).port()).collect();
        let config = RedisConfig::new(common::cluster_url(&ports))
            .pool_size(2)
            .command_timeout(Duration::from_secs(1));
        Arc::new(RedisLockProvider::connect(config).await.expect("connect to the private cluster"))
    }

    /// One fault proxy per node, every announced node address mapped to its proxy, and a
    /// short command timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let cluster = self.cluster.as_ref().expect("the case's own cluster");
        let nodes: Vec<SocketAddr> =
            cluster.nodes.iter().map(lock_testkit::servers::PrivateServer::addr).collect();
        let proxies = FaultProxy::start_many(&nodes).await.expect("start fault proxies");
        let mut config =
            RedisConfig::new(self.url.as_str()).pool_size(2).command_timeout(Duration::from_secs(1));
        for (node, proxy) in nodes.iter().zip(&proxies) {
            config = config.connect_to(node.ip().to_string(), node.port(), proxy.addr());
        }
        let provider = RedisLockProvider::connect(config).await.expect("connect through the proxies");
        Some(Faulty::new(Arc::new(provider), proxies))
    }
}

async fn start() -> Cluster {
    tokio::task::spawn_blocking(|| Cluster::start(3)).await.unwrap()
}

async fn harness() -> Result<RedisCluster, String> {
    if let Ok(url) = std::env::var(CLUSTER_ENV) {
        return Ok(RedisCluster { url, cluster: None });
    }
    if !common::can_start_servers("cluster conformance") {
        return Err("redis-server or redis-cli not installed".into());
    }
    let cluster = start().await;
    Ok(RedisCluster { url: cluster.url(), cluster: Some(cluster) })
}

lock_testkit::conformance_suite!(harness);

#[tokio::test]
async fn locks_spread_over_every_primary_and_list_finds_them_all() {
    if !common::can_start_servers("locks_spread_over_every_primary_and_list_finds_them_all") {
        return;
    }
    let cluster = start().await;
    let p = RedisLockProvider::connect(RedisConfig::new(cluster.url())).await.unwrap();
    let keys: Vec<_> = (0..60).map(|i| format!("jobs/{i:02} {{x}}")).collect();
    for k in &keys {
        p.lock(&LockOptions::new(k.as_str(), "alice").ttl(Duration::from_secs(30)).no_wait()).await.unwrap();
    }
    // Each primary holds some of the locks (and their counters).
    for node in &cluster.nodes {
        assert!(common::dbsize(node.port()) > 0, "primary on port {} holds no key", node.port());
    }
    let listed: Vec<_> = p.list("jobs/").await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(listed, keys);
    p.close().await.unwrap();
}
