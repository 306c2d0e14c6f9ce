//! Redis-specific behaviour: awkward keys, a lost script cache, a server restart.

mod common;

use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, PubsubInterface};
use fred::types::Expiration;
use lock_core::{LockError, LockOptions, LockProvider, WaitPolicy};
use lock_redis::{RedisConfig, RedisLockProvider};

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

/// The shared server, or `None` (skipped loudly, or failed under `DISTLOCK_REQUIRE_SERVICES=1`).
async fn shared(test: &str) -> Option<RedisLockProvider> {
    let url = lock_testkit::env::redis_url();
    let h = RedisLockProvider::connect(RedisConfig::new(url.as_str()).pool_size(2))
        .await
        .map_err(|e| format!("{url}: {e}"));
    lock_testkit::require_or_skip(test, h)
}

async fn raw_client(url: &str) -> fred::clients::Client {
    let c = fred::types::Builder::from_config(fred::types::config::Config::from_url(url).unwrap())
        .build()
        .unwrap();
    c.init().await.expect("raw client connects");
    c
}

fn run_prefix() -> String {
    format!("distlock-test/{:016x}/", fastrand::u64(..))
}

#[tokio::test]
async fn keys_with_glob_brace_space_and_unicode_characters_are_plain_keys() {
    let Some(p) = shared("keys_with_glob_brace_space_and_unicode_characters_are_plain_keys").await else {
        return;
    };
    let run = run_prefix();
    let awkward = [
        "a*",
        "a?",
        "a[bc]",
        "a]",
        "{",
        "}",
        "{tag}",
        "}{",
        "%7D",
        "100%",
        "with space",
        "tab\there",
        "\\",
        "é漢字🔒",
        "\u{1}\u{7f}",
    ];
    let mut tokens = Vec::new();
    for (i, name) in awkward.iter().enumerate() {
        let key = format!("{run}{name}");
        let lease = p.lock(&opts(&key, &format!("owner {i} with spaces"))).await.expect(name);
        tokens.push(lease.token);
        let info = p.is_locked(&key).await.unwrap().expect(name);
        assert_eq!((info.key.as_str(), info.owner.as_str()), (key.as_str(), lease.owner.as_ref()));
    }
    // A glob character in a key never matches other keys: each is its own lock.
    for (i, name) in awkward.iter().enumerate() {
        let key = format!("{run}{name}");
        let err = p.try_lock(&opts(&key, "intruder")).await.unwrap_err();
        match err {
            LockError::Timeout { holder, .. } => assert_eq!(holder, Some(format!("owner {i} with spaces"))),
            other => panic!("{name}: {other:?}"),
        }
        let err = p.unlock(&key, "intruder").await.unwrap_err();
        assert!(
            matches!(&err, LockError::NotOwner { holder: Some(h), .. } if *h == format!("owner {i} with spaces")),
            "{name}: {err:?}"
        );
        assert_eq!(p.is_locked(&key).await.unwrap().unwrap().token, tokens[i], "{name}");
    }
    // `list` treats the prefix literally: "a*" lists "a*" only, not "a?" or "a[bc]".
    let listed: Vec<_> = p.list(&format!("{run}a*")).await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(listed, vec![format!("{run}a*")]);
    let listed: Vec<_> = p.list(&format!("{run}a[")).await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(listed, vec![format!("{run}a[bc]")]);
    let listed: Vec<_> = p.list(&format!("{run}{{")).await.unwrap().into_iter().map(|i| i.key).collect();
    assert_eq!(listed, vec![format!("{run}{{"), format!("{run}{{tag}}")]);
    let all = p.list(&run).await.unwrap();
    assert_eq!(all.len(), awkward.len());
    let mut sorted: Vec<_> = awkward.iter().map(|n| format!("{run}{n}")).collect();
    sorted.sort();
    assert_eq!(all.iter().map(|i| i.key.clone()).collect::<Vec<_>>(), sorted, "sorted by key");
    for (i, name) in awkward.iter().enumerate() {
        p.unlock(&format!("{run}{name}"), &format!("owner {i} with spaces")).await.expect(name);
    }
    assert!(p.list(&run).await.unwrap().is_empty());
}

