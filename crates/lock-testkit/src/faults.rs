//! The fault cases of the conformance suite: every guarantee again, while something goes
//! wrong between a provider and its server.
//!
//! A harness opts in through [`Harness::faulty_provider`](crate::Harness::faulty_provider): a
//! provider whose every connection runs through a [`FaultProxy`] (one per server node). The
//! cases then cut the network under a holder, hang its refreshes, lose the answer to a
//! request the server applied, reset connections, slow the server past the client's request
//! timeout, and mix all of it under random cancellation, judging the outcome with the
//! [`History`] checker. A backend without connections (the memory backend) skips them, loudly.
//!
//! The server-side kill goes through [`Harness::kill_server_side`](crate::Harness::kill_server_side):
//! the proxies know the client addresses the server sees for their connections
//! ([`Faulty::server_connections`]), and the harness has the server kill exactly those, never
//! another client of a shared server. A backend whose server has no such command (etcd) keeps
//! the default `None` and skips that case, loudly.
//!
//! The file is longer than most (about 600 lines) because its nine cases share one set of
//! steps (start a faulty provider, break it, heal it, judge what each side saw); split apart,
//! each part would need the others to be read.
//!
//! | case | fault | what must hold |
//! |---|---|---|
//! | [`fault_partitioned_holder`] | holder's connections blackholed both ways | `lost()` fires before `valid_until`; the next holder is granted only after it, with a larger token; the old holder's unlock and refresh fail after healing |
//! | [`fault_hung_refresh`] | answers to the holder never come back (the server applies its refreshes) | as above |
//! | [`fault_lost_answer_on_acquire`] | the answer to a granted `lock` is lost | no hidden level: an `Ok` is exactly one level; nothing held past the TTL |
//! | [`fault_lost_answer_on_reentry`] | the answer to a re-entry is lost | the holder keeps its lock; its levels can be released; nothing held past the TTL |
//! | [`fault_lost_answer_on_refresh`] | the answer to a refresh is lost | the holder keeps its lock and releases it |
//! | [`fault_lost_answer_on_unlock`] | the answer to an unlock is lost | a retried unlock never releases the next holder's lock |
//! | [`fault_lost_answer_on_handover`] | the answer to an unlock is lost while a call of the same provider waits (a release may hand the lock straight to it) | the waiter acquires with a larger token; a retried unlock never releases its lock; its levels can be released |
//! | [`fault_killed_connections`] | every connection reset (by the proxy) while holding and while waiting | the lock stays held and is released; the waiter acquires or fails retryably |
//! | [`fault_server_killed_connections`] | the server kills every connection of the provider (MariaDB `KILL`, Redis `CLIENT KILL`) while holding and while waiting | as above |
//! | [`fault_slow_server`] | answers later than the request timeout | the call fails retryably; nothing held past the TTL |
//! | [`fault_chaos_mix`] | the faults above switched at random under random cancellation | the history shows no overlap and increasing tokens; nothing held at the end |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::workflow::{WorkflowConfig, WorkflowLockProvider};
use lock_core::{Lease, LockError, LockOptions, LockProvider, WaitPolicy};
use tokio::time::Instant;

use crate::history::{assert_nothing_held, GrantId, History};
use crate::proxy::{Direction, FaultProxy};
use crate::Ctx;

/// One open connection of a [`Faulty`] provider, as its server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerConnection {
    /// The server (a proxy's upstream).
    pub server: SocketAddr,
    /// The connection's client address on that server: the proxy's side of it.
    pub client: SocketAddr,
}

/// A provider whose every connection to the server runs through `proxies`.
#[derive(Debug)]
pub struct Faulty {
    /// The provider under test.
    pub provider: Arc<dyn LockProvider>,
    /// One proxy per server node the provider talks to.
    pub proxies: Vec<FaultProxy>,
}

impl Faulty {
    /// Wraps a provider built to connect through `proxies`.
    pub fn new(provider: Arc<dyn LockProvider>, proxies: Vec<FaultProxy>) -> Self {
        Faulty { provider, proxies }
    }

    /// Forwards nothing in `dir` on any node.
    pub fn blackhole(&self, dir: Direction) {
        self.proxies.iter().for_each(|p| p.blackhole(dir));
    }

