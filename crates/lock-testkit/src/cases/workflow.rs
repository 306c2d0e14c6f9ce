//! The workflow layer on the backend: exclusive handles, auto-refresh, the lost signal, template limits.

use super::*;

pub(super) fn workflow_config(ctx: &Ctx, ttl: Duration, auto_refresh: bool) -> WorkflowConfig {
    WorkflowConfig {
        key_prefix: ctx.key("wf:"),
        ttl,
        wait: WaitPolicy::NoWait,
        auto_refresh,
        ..WorkflowConfig::default()
    }
}

pub(super) fn workflows(
    p: Arc<dyn LockProvider>,
    ctx: &Ctx,
    ttl: Duration,
    auto_refresh: bool,
) -> WorkflowLockProvider {
    WorkflowLockProvider::new(p, workflow_config(ctx, ttl, auto_refresh))
}

/// An execution lock excludes every other handle (also of the same process); the handle
/// reports its key, ids and token; unlock frees it.
pub async fn workflow_execution_lock_is_exclusive(ctx: &Ctx) {
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(30), true);
    let h = wf.lock_workflow_execution("exec-1").await.expect("free execution");
    assert_eq!(h.lock_key(), ctx.key("wf:execution:exec-1"));
    assert_eq!((h.execution_id(), h.template_id()), (Some("exec-1"), None));
    let again = wf.lock_workflow_execution("exec-1").await.expect_err("same process, other handle");
    assert!(again.is_timeout(), "{again:?}");
    let other = wf.lock_workflow_execution("exec-2").await.expect("other execution is free");
    let info = wf.provider().is_locked(h.lock_key()).await.unwrap().expect("held");
    assert_eq!((info.owner.as_str(), info.token), (h.owner(), h.fencing_token()));
    h.unlock().await.unwrap();
    other.unlock().await.unwrap();
    let h2 = wf.lock_workflow_execution("exec-1").await.expect("free again");
    assert!(h2.fencing_token() > info.token || !wf.provider().capabilities().fencing);
    let t = wf.lock_workflow_template("tpl").await.unwrap();
    assert_eq!((t.execution_id(), t.template_id()), (None, Some("tpl")));
    let r = wf.lock_resource("db-1").await.unwrap();
    assert_eq!(r.lock_key(), ctx.key("wf:resource:db-1"));
    for h in [h2, t, r] {
        h.unlock().await.unwrap();
    }
}

/// The watchdog keeps a lease alive well past its TTL; unlock stops it.
pub async fn workflow_auto_refresh_outlives_ttl(ctx: &Ctx) {
    // Room for a refresh round trip on a busy machine within the trusted part of the lease.
    let ttl = (ctx.short_ttl() * 2).max(Duration::from_secs(1));
    let wf = workflows(ctx.provider().await, ctx, ttl, true);
    let h = wf.lock_workflow_execution("long").await.unwrap();
    tokio::time::sleep(ttl * 3).await;
    assert!(!h.is_lost(), "the watchdog must keep the lease");
    let q = ctx.provider().await;
    let busy = q.try_lock(&opts(h.lock_key(), "intruder")).await.expect_err("still held after 3 TTLs");
    assert!(busy.is_timeout(), "{busy:?}");
    let key = h.lock_key().to_string();
    h.unlock().await.unwrap();
    assert_eq!(q.is_locked(&key).await.unwrap(), None);
}

/// The lost signal fires when the lease is taken away (here: force-released by an operator
/// using the handle's owner id) and the watchdog's next refresh is refused.
pub async fn workflow_lost_signal_fires_when_lease_is_revoked(ctx: &Ctx) {
    let ttl = ctx.short_ttl() * 2;
    let wf = workflows(ctx.provider().await, ctx, ttl, true);
    let h = wf.lock_workflow_execution("revoked").await.unwrap();
    let admin = ctx.provider().await;
    admin.unlock(h.lock_key(), h.owner()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), h.lost().cancelled())
        .await
        .expect("lost signal after the lease was revoked");
    assert!(h.is_lost());
    assert!(h.refresh(ttl).await.unwrap_err().is_lease_lost());
}

