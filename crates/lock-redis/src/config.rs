//! How to reach Redis: [`RedisConfig`] and its deployment [`RedisMode`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use lock_core::tls::{redact_url, TlsFiles};
use lock_core::{LockError, Result};
use serde::{Deserialize, Serialize};

/// Default key prefix: every key the backend writes starts with it.
pub const DEFAULT_KEY_PREFIX: &str = "distlock:";
/// Default number of connections in the command pool (each one pipelines many callers).
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default bound on one command's round trip; past it the call fails as unavailable.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default Redlock clock drift factor: 1 % of the TTL, as in the Redlock description.
pub const DEFAULT_CLOCK_DRIFT_FACTOR: f64 = 0.01;
/// Longest accepted key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 64;

/// Default of [`RedisConfig::fence_idle`].
pub const DEFAULT_FENCE_IDLE: Duration = Duration::from_secs(3_600);

/// Shortest and longest [`RedisConfig::fence_idle`] accepted.
pub const FENCE_IDLE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 24 * 3_600));

/// Which Redis deployment the locks live on.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RedisMode {
    /// One server, or a Redis Cluster when the URL says so (`redis-cluster://host:port?node=...`):
    /// a lock and its fencing counter share a hash slot, so every script touches one node.
    Single,
    /// Redlock over independent masters (not replicas of each other, not a cluster). A lock is
    /// held when a majority (`n / 2 + 1`) granted it within its validity time
    /// (TTL minus the time the round took minus clock drift); otherwise it is released on all.
    Redlock {
        /// One URL per master; `RedisConfig::url` is not used in this mode.
        urls: Vec<String>,
        /// Fraction of the TTL set aside for clock drift between the masters (plus 2 ms).
        clock_drift_factor: f64,
    },
}

/// Configuration of a [`RedisLockProvider`](crate::RedisLockProvider), with every default.
///
/// With serde (the `[redis]` table of the facade's `LockConfig`), every field is a key, and a
/// few spell the deployment:
///
/// ```toml
/// url = "redis://127.0.0.1:6379"      # or redis-cluster://...; or instead:
/// addr = "127.0.0.1:6379"             #   address, password and database
/// password = "secret"
/// db = 0
/// mode = "redlock"                    # single (default) | redlock
/// nodes = ["redis://a:6379", "redis://b:6379", "redis://c:6379"]   # the Redlock masters
/// clock_drift_factor = 0.01
/// key_prefix = "distlock:"
/// pool_size = 4
/// command_timeout = "5s"
/// connect_timeout = "5s"
///
/// [tls]                               # feature `tls`; a rediss:// URL alone trusts the system's CAs
/// ca = "/etc/ssl/redis/ca.pem"
/// cert = "/etc/ssl/redis/client.pem"  # with key, when the server asks for client certificates
/// key = "/etc/ssl/redis/client-key.pem"
/// server_name = "redis.internal"      # verify this name instead of the URL's host
///
/// [connect_to]                        # announced "host:port" = the address to dial instead
/// "10.0.0.5:7000" = "127.0.0.1:17000"
/// ```
///
/// ```
/// use std::time::Duration;
/// use lock_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://:secret@10.0.0.5:6379/2")
///     .pool_size(8)
///     .key_prefix("orders:locks:")
///     .command_timeout(Duration::from_secs(2));
/// assert_eq!(config.key_prefix, "orders:locks:");
///
/// // Address, password, database.
/// let same = RedisConfig::from_addr("10.0.0.5:6379", Some("secret"), 2);
/// assert_eq!(same.url, "redis://:secret@10.0.0.5:6379/2");
/// ```
///
/// `Debug` shows every URL with its password replaced by `***`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RedisSettings", into = "RedisSettings")]
#[non_exhaustive]
pub struct RedisConfig {
    /// Server URL: `redis://[[user]:password@]host[:port][/db]`, or `redis-cluster://...` for a
    /// Redis Cluster; `rediss://` and `rediss-cluster://` for TLS (feature `tls`). Not used in
    /// [`RedisMode::Redlock`].
    pub url: String,
    /// Connections in the command pool, per node.
    pub pool_size: usize,
    /// Prefix of every key and channel the backend uses (must not contain `{` or `}`).
    pub key_prefix: String,
    /// Bound on one command's round trip.
    pub command_timeout: Duration,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// Deployment mode.
    pub mode: RedisMode,
    /// Addresses to dial instead of the ones a server is known by: `(host, port)` as written
    /// in a URL or announced by a cluster node, mapped to the socket address to connect to.
    /// Names not in the map are resolved as usual. Empty by default; see
    /// [`connect_to`](RedisConfig::connect_to).
    pub connect_to: BTreeMap<(String, u16), SocketAddr>,
    /// How long a key's fencing counter outlives the lease of its last acquisition (default
    /// an hour). Tokens are raised to at least the server's time in microseconds, so a
    /// counter is needed only while the server's clock could step back past the last token;
    /// keeping it forever would keep one counter per key ever locked (a workflow engine locks
    /// millions of distinct keys a day). After this idle time the server deletes it.
    pub fence_idle: Duration,
    /// TLS from PEM files (feature `tls`) for every connection, whatever the URLs' scheme;
    /// `None`: TLS only for `rediss://` URLs, trusting the system's CAs.
    pub tls: Option<TlsFiles>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            RedisMode::Single => "single".to_owned(),
            RedisMode::Redlock { urls, clock_drift_factor } => format!(
                "redlock {:?} drift {clock_drift_factor}",
                urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>()
            ),
        };
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("mode", &format_args!("{mode}"))
            .field("connect_to", &self.connect_to)
            .field("fence_idle", &self.fence_idle)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig::new("redis://127.0.0.1:6379")
    }
}