#[tokio::test]
async fn operations_recover_from_a_flushed_script_cache() {
    let Some(p) = shared("operations_recover_from_a_flushed_script_cache").await else { return };
    let raw = raw_client(&lock_testkit::env::redis_url()).await;
    let key = format!("{}k", run_prefix());
    let first = p.lock(&opts(&key, "alice")).await.unwrap();
    // Every script is gone from the server; each operation must load it again and succeed.
    raw.script_flush(false).await.unwrap();
    let again = p.lock(&opts(&key, "alice")).await.expect("acquire after SCRIPT FLUSH");
    assert_eq!((again.depth, again.token), (2, first.token));
    raw.script_flush(false).await.unwrap();
    assert_eq!(p.is_locked(&key).await.expect("inspect after SCRIPT FLUSH").unwrap().depth, 2);
    raw.script_flush(false).await.unwrap();
    p.refresh_lock(&key, "alice", Duration::from_secs(60)).await.expect("refresh after SCRIPT FLUSH");
    raw.script_flush(false).await.unwrap();
    p.unlock(&key, "alice").await.expect("release after SCRIPT FLUSH");
    p.unlock(&key, "alice").await.unwrap();
    assert_eq!(p.is_locked(&key).await.unwrap(), None);
    let _: () = raw.quit().await.unwrap();
}

#[tokio::test]
async fn the_fencing_counter_outlives_its_lock_by_the_idle_time_and_then_goes() {
    let test = "the_fencing_counter_outlives_its_lock_by_the_idle_time_and_then_goes";
    let url = lock_testkit::env::redis_url();
    let idle = Duration::from_secs(1);
    let connected = RedisLockProvider::connect(RedisConfig::new(url.as_str()).pool_size(2).fence_idle(idle))
        .await
        .map_err(|e| format!("{url}: {e}"));
    let Some(p) = lock_testkit::require_or_skip(test, connected) else { return };
    let raw = raw_client(&url).await;
    let key = format!("{}k", run_prefix());
    let fence = format!("distlock:{{{key}}}:fence");
    let ttl = Duration::from_millis(50);
    let lease = p.lock(&opts(&key, "alice").ttl(ttl)).await.unwrap();
    let pttl: i64 = raw.pttl(&fence).await.unwrap();
    // More than the lease alone (50 ms) proves the idle time was added.
    assert!((51..=1_050).contains(&pttl), "the counter lives the lease plus the idle time: {pttl} ms");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.is_locked(&key).await.unwrap(), None, "the lock expired");
    let counter: Option<u64> = raw.get(&fence).await.unwrap();
    assert_eq!(counter, Some(lease.token.0), "the counter keeps the last token past the lock");
    // Idle long enough, the counter goes, and tokens still never go back: the next one is
    // raised to the server's time.
    tokio::time::sleep(idle).await;
    let gone: i64 = raw.exists(&fence).await.unwrap();
    assert_eq!(gone, 0, "an idle key's counter is deleted by the server");
    let next = p.lock(&opts(&key, "bob")).await.unwrap();
    assert!(next.token > lease.token, "{} after {}", next.token, lease.token);
    // Deleting a live counter (eviction, a restart without persistence) does not either.
    let _: i64 = raw.del(&fence).await.unwrap();
    p.unlock(&key, "bob").await.unwrap();
    let third = p.lock(&opts(&key, "carol")).await.unwrap();
    assert!(third.token > next.token, "{} after {}", third.token, next.token);
    p.unlock(&key, "carol").await.unwrap();
    let _: () = raw.quit().await.unwrap();
}

