//! [`EtcdConfig`]: where the cluster is and how to talk to it.

use std::fmt;
use std::time::Duration;

use lock_core::{LockError, Result};

/// Default key prefix under which every lock lives.
pub const DEFAULT_PREFIX: &str = "distlock/";
/// Default bound on establishing the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one request to the cluster.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach an etcd cluster.
///
/// ```
/// use std::time::Duration;
/// use lock_etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .prefix("jobs/locks/")
///     .user("scheduler", "secret")
///     .connect_timeout(Duration::from_secs(2));
/// assert_eq!(config.endpoints.len(), 2);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs of the cluster members (`http://host:2379`, or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// User name and password, when the cluster has authentication enabled.
    pub user: Option<(String, String)>,
    /// Key prefix of every lock (default [`DEFAULT_PREFIX`]). Providers that should share
    /// locks must use the same prefix.
    pub prefix: String,
    /// Bound on establishing the connection.
    pub connect_timeout: Duration,
    /// Bound on each request; a request that takes longer fails with
    /// [`LockError::Unavailable`].
    pub request_timeout: Duration,
    /// TLS settings (feature `tls`).
    #[cfg(feature = "tls")]
    pub tls: Option<etcd_client::TlsOptions>,
}

impl EtcdConfig {
    /// A configuration for `endpoints` with the defaults for everything else.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Endpoints from a comma-separated list, as in `DISTLOCK_TEST_ETCD_ENDPOINTS`.
    pub fn from_list(list: &str) -> Self {
        Self::new(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets user name and password.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the per-request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the TLS options (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Checks the configuration before connecting.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(LockError::Config("etcd: no endpoint given".into()));
        }
        if self.prefix.is_empty() || self.prefix.contains('\0') {
            return Err(LockError::Config(
                "etcd: the key prefix must be non-empty and must not contain a NUL byte".into(),
            ));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(LockError::Config("etcd: timeouts must be greater than zero".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_endpoint_list_and_hides_the_password() {
        let c = EtcdConfig::from_list(" http://a:2379, http://b:2379 ,").user("u", "hunter2");
        assert_eq!(c.endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert!(!format!("{c:?}").contains("hunter2"));
        c.validate().unwrap();
        assert!(EtcdConfig::from_list("").validate().is_err());
        assert!(EtcdConfig::new(["x"]).prefix("a\0").validate().is_err());
        assert!(EtcdConfig::new(["x"]).prefix("").validate().is_err());
    }
}
