//! The whole conformance suite on a Redis Cluster of three primaries started for each case:
//! every script touches one slot because a lock and its counter share a hash tag.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use lock_core::{LockOptions, LockProvider};
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::Harness;

struct RedisCluster {
    cluster: Cluster,
}

#[async_trait::async_trait]
impl Harness for RedisCluster {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        let config = RedisConfig::new(self.cluster.url()).pool_size(2);
        Arc::new(RedisLockProvider::connect(config).await.expect("connect to the cluster"))
    }

    fn processes_share_servers(&self) -> bool {
        false
    }
}

async fn start() -> Cluster {
    tokio::task::spawn_blocking(|| Cluster::start(3)).await.unwrap()
}

async fn harness() -> Result<RedisCluster, String> {
    if !common::can_start_servers("cluster conformance") {
        return Err("redis-server or redis-cli not installed".into());
    }
    Ok(RedisCluster { cluster: start().await })
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
        assert!(node.dbsize() > 0, "primary on port {} holds no key", node.port);
    }
    let listed: Vec<_> = p.list("jobs/").await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(listed, keys);
    p.close().await.unwrap();
}