/// The acquire script takes the server's time as the token and reads the counter only as text;
/// a counter at or past the clock (which stepped back, or gave two acquisitions one
/// microsecond) must still win, in the lock and in the counter alike.
#[tokio::test]
async fn a_counter_ahead_of_the_clock_still_raises_the_token() {
    let Some(p) = shared("a_counter_ahead_of_the_clock_still_raises_the_token").await else { return };
    let raw = raw_client(&lock_testkit::env::redis_url()).await;
    let key = format!("{}k", run_prefix());
    let fence = format!("distlock:{{{key}}}:fence");
    // Same number of digits as today's time in µs, and far ahead of it (below 2^53, where Lua
    // numbers are exact).
    let ahead: u64 = 9_000_000_000_000_000;
    let _: () = raw.set(&fence, ahead, Some(Expiration::PX(60_000)), None, false).await.unwrap();
    let first = p.lock(&opts(&key, "alice")).await.unwrap();
    assert_eq!(first.token.0, ahead + 1);
    let counter: Option<u64> = raw.get(&fence).await.unwrap();
    assert_eq!(counter, Some(ahead + 1), "the counter keeps the token it gave");
    assert_eq!(p.is_locked(&key).await.unwrap().unwrap().token, first.token, "the lock holds it too");
    let again = p.lock(&opts(&key, "alice")).await.unwrap();
    assert_eq!((again.token, again.depth), (first.token, 2), "re-entry keeps the token");
    p.unlock(&key, "alice").await.unwrap();
    p.unlock(&key, "alice").await.unwrap();
    let next = p.lock(&opts(&key, "bob")).await.unwrap();
    assert_eq!(next.token.0, ahead + 2);
    p.unlock(&key, "bob").await.unwrap();
    // A counter behind the clock gives way to the time floor.
    let _: () = raw.set(&fence, 5u64, Some(Expiration::PX(60_000)), None, false).await.unwrap();
    let floored = p.lock(&opts(&key, "carol")).await.unwrap();
    assert!(floored.token.0 > 1_700_000_000_000_000, "{}", floored.token);
    let counter: Option<u64> = raw.get(&fence).await.unwrap();
    assert_eq!(counter, Some(floored.token.0));
    p.unlock(&key, "carol").await.unwrap();
    let _: i64 = raw.del(&fence).await.unwrap();
    let _: () = raw.quit().await.unwrap();
}

/// Waiters of a key held through another provider ask the server once or twice, then wait for
/// the release message (or the end of the lease the server told them of) instead of polling
/// it on their timers; the release still hands the lock on to every one of them in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_waiters_do_not_poll_while_the_lease_they_know_of_runs() {
    let test = "idle_waiters_do_not_poll_while_the_lease_they_know_of_runs";
    let Some(holder) = shared(test).await else { return };
    let Some(waiters) = shared(test).await else { return };
    let key = format!("{}k", run_prefix());
    holder.lock(&opts(&key, "holder")).await.unwrap();
    let before = waiters.acquire_attempts();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let (w, key) = (waiters.clone(), key.clone());
            tokio::spawn(async move {
                let o =
                    opts(&key, &format!("waiter {i}")).wait(WaitPolicy::deadline(Duration::from_secs(20)));
                let lease = w.lock(&o).await.expect("acquired after the release");
                w.unlock(&key, &lease.owner).await.unwrap();
            })
        })
        .collect();
    // On their timers alone (5 ms doubling to 250 ms) five waiters would ask about 50 times.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let asked = waiters.acquire_attempts() - before;
    assert!(asked <= 10, "5 idle waiters asked the server {asked} times in 1.5 s");
    holder.unlock(&key, "holder").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(holder.is_locked(&key).await.unwrap(), None);
}

#[test]
fn fence_idle_outside_its_range_is_refused() {
    for idle in [Duration::from_millis(999), Duration::from_secs(31 * 24 * 3_600)] {
        let err = RedisConfig::default().fence_idle(idle).validate().unwrap_err();
        assert!(matches!(&err, LockError::Config(m) if m.contains("fence_idle")), "{err}");
    }
    RedisConfig::default().fence_idle(Duration::from_secs(1)).validate().unwrap();
}

