//! TLS and a password (feature `tls`) against a MariaDB of the test's own, started with
//! `--ssl-cert`/`--ssl-key`/`--ssl-ca` from the shared testkit CA, and a user that
//! `REQUIRE X509` (TLS with a client certificate signed by that CA) and has a password. Also:
//! a wrong CA and a wrong password fail at once, with an error that is not retryable and
//! names the backend, and no secret shows anywhere.
//!
//! Needs `mariadbd` (with its install and client tools) and `openssl`; without them the tests
//! are skipped, or fail under `DISTLOCK_REQUIRE_SERVICES=1`.
#![cfg(feature = "tls")]

use std::time::Duration;

use lock_core::tls::TlsFiles;
use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::servers::{Kind, PrivateServer, Security};
use lock_testkit::tls::{assert_no_secrets, assert_refused, lock_refresh_unlock, TestCerts};

const PASSWORD: &str = "mysql-tls-pw-5e8b0a";
const BOUND: Duration = Duration::from_secs(30);

struct Setup {
    server: PrivateServer,
    certs: TestCerts,
}

fn start() -> Result<Setup, String> {
    let certs = TestCerts::make()?;
    let server = PrivateServer::start_secured(Kind::MariaDb, Security::tls(&certs))?;
    server.mariadb_sql(&format!(
        "CREATE USER 'locker'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE X509; \
         GRANT ALL ON test.* TO 'locker'@'%';"
    ))?;
    Ok(Setup { server, certs })
}

impl Setup {
    fn url(&self, password: &str, query: &str) -> String {
        format!("mysql://locker:{password}@127.0.0.1:{}/test{query}", self.server.port())
    }

    fn config(&self, url: String, tls: Option<TlsFiles>) -> MySqlLockConfig {
        let mut config = MySqlLockConfig::default()
            .url(url)
            .table_name(format!("tls_locks_{:08x}", fastrand::u32(..)))
            .acquire_timeout(Duration::from_secs(3))
            .reap_interval(None);
        config.tls = tls;
        config
    }

    fn files(&self) -> TlsFiles {
        TlsFiles::new(self.certs.ca()).identity(self.certs.client_cert(), self.certs.client_key())
    }
}

async fn setup() -> Option<Setup> {
    lock_testkit::require_or_skip("mysql tls", tokio::task::spawn_blocking(start).await.unwrap())
}

/// One server for both halves: two MariaDB installs side by side now and then fail on a
/// loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_locks_and_refuses_a_wrong_ca_or_password() {
    let Some(s) = setup().await else { return };
    locks_over_tls_with_a_password_and_a_client_certificate(&s).await;
    a_wrong_ca_or_password_is_refused_at_once_and_not_retryable(&s).await;
}

async fn locks_over_tls_with_a_password_and_a_client_certificate(s: &Setup) {
    // From the tls table (VERIFY_IDENTITY: the certificate names 127.0.0.1).
    let config = s.config(s.url(PASSWORD, ""), Some(s.files()));
    assert_no_secrets(&format!("{config:?}"), PASSWORD, &s.certs);
    let p = MySqlLockProvider::open(config).await.expect("connect over TLS");
    let cipher: String = sqlx_cipher(&p).await;
    assert!(!cipher.is_empty(), "the session is not encrypted");
    lock_refresh_unlock(&p, "tls-key").await;
    p.close().await.unwrap();

    // The same from the URL alone, as the MySQL clients spell it.
    let query = format!(
        "?ssl-mode=VERIFY_CA&ssl-ca={}&ssl-cert={}&ssl-key={}",
        s.certs.ca().display(),
        s.certs.client_cert().display(),
        s.certs.client_key().display()
    );
    let p = MySqlLockProvider::open(s.config(s.url(PASSWORD, &query), None)).await.expect("connect by URL");
    lock_refresh_unlock(&p, "tls-url").await;
    p.close().await.unwrap();
}

/// The session's TLS cipher (empty without TLS), through the provider's own pool.
async fn sqlx_cipher(p: &MySqlLockProvider) -> String {
    let row: (String, String) =
        sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'").fetch_one(p.pool()).await.expect("status");
    row.1
}

async fn a_wrong_ca_or_password_is_refused_at_once_and_not_retryable(s: &Setup) {
    let open = |url: String, tls: Option<TlsFiles>| MySqlLockProvider::open(s.config(url, tls));
    let wrong_ca = TlsFiles::new(s.certs.other_ca()).identity(s.certs.client_cert(), s.certs.client_key());
    assert_refused("mysql", BOUND, open(s.url(PASSWORD, ""), Some(wrong_ca)), PASSWORD, &s.certs).await;
    let wrong_password = s.url("not-the-password-91f3", "");
    assert_refused("mysql", BOUND, open(wrong_password, Some(s.files())), PASSWORD, &s.certs).await;
    // The user requires a client certificate, and TLS at all.
    let no_identity = Some(TlsFiles::new(s.certs.ca()));
    assert_refused("mysql", BOUND, open(s.url(PASSWORD, ""), no_identity), PASSWORD, &s.certs).await;
    let plain = s.url(PASSWORD, "?ssl-mode=DISABLED");
    assert_refused("mysql", BOUND, open(plain, None), PASSWORD, &s.certs).await;
}
