//! [`LockConfig`]: the configuration of a provider, loaded with figment from defaults, a
//! TOML file and `DISTLOCK_*` environment variables (later sources win).
//!
//! ```toml
//! provider = "mysql"            # mysql | postgres | memory | redis | etcd
//! default_ttl = "5m"
//! default_retry_count = 3
//! default_retry_delay = "1s"
//! default_retry_jitter = 0.2
//! metrics = true               # record through the `metrics` facade (see docs/operations.md)
//!
//! [deadlock]                   # lock_core::DeadlockConfig
//! enabled = true               # waiting calls publish their waits; cycles are looked for
//! interval = "1s"              # while a call waits, at most one scan per interval
//! policy = "report"            # or "fail_youngest": fail the youngest wait of a cycle
//!
//! [memory]                     # lock_memory::MemoryConfig
//! shards = 64
//! reap_interval = "5s"
//!
//! [mysql]                      # lock_mysql::MySqlLockConfig
//! url = "mysql://root@127.0.0.1:3306/test"   # not needed when the application passes its pool
//! table_name = "distributed_locks"
//! max_connections = 10
//! command_timeout = "5s"
//! reap_interval = "30s"
//! reap_grace = "10m"
//! # [mysql.tls]; ca = "/etc/ssl/mysql/ca.pem", cert, key (feature `mysql-tls`), or
//! # url = "mysql://...?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ssl/mysql/ca.pem"
//!
//! [postgres]                   # lock_postgres::PgLockConfig
//! url = "postgres://distlock@127.0.0.1:5432/distlock"  # or hand the application's PgPool to the factory
//! schema = "public"
//! table_name = "distributed_locks"
//! statement_timeout = "5s"
//! reap_interval = "30s"
//! listen = true                # LISTEN/NOTIFY wake-ups across processes
//! # [postgres.tls]; ca, cert, key (feature `postgres-tls`), or url = "...?sslmode=verify-full&sslrootcert=..."
//!
//! [redis]                      # lock_redis::RedisConfig
//! addr = "127.0.0.1:6379"      # or url = "redis://..." / "redis-cluster://..."
//! password = ""
//! db = 0
//! # mode = "redlock"; nodes = ["redis://a:6379", "redis://b:6379", "redis://c:6379"]
//! key_prefix = "distlock:"
//! command_timeout = "5s"
//! # url = "rediss://..."; [redis.tls]; ca, cert, key, server_name (feature `redis-tls`)
//!
//! [etcd]                       # lock_etcd::EtcdConfig
//! endpoints = ["http://127.0.0.1:2379"]
//! user = "scheduler"           # with password, when the cluster has auth on
//! password = "secret"
//! prefix = "distlock/"
//! request_timeout = "5s"
//! # [etcd.tls]; ca = "/etc/etcd/ca.pem", cert, key, server_name (feature `etcd-tls`)
//! ```
//!
//! The `tls` tables are [`lock_core::tls::TlsFiles`], alike for every backend. Passwords
//! (in URLs, `redis.password`, `etcd.password`) never show in `Debug` output or messages.
//!
//! Each backend's table is that backend's own config struct, so every setting it has is
//! reachable here, with the defaults defined once, in the backend crate. Environment
//! variables use `__` for nesting: `DISTLOCK_PROVIDER=memory`, `DISTLOCK_DEFAULT_TTL=10m`,
//! `DISTLOCK_MYSQL__TABLE_NAME=custom_locks`, `DISTLOCK_REDIS__MODE=redlock`,
//! `DISTLOCK_REDIS__TLS__CA=/etc/ssl/redis/ca.pem`.

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use lock_core::workflow::{default_owner_prefix, WorkflowConfig, DEFAULT_WORKFLOW_PREFIX};
use lock_core::{validate, DeadlockConfig, LockError, Result, WaitPolicy};
use serde::{Deserialize, Serialize};

/// Which backend serves the locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockProviderType {
    /// MySQL / MariaDB (feature `mysql`): the default.
    Mysql,
    /// PostgreSQL (feature `postgres`).
    Postgres,
    /// In-process (feature `memory`).
    Memory,
    /// Redis (feature `redis`).
    Redis,
    /// etcd (feature `etcd`).
    Etcd,
}

impl LockProviderType {
    /// The name used in configuration and feature flags.
    pub fn as_str(self) -> &'static str {
        match self {
            LockProviderType::Mysql => "mysql",
            LockProviderType::Postgres => "postgres",
            LockProviderType::Memory => "memory",
            LockProviderType::Redis => "redis",
            LockProviderType::Etcd => "etcd",
        }
    }
}

