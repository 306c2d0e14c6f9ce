//! The shared conformance suite against MySQL/MariaDB (`DISTLOCK_TEST_MYSQL_URL`, else a container with
//! lock-testkit's `docker` feature, else `mysql://root@127.0.0.1:3306/test`; see `lock_testkit::service`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::faults::{through, upstream_of, Faulty, ServerConnection};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::service::{provide, Provided, Service};
use lock_testkit::Harness;
use sqlx::mysql::{MySqlDatabaseError, MySqlPoolOptions};

const TABLE: &str = "distlock_conformance";

/// Every provider is a separate client with its own pool on the same table: two processes.
struct MySql {
    service: Provided,
}

impl MySql {
    fn url(&self) -> &str {
        self.service.url()
    }
}

#[async_trait::async_trait]
impl Harness for MySql {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        let config = MySqlLockConfig::default().table_name(TABLE).max_connections(4);
        Arc::new(MySqlLockProvider::connect(self.url(), config).await.expect("connect to MySQL"))
    }

    fn private_server(&self) -> Option<lock_testkit::servers::Kind> {
        Some(lock_testkit::servers::Kind::MariaDb)
    }

    async fn provider_at(&self, url: &str) -> Arc<dyn LockProvider> {
        let config = MySqlLockConfig::default()
            .table_name(TABLE)
            .max_connections(4)
            .command_timeout(Duration::from_secs(1));
        Arc::new(MySqlLockProvider::connect(url, config).await.expect("connect to the private server"))
    }

    /// Every connection through a fault proxy, with a short statement timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let proxy = FaultProxy::start(upstream_of(self.url())).await.expect("start a fault proxy");
        let config = MySqlLockConfig::default()
            .table_name(TABLE)
            .max_connections(4)
            .command_timeout(Duration::from_secs(1))
            .acquire_timeout(Duration::from_secs(2));
        let provider = MySqlLockProvider::connect(
            &through(&lock_testkit::faults::plaintext(self.url()), &proxy),
            config,
        )
        .await
        .expect("connect through the proxy");
        Some(Faulty::new(Arc::new(provider), vec![proxy]))
    }

    /// `KILL CONNECTION` of every `processlist` row whose `HOST` is one of `connections`'
    /// client addresses, from a connection of its own.
    async fn kill_server_side(&self, connections: &[ServerConnection]) -> Option<usize> {
        let server = upstream_of(self.url());
        let admin =
            MySqlPoolOptions::new().max_connections(1).connect(self.url()).await.expect("admin connection");
        let rows: Vec<(u64, Option<String>)> =
            sqlx::query_as("SELECT CAST(ID AS UNSIGNED), HOST FROM information_schema.PROCESSLIST")
                .fetch_all(&admin)
                .await
                .expect("read the processlist");
        let mut killed = 0;
        for (id, host) in rows {
            let ours = host.is_some_and(|host| {
                connections.iter().any(|c| c.server == server && is_client(&host, c.client))
            });
            if !ours {
                continue;
            }
            match sqlx::query(&format!("KILL CONNECTION {id}")).execute(&admin).await {
                Ok(_) => killed += 1,
                // ER_NO_SUCH_THREAD: it closed between the read and the kill.
                Err(sqlx::Error::Database(e))
                    if e.try_downcast_ref::<MySqlDatabaseError>().is_some_and(|e| e.number() == 1094) => {}
                Err(e) => panic!("KILL CONNECTION {id}: {e}"),
            }
        }
        admin.close().await;
        Some(killed)
    }
}

/// Whether a `processlist` `HOST` (`ip:port`, or `localhost:port` when the server resolves
/// names) names the client address `client`.
fn is_client(host: &str, client: std::net::SocketAddr) -> bool {
    host == client.to_string()
        || (client.ip().is_loopback() && host == format!("localhost:{}", client.port()))
}

async fn harness() -> Result<MySql, String> {
    let h = MySql { service: provide(Service::MySql).await? };
    let config = MySqlLockConfig::default().table_name(TABLE).max_connections(1);
    let probe = MySqlLockProvider::connect(h.url(), config).await.map_err(|e| format!("{}: {e}", h.url()))?;
    probe.close().await.map_err(|e| e.to_string())?;
    Ok(h)
}

lock_testkit::conformance_suite!(harness);
