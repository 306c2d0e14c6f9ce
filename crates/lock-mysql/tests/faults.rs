//! Faults and races the lock table must survive: answers lost after a commit, concurrent
//! releases of one owner, statements that hang, table names at the identifier limit, and pools
//! handed in by the application with unusual session settings. Needs the server of
//! `DISTLOCK_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockOptions, LockProvider, WaitPolicy};
use lock_mysql::{MySqlLockConfig, MySqlLockProvider, MAX_TABLE_NAME_LEN};
use lock_testkit::env::mysql_url;
use lock_testkit::require_or_skip;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::Executor;

fn unique_table(tag: &str) -> String {
    format!("distlock_f_{tag}_{:08x}", fastrand::u32(..))
}

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

fn config(table: &str) -> MySqlLockConfig {
    MySqlLockConfig::default().table_name(table).max_connections(4)
}

async fn provider(test: &str, config: MySqlLockConfig) -> Option<MySqlLockProvider> {
    require_or_skip(
        test,
        MySqlLockProvider::connect(&mysql_url(), config).await.map_err(|e| format!("{}: {e}", mysql_url())),
    )
}

async fn admin() -> MySqlPool {
    MySqlPoolOptions::new().max_connections(2).connect(&mysql_url()).await.expect("admin pool")
}

async fn drop_table(pool: &MySqlPool, table: &str) {
    sqlx::query(&format!("DROP TABLE IF EXISTS `{table}`")).execute(pool).await.unwrap();
}

/// Two unlocks of one owner at depth 2, at the same time: each removes exactly one level, both
/// succeed, and the key ends up free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unlocks_of_one_owner_each_release_one_level() {
    let table = unique_table("unl");
    let Some(p) = provider("concurrent_unlocks", config(&table)).await else { return };
    let p = Arc::new(p);
    for round in 0..60 {
        p.lock(&opts("k", "alice")).await.unwrap();
        assert_eq!(p.lock(&opts("k", "alice")).await.unwrap().depth, 2);
        let (a, b) = tokio::join!(
            tokio::spawn({
                let p = p.clone();
                async move { p.unlock("k", "alice").await }
            }),
            tokio::spawn({
                let p = p.clone();
                async move { p.unlock("k", "alice").await }
            }),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_ok() && b.is_ok(), "round {round}: {a:?} / {b:?}");
        assert_eq!(p.is_locked("k").await.unwrap(), None, "round {round}: a level leaked");
    }
    drop_table(p.pool(), &table).await;
}

