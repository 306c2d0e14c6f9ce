//! The providers the series run on, built from each backend's own config (not through the
//! factory: its waiting and metrics layers would be measured too, and the backends' counters
//! would be out of reach), each in a namespace of this run: a table of its own on the SQL
//! servers, a key prefix of its own on Redis and etcd.

use std::sync::Arc;
use std::time::Duration;

use distlock::etcd::{EtcdConfig, EtcdLockProvider};
use distlock::memory::MemoryLockProvider;
use distlock::mysql::{MySqlLockConfig, MySqlLockProvider, WAITS_SUFFIX};
use distlock::postgres::{PgLockConfig, PgLockProvider};
use distlock::redis::{RedisConfig, RedisLockProvider};
use distlock::LockProvider;
use lock_testkit::env;

use crate::procfs::Server;

/// One backend under test.
pub(crate) struct Backend {
    /// Name in the tables' headings.
    pub(crate) name: &'static str,
    /// The provider, without the factory's layers.
    pub(crate) provider: Arc<dyn LockProvider>,
    /// What [`attempts`](Self::attempts) counts, for the table's heading.
    pub(crate) counter_name: &'static str,
    counter: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// The server process whose CPU time is read, if it is a local process.
    pub(crate) server: Option<Server>,
    /// What to drop when the run ends (the SQL backends' tables).
    cleanup: Cleanup,
}

enum Cleanup {
    Nothing,
    MySql(Arc<MySqlLockProvider>),
    Postgres(Arc<PgLockProvider>),
}

impl Backend {
    /// The backend's counter of server round trips now, if it has one.
    pub(crate) fn attempts(&self) -> Option<u64> {
        self.counter.as_ref().map(|c| c())
    }

    /// Closes the provider and drops what the run created on the server.
    pub(crate) async fn finish(self) {
        let _ = self.provider.close().await;
        match self.cleanup {
            Cleanup::Nothing => {}
            Cleanup::MySql(p) => {
                for t in [p.table().to_owned(), format!("{}{WAITS_SUFFIX}", p.table())] {
                    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {t}")).execute(p.pool()).await;
                }
            }
            Cleanup::Postgres(p) => {
                for t in [p.table().to_owned(), format!("{}{WAITS_SUFFIX}", p.table())] {
                    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {}.{t}", p.schema())).execute(p.pool()).await;
                }
            }
        }
    }
}

/// The backends named in `DISTLOCK_SCALE_BACKENDS` (comma-separated; default all of
/// `memory,mysql,postgres,redis,etcd`).
pub(crate) fn selected() -> Vec<String> {
    std::env::var("DISTLOCK_SCALE_BACKENDS")
        .unwrap_or_else(|_| "memory,mysql,postgres,redis,etcd".into())
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn port_of(url: &str, default: u16) -> u16 {
    let host = url.split("://").nth(1).unwrap_or(url);
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(['/', '?', ',']).next().unwrap_or(host);
    host.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(default)
}

/// Connects `name` in the namespace `run` (a short hex id). `Err` says why it cannot.
pub(crate) async fn connect(name: &str, run: &str) -> Result<Backend, String> {
    let table = format!("scale_locks_{run}");
    let prefix = format!("scale/{run}/");
    match name {
        "memory" => Ok(Backend {
            name: "memory",
            provider: Arc::new(MemoryLockProvider::new()),
            counter_name: "",
            counter: None,
            server: None,
            cleanup: Cleanup::Nothing,
        }),
        "mysql" => {
            let url = env::mysql_url();
            let config = MySqlLockConfig::default().table_name(table).max_connections(16);
            let p = Arc::new(MySqlLockProvider::connect(&url, config).await.map_err(|e| e.to_string())?);
            let counted = p.clone();
            Ok(Backend {
                name: "MySQL (MariaDB)",
                provider: p.clone(),
                counter_name: "statements",
                counter: Some(Box::new(move || counted.statements_sent())),
                server: Server::on_port(port_of(&url, 3306), false),
                cleanup: Cleanup::MySql(p),
            })
        }
        "postgres" => {
            let url = env::postgres_url();
            let config = PgLockConfig::default().table_name(table).max_connections(16);
            let p = Arc::new(PgLockProvider::connect(&url, config).await.map_err(|e| e.to_string())?);
            let counted = p.clone();
            Ok(Backend {
                name: "PostgreSQL",
                provider: p.clone(),
                counter_name: "acquire attempts",
                counter: Some(Box::new(move || counted.acquire_attempts())),
                server: Server::on_port(port_of(&url, 5432), true),
                cleanup: Cleanup::Postgres(p),
            })
        }
        "redis" => {
            let url = env::redis_url();
            let config = RedisConfig::new(url.clone()).key_prefix(prefix).pool_size(8);
            let p = RedisLockProvider::connect(config).await.map_err(|e| e.to_string())?;
            let counted = p.clone();
            Ok(Backend {
                name: "Redis",
                provider: Arc::new(p),
                counter_name: "acquire round trips",
                counter: Some(Box::new(move || counted.acquire_attempts())),
                server: Server::on_port(port_of(&url, 6379), false),
                cleanup: Cleanup::Nothing,
            })
        }
        "etcd" => {
            let endpoints = env::etcd_endpoints();
            let config = EtcdConfig::from_list(&endpoints).prefix(prefix).request_timeout(Duration::from_secs(30));
            let p = EtcdLockProvider::connect(config).await.map_err(|e| e.to_string())?;
            Ok(Backend {
                name: "etcd",
                provider: Arc::new(p),
                counter_name: "",
                counter: None,
                server: Server::on_port(port_of(&endpoints, 2379), false),
                cleanup: Cleanup::Nothing,
            })
        }
        other => Err(format!("unknown backend `{other}` (memory, mysql, postgres, redis, etcd)")),
    }
}