impl RedisConfig {
    /// A single-node (or, with a `redis-cluster://` URL, cluster) configuration.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            pool_size: DEFAULT_POOL_SIZE,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            mode: RedisMode::Single,
            connect_to: BTreeMap::new(),
            fence_idle: DEFAULT_FENCE_IDLE,
            tls: None,
        }
    }

    /// From an address, an optional password and a database number.
    pub fn from_addr(addr: &str, password: Option<&str>, db: u8) -> Self {
        let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
        RedisConfig::new(format!("redis://{auth}{addr}/{db}"))
    }

    /// Redlock over the independent masters at `urls`.
    pub fn redlock<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConfig {
            mode: RedisMode::Redlock {
                urls: urls.into_iter().map(Into::into).collect(),
                clock_drift_factor: DEFAULT_CLOCK_DRIFT_FACTOR,
            },
            ..RedisConfig::new(String::new())
        }
    }

    /// Sets the pool size.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Sets the key prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the command timeout.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Connects to `to` whenever a server named `host:port` is to be reached, like curl's
    /// `--connect-to`. A Redis Cluster tells its clients where its nodes are (`CLUSTER SLOTS`),
    /// and the client then dials those addresses; when they cannot be reached from the
    /// client (a cluster behind NAT or port forwarding, a proxy or tunnel in front of each
    /// node), map each announced address to the one that reaches the node. Applies to every
    /// connection of the provider, in every mode, including its pub/sub connection.
    ///
    /// ```
    /// use lock_redis::RedisConfig;
    ///
    /// // The nodes announce 10.0.0.5:7000 and 10.0.0.6:7000; this host reaches them through
    /// // forwarded local ports.
    /// let config = RedisConfig::new("redis-cluster://10.0.0.5:7000?node=10.0.0.6:7000")
    ///     .connect_to("10.0.0.5", 7000, "127.0.0.1:17000".parse().unwrap())
    ///     .connect_to("10.0.0.6", 7000, "127.0.0.1:17001".parse().unwrap());
    /// assert_eq!(config.connect_to.len(), 2);
    /// ```
    pub fn connect_to(mut self, host: impl Into<String>, port: u16, to: SocketAddr) -> Self {
        self.connect_to.insert((host.into(), port), to);
        self
    }

    /// Sets [`fence_idle`](Self::fence_idle).
    pub fn fence_idle(mut self, idle: Duration) -> Self {
        self.fence_idle = idle;
        self
    }

    /// TLS from PEM files for every connection (feature `tls`).
    ///
    /// ```
    /// use lock_core::tls::TlsFiles;
    /// use lock_redis::RedisConfig;
    ///
    /// let config = RedisConfig::new("rediss://:secret@10.0.0.5:6380")
    ///     .tls(TlsFiles::new("/etc/ssl/redis/ca.pem").server_name("redis.internal"));
    /// assert!(!format!("{config:?}").contains("secret"));
    /// ```
    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// `true` when the connections use TLS: a `tls` table, or a `rediss` URL.
    pub fn uses_tls(&self) -> bool {
        let urls: Vec<&String> = match &self.mode {
            RedisMode::Single => vec![&self.url],
            RedisMode::Redlock { urls, .. } => urls.iter().collect(),
        };
        self.tls.is_some() || urls.iter().any(|u| u.starts_with("rediss") || u.starts_with("valkeys"))
    }

    /// Sets the Redlock clock drift factor (no effect in single mode).
    pub fn clock_drift_factor(mut self, f: f64) -> Self {
        if let RedisMode::Redlock { clock_drift_factor, .. } = &mut self.mode {
            *clock_drift_factor = f;
        }
        self
    }

    /// Checks the configuration; [`LockError::Config`] names what is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(LockError::Config(format!("redis: {why}")));
        if self.pool_size == 0 {
            return bad("pool_size must be at least 1".into());
        }
        if self.key_prefix.len() > MAX_PREFIX_LEN {
            return bad(format!("key_prefix is longer than {MAX_PREFIX_LEN} bytes"));
        }
        if self.key_prefix.contains(['{', '}', '\0']) {
            return bad("key_prefix must not contain `{`, `}` or NUL (the layout adds the hash tag)".into());
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be greater than zero".into());
        }
        let (min, max) = FENCE_IDLE_RANGE;
        if self.fence_idle < min || self.fence_idle > max {
            return bad(format!("fence_idle {:?} is outside {min:?}..={max:?}", self.fence_idle));
        }
        if let Some(tls) = &self.tls {
            tls.validate("redis")?;
        }
        if self.uses_tls() && !cfg!(feature = "tls") {
            return bad("TLS (a rediss:// URL or a tls table) needs feature `tls` of lock-redis (`redis-tls` of distlock)".into());
        }
        match &self.mode {
            RedisMode::Single if self.url.is_empty() => bad("url is empty".into()),
            RedisMode::Redlock { urls, clock_drift_factor } => {
                if urls.is_empty() {
                    return bad("Redlock needs at least one master URL".into());
                }
                if !(0.0..0.5).contains(clock_drift_factor) {
                    return bad(format!("clock_drift_factor {clock_drift_factor} is outside 0.0..0.5"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The serde form of [`RedisConfig`]: flat keys, and the seed's address, password and
/// database as an alternative to the URL.
#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RedisSettings {
    url: Option<String>,
    addr: Option<String>,
    password: Option<String>,
    db: u8,
    mode: ModeName,
    nodes: Vec<String>,
    clock_drift_factor: f64,
    key_prefix: String,
    pool_size: usize,
    #[serde(with = "humantime_serde")]
    command_timeout: Duration,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    /// `"host:port"` → the address to dial instead.
    connect_to: BTreeMap<String, SocketAddr>,
    #[serde(with = "humantime_serde")]
    fence_idle: Duration,
    tls: Option<TlsFiles>,
}

#[derive(Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    #[default]
    Single,
    Redlock,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisConfig::default().into()
    }
}

impl From<RedisConfig> for RedisSettings {
    fn from(c: RedisConfig) -> Self {
        let (mode, nodes, clock_drift_factor) = match c.mode {
            RedisMode::Single => (ModeName::Single, Vec::new(), DEFAULT_CLOCK_DRIFT_FACTOR),
            RedisMode::Redlock { urls, clock_drift_factor } => (ModeName::Redlock, urls, clock_drift_factor),
        };
        RedisSettings {
            url: (!c.url.is_empty()).then_some(c.url),
            addr: None,
            password: None,
            db: 0,
            mode,
            nodes,
            clock_drift_factor,
            key_prefix: c.key_prefix,
            pool_size: c.pool_size,
            command_timeout: c.command_timeout,
            connect_timeout: c.connect_timeout,
            connect_to: c
                .connect_to
                .into_iter()
                .map(|((host, port), to)| (format!("{host}:{port}"), to))
                .collect(),
            fence_idle: c.fence_idle,
            tls: c.tls,
        }
    }
}

impl TryFrom<RedisSettings> for RedisConfig {
    type Error = String;

    fn try_from(s: RedisSettings) -> std::result::Result<Self, String> {
        let url = match (s.url, &s.addr) {
            (_, Some(addr)) if addr.is_empty() => return Err("redis.addr is empty".into()),
            // An address given on its own wins over the default URL it was merged onto; both
            // given explicitly is ambiguous, and figment cannot tell them apart, so the
            // address wins and the URL must not be set to something else.
            (Some(url), Some(addr)) if url != RedisConfig::default().url => {
                return Err(format!("set either redis.url ({url}) or redis.addr ({addr}), not both"))
            }
            (_, Some(addr)) => {
                RedisConfig::from_addr(addr, s.password.as_deref().filter(|p| !p.is_empty()), s.db).url
            }
            (Some(url), None) => url,
            (None, None) => String::new(),
        };
        let mode = match s.mode {
            ModeName::Single if !s.nodes.is_empty() => {
                return Err("redis.nodes lists Redlock masters: set redis.mode = \"redlock\"".into())
            }
            ModeName::Single => RedisMode::Single,
            ModeName::Redlock => {
                RedisMode::Redlock { urls: s.nodes, clock_drift_factor: s.clock_drift_factor }
            }
        };
        let mut connect_to = BTreeMap::new();
        for (name, to) in s.connect_to {
            let port = name.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)));
            let Some((host, port)) = port else {
                return Err(format!("redis.connect_to: `{name}` is not host:port"));
            };
            connect_to.insert((host.to_owned(), port), to);
        }
        Ok(RedisConfig {
            url,
            pool_size: s.pool_size,
            key_prefix: s.key_prefix,
            command_timeout: s.command_timeout,
            connect_timeout: s.connect_timeout,
            mode,
            connect_to,
            fence_idle: s.fence_idle,
            tls: s.tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unusable_settings() {
        assert!(RedisConfig::default().validate().is_ok());
        for bad in [
            RedisConfig::default().pool_size(0),
            RedisConfig::default().key_prefix("a{b}:"),
            RedisConfig::default().key_prefix("x".repeat(MAX_PREFIX_LEN + 1)),
            RedisConfig::default().command_timeout(Duration::ZERO),
            RedisConfig::new(""),
            RedisConfig::redlock(Vec::<String>::new()),
            RedisConfig::redlock(["redis://a"]).clock_drift_factor(0.9),
        ] {
            assert!(matches!(bad.validate(), Err(LockError::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_a_password() {
        let single = RedisConfig::new("rediss://app:hunter2@h:6380/0").tls(TlsFiles::new("ca.pem"));
        let redlock = RedisConfig::redlock(["redis://:hunter2@a:1", "redis://:hunter2@b:1"]);
        for config in [single, redlock, RedisConfig::from_addr("h:1", Some("hunter2"), 0)] {
            let shown = format!("{config:?}");
            assert!(!shown.contains("hunter2") && shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn from_addr_builds_the_url() {
        assert_eq!(RedisConfig::from_addr("h:1", None, 0).url, "redis://h:1/0");
        assert_eq!(RedisConfig::from_addr("h:1", Some("pw"), 3).url, "redis://:pw@h:1/3");
    }
}
