//! TLS and a password (feature `tls`) against a Redis of the test's own that listens with
//! `--tls-port` only, asks for client certificates and `--requirepass`, with certificates made
//! by the shared testkit CA. Also: a wrong CA and a wrong password fail at once, with an
//! error that is not retryable and names the backend, and no secret shows anywhere.
//!
//! Needs `redis-server` built with TLS and `openssl`; without them the tests are skipped, or
//! fail under `DISTLOCK_REQUIRE_SERVICES=1`.
#![cfg(feature = "tls")]

use std::time::Duration;

use lock_core::tls::TlsFiles;
use lock_core::LockProvider;
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::servers::{Kind, PrivateServer, Security};
use lock_testkit::tls::{assert_no_secrets, assert_refused, lock_refresh_unlock, TestCerts};

const PASSWORD: &str = "redis-tls-pw-7c1d2e";
const BOUND: Duration = Duration::from_secs(30);

struct Setup {
    server: PrivateServer,
    certs: TestCerts,
}

fn start() -> Result<Setup, String> {
    let certs = TestCerts::make()?;
    let security = Security::tls(&certs).client_certs(true).password(PASSWORD);
    let server = PrivateServer::start_secured(Kind::Redis, security)?;
    Ok(Setup { server, certs })
}

impl Setup {
    fn config(&self, password: &str, files: TlsFiles) -> RedisConfig {
        RedisConfig::new(format!("rediss://:{password}@127.0.0.1:{}", self.server.port()))
            .tls(files)
            .key_prefix(format!("tls{:08x}:", fastrand::u32(..)))
            .connect_timeout(Duration::from_secs(2))
            .command_timeout(Duration::from_secs(2))
    }

    fn files(&self) -> TlsFiles {
        TlsFiles::new(self.certs.ca()).identity(self.certs.client_cert(), self.certs.client_key())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_with_a_password_and_a_client_certificate() {
    let Some(s) =
        lock_testkit::require_or_skip("redis tls", tokio::task::spawn_blocking(start).await.unwrap())
    else {
        return;
    };
    assert!(s.server.url().starts_with("rediss://"));
    let config = s.config(PASSWORD, s.files());
    assert_no_secrets(&format!("{config:?}"), PASSWORD, &s.certs);
    let p = RedisLockProvider::connect(config).await.expect("connect over TLS");
    lock_refresh_unlock(&p, "tls-key").await;
    p.close().await.unwrap();

    // The name in the certificate checked instead of the address connected to.
    let named = s.config(PASSWORD, s.files().server_name("localhost"));
    let p = RedisLockProvider::connect(named).await.expect("connect verifying `localhost`");
    lock_refresh_unlock(&p, "tls-named").await;
    p.close().await.unwrap();
    // Redlock: the tls table applies to every master's connection (here one master).
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", s.server.port());
    let redlock =
        RedisConfig::redlock([url]).tls(s.files()).key_prefix(format!("tlsrl{:08x}:", fastrand::u32(..)));
    let p = RedisLockProvider::connect(redlock).await.expect("Redlock over TLS");
    lock_refresh_unlock(&p, "tls-redlock").await;
    p.close().await.unwrap();

    let misnamed = s.config(PASSWORD, s.files().server_name("elsewhere.example"));
    assert_refused("redis", BOUND, RedisLockProvider::connect(misnamed), PASSWORD, &s.certs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_password_is_refused_at_once_and_not_retryable() {
    let Some(s) =
        lock_testkit::require_or_skip("redis tls", tokio::task::spawn_blocking(start).await.unwrap())
    else {
        return;
    };
    let wrong_ca = TlsFiles::new(s.certs.other_ca()).identity(s.certs.client_cert(), s.certs.client_key());
    assert_refused(
        "redis",
        BOUND,
        RedisLockProvider::connect(s.config(PASSWORD, wrong_ca)),
        PASSWORD,
        &s.certs,
    )
    .await;
    let wrong_password = s.config("not-the-password-91f3", s.files());
    assert_refused("redis", BOUND, RedisLockProvider::connect(wrong_password), PASSWORD, &s.certs).await;
    // A rediss:// URL alone trusts the system's CAs, which did not sign the server's certificate.
    let mut system_roots = s.config(PASSWORD, s.files());
    system_roots.tls = None;
    assert_refused("redis", BOUND, RedisLockProvider::connect(system_roots), PASSWORD, &s.certs).await;
    // No client certificate, where the server asks for one.
    let no_identity = s.config(PASSWORD, TlsFiles::new(s.certs.ca()));
    assert_refused("redis", BOUND, RedisLockProvider::connect(no_identity), PASSWORD, &s.certs).await;
    // No password at all.
    let mut anonymous = s.config(PASSWORD, s.files());
    anonymous.url = format!("rediss://127.0.0.1:{}", s.server.port());
    assert_refused("redis", BOUND, RedisLockProvider::connect(anonymous), PASSWORD, &s.certs).await;
    // A CA file that is not there: a configuration error naming the path.
    let missing = s.config(PASSWORD, TlsFiles::new(s.certs.dir().join("nope.pem")));
    let e = RedisLockProvider::connect(missing).await.expect_err("a missing CA file is refused");
    assert!(matches!(&e, lock_core::LockError::Config(m) if m.contains("nope.pem")), "{e:?}");
}
