//! Redis floors on a fred pool: the textbook single-instance lock (`SET NX PX`, a
//! compare-and-delete script to release) and the least a fenced lock costs (one script that
//! sets the lock and, when it did, `INCR`s a counter for its token).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::prelude::KeysInterface;
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, SetOptions};

use super::poll_pause;
use crate::bench::{BoxFut, Cycle};

/// Lease of every floor lock (the benches' provider leases last as long).
pub const TTL: Duration = Duration::from_secs(30);
/// [`TTL`] in milliseconds, as the fenced script's argument.
const TTL_MS: &str = "30000";

const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

const FENCED_ACQUIRE: &str =
    "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return redis.call('INCR', KEYS[2]) end return 0";

/// `SET key owner NX PX` to acquire (polled with [`poll_pause`] while busy), a
/// compare-and-delete script to release. No token.
pub struct RawFred {
    pool: Pool,
    release: Script,
    attempts: AtomicU64,
}

impl RawFred {
    /// A pool of `pool_size` connections to `url`, the release script loaded.
    pub async fn connect(url: &str, pool_size: usize) -> RawFred {
        let config = fred::types::config::Config::from_url(url).expect("redis URL");
        let pool = Builder::from_config(config).build_pool(pool_size).expect("pool");
        pool.init().await.expect("connect to redis");
        let release = Script::from_lua(RELEASE);
        release.load(pool.next()).await.expect("script load");
        RawFred { pool, release, attempts: AtomicU64::new(0) }
    }

    /// Acquire requests sent so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }
}

impl Cycle for RawFred {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            loop {
                self.attempts.fetch_add(1, Ordering::Relaxed);
                let set: Option<String> = self
                    .pool
                    .set(
                        key,
                        owner,
                        Some(Expiration::PX(TTL.as_millis() as i64)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .expect("SET NX PX");
                if set.is_some() {
                    return;
                }
                poll_pause().await;
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let _: i64 = self.release.evalsha(self.pool.next(), key, owner).await.expect("EVALSHA release");
        })
    }
}

/// One script for the lock and its token (the counter `key:fence`), released like
/// [`RawFred`]: the least a fenced lock costs on Redis.
pub struct RawFenced {
    raw: RawFred,
    acquire: Script,
}

impl RawFenced {
    /// A pool of `pool_size` connections to `url`, both scripts loaded.
    pub async fn connect(url: &str, pool_size: usize) -> RawFenced {
        let raw = RawFred::connect(url, pool_size).await;
        let acquire = Script::from_lua(FENCED_ACQUIRE);
        acquire.load(raw.pool.next()).await.expect("script load");
        RawFenced { raw, acquire }
    }

    /// Acquire requests sent so far.
    pub fn attempts(&self) -> u64 {
        self.raw.attempts()
    }
}

impl Cycle for RawFenced {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let fence = format!("{key}:fence");
            loop {
                self.raw.attempts.fetch_add(1, Ordering::Relaxed);
                let token: i64 = self
                    .acquire
                    .evalsha(self.raw.pool.next(), vec![key, fence.as_str()], vec![owner, TTL_MS])
                    .await
                    .expect("EVALSHA fenced acquire");
                if token > 0 {
                    return;
                }
                poll_pause().await;
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        self.raw.release(key, owner)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fenced_scripts_lease_is_the_ttl() {
        assert_eq!(super::TTL_MS.parse::<u128>().unwrap(), super::TTL.as_millis());
    }
}
