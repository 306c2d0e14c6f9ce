//! Tests of the history checker on hand-made histories, with the tokio clock paused.

use super::*;
use lock_core::{Capabilities, Health, LockError, LockInfo, LockOptions};
use tokio::time::advance;

const S: Duration = Duration::from_secs(1);

fn lease(key: &str, owner: &str, token: u64, ttl: Duration, depth: u32) -> Lease {
    Lease {
        key: key.into(),
        owner: owner.into(),
        token: FencingToken(token),
        ttl,
        valid_until: Instant::now() + ttl,
        depth,
    }
}

fn assert_one(history: &History, fencing: bool, needles: &[&str]) {
    let v = history.violations(fencing);
    assert_eq!(v.len(), 1, "expected one violation, got {v:#?}");
    for needle in needles {
        assert!(v[0].contains(needle), "{needle:?} missing from {:?}", v[0]);
    }
}

#[tokio::test(start_paused = true)]
async fn clean_sequential_history_passes() {
    let h = History::new();
    assert!(h.is_empty());
    let a = h.granted(&lease("k", "a", 1, 10 * S, 1));
    advance(2 * S).await;
    h.released(a);
    // Granted at the very instant the previous holder let go: touching, not overlapping.
    let b = h.granted(&lease("k", "b", 2, 10 * S, 1));
    advance(S).await;
    h.refreshed(b, &lease("k", "b", 2, 10 * S, 1));
    advance(5 * S).await;
    h.lost(b);
    let c = h.granted(&lease("k", "c", 3, S, 1));
    // c is never released: it ends at its lease's validity, before d arrives.
    advance(2 * S).await;
    let d = h.granted(&lease("k", "d", 4, S, 1));
    h.released(d);
    // Another key is independent.
    let other = h.granted(&lease("other", "z", 1, 10 * S, 1));
    h.released(other);
    let _ = c;
    assert_eq!(h.len(), 5);
    assert_eq!(h.violations(true), Vec::<String>::new());
    h.assert_ok(true);
}

#[tokio::test(start_paused = true)]
async fn reentry_is_not_a_new_exclusive_grant() {
    let h = History::new();
    let outer = h.granted(&lease("k", "a", 7, 10 * S, 1));
    advance(S).await;
    let inner = h.granted(&lease("k", "a", 7, 10 * S, 2));
    advance(S).await;
    h.released(inner);
    h.released(outer);
    let next = h.granted(&lease("k", "b", 8, 10 * S, 1));
    h.released(next);
    h.assert_ok(true);
}

#[tokio::test(start_paused = true)]
async fn overlap_between_owners_is_caught() {
    let h = History::new();
    let _a = h.granted(&lease("k", "alice", 1, 10 * S, 1));
    advance(2 * S).await;
    let b = h.granted(&lease("k", "bob", 2, 10 * S, 1));
    advance(S).await;
    h.released(b);
    assert_one(&h, true, &["\"k\"", "alice", "bob", "token 1", "token 2", "2s", "3s", "overlapping"]);
    assert_eq!(h.violations(false).len(), 1, "overlaps count without fencing too");
}