    /// Ends a partition as a real network does: the connections that lived through it are
    /// gone (their bytes were lost mid-stream), new ones work.
    pub fn heal(&self) {
        self.proxies.iter().for_each(|p| {
            p.reset_all();
            p.heal();
        });
    }

    /// Loses the answer to the next request that mentions `key`, on every node.
    pub fn lose_next_answer_about(&self, key: &str) {
        self.proxies.iter().for_each(|p| {
            p.set_drop_answer_grace(Duration::from_millis(50));
            p.drop_next_answer_matching(key.as_bytes());
        });
    }

    /// Answers lost so far, over every node.
    pub fn answers_lost(&self) -> u64 {
        self.proxies.iter().map(FaultProxy::answers_dropped).sum()
    }

    /// Resets every open connection.
    pub fn reset_all(&self) {
        self.proxies.iter().for_each(FaultProxy::reset_all);
    }

    /// Delays everything in `dir` by `d`.
    pub fn latency(&self, dir: Direction, d: Duration) {
        self.proxies.iter().for_each(|p| p.latency(dir, d));
    }

    /// The provider's open connections on every node, by the addresses the servers see.
    pub fn server_connections(&self) -> Vec<ServerConnection> {
        self.proxies
            .iter()
            .flat_map(|p| {
                let server = p.upstream();
                p.upstream_clients().into_iter().map(move |client| ServerConnection { server, client })
            })
            .collect()
    }
}

/// The provider behind proxies, or `None` (and a loud skip) when the harness has none.
pub(crate) async fn faulty(ctx: &Ctx) -> Option<Faulty> {
    let f = ctx.harness.faulty_provider().await;
    if f.is_none() {
        eprintln!("SKIPPED {}: the harness has no connections to break", ctx.case);
    }
    f
}

/// The lease TTL of fault cases: long enough to survive a reconnect, short enough to wait out.
fn fault_ttl(ctx: &Ctx) -> Duration {
    (ctx.short_ttl() * 4).max(Duration::from_secs(2))
}

fn opts(key: &str, owner: &str, ttl: Duration) -> LockOptions {
    LockOptions::new(key, owner).ttl(ttl).no_wait()
}

/// Repeats `op` while the backend answers `Unavailable` (reconnecting after a fault), for at
/// most 30 s; returns the first other outcome.
pub(crate) async fn settled<T, F, Fut>(mut op: F) -> lock_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = lock_core::Result<T>>,
{
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Err(LockError::Unavailable { .. }) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
}

/// Unlocks until the key is no longer `owner`'s; returns how many levels were released.
async fn release_all(p: &dyn LockProvider, key: &str, owner: &str) -> u32 {
    let mut released = 0;
    loop {
        match settled(|| p.unlock(key, owner)).await {
            Ok(()) => released += 1,
            Err(LockError::NotHeld { .. } | LockError::NotOwner { .. } | LockError::LeaseLost { .. }) => {
                return released
            }
            Err(e) => panic!("unlock of {key} by {owner}: {e:?}"),
        }
        assert!(released <= 8, "{owner} released more levels of {key} than it could have taken");
    }
}

/// After waiting out `ttl` (plus the backend's slack) from `since`, nobody holds `key`.
async fn free_after_ttl(ctx: &Ctx, observer: &dyn LockProvider, key: &str, since: Instant, ttl: Duration) {
    tokio::time::sleep_until(since + ttl + ctx.harness.expiry_slack()).await;
    assert_nothing_held(observer, key, Duration::from_secs(5)).await;
}

/// `owner` unlocks `key` and the answer is lost; not knowing whether it worked, it tries once
/// more (at most one more level may go; never someone else's lock). Each outcome is a success,
/// a retryable error or, for the second, a denial.
async fn unlock_with_lost_answer(f: &Faulty, key: &str, owner: &str) {
    f.lose_next_answer_about(key);
    let outcome = f.provider.unlock(key, owner).await;
    assert!(f.answers_lost() > 0, "no answer was lost: the case tested nothing");
    if let Err(e) = &outcome {
        assert!(e.is_retryable(), "a lost answer must be a retryable error: {e:?}");
    }
    let again = settled(|| f.provider.unlock(key, owner)).await;
    assert!(again.is_ok() || denied(&again), "{again:?}");
}

