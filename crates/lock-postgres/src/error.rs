//! sqlx errors mapped onto the lock contract.

use std::future::Future;
use std::time::Duration;

use lock_core::{LockError, Result};

/// The backend's name, as `LockProvider::name` reports it and errors and logs carry it.
pub(crate) const NAME: &str = "postgres";

/// SQLSTATE classes and codes that mean "the server could not do it now; try again":
/// serialization failure, deadlock, lock not available (`lock_timeout`), query cancelled
/// (`statement_timeout`), admin shutdown / crash shutdown / cannot connect now
/// (`pg_terminate_backend`, a restarting server), too many connections, and the connection
/// exception class.
fn transient(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "53300")
        || code.starts_with("08")
}

/// Connection trouble and transient server states are `Unavailable` (retryable); a closed pool
/// is `Closed`; anything else the server answered is `Backend`.
pub(crate) fn map_err(e: sqlx::Error) -> LockError {
    match e {
        sqlx::Error::PoolClosed => LockError::Closed,
        // A refused TLS handshake (a certificate not trusted, a name that does not match):
        // no retry fixes it.
        sqlx::Error::Tls(e) => LockError::backend(NAME, format!("TLS handshake failed: {e}")),
        sqlx::Error::Io(e) if lock_core::tls::is_tls_refusal(&e.to_string()) => {
            LockError::backend(NAME, format!("TLS handshake failed: {e}"))
        }
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => {
            LockError::unavailable(NAME, e)
        }
        sqlx::Error::Database(ref db) if db.code().is_some_and(|c| transient(&c)) => {
            LockError::unavailable(NAME, e)
        }
        other => LockError::backend(NAME, other),
    }
}

/// How often a statement that hit a serialization failure or deadlock is tried again.
const CONTENTION_RETRIES: u32 = 5;

/// Runs `stmt` again (with a short jittered pause) while it fails with a serialization failure
/// or a deadlock (an application pool whose sessions run `REPEATABLE READ` or `SERIALIZABLE`
/// sees the first on concurrent updates of one row); such errors mean the statement did
/// nothing and may simply be repeated.
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
                let pause = Duration::from_millis(1 << tries).mul_f64(0.5 + fastrand::f64());
                tracing::debug!(backend = NAME, tries, ?pause, "retrying after a serialization failure");
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

fn is_contention(e: &(dyn std::error::Error + 'static)) -> bool {
    match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.code().is_some_and(|c| c == "40001" || c == "40P01"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_retryable_and_closed_pool_is_closed() {
        let io =
            map_err(sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused")));
        assert!(io.is_retryable() && io.is_system(), "{io:?}");
        assert!(map_err(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(matches!(map_err(sqlx::Error::PoolClosed), LockError::Closed));
        assert!(!map_err(sqlx::Error::RowNotFound).is_retryable());
    }

    #[test]
    fn transient_sqlstates() {
        for code in ["40001", "40P01", "55P03", "57014", "57P01", "08006", "08003"] {
            assert!(transient(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02"] {
            assert!(!transient(code), "{code}");
        }
    }
}
