//! [`LockProviderFactory`]: builds the provider a [`LockConfig`] names.

use std::sync::Arc;

use lock_core::workflow::WorkflowLockProvider;
use lock_core::{Classifier, LockError, LockProvider, Metered, Result, Traced, Waiting};

use crate::config::{LockConfig, LockProviderType};

/// The application's database pool handed to the factory: a
/// `sqlx::MySqlPool` with feature `mysql`.
#[cfg(feature = "mysql")]
pub type Db = lock_mysql::MySqlPool;

/// The application's database pool handed to the factory. Without feature `mysql` there is
/// no pool type, so only `None` can be passed.
#[cfg(not(feature = "mysql"))]
#[derive(Debug, Clone)]
pub enum Db {}

/// Builds lock providers from a [`LockConfig`]. Every provider it builds logs its operations
/// through [`Traced`]; unless [`LockConfig::metrics`] is off, records metrics through
/// [`Metered`] (its classifier knowing the workflow locks under [`LockConfig::key_prefix`]);
/// and waits through [`Waiting`], which publishes waits and looks for deadlocks as
/// [`LockConfig::deadlock`] says:
/// `Traced(Metered(Waiting(backend)))`.
#[derive(Debug, Clone, Default)]
pub struct LockProviderFactory {
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    db: Option<Db>,
    /// The application's PostgreSQL pool, for the PostgreSQL provider.
    #[cfg(feature = "postgres")]
    pg: Option<lock_postgres::PgPool>,
}

#[cfg_attr(
    all(feature = "memory", feature = "mysql", feature = "postgres", feature = "redis", feature = "etcd"),
    allow(dead_code)
)]
fn disabled(kind: LockProviderType) -> LockError {
    LockError::Config(format!(
        "provider `{0}` is not compiled in: enable feature `{0}` of distlock",
        kind.as_str()
    ))
}

impl LockProviderFactory {
    /// A factory; `db` is used by the MySQL provider instead of connecting by URL.
    // Without `postgres` the pool field is gone and `db` is the only field left.
    #[cfg_attr(not(feature = "postgres"), allow(clippy::needless_update))]
    pub fn new(db: Option<Db>) -> Self {
        LockProviderFactory { db, ..Self::default() }
    }

    /// Hands the application's PostgreSQL pool to the PostgreSQL provider, which then uses it
    /// instead of connecting to `postgres.url` (its sessions must bound statements with
    /// `statement_timeout`; see `lock_postgres::PgLockProvider::from_pool`).
    #[cfg(feature = "postgres")]
    pub fn with_postgres_pool(mut self, pool: lock_postgres::PgPool) -> Self {
        self.pg = Some(pool);
        self
    }

    /// Builds the provider `config.provider` names.
    pub async fn create_lock_provider(&self, config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        config.validate()?;
        let provider = match config.provider {
            LockProviderType::Memory => self.memory(config)?,
            LockProviderType::Mysql => self.mysql(config).await?,
            LockProviderType::Postgres => self.postgres(config).await?,
            LockProviderType::Redis => self.redis(config).await?,
            LockProviderType::Etcd => self.etcd(config).await?,
        };
        Ok(Self::layered(provider, config))
    }

    /// Wraps `backend` in the layers every provider of the factory gets, as `config` sets
    /// them: `Traced(Metered(Waiting(backend)))`, without `Metered` when `config.metrics` is
    /// off. For a backend built by hand (a custom one, or one on a client the application
    /// configured itself); `config.provider` is not looked at.
    pub fn layered(backend: Arc<dyn LockProvider>, config: &LockConfig) -> Arc<dyn LockProvider> {
        let classifier =
            config.metrics.then(|| Classifier::default().workflow_prefix(config.key_prefix.clone()));
        let provider: Arc<dyn LockProvider> =
            Arc::new(Waiting::new(backend, config.deadlock.clone(), classifier.clone()));
        let provider: Arc<dyn LockProvider> = match classifier {
            Some(classifier) => Arc::new(Metered::with_classifier(provider, classifier)),
            None => provider,
        };
        Arc::new(Traced::new(provider))
    }

    /// Builds the provider and the workflow layer on top of it.
    pub async fn create_workflow_lock_provider(&self, config: &LockConfig) -> Result<WorkflowLockProvider> {
        let provider = self.create_lock_provider(config).await?;
        Ok(WorkflowLockProvider::new(provider, config.workflow_config()))
    }

    #[cfg(feature = "memory")]
    fn memory(&self, config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Ok(Arc::new(lock_memory::MemoryLockProvider::with_config(config.memory.clone())?))
    }

    #[cfg(not(feature = "memory"))]
    fn memory(&self, _config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Err(disabled(LockProviderType::Memory))
    }

    #[cfg(feature = "mysql")]
    async fn mysql(&self, config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        use lock_mysql::MySqlLockProvider;
        let settings = config.mysql.clone();
        let provider = match &self.db {
            Some(pool) => MySqlLockProvider::from_pool(pool.clone(), settings).await?,
            None => MySqlLockProvider::open(settings).await?,
        };
        Ok(Arc::new(provider))
    }

    #[cfg(not(feature = "mysql"))]
    async fn mysql(&self, _config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Err(disabled(LockProviderType::Mysql))
    }

    #[cfg(feature = "postgres")]
    async fn postgres(&self, config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        use lock_postgres::PgLockProvider;
        let settings = config.postgres.clone();
        let provider = match &self.pg {
            Some(pool) => PgLockProvider::from_pool(pool.clone(), settings).await?,
            None => PgLockProvider::open(settings).await?,
        };
        Ok(Arc::new(provider))
    }

    #[cfg(not(feature = "postgres"))]
    async fn postgres(&self, _config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Err(disabled(LockProviderType::Postgres))
    }

    #[cfg(feature = "redis")]
    async fn redis(&self, config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Ok(Arc::new(lock_redis::RedisLockProvider::connect(config.redis.clone()).await?))
    }

    #[cfg(not(feature = "redis"))]
    async fn redis(&self, _config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Err(disabled(LockProviderType::Redis))
    }

    #[cfg(feature = "etcd")]
    async fn etcd(&self, config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Ok(Arc::new(lock_etcd::EtcdLockProvider::connect(config.etcd.clone()).await?))
    }

    #[cfg(not(feature = "etcd"))]
    async fn etcd(&self, _config: &LockConfig) -> Result<Arc<dyn LockProvider>> {
        Err(disabled(LockProviderType::Etcd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs without the backend features (`cargo test -p distlock --no-default-features --lib`,
    /// part of `cargo xtask ci`): every backend type is still configurable and fails at run
    /// time with the feature to enable.
    #[cfg(not(any(
        feature = "memory",
        feature = "mysql",
        feature = "postgres",
        feature = "redis",
        feature = "etcd"
    )))]
    #[tokio::test]
    async fn a_backend_whose_feature_is_off_names_the_feature() {
        for kind in [
            LockProviderType::Memory,
            LockProviderType::Mysql,
            LockProviderType::Postgres,
            LockProviderType::Redis,
            LockProviderType::Etcd,
        ] {
            let config = LockConfig { provider: kind, ..LockConfig::default() };
            match LockProviderFactory::new(None).create_lock_provider(&config).await {
                Err(LockError::Config(msg)) => {
                    assert!(msg.contains(&format!("enable feature `{}`", kind.as_str())), "{msg}")
                }
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_disabled_message_names_the_feature() {
        let msg = disabled(LockProviderType::Redis).to_string();
        assert!(msg.contains("enable feature `redis`"), "{msg}");
    }
}
