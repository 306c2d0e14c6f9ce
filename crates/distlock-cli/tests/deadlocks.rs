//! `distlock deadlocks` against a real server: two clients of this test wait for each other's
//! lock, and the command, a process of its own, shows the cycle and exits with status 1.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use distlock::redis::RedisConfig;
use distlock::{
    DeadlockConfig, DeadlockPolicy, LockConfig, LockOptions, LockProvider, LockProviderFactory,
    LockProviderType, WaitPolicy,
};

fn run(prefix: &str, url: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distlock"))
        .args(["deadlocks", prefix, "--provider", "redis"])
        .env("DISTLOCK_REDIS__URL", url)
        .output()
        .expect("run distlock");
    assert_ne!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlocks_shows_the_cycle_between_two_clients() {
    let url = lock_testkit::env::redis_url();
    let config = LockConfig {
        provider: LockProviderType::Redis,
        redis: RedisConfig::new(url.clone()),
        deadlock: DeadlockConfig {
            enabled: true,
            interval: Duration::from_millis(100),
            policy: DeadlockPolicy::Report,
        },
        ..LockConfig::memory()
    };
    let factory = LockProviderFactory::new(None);
    let connect = async {
        let a = factory.create_lock_provider(&config).await.map_err(|e| e.to_string())?;
        Ok((a, factory.create_lock_provider(&config).await.map_err(|e| e.to_string())?))
    };
    let Some((pa, pb)) =
        lock_testkit::require_or_skip("deadlocks_shows_the_cycle_between_two_clients", connect.await)
    else {
        return;
    };
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("cli-deadlocks/{}-{run_id}/", std::process::id());
    let (ka, kb) = (format!("{prefix}a"), format!("{prefix}b"));
    let (code, out) = run(&prefix, &url);
    assert_eq!(code, Some(0), "nothing waits yet: {out}");
    assert!(out.contains("0 wait(s), 0 deadlock(s) on redis"), "{out}");

    let now = |k: &str, o: &str| LockOptions::new(k, o).no_wait();
    pa.lock(&now(&ka, "alice")).await.unwrap();
    pb.lock(&now(&kb, "bob")).await.unwrap();
    let patient =
        |k: &str, o: &str| LockOptions::new(k, o).wait(WaitPolicy::deadline(Duration::from_secs(30)));
    let waits: Vec<_> = [(pa.clone(), patient(&kb, "alice")), (pb.clone(), patient(&ka, "bob"))]
        .into_iter()
        .map(|(p, o): (Arc<dyn LockProvider>, _)| tokio::spawn(async move { p.lock(&o).await }))
        .collect();
    while pa.waits(&prefix).await.unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out) = run(&prefix, &url);
    assert_eq!(code, Some(1), "a deadlock exits with 1: {out}");
    assert!(out.contains(&format!("alice waits for `{kb}` held by bob")), "{out}");
    assert!(
        out.contains(&format!(
            "DEADLOCK: alice waits for `{kb}` held by bob, bob waits for `{ka}` held by alice"
        )),
        "{out}"
    );
    assert!(out.contains("2 wait(s), 1 deadlock(s) on redis"), "{out}");

    for w in waits {
        w.abort();
    }
    pa.unlock(&ka, "alice").await.unwrap();
    pb.unlock(&kb, "bob").await.unwrap();
    pa.close().await.unwrap();
    pb.close().await.unwrap();
}