#[tokio::test(start_paused = true)]
async fn overlap_with_the_same_owner_but_another_token_is_caught() {
    let h = History::new();
    let _a = h.granted(&lease("k", "a", 1, 10 * S, 1));
    advance(S).await;
    let _b = h.granted(&lease("k", "a", 2, 10 * S, 1));
    assert_one(&h, true, &["overlapping", "token 1", "token 2"]);
    // Without fencing (Redlock) one owner may hold different tokens on different masters.
    assert_eq!(h.violations(false), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_late_release_does_not_extend_a_lapsed_lease() {
    let h = History::new();
    let a = h.granted(&lease("k", "a", 1, S, 1));
    advance(2 * S).await;
    let b = h.granted(&lease("k", "b", 2, 10 * S, 1));
    h.released(a);
    h.released(b);
    h.assert_ok(true);
}

#[tokio::test(start_paused = true)]
async fn a_token_going_backwards_is_caught_only_with_fencing() {
    let h = History::new();
    let a = h.granted(&lease("k", "a", 5, 10 * S, 1));
    advance(S).await;
    h.released(a);
    advance(S).await;
    let b = h.granted(&lease("k", "b", 3, 10 * S, 1));
    h.released(b);
    assert_one(&h, true, &["fencing token did not increase", "token 5", "token 3", "\"a\"", "\"b\""]);
    assert_eq!(h.violations(false), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_repeated_token_is_caught_with_fencing() {
    let h = History::new();
    let a = h.granted(&lease("k", "a", 5, 10 * S, 1));
    h.released(a);
    let b = h.granted(&lease("k", "b", 5, 10 * S, 1));
    h.released(b);
    assert_one(&h, true, &["fencing token did not increase"]);
}

/// An owner whose release left a level it did not know of (a lost re-entry answer) gets its
/// own token back: the key never left it, so that is no fencing violation.
#[tokio::test(start_paused = true)]
async fn the_same_owner_may_get_its_own_token_again() {
    let h = History::new();
    let a = h.granted(&lease("k", "a", 5, 10 * S, 1));
    h.released(a);
    let b = h.granted(&lease("k", "a", 5, 10 * S, 1));
    h.released(b);
    h.assert_ok(true);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_changing_the_token_is_caught() {
    let h = History::new();
    let a = h.granted(&lease("k", "a", 5, 10 * S, 1));
    advance(S).await;
    h.refreshed(a, &lease("k", "a", 6, 10 * S, 1));
    h.released(a);
    assert_one(&h, true, &["refresh", "token 5", "token 6", "1s"]);
    assert_eq!(h.violations(false), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_refresh_extends_the_interval() {
    let h = History::new();
    let a = h.granted(&lease("k", "a", 1, 2 * S, 1));
    advance(S).await;
    h.refreshed(a, &lease("k", "a", 1, 10 * S, 1));
    advance(5 * S).await;
    // Without the refresh the first lease would have lapsed at 2 s.
    let _b = h.granted(&lease("k", "b", 2, 10 * S, 1));
    assert_one(&h, true, &["overlapping", "valid until 11s"]);
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "1 lock history violation(s) in 2 grants")]
async fn assert_ok_panics_on_a_violation() {
    let h = History::new();
    h.granted(&lease("k", "a", 1, 10 * S, 1));
    h.clone().granted(&lease("k", "b", 2, 10 * S, 1));
    h.assert_ok(false);
}

/// A provider whose only lock disappears at a given instant.
#[derive(Debug)]
struct FadingLock(Instant);

#[async_trait::async_trait]
impl LockProvider for FadingLock {
    fn name(&self) -> &'static str {
        "fading"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn lock(&self, _: &LockOptions) -> lock_core::Result<Lease> {
        Err(LockError::Closed)
    }
    async fn unlock(&self, _: &str, _: &str) -> lock_core::Result<()> {
        Err(LockError::Closed)
    }
    async fn refresh_lock(&self, _: &str, _: &str, _: Duration) -> lock_core::Result<Lease> {
        Err(LockError::Closed)
    }
    async fn is_locked(&self, _: &str) -> lock_core::Result<Option<LockInfo>> {
        Err(LockError::Closed)
    }
    async fn list(&self, prefix: &str) -> lock_core::Result<Vec<LockInfo>> {
        if Instant::now() >= self.0 || !"p/held".starts_with(prefix) {
            return Ok(Vec::new());
        }
        Ok(vec![LockInfo {
            key: "p/held".into(),
            owner: "o".into(),
            token: FencingToken(1),
            remaining_ttl: self.0 - Instant::now(),
            depth: 1,
            held_for: Duration::ZERO,
        }])
    }
    async fn health(&self) -> lock_core::Result<Health> {
        Err(LockError::Closed)
    }
    async fn close(&self) -> lock_core::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_held_waits_for_background_clean_up() {
    let p = FadingLock(Instant::now() + 2 * S);
    assert_nothing_held(&p, "q/", Duration::ZERO).await;
    assert_nothing_held(&p, "p/", 5 * S).await;
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "still held")]
async fn nothing_held_fails_when_a_lock_stays() {
    let p = FadingLock(Instant::now() + 10 * S);
    assert_nothing_held(&p, "p/", 5 * S).await;
}