/// A handle on a key and owner the caller names (`lock_with_options`, as `distlock exec`
/// takes its locks): held under exactly that key and owner, refreshed with the options' TTL
/// (not the layer's), and its lost signal fires when the lock is taken away.
pub async fn workflow_handle_on_a_named_key_and_owner(ctx: &Ctx) {
    let ttl = (ctx.short_ttl() * 2).max(Duration::from_secs(1));
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(600), true);
    let key = ctx.key("named");
    let h = wf.lock_with_options(&opts(&key, "tool-1").ttl(ttl)).await.expect("free key");
    assert_eq!((h.lock_key(), h.owner()), (key.as_str(), "tool-1"));
    assert_eq!((h.execution_id(), h.template_id()), (None, None));
    let info = wf.provider().is_locked(&key).await.unwrap().expect("held");
    assert_eq!((info.owner.as_str(), info.token), ("tool-1", h.fencing_token()));
    assert!(info.remaining_ttl <= ttl, "the options' TTL, not the layer's: {info:?}");
    tokio::time::sleep(ttl * 3).await;
    assert!(!h.is_lost(), "the watchdog refreshes with the options' TTL");
    let info = wf.provider().is_locked(&key).await.unwrap().expect("still held");
    assert!(info.remaining_ttl <= ttl, "refreshed with the options' TTL, not the layer's: {info:?}");
    let busy =
        ctx.provider().await.try_lock(&opts(&key, "intruder")).await.expect_err("still held after 3 TTLs");
    assert!(busy.is_timeout(), "{busy:?}");
    let bad = wf.lock_with_options(&opts("", "tool-1")).await.expect_err("empty key");
    assert!(matches!(bad, LockError::InvalidArgument { what: "key", .. }), "{bad:?}");
    ctx.provider().await.unlock(&key, "tool-1").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), h.lost().cancelled())
        .await
        .expect("lost signal after the lock was taken away");
}

/// Without auto-refresh the lost signal fires at the lease's safety margin: before its local
/// deadline, while the server still counts the lease as held.
pub async fn workflow_lost_signal_fires_before_expiry_without_refresh(ctx: &Ctx) {
    let ttl = ctx.short_ttl() * 2;
    let margin = ttl / 2;
    let config = WorkflowConfig { lost_margin: Some(margin), ..workflow_config(ctx, ttl, false) };
    let wf = WorkflowLockProvider::new(ctx.provider().await, config);
    let h = wf.lock_workflow_execution("short").await.unwrap();
    assert!(!h.is_lost());
    assert_eq!(h.valid_until() - h.trusted_until(), margin);
    tokio::time::timeout(Duration::from_secs(60), h.lost().cancelled()).await.expect("lost before expiry");
    let fired = Instant::now();
    assert!(fired >= h.trusted_until(), "lost fired before the margin was reached");
    assert!(
        fired < h.valid_until(),
        "lost fired {:?} after the lease's end instead of {margin:?} before it",
        fired - h.valid_until()
    );
    eprintln!("lost fired {:?} before the lease's local deadline", h.valid_until() - fired);
}

/// A handle dropped without unlock is released in the background, not after its TTL.
pub async fn workflow_dropped_handle_is_released(ctx: &Ctx) {
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(600), true);
    let h = wf.lock_workflow_execution("forgotten").await.unwrap();
    let key = h.lock_key().to_string();
    drop(h);
    assert_eq!(eventually_free(&**wf.provider(), &key).await, None, "dropped handle still holds its lock");
}

/// A template with a limit admits exactly that many holders at once.
pub async fn workflow_template_limit_holds(ctx: &Ctx) {
    let wf = workflows(ctx.provider().await, ctx, Duration::from_secs(30), true);
    let a = wf.lock_workflow_template_slot("tpl", 2).await.expect("slot 1");
    let b = wf.lock_workflow_template_slot("tpl", 2).await.expect("slot 2");
    assert_ne!(a.lock_key(), b.lock_key());
    assert_eq!(a.template_id(), Some("tpl"));
    let full = wf.lock_workflow_template_slot("tpl", 2).await.expect_err("limit 2 reached");
    assert!(full.is_timeout(), "{full:?}");
    a.unlock().await.unwrap();
    let c = wf.lock_workflow_template_slot("tpl", 2).await.expect("a slot was freed");
    assert!(matches!(wf.lock_workflow_template_slot("tpl", 0).await, Err(LockError::InvalidArgument { .. })));
    b.unlock().await.unwrap();
    c.unlock().await.unwrap();
}
