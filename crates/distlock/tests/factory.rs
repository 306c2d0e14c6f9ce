//! The factory and manager: every provider type, the application's pool, clear errors.

use distlock::{LockConfig, LockError, LockManager, LockProviderFactory, LockProviderType};

#[tokio::test]
async fn memory_provider_from_config() {
    let manager = LockManager::new(None, LockConfig::memory()).await.unwrap();
    assert_eq!(manager.lock_provider().name(), "memory");
    let h = manager.workflow_lock_provider().lock_workflow_execution("e1").await.unwrap();
    assert_eq!(h.lock_key(), "distlock:workflow:execution:e1");
    h.unlock().await.unwrap();
    manager.close().await.unwrap();
    assert!(matches!(manager.lock_provider().list("").await, Err(LockError::Closed)));
}

#[tokio::test]
async fn mysql_without_pool_or_url_is_a_config_error() {
    let err = LockProviderFactory::new(None).create_lock_provider(&LockConfig::default()).await.unwrap_err();
    match err {
        LockError::Config(msg) => assert!(msg.contains("mysql.url"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn zero_ttl_is_rejected_by_the_factory() {
    let config = LockConfig { default_ttl: std::time::Duration::ZERO, ..LockConfig::memory() };
    assert!(matches!(
        LockProviderFactory::new(None).create_lock_provider(&config).await,
        Err(LockError::InvalidArgument { what: "default_ttl", .. })
    ));
}

#[tokio::test]
async fn mysql_on_the_applications_pool() {
    let url = lock_testkit::env::mysql_url();
    let pool = distlock::mysql::MySqlPool::connect(&url).await;
    let Some(pool) =
        lock_testkit::require_or_skip("mysql_on_the_applications_pool", pool.map_err(|e| e.to_string()))
    else {
        return;
    };
    let mut config = LockConfig::default();
    config.mysql.table_name = "distlock_factory_test".into();
    let manager = LockManager::new(Some(pool.clone()), config).await.unwrap();
    assert_eq!(manager.lock_provider().name(), "mysql");
    let id = format!("factory-{:08x}", std::process::id());
    let h = manager.workflow_lock_provider().lock_workflow_execution(&id).await.unwrap();
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM distlock_factory_test WHERE lock_key = ?")
        .bind(h.lock_key().as_bytes())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "the lock lives in the configured table");
    h.unlock().await.unwrap();
    manager.close().await.unwrap();
    assert!(!pool.is_closed(), "closing the manager leaves the application's pool open");
}

/// The factory's `Config` error message for `config`.
async fn config_error(config: LockConfig) -> String {
    match LockProviderFactory::new(None).create_lock_provider(&config).await {
        Err(LockError::Config(msg)) => msg,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A manager built from `config` takes, shows and releases a workflow lock on `backend`.
async fn round_trip(test: &str, mut config: LockConfig, backend: &str) {
    config.key_prefix = format!("distlock-test/factory/{:08x}/", std::process::id());
    let manager = LockManager::new(None, config).await;
    let Some(manager) = lock_testkit::require_or_skip(test, manager.map_err(|e| e.to_string())) else {
        return;
    };
    assert_eq!(manager.lock_provider().name(), backend);
    let h = manager.workflow_lock_provider().lock_workflow_execution("e1").await.unwrap();
    assert!(manager.lock_provider().is_locked(h.lock_key()).await.unwrap().is_some());
    h.unlock().await.unwrap();
    manager.close().await.unwrap();
}

#[tokio::test]
async fn etcd_without_endpoints_is_a_config_error() {
    let mut config = LockConfig { provider: LockProviderType::Etcd, ..LockConfig::default() };
    config.etcd.endpoints.clear();
    let msg = config_error(config).await;
    assert!(msg.contains("etcd.endpoints"), "{msg}");
}

#[tokio::test]
async fn etcd_from_config() {
    let endpoints = lock_testkit::env::etcd_endpoints();
    let mut config = LockConfig { provider: LockProviderType::Etcd, ..LockConfig::default() };
    config.etcd.endpoints = endpoints.split(',').map(String::from).collect();
    round_trip("etcd_from_config", config, "etcd").await;
}

#[tokio::test]
async fn redis_with_an_empty_url_is_a_config_error() {
    let mut config = LockConfig { provider: LockProviderType::Redis, ..LockConfig::default() };
    config.redis.url = String::new();
    let msg = config_error(config).await;
    assert!(msg.contains("url is empty"), "{msg}");
}

/// Address, password and database (the seed's Redis fields) from TOML reach the provider.
#[tokio::test]
async fn redis_from_addr_password_db() {
    use figment::providers::{Format, Serialized, Toml};
    let base = LockConfig { provider: LockProviderType::Redis, ..LockConfig::default() };
    let figment = figment::Figment::from(Serialized::defaults(base))
        .merge(Toml::string("[redis]\naddr = \"127.0.0.1:6379\"\ndb = 0\ncommand_timeout = \"3s\"\n"));
    let config = LockConfig::extract(figment).unwrap();
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379/0");
    let provider = LockProviderFactory::new(None).create_lock_provider(&config).await;
    if let Some(provider) =
        lock_testkit::require_or_skip("redis_from_addr", provider.map_err(|e| e.to_string()))
    {
        assert_eq!(provider.request_timeout(), Some(std::time::Duration::from_secs(3)));
        provider.close().await.unwrap();
    }
    round_trip("redis_from_addr", config, "redis").await;
}

/// The factory's stack waits through the waiting layer: with `[deadlock] policy =
/// "fail_youngest"`, two owners that wait for each other through one provider end with exactly
/// one `Deadlock`, and the other proceeds once the victim lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factory_providers_break_deadlocks_as_configured() {
    use std::time::Duration;

    use distlock::{DeadlockConfig, DeadlockPolicy, LockOptions, WaitPolicy};

    let config = LockConfig {
        deadlock: DeadlockConfig {
            enabled: true,
            interval: Duration::from_millis(100),
            policy: DeadlockPolicy::FailYoungest,
        },
        ..LockConfig::memory()
    };
    let p = LockProviderFactory::new(None).create_lock_provider(&config).await.unwrap();
    let wait = |key: &str, owner: &str| {
        LockOptions::new(key, owner).wait(WaitPolicy::deadline(Duration::from_secs(30)))
    };
    p.lock(&LockOptions::new("a", "alice")).await.unwrap();
    p.lock(&LockOptions::new("b", "bob")).await.unwrap();
    let (pa, o) = (p.clone(), wait("b", "alice"));
    let alice = tokio::spawn(async move { pa.lock(&o).await });
    while !p.waits("").await.unwrap().iter().any(|w| w.owner == "alice") {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let err = p.lock(&wait("a", "bob")).await.expect_err("a deadlock, broken at bob's younger wait");
    assert!(err.is_deadlock(), "{err:?}");
    assert!(!alice.is_finished());
    p.unlock("b", "bob").await.unwrap();
    let lease = alice.await.unwrap().expect("alice proceeds");
    assert_eq!(&*lease.owner, "alice");
}
