//! The providers the series run on, built from each backend's own config (not through the
//! factory: its waiting and metrics layers would be measured too, and the backends' counters
//! would be out of reach), each in a namespace of this run: a table of its own on the SQL
//! servers, a key prefix of its own on Redis and etcd.

use std::sync::Arc;
use std::time::Duration;

use distlock::etcd::{EtcdConfig, EtcdLockProvider};
use distlock::memory::MemoryLockProvider;
use distlock::mysql::{MySqlLockConfig, MySqlLockProvider, WAITS_SUFFIX};
use distlock::postgres::{PgLockConfig, PgLockProvider, IDS_SUFFIX};
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
    /// What the bench reads and drops on the server besides the provider.
    handle: Handle,
}

/// A way to the server besides the provider: to read what the backend keeps there, and to
/// drop the SQL backends' tables at the end.
enum Handle {
    Memory,
    MySql(Arc<MySqlLockProvider>),
    Postgres(Arc<PgLockProvider>),
    Redis { client: fred::clients::Client, pattern: String },
    Etcd { client: Box<distlock::etcd::etcd_client::Client>, prefix: String },
}

/// What a backend keeps on its server: entries of this run's namespace, and bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Footprint {
    /// Rows of the lock table, or keys under the run's prefix.
    pub(crate) entries: u64,
    /// The table's size (SQL), or the whole server's memory or database size (Redis, etcd).
    pub(crate) bytes: u64,
}

impl Backend {
    /// The backend's counter of server round trips now, if it has one.
    pub(crate) fn attempts(&self) -> Option<u64> {
        self.counter.as_ref().map(|c| c())
    }

