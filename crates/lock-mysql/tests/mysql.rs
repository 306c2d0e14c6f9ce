//! MySQL-specific behaviour: table names, pooled connections dying, table isolation, cleanup
//! and the fencing token across row replacement. Needs the server of
//! `DISTLOCK_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::{LockError, LockOptions, LockProvider, WaitPolicy};
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::env::mysql_url;
use lock_testkit::require_or_skip;
use sqlx::mysql::MySqlPoolOptions;

fn unique_table(tag: &str) -> String {
    format!("distlock_t_{tag}_{:08x}", fastrand::u32(..))
}

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

/// A provider on its own fresh table, or `None` (skip, or fail when services are required).
async fn provider(test: &str, table: &str, max_connections: u32) -> Option<MySqlLockProvider> {
    let config = MySqlLockConfig::default().table_name(table).max_connections(max_connections);
    require_or_skip(
        test,
        MySqlLockProvider::connect(&mysql_url(), config).await.map_err(|e| format!("{}: {e}", mysql_url())),
    )
}

async fn drop_table(p: &MySqlLockProvider) {
    sqlx::query(&format!("DROP TABLE IF EXISTS `{}`", p.table())).execute(p.pool()).await.unwrap();
}

#[tokio::test]
async fn bad_table_names_are_rejected_before_any_connection() {
    // Port 1 has no server: reaching it would be `Unavailable`, not `InvalidArgument`.
    for bad in ["locks; DROP TABLE x", "lo`cks", "", "db.locks", "1x"] {
        let config = MySqlLockConfig::default().table_name(bad);
        match MySqlLockProvider::connect("mysql://root@127.0.0.1:1/test", config).await {
            Err(LockError::InvalidArgument { what: "table name", .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_table_name_on_an_existing_pool_is_rejected() {
    let pool = MySqlPoolOptions::new().max_connections(1).connect_lazy(&mysql_url()).unwrap();
    let config = MySqlLockConfig::default().table_name("x`; DROP TABLE y; --");
    let err = MySqlLockProvider::from_pool(pool, config).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidArgument { what: "table name", .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pooled_connection_keeps_the_lock_and_the_provider_recovers() {
    let table = unique_table("kill");
    let Some(p) = provider("killed_connection", &table, 1).await else { return };
    let lease = p.lock(&opts("job", "alice")).await.unwrap();
    // The pool has one connection: find it and kill it from outside.
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()").fetch_one(p.pool()).await.unwrap();
    let admin = MySqlPoolOptions::new().max_connections(1).connect(&mysql_url()).await.unwrap();
    sqlx::query(&format!("KILL CONNECTION {id}")).execute(&admin).await.unwrap();

    let mut seen = None;
    for _ in 0..20 {
        match p.is_locked("job").await {
            Ok(info) => {
                seen = info;
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "a dead connection must be a retryable error: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let info = seen.expect("the lock outlives the connection that took it");
    assert_eq!((info.owner.as_str(), info.token), ("alice", lease.token));
    assert!(p.try_lock(&opts("job", "bob")).await.unwrap_err().is_timeout());
    p.unlock("job", "alice").await.expect("the provider works again");
    drop_table(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_on_different_tables_do_not_see_each_others_locks() {
    let Some(a) = provider("isolation", &unique_table("iso_a"), 2).await else { return };
    let Some(b) = provider("isolation", &unique_table("iso_b"), 2).await else { return };
    a.lock(&opts("shared-name", "alice")).await.unwrap();
    let lb = b.lock(&opts("shared-name", "bob")).await.expect("other table, other lock");
    assert_eq!(&*lb.owner, "bob");
    assert_eq!(a.is_locked("shared-name").await.unwrap().unwrap().owner, "alice");
    assert_eq!(b.list("").await.unwrap().len(), 1);
    drop_table(&a).await;
    drop_table(&b).await;
}

/// Makes every free row of `p`'s table look free for an hour already.
async fn age_free_rows(p: &MySqlLockProvider) -> u64 {
    sqlx::query(&format!(
        "UPDATE `{}` SET expires_at = expires_at - INTERVAL 1 HOUR WHERE expires_at <= UTC_TIMESTAMP(6)",
        p.table()
    ))
    .execute(p.pool())
    .await
    .unwrap()
    .rows_affected()
}

async fn rows(p: &MySqlLockProvider) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM `{}`", p.table())).fetch_one(p.pool()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_ended_rows_and_keeps_live_ones() {
    let Some(p) = provider("cleanup", &unique_table("clean"), 2).await else { return };
    let short = |k: &str| opts(k, "alice").ttl(Duration::from_millis(200));
    for k in ["a", "b", "c"] {
        p.lock(&short(k)).await.unwrap();
    }
    p.lock(&opts("live", "alice")).await.unwrap();
    p.lock(&opts("released", "alice")).await.unwrap();
    p.unlock("released", "alice").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Lazy cleanup: taking over an expired lease is counted.
    p.lock(&opts("a", "bob")).await.unwrap();
    assert_eq!(p.cleanup_stats().expired_taken_over, 1);

    // Freed rows (released or expired) stay for the grace period, however short a grace the
    // caller asks for: they keep the key's last fencing token.
    assert!(p.min_reap_grace() >= Duration::from_secs(10));
    assert_eq!(p.reap_now(Duration::ZERO).await.unwrap(), 0);
    assert_eq!(rows(&p).await, 5);
    assert_eq!(age_free_rows(&p).await, 3, "b, c and the released row");
    assert_eq!(p.reap_now(Duration::ZERO).await.unwrap(), 3);
    assert_eq!(p.cleanup_stats().rows_reaped, 3);
    assert_eq!(rows(&p).await, 2, "only the two live rows remain");
    let live: Vec<_> = p.list("").await.unwrap().into_iter().map(|i| (i.key, i.owner)).collect();
    assert_eq!(live, vec![("a".to_string(), "bob".to_string()), ("live".to_string(), "alice".to_string())]);
    // A grace period longer than the minimum keeps rows the minimum would reap.
    p.lock(&short("d")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    age_free_rows(&p).await;
    assert_eq!(p.reap_now(Duration::from_secs(7200)).await.unwrap(), 0);
    assert_eq!(p.reap_now(Duration::ZERO).await.unwrap(), 1);
    drop_table(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_keep_increasing_when_rows_are_freed_reaped_or_worn() {
    let Some(p) = provider("fencing_rows", &unique_table("fence"), 2).await else { return };
    let t1 = p.lock(&opts("k", "alice")).await.unwrap().token;
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(rows(&p).await, 1, "the release keeps the row and its token");
    let t2 = p.lock(&opts("k", "bob").ttl(Duration::from_millis(200))).await.unwrap().token;
    assert!(t2 > t1, "after a release: {t1} then {t2}");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Bob's lease expired and the row was reaped: the key's next row starts above.
    age_free_rows(&p).await;
    assert_eq!(p.reap_now(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(rows(&p).await, 0);
    let t3 = p.lock(&opts("k", "carol")).await.unwrap().token;
    assert!(t3 > t2, "after the row was reaped: {t2} then {t3}");
    p.unlock("k", "carol").await.unwrap();

    // A row acquired 65,536 times in one life can no longer be followed by a new row with a
    // larger token: it keeps counting and is never reaped.
    sqlx::query(&format!("UPDATE `{}` SET generation = 65535 WHERE lock_key = 'k'", p.table()))
        .execute(p.pool())
        .await
        .unwrap();
    let t4 = p.lock(&opts("k", "dave")).await.unwrap().token;
    assert!(t4 > t3, "past the generation limit: {t3} then {t4}");
    assert_eq!(p.is_locked("k").await.unwrap().unwrap().token, t4);
    p.unlock("k", "dave").await.unwrap();
    age_free_rows(&p).await;
    assert_eq!(p.reap_now(Duration::ZERO).await.unwrap(), 0, "a worn row stays");
    let t5 = p.lock(&opts("k", "erin")).await.unwrap().token;
    assert!(t5 > t4);
    drop_table(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_hold_no_connection_while_they_wait() {
    let table = unique_table("pool");
    let Some(p) = provider("pool_not_exhausted", &table, 2).await else { return };
    let p = Arc::new(p);
    p.lock(&opts("busy", "alice")).await.unwrap();
    let waiters: Vec<_> = (0..10)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                let o = opts("busy", &format!("w{i}")).wait(WaitPolicy::deadline(Duration::from_secs(3)));
                p.lock(&o).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Ten waiters and a pool of two: other work still gets a connection.
    for i in 0..5 {
        let k = format!("other{i}");
        p.lock(&opts(&k, "bob")).await.expect("pool has a free connection");
        p.unlock(&k, "bob").await.unwrap();
    }
    p.unlock("busy", "alice").await.unwrap();
    let mut winners = 0;
    for w in waiters {
        if let Ok(lease) = w.await.unwrap() {
            winners += 1;
            p.unlock(&lease.key, &lease.owner).await.unwrap();
        }
    }
    assert!(winners >= 1, "somebody got the lock after the release");
    drop_table(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_reaper_deletes_freed_rows() {
    let config = MySqlLockConfig::default()
        .table_name(unique_table("reaper"))
        .reap_interval(Some(Duration::from_millis(200)))
        .command_timeout(Duration::from_millis(100))
        .reap_grace(Duration::from_secs(1));
    let connected = MySqlLockProvider::connect(&mysql_url(), config).await.map_err(|e| e.to_string());
    let Some(p) = require_or_skip("background_reaper", connected) else { return };
    for k in ["a", "b"] {
        p.lock(&opts(k, "alice").ttl(Duration::from_millis(100))).await.unwrap();
    }
    p.lock(&opts("live", "alice")).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.cleanup_stats().rows_reaped < 2 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.cleanup_stats().rows_reaped, 2, "nobody called reap_now");
    assert_eq!(rows(&p).await, 1);
    drop_table(&p).await;
}

#[tokio::test]
async fn a_grace_period_shorter_than_statements_can_run_is_rejected() {
    let config = MySqlLockConfig::default().reap_grace(Duration::from_secs(1));
    match MySqlLockProvider::connect("mysql://root@127.0.0.1:1/test", config).await {
        Err(LockError::InvalidArgument { what: "reap_grace", .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_operation() {
    let Some(p) = provider("statements", &unique_table("stmts"), 2).await else { return };
    let other_instance = MySqlLockConfig::default().table_name(p.table()).max_connections(1);
    let q = MySqlLockProvider::connect(&mysql_url(), other_instance).await.unwrap();
    let cost = |before: u64, p: &MySqlLockProvider| p.statements_sent() - before;

    let n = p.statements_sent();
    let first = p.lock(&opts("k", "alice")).await.unwrap();
    assert_eq!(cost(n, &p), 1, "a new key: one upsert");
    let n = p.statements_sent();
    assert_eq!(p.lock(&opts("k", "alice")).await.unwrap().depth, 2);
    assert_eq!(cost(n, &p), 2, "a re-entry: the upsert and a read of the depth");
    let n = q.statements_sent();
    assert_eq!(q.lock(&opts("k", "alice")).await.unwrap().depth, 3, "same owner through another provider");
    assert_eq!(cost(n, &q), 2, "the same through another provider");
    let n = q.statements_sent();
    assert!(q.try_lock(&opts("k", "bob")).await.unwrap_err().is_timeout());
    assert_eq!(cost(n, &q), 2, "busy: the upsert, and one read naming the holder");
    let n = p.statements_sent();
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(cost(n, &p), 1, "a nested level: one UPDATE");
    p.unlock("k", "alice").await.unwrap();
    let n = p.statements_sent();
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(cost(n, &p), 1, "the last level: one UPDATE marks the row free");
    assert_eq!(p.is_locked("k").await.unwrap(), None);
    let n = p.statements_sent();
    let lease = p.lock(&opts("k", "bob")).await.unwrap();
    assert_eq!(cost(n, &p), 1, "a key this provider freed: one plain take");
    assert_eq!(lease.token.0, first.token.0 + 1, "the take counts the generation up");
    assert_eq!(
        p.is_locked("k").await.unwrap().map(|i| (i.owner, i.token)),
        Some(("bob".into(), lease.token))
    );
    let n = p.statements_sent();
    assert_eq!(p.refresh_lock("k", "bob", Duration::from_secs(30)).await.unwrap().token, lease.token);
    assert_eq!(cost(n, &p), 2, "refresh: the UPDATE and a read of the depth");
    // A key this provider freed and another took meanwhile: the take matches no row, and the
    // upsert answers (busy); the hint is gone after that.
    p.unlock("k", "bob").await.unwrap();
    let held = q.lock(&opts("k", "carol")).await.unwrap();
    assert_eq!(held.token.0, lease.token.0 + 1);
    let n = p.statements_sent();
    assert!(p.try_lock(&opts("k", "dave")).await.unwrap_err().is_timeout());
    assert_eq!(cost(n, &p), 3, "the take that missed, the upsert, the read naming the holder");
    let n = p.statements_sent();
    assert!(p.try_lock(&opts("k", "dave")).await.unwrap_err().is_timeout());
    assert_eq!(cost(n, &p), 2, "no hint left: the upsert and the read");
    // Freed by this provider and then taken and freed elsewhere: the row is free, so the
    // take is right, with the token after the other provider's.
    q.unlock("k", "carol").await.unwrap();
    p.lock(&opts("k", "erin")).await.unwrap();
    p.unlock("k", "erin").await.unwrap();
    let other = q.lock(&opts("k", "frank")).await.unwrap();
    q.unlock("k", "frank").await.unwrap();
    let n = p.statements_sent();
    let again = p.lock(&opts("k", "grace")).await.unwrap();
    assert_eq!(cost(n, &p), 1);
    assert_eq!(again.token.0, other.token.0 + 1);
    p.unlock("k", "grace").await.unwrap();
    drop_table(&p).await;
}

/// A waiter's retries read the row (or take a fresh answer of the provider's) and leave it
/// alone while the lock is busy: only the call's first attempt writes it (the upsert counts a
/// busy answer in `waits`), however often the waiter retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_while_busy_do_not_write_the_row() {
    let Some(p) = provider("retries_read", &unique_table("peek"), 2).await else { return };
    p.lock(&opts("k", "alice")).await.unwrap();
    let busy_answers = || async {
        sqlx::query_scalar::<_, u64>(&format!("SELECT waits FROM `{}` WHERE lock_key = 'k'", p.table()))
            .fetch_one(p.pool())
            .await
            .unwrap()
    };
    let before = busy_answers().await;
    let n = p.statements_sent();
    let waited = p.lock(&opts("k", "bob").wait(WaitPolicy::retry(20, Duration::from_millis(10)))).await;
    assert!(matches!(waited, Err(LockError::Timeout { .. })), "{waited:?}");
    // The first attempt's upsert, the retries' reads (fewer than the retries: a fresh answer
    // stands in for the server's), the read that names the holder in the error.
    assert!(p.statements_sent() - n >= 2);
    assert_eq!(busy_answers().await - before, 1, "only the first attempt wrote the row");
    assert_eq!(p.is_locked("k").await.unwrap().map(|i| i.owner).as_deref(), Some("alice"));
    drop_table(&p).await;
}
