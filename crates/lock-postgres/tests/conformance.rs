//! The shared conformance suite against PostgreSQL (`DISTLOCK_TEST_POSTGRES_URL`, else a container with
//! lock-testkit's `docker` feature, else `postgres://distlock@127.0.0.1:5432/distlock`; see `lock_testkit::service`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::LockProvider;
use lock_postgres::{PgLockConfig, PgLockProvider};
use lock_testkit::faults::{through, upstream_of, Faulty, ServerConnection};
use lock_testkit::proxy::FaultProxy;
use lock_testkit::service::{provide, Provided, Service};
use lock_testkit::Harness;
use sqlx::postgres::PgPoolOptions;

const TABLE: &str = "distlock_conformance";

/// Every provider is a separate client with its own pool and listener on the same table: two
/// processes.
struct Postgres {
    service: Provided,
}

impl Postgres {
    fn url(&self) -> &str {
        self.service.url()
    }
}

#[async_trait::async_trait]
impl Harness for Postgres {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        let config = PgLockConfig::default().table_name(TABLE).max_connections(4);
        Arc::new(PgLockProvider::connect(self.url(), config).await.expect("connect to PostgreSQL"))
    }

    fn private_server(&self) -> Option<lock_testkit::servers::Kind> {
        Some(lock_testkit::servers::Kind::Postgres)
    }

    async fn provider_at(&self, url: &str) -> Arc<dyn LockProvider> {
        let config = PgLockConfig::default()
            .table_name(TABLE)
            .max_connections(4)
            .statement_timeout(Duration::from_secs(1));
        Arc::new(PgLockProvider::connect(url, config).await.expect("connect to the private server"))
    }

    /// Every connection (the listener's too) through a fault proxy, with a short statement
    /// timeout.
    async fn faulty_provider(&self) -> Option<Faulty> {
        let proxy = FaultProxy::start(upstream_of(self.url())).await.expect("start a fault proxy");
        let config = PgLockConfig::default()
            .table_name(TABLE)
            .max_connections(4)
            .statement_timeout(Duration::from_secs(1))
            .acquire_timeout(Duration::from_secs(2));
        let provider =
            PgLockProvider::connect(&through(&lock_testkit::faults::plaintext(self.url()), &proxy), config)
                .await
                .expect("connect through the proxy");
        Some(Faulty::new(Arc::new(provider), vec![proxy]))
    }

    /// `pg_terminate_backend` of every `pg_stat_activity` row whose client address is one of
    /// `connections`' client addresses, from a connection of its own.
    async fn kill_server_side(&self, connections: &[ServerConnection]) -> Option<usize> {
        let server = upstream_of(self.url());
        let admin =
            PgPoolOptions::new().max_connections(1).connect(self.url()).await.expect("admin connection");
        let rows: Vec<(i32, Option<String>, Option<i32>)> = sqlx::query_as(
            "SELECT pid, host(client_addr), client_port FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
        )
        .fetch_all(&admin)
        .await
        .expect("read pg_stat_activity");
        let mut killed = 0;
        for (pid, host, port) in rows {
            let (Some(host), Some(port)) = (host, port) else { continue };
            let ours = connections.iter().any(|c| {
                c.server == server && c.client.port() as i32 == port && c.client.ip().to_string() == host
            });
            if !ours {
                continue;
            }
            let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap_or_else(|e| panic!("pg_terminate_backend({pid}): {e}"));
            // `false`: it ended between the read and the kill.
            killed += usize::from(done);
        }
        admin.close().await;
        Some(killed)
    }
}

async fn harness() -> Result<Postgres, String> {
    let h = Postgres { service: provide(Service::Postgres).await? };
    let config = PgLockConfig::default().table_name(TABLE).max_connections(1).listen(false);
    let probe = PgLockProvider::connect(h.url(), config).await.map_err(|e| format!("{}: {e}", h.url()))?;
    probe.close().await.map_err(|e| e.to_string())?;
    Ok(h)
}

lock_testkit::conformance_suite!(harness);