/// MySQL settings: `lock_mysql::MySqlLockConfig` (every setting of the backend), or, with
/// feature `mysql` off, the table as written.
#[cfg(feature = "mysql")]
pub type MySqlConfig = lock_mysql::MySqlLockConfig;
/// MySQL settings: `lock_mysql::MySqlLockConfig` (every setting of the backend), or, with
/// feature `mysql` off, the table as written.
#[cfg(not(feature = "mysql"))]
pub type MySqlConfig = Disabled;

/// PostgreSQL settings: `lock_postgres::PgLockConfig` (url, schema, table, statement timeout,
/// reaper, LISTEN/NOTIFY), or, with feature `postgres` off, the table as written.
#[cfg(feature = "postgres")]
pub type PostgresConfig = lock_postgres::PgLockConfig;
/// PostgreSQL settings: `lock_postgres::PgLockConfig` (url, schema, table, statement timeout,
/// reaper, LISTEN/NOTIFY), or, with feature `postgres` off, the table as written.
#[cfg(not(feature = "postgres"))]
pub type PostgresConfig = Disabled;

/// Redis settings: `lock_redis::RedisConfig` (mode single, cluster or Redlock with its nodes,
/// key prefix, pool size, timeouts; a URL or the address, password and database), or, with
/// feature `redis` off, the table as written.
#[cfg(feature = "redis")]
pub type RedisConfig = lock_redis::RedisConfig;
/// Redis settings: `lock_redis::RedisConfig` (mode single, cluster or Redlock with its nodes,
/// key prefix, pool size, timeouts; a URL or the address, password and database), or, with
/// feature `redis` off, the table as written.
#[cfg(not(feature = "redis"))]
pub type RedisConfig = Disabled;

/// In-process settings: `lock_memory::MemoryConfig` (shards, reaper period), or, with feature
/// `memory` off, the table as written.
#[cfg(feature = "memory")]
pub type MemoryConfig = lock_memory::MemoryConfig;
/// In-process settings: `lock_memory::MemoryConfig` (shards, reaper period), or, with feature
/// `memory` off, the table as written.
#[cfg(not(feature = "memory"))]
pub type MemoryConfig = Disabled;

/// The settings of a backend whose feature is off: kept as written so that one configuration
/// file serves builds with different features, and never used (building that provider fails
/// with "enable feature `X`").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Disabled(figment::value::Dict);

/// etcd settings: `lock_etcd::EtcdConfig` (endpoints, user and password, key prefix,
/// timeouts, TLS files), or, with feature `etcd` off, the table as written.
#[cfg(feature = "etcd")]
pub type EtcdConfig = lock_etcd::EtcdConfig;
/// etcd settings: `lock_etcd::EtcdConfig` (endpoints, user and password, key prefix,
/// timeouts, TLS files), or, with feature `etcd` off, the table as written.
#[cfg(not(feature = "etcd"))]
pub type EtcdConfig = Disabled;

/// The configuration of the lock system.
///
/// `LockConfig::default()` is MySQL, table
/// `distributed_locks`, TTL 5 minutes, 3 retries 1 s apart (plus 20 % jitter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockConfig {
    /// The backend.
    pub provider: LockProviderType,
    /// In-process settings.
    pub memory: MemoryConfig,
    /// MySQL settings.
    pub mysql: MySqlConfig,
    /// PostgreSQL settings.
    pub postgres: PostgresConfig,
    /// Redis settings.
    pub redis: RedisConfig,
    /// etcd settings.
    pub etcd: EtcdConfig,
    /// Lease TTL of workflow locks.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    /// Retries after the first attempt.
    pub default_retry_count: u32,
    /// Delay between attempts.
    #[serde(with = "humantime_serde")]
    pub default_retry_delay: Duration,
    /// Random variation of each delay (0.0 to 1.0).
    pub default_retry_jitter: f64,
    /// Prefix of workflow lock keys.
    pub key_prefix: String,
    /// Refresh workflow leases in the background.
    pub auto_refresh: bool,
    /// How long before a workflow lease's end its `lost()` signal fires; unset: the larger of
    /// 10 % of the TTL and twice the provider's request timeout (at most half the TTL).
    #[serde(default, with = "humantime_serde")]
    pub lost_margin: Option<Duration>,
    /// Record metrics of every operation through the `metrics` facade
    /// ([`Metered`](lock_core::Metered)). On by default: without a recorder installed by the
    /// application it costs about two microseconds per acquire/release cycle, far below a
    /// server round trip.
    pub metrics: bool,
    /// Deadlock detection (`[deadlock]`): waiting calls publish their waits in the backend
    /// and look for wait-for cycles; see [`lock_core::deadlock`].
    pub deadlock: DeadlockConfig,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            provider: LockProviderType::Mysql,
            memory: MemoryConfig::default(),
            mysql: MySqlConfig::default(),
            postgres: PostgresConfig::default(),
            redis: RedisConfig::default(),
            etcd: EtcdConfig::default(),
            default_ttl: lock_core::DEFAULT_TTL,
            default_retry_count: lock_core::DEFAULT_RETRY_COUNT,
            default_retry_delay: lock_core::DEFAULT_RETRY_DELAY,
            default_retry_jitter: 0.2,
            key_prefix: DEFAULT_WORKFLOW_PREFIX.into(),
            auto_refresh: true,
            lost_margin: None,
            metrics: true,
            deadlock: DeadlockConfig::default(),
        }
    }
}

