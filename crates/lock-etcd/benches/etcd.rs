//! etcd backend against two floors on the same etcd, same workloads, same run:
//!
//! - raw etcd-client: a transaction "put if absent" to acquire (on failure, a watch for the
//!   key's delete, then again) and a compare-and-delete to release: no lease, no queue;
//! - etcd's own lock service (v3lock `Lock`/`Unlock` RPCs), one lease per owner.
//!
//! `cargo bench -p lock-etcd --bench etcd` (or `cargo xtask bench`) with etcd at
//! `DISTLOCK_TEST_ETCD_ENDPOINTS` (default `http://127.0.0.1:2379`). After criterion's groups, a
//! summary with throughput and hand-over percentiles is printed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchFilterType, WatchOptions};
use lock_core::LockProvider;
use lock_etcd::{EtcdConfig, EtcdLockProvider};
use lock_testkit::bench::{
    self, fmt_dur, rate, BoxFut, Contender, Cycle, ProviderCycle, Spec, DISTINCT_TASKS, HOT_TASKS,
};
use lock_testkit::env::etcd_endpoints;

/// Put-if-absent and compare-and-delete on one plain key per lock.
struct RawTxnCycle {
    client: Client,
    prefix: String,
}

impl Cycle for RawTxnCycle {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let k = format!("{}{key}", self.prefix);
            let mut kv = self.client.kv_client();
            loop {
                let resp = kv
                    .txn(
                        Txn::new()
                            .when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(k.as_str(), owner, None)]),
                    )
                    .await
                    .expect("raw txn");
                if resp.succeeded() {
                    return;
                }
                let rev = resp.header().expect("header").revision();
                let opts =
                    WatchOptions::new().with_start_revision(rev + 1).with_filters([WatchFilterType::NoPut]);
                let mut stream =
                    self.client.watch_client().watch(k.as_str(), Some(opts)).await.expect("watch");
                while let Some(msg) = stream.message().await.expect("watch message") {
                    if msg.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        break;
                    }
                }
            }
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let k = format!("{}{key}", self.prefix);
            let resp = self
                .client
                .kv_client()
                .txn(
                    Txn::new()
                        .when([Compare::value(k.as_str(), CompareOp::Equal, owner)])
                        .and_then([TxnOp::delete(k.as_str(), None)]),
                )
                .await
                .expect("raw release");
            assert!(resp.succeeded(), "raw release of a lock not held");
        })
    }
}

/// etcd's lock service: `Lock(name, lease)` waits until held and returns the lock's key,
/// `Unlock(key)` deletes it. One long lease per owner.
struct V3LockCycle {
    client: Client,
    prefix: String,
    leases: Mutex<HashMap<String, i64>>,
    held: Mutex<HashMap<(String, String), Vec<u8>>>,
}

impl V3LockCycle {
    async fn lease(&self, owner: &str) -> i64 {
        if let Some(id) = self.leases.lock().unwrap().get(owner) {
            return *id;
        }
        let id = self.client.lease_client().grant(600, None).await.expect("grant").id();
        *self.leases.lock().unwrap().entry(owner.to_string()).or_insert(id)
    }
}

impl Cycle for V3LockCycle {
    fn acquire<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let lease = self.lease(owner).await;
            let name = format!("{}{key}", self.prefix);
            let resp = self
                .client
                .lock_client()
                .lock(name, Some(etcd_client::LockOptions::new().with_lease(lease)))
                .await
                .expect("v3lock lock");
            self.held.lock().unwrap().insert((key.to_string(), owner.to_string()), resp.key().to_vec());
        })
    }
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let k = self.held.lock().unwrap().remove(&(key.to_string(), owner.to_string())).expect("held");
            self.client.lock_client().unlock(k).await.expect("v3lock unlock");
        })
    }
}

async fn contenders() -> Option<Vec<Contender>> {
    let config = EtcdConfig::from_list(&etcd_endpoints()).connect_timeout(Duration::from_secs(3));
    let provider = match EtcdLockProvider::connect(config.clone()).await {
        Ok(p) if p.health().await.is_ok() => p,
        _ => {
            eprintln!("SKIPPED etcd bench: no etcd at {}", etcd_endpoints());
            return None;
        }
    };
    let client = provider.client().clone();
    let run = format!("distlock-bench/{:08x}/", fastrand::u32(..));
    let provider = EtcdLockProvider::with_client(client.clone(), &config.prefix(format!("{run}distlock/")));
    Some(vec![
        Contender::new("distlock etcd", Arc::new(ProviderCycle::new(Arc::new(provider)))),
        Contender::new(
            "raw etcd-client txn",
            Arc::new(RawTxnCycle { client: client.clone(), prefix: format!("{run}raw/") }),
        ),
        Contender::new(
            "etcd lock service",
            Arc::new(V3LockCycle {
                client,
                prefix: format!("{run}v3lock/"),
                leases: Mutex::default(),
                held: Mutex::default(),
            }),
        ),
    ])
}

/// Throughput and latency percentiles, printed for docs/benchmarks.md.
async fn summary(all: Vec<Contender>) {
    println!("\n## summary (2 worker threads, etcd at {})", etcd_endpoints());
    println!("| contender | uncontended cycles/s | acquire p50 | acquire p99 | release p50 | 32 tasks distinct keys cycles/s | 16 tasks hot key cycles/s | hand-over p50 | hand-over p99 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    const N: u64 = 400;
    for ct in &all {
        bench::uncontended(&*ct.cycle, &ct.uncontended_key(), N / 10).await; // warm-up
    }
    // Latencies in turns (20 rounds of 20 cycles per contender), so that the server's speed
    // drifting during the run (its WAL's fsync time) weighs on every contender alike.
    let latencies = bench::interleaved_latencies(&all.iter().collect::<Vec<_>>(), 20, 20).await;
    // Distinct keys in turns too: 7 rounds of 32 tasks x 20 cycles, the median round.
    let distinct =
        bench::interleaved_distinct_keys(&all.iter().collect::<Vec<_>>(), DISTINCT_TASKS, 7, 20).await;
    for ((ct, (acq, rel)), dk) in all.into_iter().zip(latencies).zip(distinct) {
        let (cy, u) = (&ct.cycle, ct.uncontended_key());
        let un = bench::uncontended(&**cy, &u, N).await;
        let hk = bench::hot_key(cy.clone(), &ct.hot_key(), HOT_TASKS, 25).await;
        println!(
            "| {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
            ct.name,
            rate(N, un),
            fmt_dur(acq.quantile(0.5)),
            fmt_dur(acq.quantile(0.99)),
            fmt_dur(rel.quantile(0.5)),
            dk,
            rate(hk.acquisitions, hk.elapsed),
            fmt_dur(hk.handoff.quantile(0.5)),
            fmt_dur(hk.handoff.quantile(0.99)),
        );
    }
}

fn main() {
    bench::main(Spec::new("etcd").sample_size(10), contenders(), summary);
}
