//! One Redis deployment (a server, or a cluster): its connection pool and the typed calls of
//! the [scripts](crate::scripts).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::clients::{Client, Pool, SubscriberClient};
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::{Builder, Resolve};
use futures::future::BoxFuture;
use futures::FutureExt;
use lock_core::LockError;

use crate::keys::KeyNames;
use crate::scripts::{self, Reply, Scripts};
use crate::NAME;

/// Answer of the acquire script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Granted: the token, the reentry depth and the TTL now on the lease.
    Acquired { token: u64, depth: u32, ttl: Duration },
    /// Held by `holder`, whose lease has `left` to run (`None`: no expiry set).
    Busy { holder: String, left: Option<Duration> },
}

/// Answer of the release script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Released {
    /// One level of acquisition `token` released; `left` levels remain (0: the lock is free).
    Yes { left: u32, token: u64 },
    /// Nobody holds the lock.
    NotHeld,
    /// Somebody else (or, when a token was given, another acquisition) holds it.
    NotOwner { holder: String },
}

/// A held lock as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) owner: String,
    pub(crate) token: u64,
    pub(crate) depth: u32,
    pub(crate) left: Duration,
    /// How long the holder has held it, by the server's clock.
    pub(crate) held: Duration,
}

/// Dials the addresses of [`RedisConfig::connect_to`](crate::RedisConfig::connect_to) instead
/// of the ones a server is known by; resolves every other name as usual.
#[derive(Debug)]
pub(crate) struct ConnectTo(pub(crate) BTreeMap<(String, u16), SocketAddr>);