/// Refreshes until the server answers (the client reconnects after the restart).
async fn refresh_when_reachable(
    p: &RedisLockProvider,
    key: &str,
    owner: &str,
) -> lock_core::Result<lock_core::Lease> {
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match p.refresh_lock(key, owner, Duration::from_secs(30)).await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

#[tokio::test]
async fn a_restart_without_persistence_makes_the_holders_refresh_fail_with_lease_lost() {
    if !common::can_start_servers(
        "a_restart_without_persistence_makes_the_holders_refresh_fail_with_lease_lost",
    ) {
        return;
    }
    let mut server = tokio::task::spawn_blocking(common::Server::start).await.unwrap();
    let config = RedisConfig::new(server.url()).pool_size(2).command_timeout(Duration::from_secs(2));
    let p = RedisLockProvider::connect(config).await.expect("connect to the throwaway server");
    let lease = p.lock(&opts("job", "alice")).await.unwrap();
    p.refresh_lock("job", "alice", Duration::from_secs(30)).await.expect("refresh before the restart");

    server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();

    let err = refresh_when_reachable(&p, "job", "alice").await.expect_err("the lock died with the server");
    assert!(err.is_lease_lost(), "{err:?}");
    assert_eq!(p.is_locked("job").await.unwrap(), None);
    // The next holder's token is still above the lost one, although the counter died too.
    let next = p.lock(&opts("job", "bob")).await.unwrap();
    assert!(next.token > lease.token, "{} after {}", next.token, lease.token);
    p.close().await.unwrap();
    drop(server);
}

/// `connect_to` dials the mapped address for a server name that resolves nowhere, on every
/// connection: the command pool and the pub/sub connection that wakes a waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_reaches_the_server_behind_a_name_that_resolves_nowhere() {
    let test = "connect_to_reaches_the_server_behind_a_name_that_resolves_nowhere";
    let Some(shared) = shared(test).await else { return };
    let server = lock_testkit::faults::upstream_of(&lock_testkit::env::redis_url());
    let config = RedisConfig::new(format!("redis://locks.invalid:{}", server.port()))
        .pool_size(2)
        .connect_to("locks.invalid", server.port(), server);
    let p = RedisLockProvider::connect(config).await.expect("connect through the mapped address");
    let key = format!("{}k", run_prefix());
    shared.lock(&opts(&key, "alice")).await.unwrap();
    let waiter = {
        let (p, key) = (p.clone(), key.clone());
        tokio::spawn(async move {
            p.lock(&opts(&key, "bob").wait(lock_core::WaitPolicy::deadline(Duration::from_secs(20)))).await
        })
    };
    // The waiter listens for the release on a subscriber connection of its own.
    let raw = raw_client(&lock_testkit::env::redis_url()).await;
    let pattern = format!("*{key}*");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let channels: Vec<String> = raw.pubsub_channels(pattern.as_str()).await.unwrap();
        if !channels.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the waiter's pub/sub connection never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.unlock(&key, "alice").await.unwrap();
    let lease = waiter.await.unwrap().expect("the waiter gets the lock");
    assert_eq!(&*lease.owner, "bob");
    assert!(p.health().await.unwrap().detail.contains("locks.invalid"));
    p.unlock(&key, "bob").await.unwrap();
    p.close().await.unwrap();
    shared.close().await.unwrap();
}

/// The waits index (the sorted set the deadlock detector reads instead of scanning every key)
/// forgets waits that expired and entries whose withdrawal was lost, so it cannot grow.
#[tokio::test]
async fn the_waits_index_forgets_expired_and_stale_waits() {
    use fred::interfaces::SortedSetsInterface;
    let Some(p) = shared("the_waits_index_forgets_expired_and_stale_waits").await else { return };
    let raw = raw_client(&lock_testkit::env::redis_url()).await;
    let run = run_prefix();
    let index = format!("{}waits", lock_redis::DEFAULT_KEY_PREFIX);
    let wait = |key: &str, ttl: Duration| lock_core::WaitInfo {
        key: format!("{run}{key}"),
        owner: "o".into(),
        id: 7,
        since: std::time::SystemTime::now(),
        remaining_ttl: ttl,
    };
    let name = |key: &str| format!("{}{{{run}{key}}}:wait:7", lock_redis::DEFAULT_KEY_PREFIX);

    p.publish_wait(&wait("short", Duration::from_millis(200))).await.unwrap();
    p.publish_wait(&wait("long", Duration::from_secs(30))).await.unwrap();
    let score: Option<f64> = raw.zscore(&index, name("short")).await.unwrap();
    assert!(score.is_some(), "a published wait is indexed");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // An entry whose wait is long gone (its withdrawal lost), expired two minutes ago.
    let stale_at = std::time::SystemTime::now() - Duration::from_secs(120);
    let stale_at = stale_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as f64;
    let _: i64 = raw.zadd(&index, None, None, false, false, (stale_at, name("stale"))).await.unwrap();

    let waits = p.waits(&run).await.unwrap();
    assert_eq!(waits.iter().map(|w| w.key.as_str()).collect::<Vec<_>>(), [format!("{run}long")]);
    for gone in ["short", "stale"] {
        let score: Option<f64> = raw.zscore(&index, name(gone)).await.unwrap();
        assert_eq!(score, None, "{gone} left the index");
    }
    p.withdraw_wait(&format!("{run}long"), "o", 7).await.unwrap();
    let score: Option<f64> = raw.zscore(&index, name("long")).await.unwrap();
    assert_eq!(score, None, "a withdrawn wait leaves the index");
}