/// The re-entry commits, then the follow-up read cannot get a connection: the caller must not
/// be told "error" while a level it does not know about stays behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_reentry_is_never_reported_as_an_error() {
    let table = unique_table("reent");
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&mysql_url())
        .await;
    let Some(pool) = require_or_skip("committed_reentry", pool.map_err(|e| e.to_string())) else { return };
    let p = Arc::new(MySqlLockProvider::from_pool(pool.clone(), config(&table)).await.unwrap());
    p.lock(&opts("k", "alice")).await.unwrap();

    // Hold the row so that the re-entry's statement waits (occupying the pool's only
    // connection) until we let it go.
    let admin = admin().await;
    let mut blocker = admin.acquire().await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    sqlx::query(&format!("SELECT depth FROM `{table}` WHERE lock_key = 'k' FOR UPDATE"))
        .fetch_all(&mut *blocker)
        .await
        .unwrap();
    let reentry = tokio::spawn({
        let p = p.clone();
        async move { p.lock(&opts("k", "alice").wait(WaitPolicy::deadline(Duration::from_secs(10)))).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queue for the pool's connection: we get it as soon as the re-entry statement returns it,
    // and keep it longer than the pool's acquire timeout.
    let hog = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.acquire().await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(conn);
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.execute("COMMIT").await.unwrap();
    let got = reentry.await.unwrap();
    hog.await.unwrap();
    let depth = p.is_locked("k").await.unwrap().unwrap().depth;
    match got {
        Ok(lease) => assert_eq!(depth, 2, "the re-entry was reported: {lease:?}"),
        Err(e) => assert_eq!(depth, 1, "an error must mean nothing changed ({e:?}), but depth is {depth}"),
    }
    drop_table(&admin, &table).await;
}

/// A refresh whose statement cannot finish (the row is locked by someone else's transaction)
/// answers a retryable `Unavailable` within the statement timeout instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_statement_fails_as_unavailable_and_leaves_no_lock() {
    let table = unique_table("hung");
    let Some(p) = provider("hung_statement", config(&table)).await else { return };
    p.lock(&opts("k", "alice")).await.unwrap();
    let admin = admin().await;
    let mut blocker = admin.acquire().await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    sqlx::query(&format!("SELECT depth FROM `{table}` WHERE lock_key = 'k' FOR UPDATE"))
        .fetch_all(&mut *blocker)
        .await
        .unwrap();

    let refreshed =
        tokio::time::timeout(Duration::from_secs(25), p.refresh_lock("k", "alice", Duration::from_secs(30)))
            .await
            .expect("a refresh must not hang on a locked row");
    assert!(matches!(refreshed, Err(LockError::Unavailable { .. })), "{refreshed:?}");

    // An acquisition that cannot get an answer in time: Unavailable, and no lock left behind
    // once the row is free again.
    let got = tokio::time::timeout(Duration::from_secs(25), p.lock(&opts("k", "alice")))
        .await
        .expect("an acquisition must not hang on a locked row");
    assert!(matches!(got, Err(LockError::Unavailable { .. })), "{got:?}");
    blocker.execute("COMMIT").await.unwrap();
    drop(blocker);
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let depth = p.is_locked("k").await.unwrap().map(|i| i.depth);
        if depth == Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "the lost re-entry stayed: depth {depth:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(p.is_locked("k").await.unwrap(), None);
    drop_table(&admin, &table).await;
}

/// Every name the validator accepts works, up to the identifier limit; one byte more is
/// `InvalidArgument` before any connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_accepted_table_names_work() {
    let admin = match MySqlPoolOptions::new().max_connections(1).connect(&mysql_url()).await {
        Ok(a) => a,
        Err(e) => {
            require_or_skip::<()>("longest_table_names", Err(e.to_string()));
            return;
        }
    };
    for len in [MAX_TABLE_NAME_LEN - 3, MAX_TABLE_NAME_LEN - 1, MAX_TABLE_NAME_LEN] {
        let stem = format!("distlock_f_long_{:08x}_", fastrand::u32(..));
        let name: String = stem.chars().chain(std::iter::repeat('x')).take(len).collect();
        let p = match MySqlLockProvider::connect(&mysql_url(), config(&name)).await {
            Ok(p) => p,
            Err(e) => panic!("a {len}-byte name was accepted by the validator but failed: {e:?}"),
        };
        let lease = p.lock(&opts("k", "alice")).await.unwrap();
        assert_eq!(p.is_locked("k").await.unwrap().unwrap().token, lease.token);
        p.unlock("k", "alice").await.unwrap();
        p.close().await.unwrap();
        drop_table(&admin, &name).await;
    }
    for len in [MAX_TABLE_NAME_LEN + 1, MAX_TABLE_NAME_LEN + 10] {
        let name = "t".repeat(len);
        match MySqlLockProvider::connect("mysql://root@127.0.0.1:1/test", config(&name)).await {
            Err(LockError::InvalidArgument { what: "table name", .. }) => {}
            other => panic!("{len} bytes: {other:?}"),
        }
        let pool = MySqlPoolOptions::new().max_connections(1).connect_lazy(&mysql_url()).unwrap();
        match MySqlLockProvider::from_pool(pool, config(&name)).await {
            Err(LockError::InvalidArgument { what: "table name", .. }) => {}
            other => panic!("{len} bytes on a pool: {other:?}"),
        }
    }
}

/// A pool whose connections run `setup` after connecting.
async fn pool_with(setup: &'static str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(setup).await?;
                Ok(())
            })
        })
        .connect(&mysql_url())
        .await
        .expect("pool")
}

