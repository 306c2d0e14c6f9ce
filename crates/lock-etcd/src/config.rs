//! [`EtcdConfig`]: where the cluster is and how to talk to it, with every default in one
//! place.
//!
//! The settings can be built in code (builder-style setters) or read from a configuration
//! file (`serde`; durations as `"5s"`, unknown fields rejected). Defaults live only here: the
//! `DEFAULT_*` constants and [`EtcdConfig::default`]. [`EtcdConfig::connect_options`] turns
//! the settings into the client's connect options; nothing else reads them when connecting.

use std::fmt;
use std::time::Duration;

use etcd_client::ConnectOptions;
use lock_core::tls::Secret;
use lock_core::{LockError, Result};
use serde::{Deserialize, Serialize};

/// Default endpoint: a member on this host.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Default key prefix under which every lock lives.
pub const DEFAULT_PREFIX: &str = "distlock/";
/// Default bound on establishing the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one request to the cluster.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default interval of the connection's HTTP/2 keep-alive pings; a ping unanswered within
/// the request timeout closes the connection.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

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
///
/// The same from a configuration file (every field optional):
///
/// ```toml
/// endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
/// prefix = "jobs/locks/"
/// user = "scheduler"
/// password = "secret"
/// connect_timeout = "2s"
/// request_timeout = "5s"
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// Client URLs of the cluster members (`http://host:2379`, or `https://` with TLS);
    /// default [`DEFAULT_ENDPOINT`].
    pub endpoints: Vec<String>,
    /// User name, when the cluster has authentication enabled.
    pub user: Option<String>,
    /// Password of [`user`](Self::user) (empty when not given). Never printed by `Debug`.
    pub password: Option<Secret>,
    /// Key prefix of every lock (default [`DEFAULT_PREFIX`]). Providers that should share
    /// locks must use the same prefix.
    pub prefix: String,
    /// Bound on establishing the connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on each request (default [`DEFAULT_REQUEST_TIMEOUT`]); a request that takes
    /// longer fails with [`LockError::Unavailable`].
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Interval of the connection's keep-alive pings (default
    /// [`DEFAULT_KEEP_ALIVE_INTERVAL`]): how soon a silently dead connection is noticed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// TLS from PEM files (feature `tls`), read when connecting; set without the feature, it
    /// is a configuration error.
    // Not written when unset, so that a default merged under a file (figment) leaves the
    // file free to spell the table either way.
    #[serde(alias = "tls", skip_serializing_if = "Option::is_none")]
    pub tls_files: Option<TlsFiles>,
    /// TLS settings built in code (feature `tls`); not part of a configuration file. Set
    /// either this or [`tls_files`](Self::tls_files), not both.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[serde(skip)]
    pub tls: Option<etcd_client::TlsOptions>,
}

/// TLS to the cluster from PEM files (feature `tls`): the one type every server backend
/// shares, [`lock_core::tls::TlsFiles`].
///
/// ```toml
/// [tls]                              # or [tls_files]
/// ca = "/etc/etcd/ca.pem"            # the CA that signed the members' certificates
/// cert = "/etc/etcd/client.pem"      # client certificate, with `key`, when the cluster asks
/// key = "/etc/etcd/client-key.pem"
/// server_name = "etcd.internal"      # name to verify instead of the endpoint's host (or `domain`)
/// ```
pub use lock_core::tls::TlsFiles;

/// Reads the files into the client's TLS options.
#[cfg(feature = "tls")]
fn load(files: &TlsFiles) -> Result<etcd_client::TlsOptions> {
    use etcd_client::{Certificate, Identity, TlsOptions};
    files.validate(crate::error::NAME)?;
    let read = |path: &std::path::Path| TlsFiles::read(crate::error::NAME, path);
    let mut tls = TlsOptions::new();
    if let Some(ca) = &files.ca {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    if let Some(name) = &files.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec![DEFAULT_ENDPOINT.to_string()],
            user: None,
            password: None,
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keep_alive_interval: DEFAULT_KEEP_ALIVE_INTERVAL,
            tls_files: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl EtcdConfig {
    /// A configuration for `endpoints` with the defaults for everything else.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig { endpoints: endpoints.into_iter().map(Into::into).collect(), ..Self::default() }
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
        self.user = Some(name.into());
        self.password = Some(Secret::new(password));
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

    /// Sets the interval of the connection's keep-alive pings.
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// Sets the TLS options (feature `tls`).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, tls: etcd_client::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets TLS from PEM files (feature `tls`).
    pub fn tls_files(mut self, files: TlsFiles) -> Self {
        self.tls_files = Some(files);
        self
    }

    /// Checks the configuration before connecting.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(LockError::Config("etcd: no endpoint given (etcd.endpoints)".into()));
        }
        if self.prefix.is_empty() || self.prefix.contains('\0') {
            return Err(LockError::Config(
                "etcd: the key prefix must be non-empty and must not contain a NUL byte".into(),
            ));
        }
        if self.connect_timeout.is_zero()
            || self.request_timeout.is_zero()
            || self.keep_alive_interval.is_zero()
        {
            return Err(LockError::Config("etcd: timeouts and intervals must be greater than zero".into()));
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(LockError::Config("etcd: a password needs a user name".into()));
        }
        if let Some(files) = &self.tls_files {
            files.validate(crate::error::NAME)?;
            if !cfg!(feature = "tls") {
                return Err(LockError::Config(
                    "etcd: TLS (a tls table) needs feature `tls` of lock-etcd (`etcd-tls` of distlock)"
                        .into(),
                ));
            }
        }
        #[cfg(feature = "tls")]
        if self.tls.is_some() && self.tls_files.is_some() {
            return Err(LockError::Config("etcd: set TLS either in code or from files, not both".into()));
        }
        Ok(())
    }

    /// The client's connect options for these settings (after [`validate`](Self::validate));
    /// reads the TLS files, if any.
    pub fn connect_options(&self) -> Result<ConnectOptions> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(self.keep_alive_interval, self.request_timeout)
            // A member cut off from the leader refuses requests instead of serving a watch
            // that can never fire.
            .with_require_leader(true);
        if let Some(name) = &self.user {
            options = options
                .with_user(name.clone(), self.password.as_ref().map(Secret::expose).unwrap_or_default());
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        } else if let Some(files) = &self.tls_files {
            options = options.with_tls(load(files)?);
        }
        Ok(options)
    }
}

