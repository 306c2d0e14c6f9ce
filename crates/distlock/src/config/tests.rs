use super::*;

#[test]
fn default_is_mysql_with_the_seed_defaults() {
    let c = LockConfig::default();
    assert_eq!(c.provider, LockProviderType::Mysql);
    #[cfg(feature = "mysql")]
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
        assert_eq!(c.default_retry_count, 7);
        #[cfg(feature = "mysql")]
        assert_eq!((c.mysql.table_name.as_str(), c.mysql.max_connections), ("custom_locks", 3));
        // Without the backend compiled in, its table is kept as written.
        #[cfg(not(feature = "mysql"))]
        assert!(format!("{:?}", c.mysql).contains("custom_locks"), "{:?}", c.mysql);
        assert_eq!(c.workflow_config().lost_margin, Some(Duration::from_secs(45)));
        assert_eq!(LockConfig::default().workflow_config().lost_margin, None);
        Ok(())
    });
}

/// Every backend setting is reachable from TOML and from `DISTLOCK_*` variables and lands
/// in the backend's own config struct, which the factory hands over whole.
#[cfg(all(feature = "memory", feature = "mysql", feature = "redis"))]
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn every_backend_setting_round_trips_from_toml_and_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "distlock.toml",
            r#"
            [memory]
            shards = 8
            reap_interval = "2s"
            [mysql]
            url = "mysql://u@db/locks"
            table_name = "t_locks"
            auto_migrate = false
            reap_interval = "7s"
            reap_grace = "20m"
            max_connections = 3
            acquire_timeout = "4s"
            command_timeout = "6s"
            [redis]
            mode = "redlock"
            nodes = ["redis://a:1", "redis://b:2", "redis://c:3"]
            clock_drift_factor = 0.02
            key_prefix = "jobs:"
            pool_size = 9
            command_timeout = "700ms"
            connect_timeout = "2s"
            fence_idle = "30m"
            [redis.connect_to]
            "a:1" = "127.0.0.1:17001"
            "#,
        )?;
        let c = LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid");
        let m = &c.memory;
        assert_eq!((m.shards, m.reap_interval), (8, Some(Duration::from_secs(2))));
        let my = &c.mysql;
        assert_eq!(my.url.as_deref(), Some("mysql://u@db/locks"));
        assert_eq!((my.table_name.as_str(), my.auto_migrate, my.max_connections), ("t_locks", false, 3));
        assert_eq!(
            (my.reap_interval, my.reap_grace),
            (Some(Duration::from_secs(7)), Duration::from_secs(1200))
        );
        assert_eq!(
            (my.acquire_timeout, my.command_timeout),
            (Duration::from_secs(4), Duration::from_secs(6))
        );
        let r = &c.redis;
        assert_eq!(
            r.mode,
            lock_redis::RedisMode::Redlock {
                urls: vec!["redis://a:1".into(), "redis://b:2".into(), "redis://c:3".into()],
                clock_drift_factor: 0.02
            }
        );
        assert_eq!((r.key_prefix.as_str(), r.pool_size), ("jobs:", 9));
        assert_eq!(r.connect_to.get(&("a".to_owned(), 1)), Some(&"127.0.0.1:17001".parse().unwrap()));
        assert_eq!(
            (r.command_timeout, r.connect_timeout),
            (Duration::from_millis(700), Duration::from_secs(2))
        );
        assert_eq!(r.fence_idle, Duration::from_secs(1800));

        // The same through the environment, over the file.
        jail.set_env("DISTLOCK_MEMORY__SHARDS", "16");
        jail.set_env("DISTLOCK_MYSQL__TABLE_NAME", "env_locks");
        jail.set_env("DISTLOCK_MYSQL__COMMAND_TIMEOUT", "2s");
        jail.set_env("DISTLOCK_MYSQL__REAP_GRACE", "1h");
        jail.set_env("DISTLOCK_REDIS__MODE", "single");
        jail.set_env("DISTLOCK_REDIS__NODES", "[]");
        jail.set_env("DISTLOCK_REDIS__URL", "redis-cluster://h:7000");
        jail.set_env("DISTLOCK_REDIS__KEY_PREFIX", "env:");
        jail.set_env("DISTLOCK_REDIS__POOL_SIZE", "2");
        let c = LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid");
        assert_eq!(c.memory.shards, 16);
        assert_eq!(
            (c.mysql.table_name.as_str(), c.mysql.command_timeout),
            ("env_locks", Duration::from_secs(2))
        );
        assert_eq!(c.mysql.reap_grace, Duration::from_secs(3600));
        assert_eq!(
            (c.redis.mode.clone(), c.redis.url.as_str()),
            (lock_redis::RedisMode::Single, "redis-cluster://h:7000")
        );
        assert_eq!((c.redis.key_prefix.as_str(), c.redis.pool_size), ("env:", 2));
        Ok(())
    });
}