/// Whatever session settings the application's pool carries, a lock taken through it is seen
/// and excluded by a provider on a plain pool, and released properly; or the provider refuses
/// to start with a `Config` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_pools_with_unusual_session_settings() {
    let table = unique_table("sess");
    let Some(plain) = provider("session_settings", config(&table)).await else { return };
    let settings = [
        "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET time_zone = '+05:00'",
        "SET sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES,PIPES_AS_CONCAT,ONLY_FULL_GROUP_BY'",
        "SET sql_mode = 'ANSI'",
        "SET sql_mode = ''",
        "SET sql_mode = 'SIMULTANEOUS_ASSIGNMENT'",
        "SET autocommit = 0",
        "SET autocommit = 0, tx_isolation = 'SERIALIZABLE'",
    ];
    for setup in settings {
        let pool = pool_with(setup).await;
        let odd = tokio::time::timeout(
            Duration::from_secs(20),
            MySqlLockProvider::from_pool(pool.clone(), config(&table)),
        )
        .await
        .unwrap_or_else(|_| panic!("{setup}: start hung"));
        let odd = match odd {
            Ok(p) => p,
            Err(LockError::Config(why)) => {
                assert!(!why.is_empty(), "{setup}");
                continue;
            }
            Err(e) => panic!("{setup}: neither works nor refuses with Config: {e:?}"),
        };
        let checked = tokio::time::timeout(Duration::from_secs(20), async {
            let key = "odd-session";
            let lease = odd.lock(&opts(key, "alice")).await.unwrap();
            let seen =
                plain.is_locked(key).await.unwrap().unwrap_or_else(|| panic!("{setup}: lock not visible"));
            assert_eq!((seen.owner.as_str(), seen.token), ("alice", lease.token), "{setup}");
            assert!(plain.try_lock(&opts(key, "bob")).await.unwrap_err().is_timeout(), "{setup}");
            assert_eq!(odd.lock(&opts(key, "alice")).await.unwrap().depth, 2, "{setup}");
            let refreshed = odd.refresh_lock(key, "alice", Duration::from_secs(20)).await.unwrap();
            assert_eq!(refreshed.token, lease.token, "{setup}");
            assert!(odd.list("odd-").await.unwrap().iter().any(|i| i.key == key), "{setup}");
            odd.unlock(key, "alice").await.unwrap();
            odd.unlock(key, "alice").await.unwrap();
            assert_eq!(plain.is_locked(key).await.unwrap(), None, "{setup}: release not visible");
            let bob = plain.lock(&opts(key, "bob")).await.unwrap();
            assert!(bob.token > lease.token, "{setup}");
            assert!(odd.try_lock(&opts(key, "alice")).await.unwrap_err().is_timeout(), "{setup}");
            plain.unlock(key, "bob").await.unwrap();
        })
        .await;
        assert!(checked.is_ok(), "{setup}: an operation hung");
        odd.close().await.unwrap();
        pool.close().await;
    }
    drop_table(plain.pool(), &table).await;
}

/// Fencing tokens of one key come from the key's previous token, not from a counter that a
/// stalled statement may have drawn from long ago: a release keeps the token in the table, the
/// next acquisition continues from it, and the reaper leaves a freed row alone for the grace
/// period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_continue_from_the_keys_last_token_across_release() {
    let table = unique_table("tok");
    let Some(p) = provider("tokens_by_construction", config(&table)).await else { return };
    let t1 = p.lock(&opts("k", "alice")).await.unwrap().token;
    p.unlock("k", "alice").await.unwrap();
    // Other keys draw from the shared counter in between.
    for i in 0..5 {
        let k = format!("other{i}");
        p.lock(&opts(&k, "carol")).await.unwrap();
        p.unlock(&k, "carol").await.unwrap();
    }
    let t2 = p.lock(&opts("k", "bob")).await.unwrap().token;
    assert_eq!(t2.0, t1.0 + 1, "the next token of a released key follows its last one");
    p.unlock("k", "bob").await.unwrap();
    assert_eq!(p.reap_now(Duration::ZERO).await.unwrap(), 0, "freed rows stay for the grace period");
    let t3 = p.lock(&opts("k", "carol")).await.unwrap().token;
    assert_eq!(t3.0, t2.0 + 1);
    drop_table(p.pool(), &table).await;
}
