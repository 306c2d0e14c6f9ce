//! Mapping etcd-client's errors to [`LockError`].
//!
//! The rule: what may succeed when tried again (transport trouble, a member without a
//! leader, a request that got no answer in time) is [`LockError::Unavailable`], retryable;
//! what the cluster refused (permission, a malformed request) is [`LockError::Backend`].
//! etcd reports some conditions only in the text of its errors; the few the protocol acts on
//! are recognised here, in one place.

use std::time::Duration;

use lock_core::LockError;

/// The backend's name, in errors and [`Health`](lock_core::Health).
pub(crate) const NAME: &str = "etcd";

/// `e` and the errors under it, in one line: the transport hides the TLS failure (or the
/// refused connection) a level or two down.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let line = source.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        next = source.source();
    }
    text
}

/// Maps a client error: transport trouble and a cluster without leader are retryable; a
/// refused TLS handshake (a certificate not trusted, a name that does not match) is not.
pub(crate) fn map_err(e: etcd_client::Error) -> LockError {
    use etcd_client::Error as E;
    use tonic::Code;
    let text = match &e {
        E::GRpcStatus(s) => {
            let under = std::error::Error::source(s).map(chain).unwrap_or_default();
            if under.is_empty() || s.message().contains(&under) {
                s.message().to_owned()
            } else {
                format!("{}: {under}", s.message())
            }
        }
        other => chain(other),
    };
    if lock_core::tls::is_tls_refusal(&text) {
        return LockError::backend(NAME, format!("TLS handshake failed: {text}"));
    }
    let retryable = match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown
        ),
        _ => false,
    };
    if retryable {
        LockError::unavailable(NAME, e)
    } else {
        LockError::backend(NAME, e)
    }
}

/// A request (`what`, when named) that got no answer `within` its bound: retryable, its
/// outcome unknown.
pub(crate) fn no_answer(what: Option<&str>, within: Duration) -> LockError {
    let message = match what {
        Some(what) => format!("{what}: no answer within {within:?}"),
        None => format!("no answer within {within:?}"),
    };
    LockError::unavailable(NAME, message)
}

/// `true` for etcd's answer to a put on a lease that does not exist.
pub(crate) fn lease_not_found(e: &LockError) -> bool {
    matches!(e, LockError::Backend { source, .. } if source.to_string().contains("lease not found"))
}

/// `true` for etcd's refusal to grant a lease under an id that is taken.
pub(crate) fn lease_exists(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease already exists")
}

/// `true` for etcd's answer to a revoke of a lease that does not exist (any more).
pub(crate) fn revoked_already(e: &LockError) -> bool {
    matches!(e, LockError::Backend { source, .. } if source.to_string().contains("not found"))
}

/// `true` for a keep-alive of a lease that does not exist (any more).
pub(crate) fn keep_alive_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_trouble_is_retryable_and_server_refusals_are_not() {
        let e = map_err(etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader")));
        assert!(e.is_retryable() && e.is_system());
        let e = map_err(etcd_client::Error::GRpcStatus(tonic::Status::permission_denied("no")));
        assert!(!e.is_retryable() && e.is_system());
        assert!(no_answer(Some("lease grant"), Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn lease_answers_are_recognised() {
        let gone = map_err(etcd_client::Error::GRpcStatus(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        )));
        assert!(lease_not_found(&gone) && revoked_already(&gone));
        let taken = etcd_client::Error::GRpcStatus(tonic::Status::failed_precondition(
            "etcdserver: lease already exists",
        ));
        assert!(lease_exists(&taken));
        assert!(!lease_not_found(&map_err(taken)));
        assert!(keep_alive_not_found(&etcd_client::Error::LeaseKeepAliveError("lease not found".into())));
    }
}