fn denied(r: &lock_core::Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(LockError::NotHeld { .. } | LockError::NotOwner { .. } | LockError::LeaseLost { .. }))
}

/// A workflow holder whose network is cut (`dir`): it must hear `lost()` before its lease's
/// local deadline, the next holder must be granted only after that (with a larger token), and
/// once the network is back its own unlock and refresh must fail.
async fn partitioned_holder(ctx: &Ctx, dir: Direction) {
    let Some(f) = faulty(ctx).await else { return };
    let ttl = fault_ttl(ctx);
    let config = WorkflowConfig {
        key_prefix: ctx.key("wf:"),
        ttl,
        wait: WaitPolicy::NoWait,
        ..WorkflowConfig::default()
    };
    let wf = WorkflowLockProvider::new(f.provider.clone(), config);
    let history = History::new();
    let h = wf.lock_workflow_execution("partitioned").await.expect("lock before the fault");
    let key = h.lock_key().to_string();
    let mine = history.granted(&lease_of(&h, ttl));
    f.blackhole(dir);
    tokio::time::timeout(Duration::from_secs(120), h.lost().cancelled())
        .await
        .expect("lost() must fire while the network is cut");
    let lost_at = Instant::now();
    history.lost(mine);
    assert!(lost_at < h.valid_until(), "lost() fired {:?} after the lease's end", lost_at - h.valid_until());

    let next = ctx.provider().await;
    let patient =
        LockOptions::new(key.as_str(), "next").ttl(ttl).wait(WaitPolicy::deadline(Duration::from_secs(60)));
    let lease = next.lock(&patient).await.expect("the partitioned holder's lease runs out");
    let theirs = history.granted(&lease);
    assert!(
        lease.token > h.fencing_token() || !next.capabilities().fencing,
        "token {} after {}",
        lease.token,
        h.fencing_token()
    );
    assert!(
        Instant::now() >= h.valid_until(),
        "the next holder was granted before the partitioned holder's lease could have ended"
    );

    f.heal();
    let unlock = settled(|| f.provider.unlock(&key, h.owner())).await;
    assert!(denied(&unlock), "the old holder's unlock after healing: {unlock:?}");
    let refresh = settled(|| f.provider.refresh_lock(&key, h.owner(), ttl)).await;
    assert!(denied(&refresh), "the old holder's refresh after healing: {refresh:?}");
    assert_eq!(next.is_locked(&key).await.unwrap().map(|i| i.owner).as_deref(), Some("next"));
    history.released(theirs);
    next.unlock(&key, "next").await.unwrap();
    history.assert_ok(next.capabilities().fencing);
    drop(h);
    assert_nothing_held(&*next, ctx.prefix(), Duration::from_secs(10)).await;
}

/// The lease a workflow handle holds, as the history records it.
fn lease_of(h: &lock_core::WorkflowLockHandle, ttl: Duration) -> Lease {
    Lease {
        key: h.lock_key().into(),
        owner: h.owner().into(),
        token: h.fencing_token(),
        ttl,
        valid_until: h.valid_until(),
        depth: 1,
    }
}

/// A holder cut off in both directions.
pub async fn fault_partitioned_holder(ctx: &Ctx) {
    partitioned_holder(ctx, Direction::Both).await
}

/// A holder whose refreshes reach the server but whose answers never come back.
pub async fn fault_hung_refresh(ctx: &Ctx) {
    partitioned_holder(ctx, Direction::ToClient).await
}

