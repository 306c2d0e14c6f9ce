//! TLS from PEM files and authentication (feature `tls`) against an etcd member of the
//! test's own, on `https://` with `--cert-file`/`--key-file`, asking for client certificates
//! (`--client-cert-auth`), with authentication enabled (user `root` with a password),
//! certificates made by the shared testkit CA. Also: a wrong CA, a wrong password and a
//! missing client certificate fail at once, with an error that is not retryable and names
//! the backend, and no secret shows anywhere.
//!
//! Needs the `etcd` binary (`DISTLOCK_TEST_ETCD_BIN`, else `/usr/bin/etcd` or `etcd` on the
//! path), `etcdctl` and `openssl`; without them the tests are skipped, or fail under
//! `DISTLOCK_REQUIRE_SERVICES=1`.
#![cfg(feature = "tls")]

use std::time::Duration;

use lock_core::{LockError, LockProvider};
use lock_etcd::{EtcdConfig, EtcdLockProvider, TlsFiles};
use lock_testkit::servers::{Kind, PrivateServer, Security};
use lock_testkit::tls::{
    assert_fails_cleanly, assert_no_secrets, assert_refused, lock_refresh_unlock, TestCerts,
};

const PASSWORD: &str = "etcd-tls-pw-2b7f61";
const BOUND: Duration = Duration::from_secs(30);

struct Setup {
    server: PrivateServer,
    certs: TestCerts,
}

fn start() -> Result<Setup, String> {
    let certs = TestCerts::make()?;
    let security = Security::tls(&certs).client_certs(true).password(PASSWORD);
    let server = PrivateServer::start_secured(Kind::Etcd, security)?;
    Ok(Setup { server, certs })
}

async fn setup() -> Option<Setup> {
    lock_testkit::require_or_skip("etcd tls", tokio::task::spawn_blocking(start).await.unwrap())
}

impl Setup {
    fn config(&self, password: &str, files: TlsFiles) -> EtcdConfig {
        EtcdConfig::new([self.server.url()])
            .tls_files(files)
            .user("root", password)
            .prefix(format!("tls{:08x}/", fastrand::u32(..)))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(2))
    }

    fn files(&self) -> TlsFiles {
        TlsFiles::new(self.certs.ca()).identity(self.certs.client_cert(), self.certs.client_key())
    }
}

/// Connects and makes one request: what an application does first.
async fn connect_and_ask(config: EtcdConfig) -> lock_core::Result<EtcdLockProvider> {
    let p = EtcdLockProvider::connect(config).await?;
    p.is_locked("probe").await?;
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_with_a_password_and_a_client_certificate() {
    let Some(s) = setup().await else { return };
    assert!(s.server.url().starts_with("https://"));
    let config = s.config(PASSWORD, s.files());
    assert_no_secrets(&format!("{config:?}"), PASSWORD, &s.certs);
    let p = connect_and_ask(config).await.expect("connect over TLS with a password");
    lock_refresh_unlock(&p, "tls-key").await;
    p.close().await.unwrap();

    // The name in the certificate checked instead of the address connected to.
    let p =
        connect_and_ask(s.config(PASSWORD, s.files().server_name("localhost"))).await.expect("as localhost");
    lock_refresh_unlock(&p, "tls-named").await;
    p.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_password_is_refused_at_once_and_not_retryable() {
    let Some(s) = setup().await else { return };
    let wrong_ca = TlsFiles::new(s.certs.other_ca()).identity(s.certs.client_cert(), s.certs.client_key());
    assert_refused("etcd", BOUND, connect_and_ask(s.config(PASSWORD, wrong_ca)), PASSWORD, &s.certs).await;
    let wrong_password = s.config("not-the-password-91f3", s.files());
    assert_refused("etcd", BOUND, connect_and_ask(wrong_password), PASSWORD, &s.certs).await;
    let misnamed = s.config(PASSWORD, s.files().server_name("elsewhere.example"));
    assert_refused("etcd", BOUND, connect_and_ask(misnamed), PASSWORD, &s.certs).await;
    // A CA file that is not there is a configuration error naming it, found when connecting.
    let missing = s.config(PASSWORD, TlsFiles::new(s.certs.dir().join("nope.pem")));
    let e = EtcdLockProvider::connect(missing).await.expect_err("a missing CA file is refused");
    assert!(matches!(&e, LockError::Config(m) if m.contains("nope.pem")), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_asks_for_client_certificates_refuses_a_client_without_one() {
    let Some(s) = setup().await else { return };
    // Under TLS 1.3 the member's refusal comes after the client's side of the handshake is
    // done: the client sees its connection closed, which may as well be a passing fault, so
    // the error may be retryable here; it must still come at once and name the backend.
    let anonymous = s.config(PASSWORD, TlsFiles::new(s.certs.ca()));
    assert_fails_cleanly("etcd", BOUND, connect_and_ask(anonymous), PASSWORD, &s.certs).await;
}