/// `metrics` is on by default, off from TOML, and the environment wins over the file.
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn metrics_switch_round_trips_from_toml_and_env() {
    assert!(LockConfig::default().metrics);
    figment::Jail::expect_with(|jail| {
        jail.create_file("distlock.toml", "provider = \"memory\"\n")?;
        assert!(LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid").metrics);
        jail.create_file("distlock.toml", "provider = \"memory\"\nmetrics = false\n")?;
        assert!(!LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid").metrics);
        jail.set_env("DISTLOCK_METRICS", "true");
        assert!(LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid").metrics);
        jail.set_env("DISTLOCK_METRICS", "false");
        assert!(!LockConfig::load(None).expect("valid").metrics);
        Ok(())
    });
    let e = config_error("metrics = \"sometimes\"");
    assert!(matches!(&e, LockError::Config(_)), "{e:?}");
}

/// `[deadlock]` from TOML and `DISTLOCK_DEADLOCK__*`; a bad interval or policy is refused.
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn deadlock_settings_come_from_toml_and_env() {
    use lock_core::{DeadlockConfig, DeadlockPolicy};
    assert_eq!(LockConfig::default().deadlock, DeadlockConfig::default());
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "distlock.toml",
            "provider = \"memory\"\n[deadlock]\ninterval = \"250ms\"\npolicy = \"fail_youngest\"\n",
        )?;
        let c = LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid");
        assert_eq!(c.deadlock.interval, Duration::from_millis(250));
        assert_eq!(c.deadlock.policy, DeadlockPolicy::FailYoungest);
        assert!(c.deadlock.enabled);
        jail.set_env("DISTLOCK_DEADLOCK__ENABLED", "false");
        assert!(!LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid").deadlock.enabled);
        jail.set_env("DISTLOCK_DEADLOCK__INTERVAL", "1ms");
        match LockConfig::load(Some(Path::new("distlock.toml"))) {
            Err(LockError::InvalidArgument { what: "deadlock.interval", .. }) => {}
            other => panic!("{other:?}"),
        }
        Ok(())
    });
    let e = config_error("[deadlock]\npolicy = \"kill_everyone\"");
    assert!(matches!(&e, LockError::Config(m) if m.contains("kill_everyone")), "{e:?}");
}

/// The etcd table is `lock_etcd::EtcdConfig`: every setting from TOML and `DISTLOCK_ETCD__*`.
#[cfg(feature = "etcd")]
#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn etcd_settings_come_from_toml_and_env() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "distlock.toml",
            r#"
            provider = "etcd"
            [etcd]
            endpoints = ["http://a:2379", "http://b:2379"]
            user = "scheduler"
            password = "secret"
            prefix = "jobs/"
            request_timeout = "2s"
            "#,
        )?;
        jail.set_env("DISTLOCK_ETCD__CONNECT_TIMEOUT", "3s");
        let c = LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid");
        let want = lock_etcd::EtcdConfig::new(["http://a:2379", "http://b:2379"])
            .user("scheduler", "secret")
            .prefix("jobs/")
            .request_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(3));
        assert_eq!(c.etcd, want);
        Ok(())
    });
    let e = config_error("provider = \"etcd\"\n[etcd]\nendpoints = []");
    assert!(matches!(&e, LockError::Config(msg) if msg.contains("etcd.endpoints")), "{e:?}");
}

#[cfg(feature = "redis")]
#[test]
fn redis_nodes_without_redlock_mode_are_a_config_error() {
    let e = config_error("[redis]\nnodes = [\"redis://a:1\"]");
    assert!(matches!(&e, LockError::Config(msg) if msg.contains("redlock")), "{e:?}");
}

#[cfg(feature = "memory")]
#[test]
fn bad_memory_settings_are_invalid_when_memory_is_chosen() {
    let e = config_error("provider = \"memory\"\n[memory]\nshards = 3");
    assert!(matches!(e, LockError::InvalidArgument { what: "shards", .. }), "{e:?}");
}

fn config_error(toml: &str) -> LockError {
    LockConfig::extract(Figment::from(Serialized::defaults(LockConfig::default())).merge(Toml::string(toml)))
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
#[cfg(all(feature = "mysql", feature = "postgres", feature = "redis", feature = "etcd"))]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn tls_tables_come_from_toml_and_env_and_no_password_shows() {
    use lock_core::tls::TlsFiles;
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "distlock.toml",
            r#"
            provider = "memory"
            [mysql]
            url = "mysql://app:my-hunter2@db/locks?ssl-mode=VERIFY_IDENTITY"
            [mysql.tls]
            ca = "/etc/ssl/ca.pem"
            cert = "/etc/ssl/client.pem"
            key = "/etc/ssl/client-key.pem"
            [postgres]
            url = "postgres://app:pg-hunter2@db/locks"
            [postgres.tls]
            ca = "/etc/ssl/ca.pem"
            [redis]
            url = "rediss://:redis-hunter2@cache:6380/0"
            [redis.tls]
            ca = "/etc/ssl/ca.pem"
            [etcd]
            endpoints = ["https://etcd:2379"]
            user = "root"
            password = "etcd-hunter2"
            [etcd.tls]
            ca = "/etc/ssl/ca.pem"
            server_name = "etcd.internal"
            "#,
        )?;
        jail.set_env("DISTLOCK_REDIS__TLS__SERVER_NAME", "cache.internal");
        let c = LockConfig::load(Some(Path::new("distlock.toml"))).expect("valid");
        assert_eq!(
            c.mysql.tls,
            Some(TlsFiles::new("/etc/ssl/ca.pem").identity("/etc/ssl/client.pem", "/etc/ssl/client-key.pem"))
        );
        assert_eq!(c.redis.tls, Some(TlsFiles::new("/etc/ssl/ca.pem").server_name("cache.internal")));
        assert_eq!(c.etcd.tls_files, Some(TlsFiles::new("/etc/ssl/ca.pem").server_name("etcd.internal")));
        let shown = format!("{c:?}");
        assert_eq!(c.postgres.tls, Some(TlsFiles::new("/etc/ssl/ca.pem")));
        for secret in ["my-hunter2", "pg-hunter2", "redis-hunter2", "etcd-hunter2"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        assert!(shown.contains("rediss://:***@cache:6380/0"), "{shown}");
        Ok(())
    });
}
