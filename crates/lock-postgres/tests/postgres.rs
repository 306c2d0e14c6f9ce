//! PostgreSQL-specific behaviour: table and schema names, pooled connections dying, table
//! isolation, cleanup, the fencing token across row replacement, the statements each
//! operation costs, and wake-ups across providers by LISTEN/NOTIFY. Needs the server of
//! `DISTLOCK_TEST_POSTGRES_URL` (default `postgres://distlock@127.0.0.1:5432/distlock`).

use std::sync::Arc;
use std::time::Duration;

use lock_core::{FencingToken, LockError, LockOptions, LockProvider, WaitPolicy};
use lock_postgres::{PgLockConfig, PgLockProvider};
use lock_testkit::env::postgres_url;
use lock_testkit::require_or_skip;
use sqlx::postgres::PgPoolOptions;

fn unique_table(tag: &str) -> String {
    format!("distlock_t_{tag}_{:08x}", fastrand::u32(..))
}

fn opts(key: &str, owner: &str) -> LockOptions {
    LockOptions::new(key, owner).ttl(Duration::from_secs(30)).no_wait()
}

fn config(table: &str, max_connections: u32) -> PgLockConfig {
    PgLockConfig::default().table_name(table).max_connections(max_connections)
}

/// A provider on its own fresh table, or `None` (skip, or fail when services are required).
async fn provider(test: &str, config: PgLockConfig) -> Option<PgLockProvider> {
    require_or_skip(
        test,
        PgLockProvider::connect(&postgres_url(), config)
            .await
            .map_err(|e| format!("{}: {e}", postgres_url())),
    )
}

async fn drop_table(p: &PgLockProvider) {
    for suffix in ["", "_waits"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS \"{}{suffix}\"", p.table()))
            .execute(p.pool())
            .await
            .unwrap();
    }
    sqlx::query(&format!("DROP SEQUENCE IF EXISTS \"{}_ids\"", p.table())).execute(p.pool()).await.unwrap();
}