/// The answer to a `lock` the server granted is lost.
pub async fn fault_lost_answer_on_acquire(ctx: &Ctx) {
    let Some(f) = faulty(ctx).await else { return };
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx));
    let started = Instant::now();
    f.lose_next_answer_about(&key);
    let outcome = f.provider.lock(&opts(&key, "alice", ttl)).await;
    assert!(f.answers_lost() > 0, "no answer was lost: the case tested nothing");
    match outcome {
        // The client tried again on a new connection: exactly one level, or the unlock below
        // leaves a hidden one behind.
        Ok(lease) => {
            assert_eq!(lease.depth, 1, "a retried acquisition counted itself twice");
            settled(|| f.provider.unlock(&key, "alice")).await.expect("unlock the granted lock");
            assert_nothing_held(&*observer, &key, Duration::from_secs(5)).await;
        }
        Err(e) => assert!(e.is_retryable(), "a lost answer must be a retryable error: {e:?}"),
    }
    free_after_ttl(ctx, &*observer, &key, started, ttl).await;
    let next = observer.lock(&opts(&key, "bob", ttl)).await.expect("free after the TTL");
    observer.unlock(&key, &next.owner).await.unwrap();
}

/// The answer to a re-entry (with a longer TTL) is lost.
pub async fn fault_lost_answer_on_reentry(ctx: &Ctx) {
    let Some(f) = faulty(ctx).await else { return };
    if !ctx.requires(f.provider.capabilities(), |c| c.reentrant, "reentrant") {
        return;
    }
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx));
    let first = f.provider.lock(&opts(&key, "alice", ttl)).await.expect("first level");
    let started = Instant::now();
    f.lose_next_answer_about(&key);
    let outcome = f.provider.lock(&opts(&key, "alice", ttl * 2)).await;
    assert!(f.answers_lost() > 0, "no answer was lost: the case tested nothing");
    if let Err(e) = &outcome {
        assert!(e.is_retryable(), "a lost answer must be a retryable error: {e:?}");
    }
    // Whatever happened to the second level, the first one is still alice's.
    let info = observer.is_locked(&key).await.unwrap().expect("alice's first level was lost with the answer");
    assert_eq!((info.owner.as_str(), info.token), ("alice", first.token));
    let levels = release_all(&*f.provider, &key, "alice").await;
    let expected = if outcome.is_ok() { 2..=2 } else { 1..=2 };
    assert!(expected.contains(&levels), "alice released {levels} levels after {outcome:?}");
    assert_nothing_held(&*observer, &key, Duration::from_secs(5)).await;
    free_after_ttl(ctx, &*observer, &key, started, ttl * 2).await;
}

/// The answer to a refresh is lost.
pub async fn fault_lost_answer_on_refresh(ctx: &Ctx) {
    let Some(f) = faulty(ctx).await else { return };
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx));
    let lease = f.provider.lock(&opts(&key, "alice", ttl)).await.expect("lock");
    f.lose_next_answer_about(&key);
    let outcome = f.provider.refresh_lock(&key, "alice", ttl * 2).await;
    assert!(f.answers_lost() > 0, "no answer was lost: the case tested nothing");
    match &outcome {
        Ok(l) => assert_eq!(l.token, lease.token, "a refresh keeps the token"),
        Err(e) => assert!(e.is_retryable(), "a lost answer must be a retryable error: {e:?}"),
    }
    let info = observer.is_locked(&key).await.unwrap().expect("the lock was lost with the refresh's answer");
    assert_eq!((info.owner.as_str(), info.token, info.depth), ("alice", lease.token, 1));
    assert_eq!(release_all(&*f.provider, &key, "alice").await, 1);
    assert_nothing_held(&*observer, &key, Duration::from_secs(5)).await;
}

/// The answer to an unlock is lost; a retried unlock must not release the next holder.
pub async fn fault_lost_answer_on_unlock(ctx: &Ctx) {
    let Some(f) = faulty(ctx).await else { return };
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx));
    f.provider.lock(&opts(&key, "alice", ttl)).await.expect("lock");
    unlock_with_lost_answer(&f, &key, "alice").await;
    assert_nothing_held(&*observer, &key, Duration::from_secs(5)).await;
    let bob = observer.lock(&opts(&key, "bob", ttl)).await.expect("free for bob");
    // A late duplicate of alice's unlock finds bob's lock and leaves it alone.
    let late = settled(|| f.provider.unlock(&key, "alice")).await;
    assert!(denied(&late), "alice's late unlock: {late:?}");
    assert_eq!(observer.is_locked(&key).await.unwrap().map(|i| i.token), Some(bob.token));
    observer.unlock(&key, "bob").await.unwrap();
}

