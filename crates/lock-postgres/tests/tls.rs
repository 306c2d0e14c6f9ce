//! TLS and a password (feature `tls`) against a PostgreSQL of the test's own, started with
//! `ssl=on` and the server certificate of the shared testkit CA, where every connection over
//! TCP must use TLS and a password (`scram-sha-256`). Also: a wrong CA and a wrong password
//! fail at once, with an error that is not retryable and names the backend, and no secret
//! shows anywhere.
//!
//! Needs PostgreSQL's server binaries (with `psql`) and `openssl`; without them the tests are
//! skipped, or fail under `DISTLOCK_REQUIRE_SERVICES=1`.
#![cfg(feature = "tls")]

use std::time::Duration;

use lock_core::tls::TlsFiles;
use lock_core::LockProvider;
use lock_postgres::{PgLockConfig, PgLockProvider};
use lock_testkit::servers::{Kind, PrivateServer, Security};
use lock_testkit::tls::{assert_no_secrets, assert_refused, lock_refresh_unlock, TestCerts};

const PASSWORD: &str = "pg-tls-pw-4d9c3a";
const BOUND: Duration = Duration::from_secs(30);

struct Setup {
    server: PrivateServer,
    certs: TestCerts,
}

fn start() -> Result<Setup, String> {
    let certs = TestCerts::make()?;
    let server = PrivateServer::start_secured(Kind::Postgres, Security::tls(&certs).password(PASSWORD))?;
    Ok(Setup { server, certs })
}

async fn setup() -> Option<Setup> {
    lock_testkit::require_or_skip("postgres tls", tokio::task::spawn_blocking(start).await.unwrap())
}

impl Setup {
    fn url(&self, password: &str, query: &str) -> String {
        format!("postgres://postgres:{password}@127.0.0.1:{}/postgres{query}", self.server.port())
    }

    fn config(&self, url: String, tls: Option<TlsFiles>) -> PgLockConfig {
        let mut config = PgLockConfig::default()
            .url(url)
            .table_name(format!("tls_locks_{:08x}", fastrand::u32(..)))
            .acquire_timeout(Duration::from_secs(3))
            .reap_interval(None);
        config.tls = tls;
        config
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_with_a_password() {
    let Some(s) = setup().await else { return };
    // From the tls table (verify-full: the certificate names 127.0.0.1).
    let config = s.config(s.url(PASSWORD, ""), Some(TlsFiles::new(s.certs.ca())));
    assert_no_secrets(&format!("{config:?}"), PASSWORD, &s.certs);
    let p = PgLockProvider::open(config).await.expect("connect over TLS");
    let (ssl,): (bool,) = sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(p.pool())
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the session is not encrypted");
    lock_refresh_unlock(&p, "tls-key").await;
    p.close().await.unwrap();

    // The same from the URL alone, as libpq spells it.
    let query = format!("?sslmode=verify-ca&sslrootcert={}", s.certs.ca().display());
    let p = PgLockProvider::open(s.config(s.url(PASSWORD, &query), None)).await.expect("connect by URL");
    lock_refresh_unlock(&p, "tls-url").await;
    p.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_password_is_refused_at_once_and_not_retryable() {
    let Some(s) = setup().await else { return };
    let open = |url: String, tls: Option<TlsFiles>| PgLockProvider::open(s.config(url, tls));
    let wrong_ca = Some(TlsFiles::new(s.certs.other_ca()));
    assert_refused("postgres", BOUND, open(s.url(PASSWORD, ""), wrong_ca), PASSWORD, &s.certs).await;
    let wrong_password = s.url("not-the-password-91f3", "");
    assert_refused(
        "postgres",
        BOUND,
        open(wrong_password, Some(TlsFiles::new(s.certs.ca()))),
        PASSWORD,
        &s.certs,
    )
    .await;
    // Without TLS the server refuses the password login.
    let plain = s.url(PASSWORD, "?sslmode=disable");
    assert_refused("postgres", BOUND, open(plain, None), PASSWORD, &s.certs).await;
}