#[tokio::test]
async fn bad_table_and_schema_names_are_rejected_before_any_connection() {
    // Port 1 has no server: reaching it would be `Unavailable`, not `InvalidArgument`.
    for bad in ["locks; DROP TABLE x", "lo\"cks", "", "db.locks", "1x", "l'x"] {
        let config = PgLockConfig::default().table_name(bad);
        match PgLockProvider::connect("postgres://distlock@127.0.0.1:1/distlock", config).await {
            Err(LockError::InvalidArgument { what: "table name", .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
        let config = PgLockConfig::default().schema(bad);
        match PgLockProvider::connect("postgres://distlock@127.0.0.1:1/distlock", config).await {
            Err(LockError::InvalidArgument { what: "schema", .. }) => {}
            other => panic!("schema {bad:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_table_name_on_an_existing_pool_is_rejected() {
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy(&postgres_url()).unwrap();
    let config = PgLockConfig::default().table_name("x\"; DROP TABLE y; --");
    let err = PgLockProvider::from_pool(pool, config).await.unwrap_err();
    assert!(matches!(err, LockError::InvalidArgument { what: "table name", .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_pooled_connection_keeps_the_lock_and_the_provider_recovers() {
    let Some(p) = provider("killed_connection", config(&unique_table("kill"), 1)).await else { return };
    let lease = p.lock(&opts("job", "alice")).await.unwrap();
    // The pool has one connection: find it and terminate it from outside.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(p.pool()).await.unwrap();
    let admin = PgPoolOptions::new().max_connections(1).connect(&postgres_url()).await.unwrap();
    let done: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(pid).fetch_one(&admin).await.unwrap();
    assert!(done);

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
async fn providers_on_different_tables_or_schemas_do_not_see_each_others_locks() {
    let table = unique_table("iso");
    let Some(a) = provider("isolation", config(&table, 2)).await else { return };
    let Some(b) = provider("isolation", config(&unique_table("iso_b"), 2)).await else { return };
    let schema = format!("distlock_s_{:08x}", fastrand::u32(..));
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\"")).execute(a.pool()).await.unwrap();
    let c = PgLockProvider::connect(&postgres_url(), config(&table, 2).schema(schema.clone())).await.unwrap();
    a.lock(&opts("shared-name", "alice")).await.unwrap();
    let lb = b.lock(&opts("shared-name", "bob")).await.expect("other table, other lock");
    assert_eq!(&*lb.owner, "bob");
    let lc = c.lock(&opts("shared-name", "carol")).await.expect("same table name, other schema");
    assert_eq!(&*lc.owner, "carol");
    assert_eq!(a.is_locked("shared-name").await.unwrap().unwrap().owner, "alice");
    assert_eq!(b.list("").await.unwrap().len(), 1);
    assert!(c.health().await.unwrap().detail.contains(&schema));
    c.close().await.unwrap();
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE")).execute(a.pool()).await.unwrap();
    drop_table(&a).await;
    drop_table(&b).await;
}

/// Makes every free row of `p`'s table look free for an hour already.
async fn age_free_rows(p: &PgLockProvider) -> u64 {
    sqlx::query(&format!(
        "UPDATE \"{}\" SET expires_at = expires_at - INTERVAL '1 hour' WHERE expires_at <= clock_timestamp()",
        p.table()
    ))
    .execute(p.pool())
    .await
    .unwrap()
    .rows_affected()
}

async fn rows(p: &PgLockProvider) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{}\"", p.table())).fetch_one(p.pool()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_ended_rows_and_keeps_live_ones() {
    let Some(p) = provider("cleanup", config(&unique_table("clean"), 2)).await else { return };
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
    let stats = p.cleanup_stats();
    assert_eq!((stats.rows_reaped, stats.expired_reaped), (3, 2), "b and c expired, one was released");
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
    let Some(p) = provider("fencing_rows", config(&unique_table("fence"), 2)).await else { return };
    let t1 = p.lock(&opts("k", "alice")).await.unwrap().token;
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(rows(&p).await, 1, "the release keeps the row and its token");
    let t2 = p.lock(&opts("k", "bob").ttl(Duration::from_millis(200))).await.unwrap().token;
    assert_eq!(t2.0, t1.0 + 1, "after a release the token follows the key's last one");
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
    sqlx::query(&format!("UPDATE \"{}\" SET generation = 65535 WHERE lock_key = 'k'", p.table()))
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
    let Some(p) = provider("pool_not_exhausted", config(&unique_table("pool"), 2)).await else { return };
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
    let config = PgLockConfig::default()
        .table_name(unique_table("reaper"))
        .reap_interval(Some(Duration::from_millis(200)))
        .statement_timeout(Duration::from_millis(100))
        .reap_grace(Duration::from_secs(1));
    let Some(p) = provider("background_reaper", config).await else { return };
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
    let config = PgLockConfig::default().reap_grace(Duration::from_secs(1));
    match PgLockProvider::connect("postgres://distlock@127.0.0.1:1/distlock", config).await {
        Err(LockError::InvalidArgument { what: "reap_grace", .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// Waits (bounded) until the row of `key` names a waiting provider in `column` (`waiter` or
/// `other_waiter`): a waiting call's busy attempt has reached the server.
async fn named_in_row(p: &PgLockProvider, key: &str, column: &str) {
    let sql = format!("SELECT {column} <> '' FROM \"{}\" WHERE lock_key = $1", p.table());
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !sqlx::query_scalar::<_, bool>(&sql).bind(key).fetch_one(p.pool()).await.unwrap() {
        assert!(tokio::time::Instant::now() < until, "no waiting provider named in {column} of {key}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_operation() {
    let Some(p) = provider("statements", config(&unique_table("stmts"), 2)).await else { return };
    let q = Arc::new(PgLockProvider::connect(&postgres_url(), config(p.table(), 1)).await.unwrap());
    let cost = |before: u64, p: &PgLockProvider| p.statements_sent() - before;

    let n = p.statements_sent();
    p.lock(&opts("k", "alice")).await.unwrap();
    assert_eq!(cost(n, &p), 1, "a new key: one upsert");
    let n = p.statements_sent();
    assert_eq!(p.lock(&opts("k", "alice")).await.unwrap().depth, 2);
    assert_eq!(cost(n, &p), 1, "a re-entry: one upsert, which returns the depth");
    let n = q.statements_sent();
    assert_eq!(q.lock(&opts("k", "alice")).await.unwrap().depth, 3, "same owner through another provider");
    assert_eq!(cost(n, &q), 1, "the same through another provider");
    let n = q.statements_sent();
    match q.try_lock(&opts("k", "bob")).await {
        Err(LockError::Timeout { holder, .. }) => assert_eq!(holder.as_deref(), Some("alice")),
        other => panic!("{other:?}"),
    }
    assert_eq!(cost(n, &q), 1, "busy: one upsert, which names the holder");
    let n = p.statements_sent();
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(cost(n, &p), 1, "a nested level: one UPDATE");
    let n = p.statements_sent();
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(cost(n, &p), 1, "the depth the last release returned (2): one UPDATE counts down");
    let n = p.statements_sent();
    p.unlock("k", "alice").await.unwrap();
    assert_eq!(
        cost(n, &p),
        1,
        "the last level: the short release, since the try_lock that found the lock busy named no waiter"
    );
    assert_eq!(p.is_locked("k").await.unwrap(), None);
    let n = p.statements_sent();
    let lease = p.lock(&opts("k", "bob")).await.unwrap();
    assert_eq!(cost(n, &p), 1, "a key this provider freed: the short take-over alone");
    let n = p.statements_sent();
    let refreshed = p.refresh_lock("k", "bob", Duration::from_secs(30)).await.unwrap();
    assert_eq!((refreshed.token, refreshed.depth), (lease.token, 1));
    assert_eq!(cost(n, &p), 1, "refresh: one UPDATE, which returns token and depth");

    // A key whose row this provider freed, with nobody waiting, is first tried with the short
    // take-over UPDATE; seen here when it misses because another provider took the key.
    p.lock(&opts("k2", "bob")).await.unwrap();
    p.unlock("k2", "bob").await.unwrap();
    let n = q.statements_sent();
    let carol = q.lock(&opts("k2", "carol")).await.unwrap();
    assert_eq!(cost(n, &q), 1, "a key another provider released: one upsert");
    let n = p.statements_sent();
    match p.try_lock(&opts("k2", "bob")).await {
        Err(LockError::Timeout { holder, .. }) => assert_eq!(holder.as_deref(), Some("carol")),
        other => panic!("{other:?}"),
    }
    assert_eq!(cost(n, &p), 2, "taken meanwhile elsewhere: the take-over misses, the upsert answers busy");
    q.unlock("k2", "carol").await.unwrap();
    let n = p.statements_sent();
    let again = p.lock(&opts("k2", "bob")).await.unwrap();
    assert_eq!(cost(n, &p), 1, "the missed key is forgotten: one upsert");
    assert!(again.token > carol.token);
    p.unlock("k2", "bob").await.unwrap();
    let n = p.statements_sent();
    let taken = p.lock(&opts("k2", "bob")).await.unwrap();
    assert_eq!(cost(n, &p), 1, "freed by this provider: the take-over alone");
    assert_eq!((taken.token, taken.depth), (FencingToken(again.token.0 + 1), 1), "the next token");
    assert_eq!(p.is_locked("k2").await.unwrap().map(|i| i.token), Some(taken.token), "as the row has it");

    // Taken and freed elsewhere since this provider freed it: the row is free and names no
    // waiter again, but its token moved on, so the take-over misses and the upsert issues the
    // next token (a take-over by the old token would hand out the other provider's token again).
    p.lock(&opts("k3", "erin")).await.unwrap();
    p.unlock("k3", "erin").await.unwrap();
    let other = q.lock(&opts("k3", "frank")).await.unwrap();
    q.unlock("k3", "frank").await.unwrap();
    let n = p.statements_sent();
    let next = p.lock(&opts("k3", "erin")).await.unwrap();
    assert_eq!(cost(n, &p), 2, "the take-over misses on the token, the upsert takes the row");
    assert_eq!(next.token, FencingToken(other.token.0 + 1));

    // Re-entered through another provider: this provider knows depth 1, the row says 2. The
    // short release must not free it; it misses and the full release counts one level down.
    q.lock(&opts("k3", "erin")).await.unwrap();
    let n = p.statements_sent();
    p.unlock("k3", "erin").await.unwrap();
    assert_eq!(cost(n, &p), 2, "the short release misses on the depth, the full one counts down");
    assert_eq!(p.is_locked("k3").await.unwrap().map(|i| (i.owner, i.depth)), Some(("erin".into(), 1)));
    let n = p.statements_sent();
    p.unlock("k3", "erin").await.unwrap();
    assert_eq!(cost(n, &p), 1, "the depth the full release returned (1): the short release");
    assert_eq!(p.is_locked("k3").await.unwrap(), None);

    // A waiter of another provider is named in the row: the short release misses and the full
    // release frees the lock and wakes that provider (NOTIFY).
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move {
            q.lock(&opts("k2", "dave").wait(WaitPolicy::deadline(Duration::from_secs(20)))).await
        })
    };
    // The waiter's busy attempt has named its provider in the row.
    named_in_row(&p, "k2", "waiter").await;
    let n = p.statements_sent();
    p.unlock("k2", "bob").await.unwrap();
    assert_eq!(
        cost(n, &p),
        2,
        "a waiter of another provider named: the short release misses, the full one wakes"
    );
    let dave = waiting.await.unwrap().unwrap();
    assert_eq!(dave.token, FencingToken(taken.token.0 + 1));
    q.unlock("k2", "dave").await.unwrap();

    // A waiter of this provider in line: the release hands the lock over in its own statement,
    // and the waiter holds it without a statement of its own.
    let p = Arc::new(p);
    let held = p.lock(&opts("k4", "gina")).await.unwrap();
    let waiting = {
        let p = p.clone();
        tokio::spawn(async move {
            p.lock(&opts("k4", "hank").wait(WaitPolicy::deadline(Duration::from_secs(20)))).await
        })
    };
    named_in_row(&p, "k4", "waiter").await;
    let (n, handed) = (p.statements_sent(), p.handovers());
    p.unlock("k4", "gina").await.unwrap();
    let hank = waiting.await.unwrap().unwrap();
    assert_eq!(cost(n, &p), 1, "the release hands the lock over; the waiter needs no statement");
    assert_eq!(p.handovers(), handed + 1);
    assert_eq!((hank.token, hank.depth), (FencingToken(held.token.0 + 1), 1));
    let row = p.is_locked("k4").await.unwrap().expect("held by the waiter");
    assert_eq!((row.owner.as_str(), row.token, row.depth), ("hank", hank.token, 1), "as the row has it");
    let n = p.statements_sent();
    p.unlock("k4", "hank").await.unwrap();
    assert_eq!(cost(n, &p), 1, "the lock handed over is released with the short release");
    assert_eq!(p.is_locked("k4").await.unwrap(), None);

    // Waiters in both providers: the other provider's turn comes first, so the release does not
    // hand the lock over; the same one statement frees it and wakes that provider (NOTIFY).
    let first = p.lock(&opts("k5", "ivy")).await.unwrap();
    let patient = |owner: &str| opts("k5", owner).wait(WaitPolicy::deadline(Duration::from_secs(20)));
    // The other provider's waiter first (its provider named in `waiter`), then this one's.
    let jack = {
        let (q, o) = (q.clone(), patient("jack"));
        tokio::spawn(async move { q.lock(&o).await })
    };
    named_in_row(&p, "k5", "waiter").await;
    let kim = {
        let (p, o) = (p.clone(), patient("kim"));
        tokio::spawn(async move { p.lock(&o).await })
    };
    named_in_row(&p, "k5", "other_waiter").await;
    let (n, handed) = (p.statements_sent(), p.handovers());
    p.unlock("k5", "ivy").await.unwrap();
    assert_eq!(cost(n, &p), 1, "one statement: released, not handed over, the other provider woken");
    assert_eq!(p.handovers(), handed, "nothing handed over while another provider waits");
    let jack = jack.await.unwrap().unwrap();
    assert_eq!(jack.token, FencingToken(first.token.0 + 1), "the other provider's turn");
    q.unlock("k5", "jack").await.unwrap();
    let kim = kim.await.unwrap().unwrap();
    assert!(kim.token > jack.token);
    p.unlock("k5", "kim").await.unwrap();
    q.close().await.unwrap();
    drop_table(&p).await;
}

/// A waiter in one provider is woken by a release in another (another process, as far as
/// the providers know: separate pools, separate wake-up registries) through LISTEN/NOTIFY,
/// long before its only retry, which is 100 s away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_in_another_provider_wakes_the_waiter() {
    let Some(holder) = provider("notify_wakes", config(&unique_table("notify"), 2)).await else { return };
    let waiter = Arc::new(PgLockProvider::connect(&postgres_url(), config(holder.table(), 2)).await.unwrap());
    // The holder's lease outlasts the test: the wait loop would otherwise retry when it ends.
    holder.lock(&opts("k", "alice").ttl(Duration::from_secs(300))).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while !waiter.listening() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waiter.listening(), "the listener did not connect");
    let patient =
        opts("k", "bob").wait(WaitPolicy::Retry { retries: 1, delay: Duration::from_secs(100), jitter: 0.0 });
    let task = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lock(&patient).await }
    });
    // The waiter's first attempt is refused, which names its provider in the row.
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while waiter.acquire_attempts() == 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(waiter.acquire_attempts(), 1, "one refused attempt, then the wait");
    holder.unlock("k", "alice").await.unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(50), task)
        .await
        .expect("the release did not wake the waiter of the other provider")
        .unwrap()
        .unwrap();
    assert_eq!(&*lease.owner, "bob");
    assert_eq!(waiter.acquire_attempts(), 2, "woken once, acquired at once");
    assert!(waiter.wake_notifications() >= 1);
    waiter.unlock("k", "bob").await.unwrap();
    drop_table(&holder).await;
}
