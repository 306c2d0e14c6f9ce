//! [`LockConfig`]: the original design's configuration, loaded with figment from defaults, a
//! TOML file and `DISTLOCK_*` environment variables (later sources win).
//!
//! ```toml
//! provider = "mysql"            # mysql | memory | redis | etcd
//! default_ttl = "5m"
//! default_retry_count = 3
//! default_retry_delay = "1s"
//! default_retry_jitter = 0.2
//!
//! [mysql]
//! url = "mysql://root@127.0.0.1:3306/test"   # not needed when the application passes its pool
//! table_name = "distributed_locks"
//!
//! [redis]
//! addr = "127.0.0.1:6379"
//! password = ""
//! db = 0
//!
//! [etcd]
//! endpoints = ["http://127.0.0.1:2379"]
//! ```
//!
//! Environment variables use `__` for nesting: `DISTLOCK_PROVIDER=memory`,
//! `DISTLOCK_DEFAULT_TTL=10m`, `DISTLOCK_MYSQL__TABLE_NAME=custom_locks`.

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use lock_core::workflow::{default_owner_prefix, WorkflowConfig, DEFAULT_WORKFLOW_PREFIX};
use lock_core::{validate, LockError, Result, WaitPolicy};
use serde::{Deserialize, Serialize};

/// Which backend serves the locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockProviderType {
    /// MySQL / MariaDB (feature `mysql`): the original design's default.
    Mysql,
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
            LockProviderType::Memory => "memory",
            LockProviderType::Redis => "redis",
            LockProviderType::Etcd => "etcd",
        }
    }
}

/// MySQL settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MySqlConfig {
    /// Connection URL; optional when the application hands its pool to the factory.
    pub url: Option<String>,
    /// Lock table (default `distributed_locks`).
    pub table_name: String,
    /// Pool size when the provider connects by URL.
    pub max_connections: u32,
}

impl Default for MySqlConfig {
    fn default() -> Self {
        MySqlConfig { url: None, table_name: "distributed_locks".into(), max_connections: 10 }
    }
}

/// Redis settings (the original design's `Addr`, `Password`, `DB`, or a URL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` URL; wins over `addr`/`password`/`db`.
    pub url: Option<String>,
    /// `host:port`.
    pub addr: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
    /// Database number.
    pub db: u8,
}

impl RedisConfig {
    /// The URL to connect to, from `url` or from `addr`/`password`/`db`.
    pub fn to_url(&self) -> Option<String> {
        if let Some(url) = &self.url {
            return Some(url.clone());
        }
        let addr = self.addr.as_ref()?;
        let auth = match self.password.as_deref() {
            Some(p) if !p.is_empty() => format!(":{p}@"),
            _ => String::new(),
        };
        Some(format!("redis://{auth}{addr}/{}", self.db))
    }
}

/// etcd settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// User name, if authentication is on.
    pub user: Option<String>,
    /// Password, if authentication is on.
    pub password: Option<String>,
}

/// The configuration of the lock system.
///
/// `LockConfig::default()` is the original design's `DefaultLockConfig()`: MySQL, table
/// `distributed_locks`, TTL 5 minutes, 3 retries 1 s apart (plus 20 % jitter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockConfig {
    /// The backend.
    pub provider: LockProviderType,
    /// MySQL settings.
    pub mysql: MySqlConfig,
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
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            provider: LockProviderType::Mysql,
            mysql: MySqlConfig::default(),
            redis: RedisConfig::default(),
            etcd: EtcdConfig::default(),
            default_ttl: lock_core::DEFAULT_TTL,
            default_retry_count: lock_core::DEFAULT_RETRY_COUNT,
            default_retry_delay: lock_core::DEFAULT_RETRY_DELAY,
            default_retry_jitter: 0.2,
            key_prefix: DEFAULT_WORKFLOW_PREFIX.into(),
            auto_refresh: true,
            lost_margin: None,
        }
    }
}