/// Equal settings; TLS options built in code (which have no equality of their own) compare
/// by their `Debug` form, which shows every certificate and option.
impl PartialEq for EtcdConfig {
    fn eq(&self, other: &Self) -> bool {
        let same = self.endpoints == other.endpoints
            && self.user == other.user
            && self.password == other.password
            && self.prefix == other.prefix
            && self.connect_timeout == other.connect_timeout
            && self.request_timeout == other.request_timeout
            && self.keep_alive_interval == other.keep_alive_interval
            && self.tls_files == other.tls_files;
        #[cfg(feature = "tls")]
        let same = same && format!("{:?}", self.tls) == format!("{:?}", other.tls);
        same
    }
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EtcdConfig");
        d.field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("tls_files", &self.tls_files);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_endpoint_list_and_hides_the_password() {
        let c = EtcdConfig::from_list(" http://a:2379, http://b:2379 ,").user("u", "hunter2");
        assert_eq!(c.endpoints, vec!["http://a:2379", "http://b:2379"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        c.validate().unwrap();
        assert!(EtcdConfig::from_list("").validate().is_err());
        assert!(EtcdConfig::new(["x"]).prefix("a\0").validate().is_err());
        assert!(EtcdConfig::new(["x"]).prefix("").validate().is_err());
        assert!(EtcdConfig::new(["x"]).keep_alive_interval(Duration::ZERO).validate().is_err());
        let no_user = EtcdConfig { password: Some("p".into()), ..EtcdConfig::default() };
        assert!(matches!(no_user.validate(), Err(LockError::Config(_))));
    }

    fn from_toml(toml: &str) -> std::result::Result<EtcdConfig, String> {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(toml)).extract().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_live_in_one_place() {
        let c = EtcdConfig::default();
        assert_eq!(c.endpoints, vec![DEFAULT_ENDPOINT]);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(
            (c.connect_timeout, c.request_timeout),
            (DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)
        );
        assert_eq!(c.keep_alive_interval, DEFAULT_KEEP_ALIVE_INTERVAL);
        assert_eq!(EtcdConfig::new([DEFAULT_ENDPOINT]), c);
        assert_eq!(from_toml("").unwrap(), c);
        assert_ne!(c.clone().user("u", "a"), c.clone().user("u", "b"), "passwords count");
        c.validate().unwrap();
        c.connect_options().unwrap();
    }

    #[test]
    fn reads_from_a_configuration_file_with_defaults_for_the_rest() {
        let c = from_toml(
            r#"
            endpoints = ["http://a:2379"]
            user = "u"
            password = "p"
            request_timeout = "750ms"
            "#,
        )
        .unwrap();
        let built =
            EtcdConfig::new(["http://a:2379"]).user("u", "p").request_timeout(Duration::from_millis(750));
        assert_eq!(c, built);
        let back: EtcdConfig =
            figment::Figment::from(figment::providers::Serialized::defaults(&c)).extract().unwrap();
        assert_eq!(back, c);
        assert!(from_toml(r#"endpoint = "x""#).is_err(), "unknown field");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn a_tls_table_without_the_feature_is_a_config_error() {
        let c = from_toml("[tls]\nca = \"/etc/ca.pem\"").unwrap();
        assert!(matches!(c.validate(), Err(LockError::Config(m)) if m.contains("feature `tls`")));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_files_are_read_when_connecting() {
        let missing = EtcdConfig::default().tls_files(TlsFiles::new("/nonexistent/ca.pem"));
        missing.validate().unwrap();
        assert!(
            matches!(missing.connect_options(), Err(LockError::Config(m)) if m.contains("/nonexistent/ca.pem"))
        );
        let mut half = TlsFiles::default();
        half.cert = Some("c.pem".into());
        assert!(matches!(EtcdConfig::default().tls_files(half).connect_options(), Err(LockError::Config(_))));
        let both = EtcdConfig::default().tls(etcd_client::TlsOptions::new()).tls_files(TlsFiles::default());
        assert!(both.validate().is_err());
        let c = from_toml("[tls_files]\nca = \"/etc/ca.pem\"\ndomain = \"etcd\"").unwrap();
        assert_eq!(c.tls_files, Some(TlsFiles::new("/etc/ca.pem").server_name("etcd")));
        // The table every backend spells `tls`.
        let c = from_toml("[tls]\nca = \"/etc/ca.pem\"\nserver_name = \"etcd\"").unwrap();
        assert_eq!(c.tls_files, Some(TlsFiles::new("/etc/ca.pem").server_name("etcd")));
    }
}