#[async_trait::async_trait]
impl Resolve for ConnectTo {
    async fn resolve(&self, host: Str, port: u16) -> Result<Vec<SocketAddr>, Error> {
        if let Some(to) = self.0.get(&(host.to_string(), port)) {
            return Ok(vec![*to]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((&*host, port)).await?.collect();
        if addrs.is_empty() {
            return Err(Error::new(ErrorKind::IO, format!("{host}:{port} resolves to no address")));
        }
        Ok(addrs)
    }
}

/// Connection settings of a [`Node`], shared by the nodes of one provider.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) pool_size: usize,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// How long a fencing counter outlives its last acquisition's lease.
    pub(crate) fence_idle: Duration,
    /// `None`: every name resolved as usual.
    pub(crate) resolver: Option<Arc<ConnectTo>>,
    /// TLS for every connection (the `tls` table); `None`: as the URL's scheme says.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<fred::types::config::TlsConfig>,
}

/// A connected deployment.
#[derive(Debug)]
pub(crate) struct Node {
    /// The URL, without credentials.
    url: String,
    pub(crate) pool: Pool,
    builder: Builder,
    resolver: Option<Arc<ConnectTo>>,
    scripts: Scripts,
    /// [`Settings::fence_idle`] in milliseconds, which the acquire script's counter outlives
    /// the lease by.
    fence_idle_ms: u128,
    /// Acquire script calls made (each is one round trip).
    pub(crate) attempts: AtomicU64,
    /// Fail at once while disconnected instead of queueing until the connection is back.
    fail_fast: bool,
}

fn ms(d: Duration) -> String {
    whole_ms(d).to_string()
}

/// `d` in whole milliseconds, rounded up: validate::ttl guarantees at least 1 ms, and a lease
/// is never shorter than asked.
fn whole_ms(d: Duration) -> u128 {
    d.as_micros().div_ceil(1000).max(1)
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    lock_core::tls::redact_url(url)
}

/// This client's wall clock in milliseconds since the Unix epoch.
fn wall_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

fn left(pttl: i64) -> Option<Duration> {
    u64::try_from(pttl).ok().map(Duration::from_millis)
}

impl Node {
    /// Connects the pool to `url` and loads the scripts.
    pub(crate) async fn connect(
        url: String,
        settings: &Settings,
        fail_fast: bool,
    ) -> Result<Node, LockError> {
        let Settings { pool_size, command_timeout, connect_timeout, .. } = *settings;
        let shown = redact(&url);
        #[allow(unused_mut)]
        let mut config = Config::from_url(&url).map_err(|e| {
            LockError::Config(format!("redis: bad URL `{shown}`: {}", redact(&e.to_string())))
        })?;
        #[cfg(feature = "tls")]
        if let Some(tls) = &settings.tls {
            config.tls = Some(tls.clone());
        }
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = command_timeout;
                // Never write a command twice: an acquire whose connection dropped after the
                // server ran it would re-enter the caller's own lock. The caller sees
                // `Unavailable` instead and decides.
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = command_timeout;
                // Room for bursts of release messages on the subscriber connection.
                p.broadcast_channel_capacity = 4096;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 20, 2_000, 2));
        let pool = builder.build_pool(pool_size).map_err(|e| LockError::Config(format!("redis: {e}")))?;
        let resolver = settings.resolver.clone();
        if let Some(r) = &resolver {
            pool.set_resolver(r.clone()).await;
        }
        let connected = async {
            pool.init().await?;
            Scripts::default().load(pool.next()).await
        };
        match tokio::time::timeout(connect_timeout + command_timeout, connected).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = pool.quit().await;
                return Err(map_err(e));
            }
            Err(_) => {
                let _ = pool.quit().await;
                return Err(LockError::unavailable(NAME, format!("no connection to {shown} in time")));
            }
        }
        Ok(Node {
            url: shown,
            pool,
            builder,
            resolver,
            scripts: Scripts::default(),
            fence_idle_ms: whole_ms(settings.fence_idle),
            attempts: AtomicU64::new(0),
            fail_fast,
        })
    }

    /// A pooled client to send the next command on.
    fn client(&self) -> Result<&Client, Error> {
        let client = self.pool.next_connected();
        if self.fail_fast && !client.is_connected() {
            return Err(Error::new(ErrorKind::IO, format!("not connected to {}", self.url)));
        }
        Ok(client)
    }

    /// Builds new, unconnected subscriber clients for the same deployment, reaching it the way
    /// the pool does.
    pub(crate) fn subscribers(&self) -> impl Fn() -> BoxFuture<'static, SubscriberClient> + Send + Sync {
        let template = self
            .builder
            .build_subscriber_client()
            .expect("the builder already built a pool with this config");
        let resolver = self.resolver.clone();
        move || {
            let (subscriber, resolver) = (template.clone_new(), resolver.clone());
            async move {
                if let Some(r) = resolver {
                    subscriber.set_resolver(r).await;
                }
                subscriber
            }
            .boxed()
        }
    }

    /// The acquire script: one round trip.
    pub(crate) async fn acquire(&self, names: &KeyNames, owner: &str, ttl: Duration) -> Result<Grant, Error> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let keys = [names.lock.as_str(), names.fence.as_str()];
        let ttl_ms = whole_ms(ttl);
        let args = [owner, &ttl_ms.to_string(), &(ttl_ms + self.fence_idle_ms).to_string()];
        let text = scripts::call(self.client()?, &self.scripts.acquire, &keys, &args).await?;
        // The holder in "0 <pttl> <holder>" may contain spaces: split off the status first.
        let mut r = Reply::new(&text, 2, "acquire");
        let granted = r.text()? == "1";
        let mut r = Reply::new(r.text()?, 3, "acquire");
        if granted {
            Ok(Grant::Acquired { token: r.num()?, depth: r.num()?, ttl: Duration::from_millis(r.num()?) })
        } else {
            let (pttl, holder) = (r.num()?, Reply::new(&text, 3, "acquire").nth(2)?);
            Ok(Grant::Busy { left: left(pttl), holder: holder.to_owned() })
        }
    }

    /// The release script: one round trip. With `token`, only that acquisition is released.
    pub(crate) async fn release(
        &self,
        names: &KeyNames,
        owner: &str,
        token: Option<u64>,
    ) -> Result<Released, Error> {
        let token = token.map(|t| t.to_string()).unwrap_or_default();
        let args = [owner, &token, &names.channel];
        let text = scripts::call(self.client()?, &self.scripts.release, &[&names.lock], &args).await?;
        // The holder in "-1 <holder>" may contain spaces: split off the status first.
        let mut r = Reply::new(&text, 2, "release");
        Ok(match r.text()? {
            "1" => {
                let mut r = Reply::new(r.text()?, 2, "release");
                Released::Yes { left: r.num()?, token: r.num()? }
            }
            "0" => Released::NotHeld,
            _ => Released::NotOwner { holder: r.text()?.to_owned() },
        })
    }

    /// The refresh script: one round trip. `None` when `owner` does not hold the lock.
    pub(crate) async fn refresh(
        &self,
        names: &KeyNames,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<(u64, u32)>, Error> {
        let text =
            scripts::call(self.client()?, &self.scripts.refresh, &[&names.lock], &[owner, &ms(ttl)]).await?;
        let mut r = Reply::new(&text, 3, "refresh");
        if r.text()? != "1" {
            return Ok(None);
        }
        Ok(Some((r.num()?, r.num()?)))
    }

    /// The inspect script: one round trip.
    pub(crate) async fn inspect(&self, lock_key: &str) -> Result<Option<Held>, Error> {
        let text = scripts::call(self.client()?, &self.scripts.inspect, &[lock_key], &[]).await?;
        let mut r = Reply::new(&text, 6, "inspect");
        if r.text()? != "1" {
            return Ok(None);
        }
        let (token, depth, pttl, held_us) = (r.num()?, r.num()?, r.num()?, r.num()?);
        Ok(Some(Held {
            token,
            depth,
            left: left(pttl).unwrap_or_default(),
            held: Duration::from_micros(held_us),
            owner: r.text()?.to_owned(),
        }))
    }

    /// Publishes a wait: its key, expiring after `ttl`, and its name in the waits index
    /// (scored with the time it expires, by this client's clock).
    pub(crate) async fn post_wait(
        &self,
        index: &str,
        name: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), Error> {
        use fred::interfaces::{KeysInterface, SortedSetsInterface};
        use fred::types::Expiration;
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let expires = wall_ms().saturating_add(ms) as f64;
        let client = self.client()?;
        futures::try_join!(
            client.set::<(), _, _>(name, value, Some(Expiration::PX(ms)), None, false),
            client.zadd::<(), _, _>(index, None, None, false, false, (expires, name)),
        )
        .map(drop)
    }

    /// Deletes a published wait and its entry in the waits index.
    pub(crate) async fn drop_wait(&self, index: &str, name: &str) -> Result<(), Error> {
        use fred::interfaces::{KeysInterface, SortedSetsInterface};
        let client = self.client()?;
        futures::try_join!(client.del::<i64, _>(name), client.zrem::<i64, _, _>(index, name)).map(drop)
    }

    /// A published wait's value and time left, if it is still there.
    pub(crate) async fn read_wait(&self, name: &str) -> Result<Option<(String, Duration)>, Error> {
        use fred::interfaces::KeysInterface;
        let client = self.client()?;
        let (value, pttl) =
            futures::try_join!(client.get::<Option<String>, _>(name), client.pttl::<i64, _>(name))?;
        Ok(value.zip(left(pttl)))
    }

    /// The names in the waits index, after dropping those that expired more than `grace`
    /// ago by this client's clock (entries whose withdrawal was lost).
    pub(crate) async fn indexed_waits(&self, index: &str, grace: Duration) -> Result<Vec<String>, Error> {
        use fred::interfaces::SortedSetsInterface;
        let client = self.client()?;
        let stale = wall_ms().saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)) as f64;
        client.zremrangebyscore::<i64, _, _, _>(index, f64::NEG_INFINITY, stale).await?;
        client.zrange::<Vec<String>, _, _, _>(index, 0, -1, None, false, None, false).await
    }

    /// Takes `names` (waits found gone) out of the waits index.
    pub(crate) async fn unindex_waits(&self, index: &str, names: Vec<String>) -> Result<(), Error> {
        use fred::interfaces::SortedSetsInterface;
        if names.is_empty() {
            return Ok(());
        }
        self.client()?.zrem::<i64, _, _>(index, names).await.map(drop)
    }

    /// Every key matching `pattern` (on every primary of a cluster).
    pub(crate) async fn scan(&self, pattern: &str) -> Result<Vec<String>, Error> {
        use futures::StreamExt;
        let client = self.pool.next();
        let mut names = if client.is_clustered() {
            client.scan_cluster_buffered(pattern, Some(1000), None).boxed()
        } else {
            client.scan_buffered(pattern, Some(1000), None).boxed()
        };
        let mut out = Vec::new();
        while let Some(name) = names.next().await {
            if let Some(name) = name?.into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// `PING`, and what the server is.
    pub(crate) async fn ping(&self) -> Result<String, Error> {
        let client = self.pool.next();
        let _: String = client.ping(None).await?;
        let version = client.server_version().map(|v| v.to_string()).unwrap_or_else(|| "unknown".into());
        Ok(format!(
            "redis {version} at {}, {} pooled connections{}",
            self.url,
            self.pool.size(),
            if client.is_clustered() { ", cluster" } else { "" }
        ))
    }

    /// Closes the pool.
    pub(crate) async fn quit(&self) {
        let _ = self.pool.quit().await;
    }
}

/// Maps a client error: a connection problem or an answer that means "try again" is
/// [`Unavailable`](LockError::Unavailable), anything else [`Backend`](LockError::Backend).
///
/// A failed TLS handshake (a certificate one side does not trust, a name that does not match)
/// is a [`Backend`](LockError::Backend) error "TLS handshake failed": no retry fixes it.
pub(crate) fn map_err(e: Error) -> LockError {
    if lock_core::tls::is_tls_refusal(e.details()) {
        return LockError::backend(NAME, format!("TLS handshake failed: {}", e.details()));
    }
    const RETRYABLE_REPLIES: &[&str] = &[
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "READONLY",
        "NOREPLICAS",
        // fred's own words, with kind `Unknown`, for a command that found no live connection
        // (right after a reset, while reconnecting) or could not be written.
        "Failed to route command",
        "Too many failed write attempts",
    ];
    let transient = match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Cluster
        | ErrorKind::Routing
        | ErrorKind::Sentinel => true,
        _ => RETRYABLE_REPLIES.iter().any(|p| e.details().starts_with(p)),
    };
    if transient {
        LockError::unavailable(NAME, e)
    } else {
        LockError::backend(NAME, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn ttl_is_sent_in_whole_milliseconds_rounded_up() {
        assert_eq!(ms(Duration::from_millis(1)), "1");
        assert_eq!(ms(Duration::from_micros(1_500)), "2");
        assert_eq!(ms(Duration::from_secs(30)), "30000");
    }

    #[test]
    fn connection_errors_are_retryable_and_script_errors_are_not() {
        assert!(map_err(Error::new(ErrorKind::IO, "reset")).is_retryable());
        assert!(map_err(Error::new(ErrorKind::Timeout, "slow")).is_retryable());
        assert!(map_err(Error::new(ErrorKind::Unknown, "LOADING dataset")).is_retryable());
        // What fred answers while a reset connection is being replaced.
        assert!(map_err(Error::new(ErrorKind::Unknown, "Failed to route command.")).is_retryable());
        let e = map_err(Error::new(ErrorKind::IO, "Custom { error: InvalidCertificate(UnknownIssuer) }"));
        assert!(
            !e.is_retryable() && e.to_string().contains("redis backend error: TLS handshake failed"),
            "{e}"
        );
        let e = map_err(Error::new(ErrorKind::InvalidArgument, "WRONGTYPE not a hash"));
        assert!(e.is_system() && !e.is_retryable(), "{e:?}");
    }
}
