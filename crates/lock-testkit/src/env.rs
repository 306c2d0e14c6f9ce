//! The environment variables that point tests and benches at their services, read in one
//! place with their defaults.
//!
//! | variable | function | default |
//! |---|---|---|
//! | `DISTLOCK_TEST_MYSQL_URL` | [`mysql_url`] | `mysql://root@127.0.0.1:3306/test` |
//! | `DISTLOCK_TEST_REDIS_URL` | [`redis_url`] | `redis://127.0.0.1:6379` |
//! | `DISTLOCK_TEST_ETCD_ENDPOINTS` | [`etcd_endpoints`] | `http://127.0.0.1:2379` |
//! | `DISTLOCK_TEST_POSTGRES_URL` | [`postgres_url`] | `postgres://distlock@127.0.0.1:5432/distlock` |
//! | `DISTLOCK_TEST_REDIS_BIN` | [`redis_bin`] | `/usr/bin/redis-server`, else `PATH` |
//! | `DISTLOCK_TEST_ETCD_BIN` | [`etcd_bin`] | `/usr/bin/etcd`, else `PATH` |
//! | `DISTLOCK_TEST_MARIADB_BIN` | [`mariadb_bin`] | `/usr/sbin/mariadbd`, else `PATH` |
//! | `DISTLOCK_TEST_POSTGRES_BIN` | [`postgres_bin`] | the newest `/usr/lib/postgresql/*/bin/postgres`, else `PATH` |
//! | `DISTLOCK_TEST_MYSQL_IMAGE`, `_POSTGRES_IMAGE`, `_REDIS_IMAGE`, `_ETCD_IMAGE` | read by [`service`](mod@crate::service) | the images of its `docker` feature |
//! | `DISTLOCK_TEST_DOCKER_NETWORK` | read by [`service`](mod@crate::service) | unset: ports published on 127.0.0.1; `host`: the host's network |
//! | `DISTLOCK_REQUIRE_SERVICES` | [`services_required`] | unset: a missing service skips |
//! | `DISTLOCK_TEST_LONG` | [`long_run`] | unset: the short rounds |
//!
//! `cargo xtask test` and `cargo xtask bench` set the service variables to the services they
//! start. The functions here fall back to the defaults; [`service::provide`] tells a set
//! variable from an unset one, and with the `docker` feature starts a container for the latter.
//!
//! [`service::provide`]: crate::service::provide

use std::path::PathBuf;

/// Variable naming the MySQL/MariaDB server of the tests.
pub const MYSQL_URL_ENV: &str = "DISTLOCK_TEST_MYSQL_URL";
/// Variable naming the Redis server of the tests.
pub const REDIS_URL_ENV: &str = "DISTLOCK_TEST_REDIS_URL";
/// Variable naming the etcd endpoints of the tests (comma-separated).
pub const ETCD_ENDPOINTS_ENV: &str = "DISTLOCK_TEST_ETCD_ENDPOINTS";
/// Variable naming the PostgreSQL server of the tests.
pub const POSTGRES_URL_ENV: &str = "DISTLOCK_TEST_POSTGRES_URL";
/// Variable overriding the `postgres` binary of private servers (its tools are looked up
/// beside it).
pub const POSTGRES_BIN_ENV: &str = "DISTLOCK_TEST_POSTGRES_BIN";
/// Variable overriding the `redis-server` binary of private servers.
pub const REDIS_BIN_ENV: &str = "DISTLOCK_TEST_REDIS_BIN";
/// Variable overriding the `etcd` binary of private servers and clusters.
pub const ETCD_BIN_ENV: &str = "DISTLOCK_TEST_ETCD_BIN";
/// Variable overriding the `mariadbd` binary of private servers.
pub const MARIADB_BIN_ENV: &str = "DISTLOCK_TEST_MARIADB_BIN";
/// Variable overriding the MySQL/MariaDB container image (`name:tag`).
pub const MYSQL_IMAGE_ENV: &str = "DISTLOCK_TEST_MYSQL_IMAGE";
/// Variable overriding the PostgreSQL container image (`name:tag`).
pub const POSTGRES_IMAGE_ENV: &str = "DISTLOCK_TEST_POSTGRES_IMAGE";
/// Variable overriding the Redis container image (`name:tag`).
pub const REDIS_IMAGE_ENV: &str = "DISTLOCK_TEST_REDIS_IMAGE";
/// Variable overriding the etcd container image (`name:tag`).
pub const ETCD_IMAGE_ENV: &str = "DISTLOCK_TEST_ETCD_IMAGE";
/// Variable choosing the containers' network: `host` runs them on the host's network, on free
/// loopback ports the test picks.
pub const DOCKER_NETWORK_ENV: &str = "DISTLOCK_TEST_DOCKER_NETWORK";
/// Variable that turns a missing service into a test failure.
pub const REQUIRE_SERVICES_ENV: &str = "DISTLOCK_REQUIRE_SERVICES";
/// Variable that makes stress and fault cases run longer (`cargo xtask test --long`).
pub const LONG_ENV: &str = "DISTLOCK_TEST_LONG";

