//! [`bounded`]: a server round trip with a time limit, whose overrun is a retryable
//! [`LockError::Unavailable`], never a hang.

use std::future::Future;
use std::time::Duration;

use crate::error::{LockError, Result};

/// Runs `request` (a round trip to `backend`'s server) for at most `limit`; past it, the
/// request is dropped and the answer is `Unavailable` (retryable).
pub async fn bounded<T>(
    backend: &'static str,
    limit: Duration,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, request).await {
        Ok(out) => out,
        Err(_) => Err(LockError::unavailable(backend, format!("no answer from the server within {limit:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_answer_passes_through_and_silence_is_unavailable() {
        let limit = Duration::from_secs(1);
        assert_eq!(bounded("test", limit, async { Ok(7) }).await.unwrap(), 7);
        let silent = bounded("test", limit, std::future::pending::<Result<()>>()).await.unwrap_err();
        assert!(matches!(silent, LockError::Unavailable { backend: "test", .. }), "{silent:?}");
        assert!(silent.is_retryable());
    }
}