    /// What the backend keeps on its server now; `None` for the memory backend.
    pub(crate) async fn footprint(&self) -> Option<Footprint> {
        match &self.handle {
            Handle::Memory => None,
            Handle::MySql(p) => {
                let t = p.table();
                let entries: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t}"))
                    .fetch_one(p.pool())
                    .await
                    .expect("count rows");
                // InnoDB's size figures are estimates refreshed by ANALYZE.
                sqlx::query(&format!("ANALYZE TABLE {t}")).execute(p.pool()).await.expect("analyze");
                let bytes: i64 = sqlx::query_scalar(
                    "SELECT CAST(data_length + index_length AS SIGNED) FROM information_schema.tables \
                     WHERE table_schema = DATABASE() AND table_name = ?",
                )
                .bind(t)
                .fetch_one(p.pool())
                .await
                .expect("table size");
                Some(Footprint { entries: entries as u64, bytes: bytes as u64 })
            }
            Handle::Postgres(p) => {
                let t = format!("{}.{}", p.schema(), p.table());
                let entries: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {t}"))
                    .fetch_one(p.pool())
                    .await
                    .expect("count rows");
                let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
                    .bind(&t)
                    .fetch_one(p.pool())
                    .await
                    .expect("table size");
                Some(Footprint { entries: entries as u64, bytes: bytes as u64 })
            }
            Handle::Redis { client, pattern } => {
                use fred::interfaces::ClientLike;
                use futures::StreamExt;
                let mut keys = client.scan_buffered(pattern.clone(), Some(1000), None);
                let mut entries = 0;
                while let Some(k) = keys.next().await {
                    k.expect("scan");
                    entries += 1;
                }
                let info: String = client
                    .custom(
                        fred::types::CustomCommand::new_static(
                            "INFO",
                            fred::types::ClusterHash::Random,
                            false,
                        ),
                        vec!["memory"],
                    )
                    .await
                    .expect("INFO memory");
                let bytes = info
                    .lines()
                    .find_map(|l| l.strip_prefix("used_memory:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                Some(Footprint { entries, bytes })
            }
            Handle::Etcd { client, prefix } => {
                use distlock::etcd::etcd_client::GetOptions;
                let count = client
                    .kv_client()
                    .get(prefix.as_str(), Some(GetOptions::new().with_prefix().with_count_only()))
                    .await
                    .expect("count keys")
                    .count();
                let status = client.maintenance_client().status().await.expect("status");
                Some(Footprint { entries: count as u64, bytes: status.db_size() as u64 })
            }
        }
    }

    /// Drops what the run created on the server (while the pool is open) and closes the
    /// provider.
    pub(crate) async fn finish(self) {
        let drops: Vec<String> = match &self.handle {
            Handle::MySql(p) => {
                let t = p.table();
                vec![format!("DROP TABLE IF EXISTS {t}"), format!("DROP TABLE IF EXISTS {t}{WAITS_SUFFIX}")]
            }
            Handle::Postgres(p) => {
                let (s, t) = (p.schema(), p.table());
                vec![
                    format!("DROP TABLE IF EXISTS {s}.{t}"),
                    format!("DROP TABLE IF EXISTS {s}.{t}{WAITS_SUFFIX}"),
                    format!("DROP SEQUENCE IF EXISTS {s}.{t}{IDS_SUFFIX}"),
                ]
            }
            Handle::Redis { client, pattern } => {
                // The fencing counters outlive their locks by `fence_idle` (an hour by default).
                use fred::interfaces::KeysInterface;
                use futures::StreamExt;
                let mut keys = client.scan_buffered(pattern.clone(), Some(1000), None).chunks(500);
                while let Some(batch) = keys.next().await {
                    let batch: Vec<_> = batch.into_iter().filter_map(|k| k.ok()).collect();
                    if let Err(e) = client.del::<i64, _>(batch).await {
                        eprintln!("{}: deleting the run's keys failed: {e}", self.name);
                    }
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        for drop in drops {
            let done = match &self.handle {
                Handle::MySql(p) => sqlx::query(&drop).execute(p.pool()).await.map(|_| ()),
                Handle::Postgres(p) => sqlx::query(&drop).execute(p.pool()).await.map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = done {
                eprintln!("{}: `{drop}` failed: {e}", self.name);
            }
        }
        if let Err(e) = self.provider.close().await {
            eprintln!("{}: close failed: {e}", self.name);
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

/// How long statements may run on the SQL servers when the cleanup is to be quick; the
/// reaper's grace must be at least ten times as long.
const SHORT_STATEMENT: Duration = Duration::from_secs(2);

/// The reaper's grace and period when the cleanup is to be quick.
pub(crate) const SHORT_GRACE: Duration = Duration::from_secs(20);
const SHORT_REAP_EVERY: Duration = Duration::from_secs(5);

/// Redis's counter idle time when the cleanup is to be quick.
pub(crate) const SHORT_FENCE_IDLE: Duration = Duration::from_secs(2);

/// Connects `name` in the namespace `run` (a short hex id), with the backend's default
/// cleanup settings, or with short ones when `quick_cleanup` ([`SHORT_GRACE`],
/// [`SHORT_FENCE_IDLE`]). `Err` says why it cannot.
pub(crate) async fn connect(name: &str, run: &str, quick_cleanup: bool) -> Result<Backend, String> {
    let table = format!("scale_locks_{run}");
    let prefix = format!("scale/{run}/");
    match name {
        "memory" => Ok(Backend {
            name: "memory",
            provider: Arc::new(MemoryLockProvider::new()),
            counter_name: "",
            counter: None,
            server: None,
            handle: Handle::Memory,
        }),
        "mysql" => {
            let url = env::mysql_url();
            let mut config = MySqlLockConfig::default().table_name(table).max_connections(16);
            if quick_cleanup {
                config = config
                    .command_timeout(SHORT_STATEMENT)
                    .reap_grace(SHORT_GRACE)
                    .reap_interval(Some(SHORT_REAP_EVERY));
            }
            let p = Arc::new(MySqlLockProvider::connect(&url, config).await.map_err(|e| e.to_string())?);
            let counted = p.clone();
            Ok(Backend {
                name: "MySQL (MariaDB)",
                provider: p.clone(),
                counter_name: "statements",
                counter: Some(Box::new(move || counted.statements_sent())),
                server: Server::on_port(port_of(&url, 3306), false),
                handle: Handle::MySql(p),
            })
        }
        "postgres" => {
            let url = env::postgres_url();
            let mut config = PgLockConfig::default().table_name(table).max_connections(16);
            if quick_cleanup {
                config = config
                    .statement_timeout(SHORT_STATEMENT)
                    .reap_grace(SHORT_GRACE)
                    .reap_interval(Some(SHORT_REAP_EVERY));
            }
            let p = Arc::new(PgLockProvider::connect(&url, config).await.map_err(|e| e.to_string())?);
            let counted = p.clone();
            Ok(Backend {
                name: "PostgreSQL",
                provider: p.clone(),
                counter_name: "acquire attempts",
                counter: Some(Box::new(move || counted.acquire_attempts())),
                server: Server::on_port(port_of(&url, 5432), true),
                handle: Handle::Postgres(p),
            })
        }
        "redis" => {
            use fred::interfaces::ClientLike;
            let url = env::redis_url();
            let mut config = RedisConfig::new(url.clone()).key_prefix(prefix.clone()).pool_size(8);
            if quick_cleanup {
                config = config.fence_idle(SHORT_FENCE_IDLE);
            }
            let p = RedisLockProvider::connect(config).await.map_err(|e| e.to_string())?;
            let raw = fred::types::config::Config::from_url(&url).map_err(|e| e.to_string())?;
            let client = fred::types::Builder::from_config(raw).build().map_err(|e| e.to_string())?;
            client.init().await.map_err(|e| e.to_string())?;
            let counted = p.clone();
            Ok(Backend {
                name: "Redis",
                provider: Arc::new(p),
                counter_name: "acquire round trips",
                counter: Some(Box::new(move || counted.acquire_attempts())),
                server: Server::on_port(port_of(&url, 6379), false),
                handle: Handle::Redis { client, pattern: format!("{prefix}*") },
            })
        }
        "etcd" => {
            let endpoints = env::etcd_endpoints();
            let config = EtcdConfig::from_list(&endpoints)
                .prefix(prefix.clone())
                .request_timeout(Duration::from_secs(30));
            let p = EtcdLockProvider::connect(config).await.map_err(|e| e.to_string())?;
            let client = p.client().clone();
            Ok(Backend {
                name: "etcd",
                provider: Arc::new(p),
                counter_name: "",
                counter: None,
                server: Server::on_port(port_of(&endpoints, 2379), false),
                handle: Handle::Etcd { client: Box::new(client), prefix },
            })
        }
        other => Err(format!("unknown backend `{other}` (memory, mysql, postgres, redis, etcd)")),
    }
}