fn var_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The MySQL/MariaDB URL of the shared test server (`DISTLOCK_TEST_MYSQL_URL`).
pub fn mysql_url() -> String {
    var_or(MYSQL_URL_ENV, "mysql://root@127.0.0.1:3306/test")
}

/// The PostgreSQL URL of the shared test server (`DISTLOCK_TEST_POSTGRES_URL`).
pub fn postgres_url() -> String {
    var_or(POSTGRES_URL_ENV, "postgres://distlock@127.0.0.1:5432/distlock")
}

/// The URL of the shared Redis test server (`DISTLOCK_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    var_or(REDIS_URL_ENV, "redis://127.0.0.1:6379")
}

/// The shared etcd test endpoints as a comma-separated list (`DISTLOCK_TEST_ETCD_ENDPOINTS`),
/// the form `lock_etcd::EtcdConfig::from_list` reads.
pub fn etcd_endpoints() -> String {
    var_or(ETCD_ENDPOINTS_ENV, "http://127.0.0.1:2379")
}

/// The `redis-server` binary (`DISTLOCK_TEST_REDIS_BIN`, else the Debian path, else `PATH`).
pub fn redis_bin() -> Result<PathBuf, String> {
    crate::servers::find_program("redis-server", Some(REDIS_BIN_ENV), &["/usr/bin/redis-server"])
}

/// The `etcd` binary (`DISTLOCK_TEST_ETCD_BIN`, else the Debian path, else `PATH`).
pub fn etcd_bin() -> Result<PathBuf, String> {
    crate::servers::find_program("etcd", Some(ETCD_BIN_ENV), &["/usr/bin/etcd"])
}

/// The `mariadbd` binary (`DISTLOCK_TEST_MARIADB_BIN`, else the Debian path, else `PATH`).
pub fn mariadb_bin() -> Result<PathBuf, String> {
    crate::servers::find_program("mariadbd", Some(MARIADB_BIN_ENV), &["/usr/sbin/mariadbd"])
}

/// The `postgres` server binary (`DISTLOCK_TEST_POSTGRES_BIN`, else the newest Debian
/// `/usr/lib/postgresql/<version>/bin/postgres`, else `PATH`).
pub fn postgres_bin() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, String)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.parse().ok().map(|v| (v, format!("/usr/lib/postgresql/{name}/bin/postgres")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    let candidates: Vec<&str> = versions.iter().rev().map(|(_, p)| p.as_str()).collect();
    crate::servers::find_program("postgres", Some(POSTGRES_BIN_ENV), &candidates)
}

/// `true` when `DISTLOCK_REQUIRE_SERVICES` is set to `1` or `true`.
pub fn services_required() -> bool {
    flag(REQUIRE_SERVICES_ENV)
}

/// `true` when `DISTLOCK_TEST_LONG` is set to `1` or `true`: loops run more rounds.
pub fn long_run() -> bool {
    flag(LONG_ENV)
}