/// The answer to an unlock is lost while a call of the same provider waits for the key, where a
/// release may hand the lock straight to the waiter: the waiter still acquires (with a larger
/// token), the holder's retried unlock never releases the waiter's lock, and the waiter's
/// levels (one, or two if it re-entered a lock handed to it unawares) can be released.
pub async fn fault_lost_answer_on_handover(ctx: &Ctx) {
    let Some(f) = faulty(ctx).await else { return };
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx));
    let first = f.provider.lock(&opts(&key, "alice", ttl)).await.expect("lock");
    let waiter = {
        let (p, o) =
            (f.provider.clone(), opts(&key, "bob", ttl).wait(WaitPolicy::deadline(Duration::from_secs(60))));
        // The lost answer may be one of the waiter's own polls: it tries again, as a caller would.
        tokio::spawn(async move { settled(|| p.lock(&o)).await })
    };
    // The waiter's first attempt has found the lock held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    unlock_with_lost_answer(&f, &key, "alice").await;
    let bob = waiter.await.expect("waiter task").expect("the waiter acquires");
    assert!(bob.token > first.token, "the waiter's token must follow the holder's");
    let info = observer.is_locked(&key).await.unwrap().expect("the waiter's lock");
    assert_eq!((info.owner.as_str(), info.token), ("bob", bob.token));
    let levels = release_all(&*f.provider, &key, "bob").await;
    assert!((1..=2).contains(&levels), "bob released {levels} levels");
    assert_nothing_held(&*observer, &key, Duration::from_secs(5)).await;
}

/// Every connection is reset (by the proxy) while a lock is held and while a caller waits.
pub async fn fault_killed_connections(ctx: &Ctx) {
    killed_connections(ctx, Killer::Proxy).await
}

/// The server itself kills every connection of the provider (MariaDB `KILL`, Redis `CLIENT
/// KILL`) while a lock is held and while a caller waits.
pub async fn fault_server_killed_connections(ctx: &Ctx) {
    killed_connections(ctx, Killer::Server).await
}

/// Who kills the connections of [`killed_connections`].
#[derive(Clone, Copy, Debug)]
enum Killer {
    /// The proxy resets them on both sides.
    Proxy,
    /// The server closes them ([`Harness::kill_server_side`](crate::Harness::kill_server_side)).
    Server,
}

impl Killer {
    /// Kills every open connection of `f`; `false` when the harness cannot (a loud skip).
    async fn kill(self, ctx: &Ctx, f: &Faulty) -> bool {
        match self {
            Killer::Proxy => {
                f.reset_all();
                true
            }
            Killer::Server => {
                let conns = f.server_connections();
                assert!(!conns.is_empty(), "the provider has no open connection to kill");
                match ctx.harness.kill_server_side(&conns).await {
                    None => {
                        eprintln!(
                            "SKIPPED {}: the server has no command to kill a client's connections",
                            ctx.case
                        );
                        false
                    }
                    Some(killed) => {
                        assert!(killed > 0, "the server killed none of {conns:?}: the case tested nothing");
                        eprintln!("{}: the server killed {killed} of {} connections", ctx.case, conns.len());
                        true
                    }
                }
            }
        }
    }
}

