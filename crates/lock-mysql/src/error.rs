//! sqlx errors mapped onto the lock contract, and the retry of transient contention errors.

use std::future::Future;
use std::time::Duration;

use lock_core::{LockError, Result};

/// The backend's name, as `LockProvider::name` reports it and errors and logs carry it.
pub(crate) const NAME: &str = "mysql";

/// MySQL/MariaDB error numbers that mean "try the same statement again".
const DEADLOCK: u16 = 1213;
const LOCK_WAIT_TIMEOUT: u16 = 1205;

/// How often a statement that hit a deadlock or lock-wait timeout is tried again.
const CONTENTION_RETRIES: u32 = 5;

fn server_code(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number())
        }
        _ => None,
    }
}

/// Connection trouble is `Unavailable` (retryable); a closed pool is `Closed`; anything the
/// server answered is `Backend`, and so is a refused TLS handshake (a certificate not
/// trusted, a name that does not match): no retry fixes it.
pub(crate) fn map_err(e: sqlx::Error) -> LockError {
    match e {
        sqlx::Error::PoolClosed => LockError::Closed,
        sqlx::Error::Tls(e) => LockError::backend(NAME, format!("TLS handshake failed: {e}")),
        sqlx::Error::Io(e) if lock_core::tls::is_tls_refusal(&e.to_string()) => {
            LockError::backend(NAME, format!("TLS handshake failed: {e}"))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => {
            LockError::unavailable(NAME, e)
        }
        sqlx::Error::Database(_) if matches!(server_code(&e), Some(DEADLOCK | LOCK_WAIT_TIMEOUT)) => {
            LockError::unavailable(NAME, e)
        }
        // Server going away mid-query (2006 gone away, 2013 lost connection, 1927 killed), or
        // the statement timeout: MariaDB's max_statement_time (1969), MySQL's
        // max_execution_time (3024), an interrupted query (1317). The statement was rolled back.
        sqlx::Error::Database(_)
            if matches!(server_code(&e), Some(1927 | 2006 | 2013 | 1053 | 1077 | 1969 | 3024 | 1317)) =>
        {
            LockError::unavailable(NAME, e)
        }
        other => LockError::backend(NAME, other),
    }
}

/// Runs `stmt` again (with a short jittered pause) while it fails with a deadlock or a
/// lock-wait timeout; such errors mean the statement did nothing and may simply be repeated.
pub(crate) async fn with_contention_retry<T, F, Fut>(mut stmt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match stmt().await {
            Err(LockError::Unavailable { source, .. })
                if tries < CONTENTION_RETRIES && is_contention(source.as_ref()) =>
            {
                tries += 1;
                let pause = Duration::from_millis(2 << tries).mul_f64(0.5 + fastrand::f64());
                tracing::debug!(
                    backend = NAME,
                    tries,
                    ?pause,
                    "retrying after lock contention in the database"
                );
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

fn is_contention(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(server_code)
        .is_some_and(|c| c == DEADLOCK || c == LOCK_WAIT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn connection_errors_are_retryable_and_closed_pool_is_closed() {
        let io =
            map_err(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")));
        assert!(io.is_retryable() && io.is_system(), "{io:?}");
        assert!(map_err(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(matches!(map_err(sqlx::Error::PoolClosed), LockError::Closed));
        assert!(!map_err(sqlx::Error::RowNotFound).is_retryable());
    }

    #[tokio::test]
    async fn non_contention_errors_are_not_repeated() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = with_contention_retry(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(LockError::unavailable(NAME, "connection refused")) }
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
