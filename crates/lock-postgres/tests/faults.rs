//! Faults and races the lock table must survive: concurrent releases of one owner, statements
//! that hang on a row another transaction holds, table names at the identifier limit, and pools
//! handed in by the application with unusual session settings. Needs the server of
//! `DISTLOCK_TEST_POSTGRES_URL` (default `postgres://distlock@127.0.0.1:5432/distlock`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockOptions, LockProvider};
use lock_postgres::{PgLockConfig, PgLockProvider, MAX_TABLE_NAME_LEN};
use lock_testkit::env::postgres_url;
use lock_testkit::require_or_skip;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Executor;

fn unique_table(tag: &str) -> String {
    format!("distlock_f_{tag}_{:08x}", fastrand::u32(..))
}

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

fn config(table: &str) -> PgLockConfig {
    PgLockConfig::default().table_name(table).max_connections(4)
}

async fn provider(test: &str, config: PgLockConfig) -> Option<PgLockProvider> {
    require_or_skip(
        test,
        PgLockProvider::connect(&postgres_url(), config)
            .await
            .map_err(|e| format!("{}: {e}", postgres_url())),
    )
}

async fn admin() -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(&postgres_url()).await.expect("admin pool")
}

async fn drop_table(pool: &PgPool, table: &str) {
    for sql in [
        format!("DROP TABLE IF EXISTS \"{table}\""),
        format!("DROP TABLE IF EXISTS \"{table}_waits\""),
        format!("DROP SEQUENCE IF EXISTS \"{table}_ids\""),
    ] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
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

/// A refresh whose statement cannot finish (the row is locked by someone else's transaction)
/// answers a retryable `Unavailable` within the statement timeout instead of hanging; so does
/// an acquisition, which leaves no lock behind once the row is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_statement_fails_as_unavailable_and_leaves_no_lock() {
    let table = unique_table("hung");
    let Some(p) = provider("hung_statement", config(&table).statement_timeout(Duration::from_secs(1))).await
    else {
        return;
    };
    p.lock(&opts("k", "alice")).await.unwrap();
    let admin = admin().await;
    let mut blocker = admin.acquire().await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    sqlx::query(&format!("SELECT depth FROM \"{table}\" WHERE lock_key = 'k' FOR UPDATE"))
        .fetch_all(&mut *blocker)
        .await
        .unwrap();

    let refreshed =
        tokio::time::timeout(Duration::from_secs(25), p.refresh_lock("k", "alice", Duration::from_secs(30)))
            .await
            .expect("a refresh must not hang on a locked row");
    assert!(matches!(refreshed, Err(LockError::Unavailable { .. })), "{refreshed:?}");

    let got = tokio::time::timeout(Duration::from_secs(25), p.lock(&opts("k", "alice")))
        .await
        .expect("an acquisition must not hang on a locked row");
    assert!(matches!(got, Err(LockError::Unavailable { .. })), "{got:?}");
    blocker.execute("COMMIT").await.unwrap();
    drop(blocker);
    // The server aborted the statement: the depth is still 1.
    assert_eq!(p.is_locked("k").await.unwrap().map(|i| i.depth), Some(1));
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(p.is_locked("k").await.unwrap(), None);
    drop_table(&admin, &table).await;
}

/// Every name the validator accepts works, up to the identifier limit; one byte more is
/// `InvalidArgument` before any connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_accepted_table_names_work() {
    let admin = match PgPoolOptions::new().max_connections(1).connect(&postgres_url()).await {
        Ok(a) => a,
        Err(e) => {
            require_or_skip::<()>("longest_table_names", Err(e.to_string()));
            return;
        }
    };
    for len in [MAX_TABLE_NAME_LEN - 3, MAX_TABLE_NAME_LEN - 1, MAX_TABLE_NAME_LEN] {
        let stem = format!("distlock_f_long_{:08x}_", fastrand::u32(..));
        let name: String = stem.chars().chain(std::iter::repeat('x')).take(len).collect();
        let p = match PgLockProvider::connect(&postgres_url(), config(&name)).await {
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
        match PgLockProvider::connect("postgres://distlock@127.0.0.1:1/distlock", config(&name)).await {
            Err(LockError::InvalidArgument { what: "table name", .. }) => {}
            other => panic!("{len} bytes: {other:?}"),
        }
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy(&postgres_url()).unwrap();
        match PgLockProvider::from_pool(pool, config(&name)).await {
            Err(LockError::InvalidArgument { what: "table name", .. }) => {}
            other => panic!("{len} bytes on a pool: {other:?}"),
        }
    }
}

/// A pool whose connections run `setup` after connecting.
async fn pool_with(setup: &'static str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                conn.execute(setup).await?;
                Ok(())
            })
        })
        .connect(&postgres_url())
        .await
        .expect("pool")
}

/// Whatever session settings the application's pool carries, a lock taken through it is seen
/// and excluded by a provider on a plain pool, and released properly; or the provider refuses
/// to start with a `Config` error (a pool without `statement_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_pools_with_unusual_session_settings() {
    let table = unique_table("sess");
    let Some(plain) = provider("session_settings", config(&table)).await else { return };
    let settings = [
        "SET statement_timeout = '5s'; SET default_transaction_isolation = 'serializable'",
        "SET statement_timeout = '5s'; SET default_transaction_isolation = 'repeatable read'",
        "SET statement_timeout = '5s'; SET TIME ZONE 'Asia/Kolkata'",
        "SET statement_timeout = '5s'; SET search_path = pg_catalog",
        "SET statement_timeout = '5s'; SET standard_conforming_strings = off",
        "SET statement_timeout = '5s'; SET DateStyle = 'German, DMY'; SET IntervalStyle = 'sql_standard'",
        "SET statement_timeout = 0",
        "SET statement_timeout = '1h'",
    ];
    for setup in settings {
        let pool = pool_with(setup).await;
        let odd = tokio::time::timeout(
            Duration::from_secs(20),
            PgLockProvider::from_pool(pool.clone(), config(&table)),
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
            assert!(seen.remaining_ttl > Duration::from_secs(20), "{setup}: {seen:?}");
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