impl LockConfig {
    /// The memory provider, other settings
    /// default.
    pub fn memory() -> Self {
        LockConfig { provider: LockProviderType::Memory, ..Self::default() }
    }

    /// Defaults, then `file` (TOML, if given), then `DISTLOCK_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_over(LockConfig::default(), file)
    }

    /// Like [`load`](Self::load), starting from `base` instead of the defaults (a tool that
    /// runs on the memory backend unless told otherwise starts from [`LockConfig::memory`]).
    pub fn load_over(base: LockConfig, file: Option<&Path>) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(base));
        if let Some(file) = file {
            if !file.exists() {
                return Err(LockError::Config(format!("config file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        Self::extract(figment.merge(env()))
    }

    /// Extracts and validates a configuration from any figment.
    pub fn extract(figment: Figment) -> Result<Self> {
        let config: LockConfig = figment.extract().map_err(|e| LockError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parsing cannot: TTL, retry settings, and the settings of the backend
    /// that `provider` names.
    pub fn validate(&self) -> Result<()> {
        validate::ttl(self.default_ttl).map_err(|_| {
            LockError::invalid(
                "default_ttl",
                format!(
                    "{:?} must be between {:?} and {:?}",
                    self.default_ttl,
                    validate::MIN_TTL,
                    validate::MAX_TTL
                ),
            )
        })?;
        self.wait_policy().validate()?;
        self.deadlock.validate()?;
        if self.key_prefix.is_empty() || self.key_prefix.len() > validate::MAX_KEY_LEN / 2 {
            return Err(LockError::invalid("key_prefix", "must be 1 to 127 bytes"));
        }
        self.check_backend()
    }

    /// The wait policy of the `default_retry_*` settings.
    pub fn wait_policy(&self) -> WaitPolicy {
        WaitPolicy::Retry {
            retries: self.default_retry_count,
            delay: self.default_retry_delay,
            jitter: self.default_retry_jitter,
        }
    }

    /// The workflow layer's settings.
    pub fn workflow_config(&self) -> WorkflowConfig {
        WorkflowConfig {
            key_prefix: self.key_prefix.clone(),
            ttl: self.default_ttl,
            wait: self.wait_policy(),
            auto_refresh: self.auto_refresh,
            owner_prefix: default_owner_prefix(),
            lost_margin: self.lost_margin,
        }
    }
}

/// `DISTLOCK_*` variables, without the ones the test suite reads.
fn env() -> Env {
    Env::prefixed("DISTLOCK_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        !k.starts_with("test_") && k != "require_services"
    })
}

impl LockConfig {
    /// The chosen backend's own checks; a backend compiled out is the factory's to report.
    fn check_backend(&self) -> Result<()> {
        match self.provider {
            #[cfg(feature = "memory")]
            LockProviderType::Memory => self.memory.validate(),
            #[cfg(feature = "mysql")]
            LockProviderType::Mysql => self.mysql.validate().map(drop),
            #[cfg(feature = "postgres")]
            LockProviderType::Postgres => self.postgres.validate().map(drop),
            #[cfg(feature = "redis")]
            LockProviderType::Redis => self.redis.validate(),
            #[cfg(feature = "etcd")]
            LockProviderType::Etcd => self.etcd.validate(),
            #[cfg(not(all(
                feature = "memory",
                feature = "mysql",
                feature = "postgres",
                feature = "redis",
                feature = "etcd"
            )))]
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