impl LockConfig {
    /// The original design's "switching implementation": the memory provider, other settings
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

    /// Checks values that parsing cannot: TTL, retry settings, the table name.
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
        if self.key_prefix.is_empty() || self.key_prefix.len() > validate::MAX_KEY_LEN / 2 {
            return Err(LockError::invalid("key_prefix", "must be 1 to 127 bytes"));
        }
        if self.provider == LockProviderType::Mysql {
            check_table_name(&self.mysql.table_name)?;
        }
        Ok(())
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

#[cfg(feature = "mysql")]
fn check_table_name(name: &str) -> Result<()> {
    lock_mysql::TableName::new(name).map(drop)
}

#[cfg(not(feature = "mysql"))]
fn check_table_name(_name: &str) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_original_design() {
        let c = LockConfig::default();
        assert_eq!(c.provider, LockProviderType::Mysql);
        assert_eq!(c.mysql.table_name, "distributed_locks");
        assert_eq!(c.default_ttl, Duration::from_secs(300));
        assert_eq!((c.default_retry_count, c.default_retry_delay), (3, Duration::from_secs(1)));
        c.validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn loads_toml_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "distlock.toml",
                r#"
                provider = "mysql"
                default_ttl = "10m"
                lost_margin = "45s"
                [mysql]
                table_name = "custom_locks"
                url = "mysql://root@127.0.0.1/test"
                "#,
            )?;
            jail.set_env("DISTLOCK_DEFAULT_RETRY_COUNT", "7");
            jail.set_env("DISTLOCK_MYSQL__MAX_CONNECTIONS", "3");
            jail.set_env("DISTLOCK_REQUIRE_SERVICES", "1");
            jail.set_env("DISTLOCK_TEST_MYSQL_URL", "ignored");
            let c = LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid");
            assert_eq!(c.default_ttl, Duration::from_secs(600));
            assert_eq!(c.mysql.table_name, "custom_locks");
            assert_eq!(c.default_retry_count, 7);
            assert_eq!(c.mysql.max_connections, 3);
            assert_eq!(c.workflow_config().lost_margin, Some(Duration::from_secs(45)));
            assert_eq!(LockConfig::default().workflow_config().lost_margin, None);
            Ok(())
        });
    }

    fn config_error(toml: &str) -> LockError {
        LockConfig::extract(
            Figment::from(Serialized::defaults(LockConfig::default())).merge(Toml::string(toml)),
        )
        .unwrap_err()
    }

    #[test]
    fn unknown_provider_is_a_clear_config_error() {
        match config_error(r#"provider = "zookeeper""#) {
            LockError::Config(msg) => assert!(msg.contains("zookeeper") && msg.contains("memory"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_ttl_and_bad_jitter_are_invalid() {
        assert!(matches!(
            config_error(r#"default_ttl = "0s""#),
            LockError::InvalidArgument { what: "default_ttl", .. }
        ));
        assert!(matches!(
            config_error("default_retry_jitter = 3.0"),
            LockError::InvalidArgument { what: "jitter", .. }
        ));
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn bad_table_name_is_invalid() {
        let e = config_error("[mysql]\ntable_name = \"locks; DROP TABLE x\"");
        assert!(matches!(e, LockError::InvalidArgument { what: "table name", .. }), "{e:?}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(matches!(config_error("default_tll = \"5m\""), LockError::Config(_)));
    }

    #[test]
    fn missing_file_is_reported() {
        assert!(matches!(
            LockConfig::load(Some(Path::new("/nonexistent/distlock.toml"))),
            Err(LockError::Config(_))
        ));
    }

    #[test]
    fn redis_url_from_addr_password_db() {
        let r = RedisConfig { addr: Some("h:6379".into()), password: Some("pw".into()), db: 2, url: None };
        assert_eq!(r.to_url().unwrap(), "redis://:pw@h:6379/2");
        assert_eq!(RedisConfig::default().to_url(), None);
    }
}