/// The body of the killed-connection cases: a holder whose connections are killed keeps its
/// lock (the lock lives in the server's data, not in a connection; nobody else is granted it)
/// and can refresh and release it; a waiter whose
/// connections are killed acquires after the release or fails retryably, and never hangs.
async fn killed_connections(ctx: &Ctx, killer: Killer) {
    let Some(f) = faulty(ctx).await else { return };
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx) * 4);
    let lease = f.provider.lock(&opts(&key, "alice", ttl)).await.expect("lock");
    if !killer.kill(ctx, &f).await {
        f.provider.unlock(&key, "alice").await.expect("unlock on an intact connection");
        return;
    }
    let info =
        observer.is_locked(&key).await.unwrap().expect("a killed connection must not release the lock");
    assert_eq!((info.owner.as_str(), info.token), ("alice", lease.token));
    let other = observer.lock(&opts(&key, "mallory", ttl)).await;
    assert!(matches!(other, Err(LockError::Timeout { .. })), "a second holder after the kill: {other:?}");
    let refreshed =
        settled(|| f.provider.refresh_lock(&key, "alice", ttl)).await.expect("refresh after the kill");
    assert_eq!(refreshed.token, lease.token, "a refresh keeps the token");
    settled(|| f.provider.unlock(&key, "alice")).await.expect("unlock after the kill");
    assert_nothing_held(&*observer, &key, Duration::from_secs(5)).await;

    // A waiter whose connections are killed while it waits.
    observer.lock(&opts(&key, "bob", ttl)).await.unwrap();
    let (p, k) = (f.provider.clone(), key.clone());
    let waiter = tokio::spawn(async move {
        p.lock(&opts(&k, "carol", ttl).wait(WaitPolicy::deadline(Duration::from_secs(30)))).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(killer.kill(ctx, &f).await, "the server killed connections once and then could not");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(observer.is_locked(&key).await.unwrap().map(|i| i.owner).as_deref(), Some("bob"));
    observer.unlock(&key, "bob").await.unwrap();
    match tokio::time::timeout(Duration::from_secs(60), waiter).await.expect("the waiter hangs").unwrap() {
        Ok(lease) => {
            assert_eq!(&*lease.owner, "carol");
            settled(|| f.provider.unlock(&key, "carol")).await.expect("carol unlocks");
        }
        Err(e) => assert!(e.is_retryable(), "a waiter whose connection was killed: {e:?}"),
    }
    assert_nothing_held(&*observer, ctx.prefix(), Duration::from_secs(10)).await;
}

/// Answers arrive later than the client's request timeout.
pub async fn fault_slow_server(ctx: &Ctx) {
    let Some(f) = faulty(ctx).await else { return };
    let Some(timeout) = f.provider.request_timeout() else {
        eprintln!("SKIPPED {}: the provider bounds no request", ctx.case);
        return;
    };
    let observer = ctx.provider().await;
    let (key, ttl) = (ctx.key("k"), fault_ttl(ctx).max(timeout * 4));
    let started = Instant::now();
    f.latency(Direction::ToClient, timeout * 2);
    let outcome = f.provider.lock(&opts(&key, "alice", ttl)).await;
    f.heal();
    match outcome {
        Ok(lease) => panic!(
            "a lock answered after {:?} beyond a {timeout:?} request timeout: {lease:?}",
            started.elapsed()
        ),
        Err(e) => assert!(e.is_retryable(), "a slow server is a retryable error: {e:?}"),
    }
    // Alice was told no; whatever the server granted her must not stay past the TTL.
    free_after_ttl(ctx, &*observer, &key, started, ttl).await;
}

/// Many callers, random operations under random cancellation, faults switched underneath:
/// the history judges mutual exclusion and fencing; nothing is held at the end.
pub async fn fault_chaos_mix(ctx: &Ctx) {
    const TASKS: usize = 6;
    let Some(f) = faulty(ctx).await else { return };
    let f = Arc::new(f);
    let healthy = ctx.provider().await;
    let fencing = healthy.capabilities().fencing;
    let ttl = fault_ttl(ctx);
    let rounds = if crate::long_run() { 200 } else { 40 };
    let keys: Vec<String> = (0..2).map(|i| ctx.key(&format!("k{i}"))).collect();
    let history = History::new();
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (f, stop) = (f.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match fastrand::u8(..4) {
                    0 => f.latency(Direction::Both, Duration::from_millis(fastrand::u64(1..30))),
                    1 => f.reset_all(),
                    2 => f.proxies.iter().for_each(FaultProxy::drop_next_answer),
                    _ => f.heal(),
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(20..120))).await;
            }
            f.heal();
        })
    };
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let p = if t % 2 == 0 { f.provider.clone() } else { healthy.clone() };
        let (keys, history) = (keys.clone(), history.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("task-{t}");
            // Per key: the grants (one per level) this task trusts.
            let mut held: Vec<Vec<GrantId>> = vec![Vec::new(); keys.len()];
            for _ in 0..rounds {
                let i = fastrand::usize(..keys.len());
                let key = keys[i].as_str();
                let budget = Duration::from_micros(fastrand::u64(..5_000));
                match fastrand::u8(..4) {
                    0 | 1 => {
                        let o = if fastrand::bool() {
                            opts(key, &owner, ttl).wait(WaitPolicy::deadline(Duration::from_millis(200)))
                        } else {
                            opts(key, &owner, ttl)
                        };
                        if let Ok(Ok(lease)) = tokio::time::timeout(budget * 40, p.lock(&o)).await {
                            held[i].push(history.granted(&lease));
                        }
                    }
                    2 if !held[i].is_empty() => {
                        if let Ok(Ok(lease)) =
                            tokio::time::timeout(budget, p.refresh_lock(key, &owner, ttl)).await
                        {
                            held[i].iter().for_each(|id| history.refreshed(*id, &lease));
                        }
                    }
                    _ => {
                        // Stop trusting before asking: a lost or cancelled unlock may have worked.
                        for id in held[i].drain(..) {
                            history.released(id);
                            let _ = tokio::time::timeout(budget, p.unlock(key, &owner)).await;
                        }
                    }
                }
            }
            for (i, ids) in held.iter().enumerate() {
                for id in ids {
                    history.released(*id);
                    let _ = p.unlock(&keys[i], &owner).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a chaos task panicked");
    }
    stop.store(true, Ordering::SeqCst);
    chaos.await.unwrap();
    eprintln!("chaos: {} grants recorded, {} answers lost", history.len(), f.answers_lost());
    assert!(!history.is_empty(), "no lock was ever granted: the case tested nothing");
    history.assert_ok(fencing);
    // Levels whose unlock was cancelled or lost expire with their TTL.
    tokio::time::sleep(ttl + ctx.harness.expiry_slack()).await;
    assert_nothing_held(&*healthy, ctx.prefix(), Duration::from_secs(10)).await;
}

/// The `host:port` of a server URL such as `redis://user@127.0.0.1:6379/0` or
/// `http://127.0.0.1:2379`, resolved to a socket address.
pub fn upstream_of(url: &str) -> std::net::SocketAddr {
    let (_, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port.parse().unwrap_or_else(|e| panic!("`{url}` does not name 127.0.0.1:PORT: {e}"))
}

/// `url` with its `host:port` replaced by `proxy`'s address.
pub fn through(url: &str, proxy: &FaultProxy) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    let scheme = if scheme.is_empty() { String::new() } else { format!("{scheme}://") };
    format!("{scheme}{user}{}{tail}", proxy.addr())
}

/// `url` with TLS turned off for the SQL backends (`sslmode=disable`, `ssl-mode=DISABLED`):
/// a [`FaultProxy`] finds a key in the bytes it passes on, which TLS would hide, and with a
/// client built with TLS the default mode (`prefer`) turns it on whenever the server offers
/// it. Other URLs are returned as they are.
pub fn plaintext(url: &str) -> String {
    let param = if url.starts_with("postgres") {
        "sslmode=disable"
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        "ssl-mode=DISABLED"
    } else {
        return url.to_owned();
    };
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}{param}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_turns_tls_off_for_the_sql_backends_only() {
        assert_eq!(plaintext("postgres://u@h/db"), "postgres://u@h/db?sslmode=disable");
        assert_eq!(plaintext("mysql://u@h/db?x=1"), "mysql://u@h/db?x=1&ssl-mode=DISABLED");
        assert_eq!(plaintext("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn urls_are_split_and_rewritten_around_their_address() {
        assert_eq!(upstream_of("redis://127.0.0.1:6379").port(), 6379);
        assert_eq!(upstream_of("mysql://root:pw@localhost:3306/test").port(), 3306);
        assert_eq!(upstream_of("http://127.0.0.1:2379").port(), 2379);
    }

    #[tokio::test]
    async fn through_keeps_scheme_credentials_and_path() {
        let proxy = FaultProxy::start(upstream_of("redis://127.0.0.1:6379")).await.unwrap();
        let port = proxy.port();
        assert_eq!(
            through("mysql://root:pw@127.0.0.1:3306/test", &proxy),
            format!("mysql://root:pw@127.0.0.1:{port}/test")
        );
        assert_eq!(through("http://127.0.0.1:2379", &proxy), format!("http://127.0.0.1:{port}"));
    }
}
