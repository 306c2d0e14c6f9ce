//! Redis-specific behaviour: awkward keys, a lost script cache, a server restart.

mod common;

use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, PubsubInterface};
use lock_core::{LockError, LockOptions, LockProvider};
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
async fn over_long_keys_are_rejected_before_redis_is_asked() {
    let Some(p) = shared("over_long_keys_are_rejected_before_redis_is_asked").await else { return };
    let long = "k".repeat(lock_core::validate::MAX_KEY_LEN + 1);
    let err = p.lock(&opts(&long, "alice")).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidArgument { what: "key", .. }), "{err:?}");
    // The longest accepted key, made of characters the layout escapes, still works.
    let run = run_prefix();
    let key = format!("{run}{}", "}".repeat(lock_core::validate::MAX_KEY_LEN - run.len()));
    p.lock(&opts(&key, "alice")).await.unwrap();
    p.unlock(&key, "alice").await.unwrap();
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
async fn the_fencing_counter_outlives_its_lock_and_never_expires() {
    let Some(p) = shared("the_fencing_counter_outlives_its_lock_and_never_expires").await else { return };
    let raw = raw_client(&lock_testkit::env::redis_url()).await;
    let key = format!("{}k", run_prefix());
    let lease = p.lock(&opts(&key, "alice").ttl(Duration::from_millis(50))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.is_locked(&key).await.unwrap(), None, "the lock expired");
    let fence = format!("distlock:{{{key}}}:fence");
    let counter: Option<u64> = raw.get(&fence).await.unwrap();
    assert_eq!(counter, Some(lease.token.0), "the counter keeps the last token");
    let ttl: i64 = raw.pttl(&fence).await.unwrap();
    assert_eq!(ttl, -1, "the counter has no expiry");
    // Deleting the counter (eviction, a restart without persistence) never lets tokens go back.
    let _: i64 = raw.del(&fence).await.unwrap();
    let next = p.lock(&opts(&key, "bob")).await.unwrap();
    assert!(next.token > lease.token, "{} after {}", next.token, lease.token);
    p.unlock(&key, "bob").await.unwrap();
    let _: () = raw.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_abandoned_in_flight_leaves_no_lock_behind() {
    let Some(p) = shared("an_acquire_abandoned_in_flight_leaves_no_lock_behind").await else { return };
    let p = std::sync::Arc::new(p);
    let run = run_prefix();
    let mut abandoned = 0;
    for round in 0..60u64 {
        let key = format!("{run}{round}");
        let (p2, k2) = (p.clone(), key.clone());
        // A free key: the request is granted on the server whether or not its caller is still
        // there to hear it. Abort at varying points around the round trip.
        let caller = tokio::spawn(async move { p2.lock(&opts(&k2, "alice")).await });
        // Timers are too coarse for this: spin 0 to 190 µs while the caller runs on the other
        // worker, so that some aborts land before, some during and some after the round trip.
        let until = std::time::Instant::now() + Duration::from_micros(round % 20 * 10);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        caller.abort();
        let kept = match caller.await {
            Ok(lease) => Some(lease.expect("a free key is granted")),
            Err(_) => {
                abandoned += 1;
                None
            }
        };
        if let Some(lease) = kept {
            p.unlock(&key, &lease.owner).await.unwrap();
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while p.is_locked(&key).await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < until, "round {round}: an abandoned acquire kept the lock");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(abandoned > 0, "no round abandoned its caller: the test proved nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_sharing_providers_take_turns_on_a_hot_key() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let test = "callers_sharing_providers_take_turns_on_a_hot_key";
    let (Some(a), Some(b)) = (shared(test).await, shared(test).await) else { return };
    // Two providers (two processes, as far as Redis can tell), four callers on each: releases
    // reach the other provider by pub/sub and the same provider by its own unlock, and local
    // knowledge answers some attempts without a round trip. None of it may break exclusion.
    let providers = [Arc::new(a), Arc::new(b)];
    let key = format!("{}hot", run_prefix());
    let inside = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let last_token = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let p = providers[t % 2].clone();
        let (key, inside, done, last_token) = (key.clone(), inside.clone(), done.clone(), last_token.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("caller-{t}");
            let o = LockOptions::new(key.as_str(), owner.as_str())
                .ttl(Duration::from_secs(30))
                .wait(lock_core::WaitPolicy::deadline(Duration::from_secs(60)));
            for _ in 0..20 {
                let lease = p.lock(&o).await.expect("lock");
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let previous = last_token.swap(lease.token.0, Ordering::SeqCst);
                assert!(lease.token.0 > previous, "token {} after {previous}", lease.token);
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                p.unlock(&key, &owner).await.expect("unlock");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 160);
    assert_eq!(providers[0].is_locked(&key).await.unwrap(), None);
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
