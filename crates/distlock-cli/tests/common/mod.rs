//! What the CLI's test files share: the binary with a clean environment, and the
//! configuration that points it at a backend's test server.

#![allow(dead_code)] // each test file uses part of it

use std::process::Command;

use distlock::LockProviderType;

/// The `distlock` binary, with no `DISTLOCK_*` configuration from the environment running the
/// tests (the `DISTLOCK_TEST_*` service variables stay).
pub(crate) fn distlock() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distlock"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DISTLOCK_") && !k.starts_with("DISTLOCK_TEST_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Every backend a CLI case runs on.
pub(crate) const BACKENDS: [&str; 5] = ["memory", "mysql", "postgres", "redis", "etcd"];

/// A configuration file's text naming backend `name` and its test server (from the
/// `DISTLOCK_TEST_*` variables).
pub(crate) fn config_toml(name: &str) -> String {
    let (provider, section) = match name {
        "memory" => (LockProviderType::Memory, String::new()),
        "mysql" => {
            let url = lock_testkit::env::mysql_url();
            (LockProviderType::Mysql, format!("[mysql]\nurl = {url:?}\n"))
        }
        "postgres" => {
            let url = lock_testkit::env::postgres_url();
            (LockProviderType::Postgres, format!("[postgres]\nurl = {url:?}\n"))
        }
        "redis" => {
            let url = lock_testkit::env::redis_url();
            (LockProviderType::Redis, format!("[redis]\nurl = {url:?}\n"))
        }
        "etcd" => {
            let list: Vec<String> =
                lock_testkit::env::etcd_endpoints().split(',').map(|e| format!("{e:?}")).collect();
            (LockProviderType::Etcd, format!("[etcd]\nendpoints = [{}]\n", list.join(", ")))
        }
        other => panic!("no backend {other}"),
    };
    format!("provider = {:?}\n{section}", provider.as_str())
}
