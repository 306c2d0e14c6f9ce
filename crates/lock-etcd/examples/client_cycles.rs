//! Runs uncontended lock/unlock cycles against etcd, through the provider or as the raw
//! transactions the bench compares it with ("put if absent", compare-and-delete), for
//! counting the client's instructions per cycle with a tool that counts them (the count does
//! not depend on the machine's load; the server's work is not in it):
//!
//! ```sh
//! cargo build --release -p lock-etcd --example client_cycles
//! valgrind --tool=callgrind target/release/examples/client_cycles distlock 1000
//! ```
//!
//! Modes: `distlock` (the provider) or `raw`. Divide the difference of two runs' totals (say
//! 1,000 and 2,000 cycles) by the difference of their cycles. An optional third argument
//! runs that many tasks, each cycling on a key of its own (the benches' distinct-key
//! workload; the cycles are shared out between them). Without valgrind, the same runs give
//! the client's and the server's CPU per cycle (`/usr/bin/time`, and the server's
//! `/proc/<pid>/stat` before and after). The cluster comes from
//! `DISTLOCK_TEST_ETCD_ENDPOINTS` (default `http://127.0.0.1:2379`).

use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use lock_core::{LockOptions, LockProvider};
use lock_etcd::{EtcdConfig, EtcdLockProvider};
use lock_testkit::bench::{in_tasks, BoxError as Error};

/// `cycles` lock/unlock cycles on `key` in the way `mode` names (the raw keys under `run`).
async fn cycle(
    mode: &str,
    provider: &EtcdLockProvider,
    run: &str,
    key: String,
    cycles: u64,
) -> Result<(), Error> {
    match mode {
        "distlock" => {
            let opts = LockOptions::new(key.as_str(), "cycles-owner").no_wait();
            for _ in 0..cycles {
                provider.lock(&opts).await?;
                provider.unlock(&key, "cycles-owner").await?;
            }
        }
        "raw" => {
            let client: Client = provider.client().clone();
            let mut kv = client.kv_client();
            let key = format!("{run}raw/{key}");
            for _ in 0..cycles {
                let take = Txn::new()
                    .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), "cycles-owner", None)]);
                assert!(kv.txn(take).await?.succeeded(), "raw take of a held key");
                let free = Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, "cycles-owner")])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                assert!(kv.txn(free).await?.succeeded(), "raw release of a key not held");
            }
        }
        other => return Err(format!("unknown mode {other:?}: distlock or raw").into()),
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "distlock".into());
    let cycles: u64 = args.next().map_or(Ok(1_000), |n| n.parse())?;
    let tasks: u64 = args.next().map_or(Ok(1), |n| n.parse())?;
    let endpoints =
        std::env::var("DISTLOCK_TEST_ETCD_ENDPOINTS").unwrap_or_else(|_| "http://127.0.0.1:2379".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let run = format!("distlock-client-cycles/{:08x}/", fastrand::u32(..));
        let config = EtcdConfig::from_list(&endpoints).prefix(format!("{run}distlock/"));
        let provider = Arc::new(EtcdLockProvider::connect(config).await?);
        in_tasks(tasks, cycles, |t, n| {
            let (mode, provider, run) = (mode.clone(), provider.clone(), run.clone());
            async move { cycle(&mode, &provider, &run, format!("cycles:{t}"), n).await }
        })
        .await?;
        provider.close().await?;
        Ok::<_, Error>(())
    })?;
    Ok(())
}
