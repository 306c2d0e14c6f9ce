//! The checks layer as users meet it: bad input refused first, every call refused after `close`.

use super::*;

pub(super) fn assert_invalid<T: std::fmt::Debug>(r: lock_core::Result<T>, field: &str) {
    match r {
        Err(LockError::InvalidArgument { what, .. }) => assert_eq!(what, field),
        other => panic!("expected InvalidArgument for {field}, got {other:?}"),
    }
}

/// Every input rule of [`lock_core::validate`] is enforced by every operation, and the
/// longest key and owner the rules allow work.
pub async fn invalid_inputs_rejected(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    let long_key = "k".repeat(validate::MAX_KEY_LEN + 1);
    let long_owner = "o".repeat(validate::MAX_OWNER_LEN + 1);
    for (o, field) in [
        (opts("", "alice"), "key"),
        (opts(&long_key, "alice"), "key"),
        (opts("a\0b", "alice"), "key"),
        (opts(&key, ""), "owner"),
        (opts(&key, &long_owner), "owner"),
        (opts(&key, "al\0ice"), "owner"),
        (opts(&key, "alice").ttl(Duration::ZERO), "ttl"),
        (opts(&key, "alice").ttl(validate::MAX_TTL + Duration::from_secs(1)), "ttl"),
        (
            opts(&key, "alice").wait(WaitPolicy::Retry {
                retries: 1,
                delay: Duration::from_secs(1),
                jitter: -0.5,
            }),
            "jitter",
        ),
    ] {
        assert_invalid(p.lock(&o).await, field);
        assert_invalid(p.try_lock(&o).await, field);
    }
    assert_invalid(p.unlock("", "alice").await, "key");
    assert_invalid(p.unlock(&key, "").await, "owner");
    assert_invalid(p.refresh_lock(&key, "alice", Duration::ZERO).await, "ttl");
    assert_invalid(p.refresh_lock(&long_key, "alice", Duration::from_secs(1)).await, "key");
    assert_invalid(p.is_locked("").await, "key");
    assert_invalid(p.list("a\0").await, "prefix");
    assert_eq!(p.is_locked(&key).await.unwrap(), None, "a rejected call must not lock");
    // The limits are inclusive, also for characters a backend escapes in its own key layout
    // (which may make its stored key longer than the caller's).
    let awkward = "}{%_*?[\\:/ ";
    let mut longest = ctx.key("");
    for c in awkward.chars().cycle() {
        if longest.len() + c.len_utf8() > validate::MAX_KEY_LEN {
            break;
        }
        longest.push(c);
    }
    assert_eq!(longest.len(), validate::MAX_KEY_LEN);
    let longest_owner: String = awkward.chars().cycle().take(validate::MAX_OWNER_LEN).collect();
    let lease = p.lock(&opts(&longest, &longest_owner)).await.expect("the longest key and owner are valid");
    assert_eq!((&*lease.key, &*lease.owner), (longest.as_str(), longest_owner.as_str()));
    let info = p.is_locked(&longest).await.unwrap().expect("held");
    assert_eq!((info.key.as_str(), info.owner.as_str()), (longest.as_str(), longest_owner.as_str()));
    assert!(p.try_lock(&opts(&longest, "bob")).await.unwrap_err().is_timeout());
    p.refresh_lock(&longest, &longest_owner, Duration::from_secs(30)).await.unwrap();
    assert_eq!(p.list(&longest).await.unwrap().len(), 1);
    p.unlock(&longest, &longest_owner).await.unwrap();
    assert_eq!(p.is_locked(&longest).await.unwrap(), None);
}

/// Input is checked before anything else: even a closed provider answers `InvalidArgument`.
pub async fn invalid_input_rejected_before_anything_else(ctx: &Ctx) {
    let p = ctx.provider().await;
    p.close().await.unwrap();
    assert_invalid(p.lock(&opts("", "alice")).await, "key");
    assert_invalid(p.unlock(&ctx.key("k"), "").await, "owner");
    assert_invalid(p.refresh_lock(&ctx.key("k"), "alice", Duration::ZERO).await, "ttl");
}

/// After `close`, every operation fails with `Closed`; closing twice is fine.
pub async fn operations_after_close_fail_closed(ctx: &Ctx) {
    let p = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    p.close().await.unwrap();
    p.close().await.expect("close is idempotent");
    let closed =
        |r: lock_core::Result<()>, op: &str| assert!(matches!(r, Err(LockError::Closed)), "{op}: {r:?}");
    closed(p.lock(&opts(&key, "bob")).await.map(drop), "lock");
    closed(p.try_lock(&opts(&key, "bob")).await.map(drop), "try_lock");
    closed(p.unlock(&key, "alice").await, "unlock");
    closed(p.refresh_lock(&key, "alice", Duration::from_secs(1)).await.map(drop), "refresh_lock");
    closed(p.is_locked(&key).await.map(drop), "is_locked");
    closed(p.list("").await.map(drop), "list");
    closed(p.health().await.map(drop), "health");
}

/// Closing a provider ends its callers that are waiting for a lock with `Closed`.
pub async fn close_fails_waiters(ctx: &Ctx) {
    let p = ctx.provider().await;
    let q = ctx.provider().await;
    let key = ctx.key("k");
    p.lock(&opts(&key, "alice")).await.unwrap();
    let (q2, k2) = (q.clone(), key.clone());
    let waiter = tokio::spawn(async move { q2.lock(&patient(&k2, "bob")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.close().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), waiter).await.expect("waiter ended").unwrap();
    assert!(matches!(r, Err(LockError::Closed)), "{r:?}");
}
