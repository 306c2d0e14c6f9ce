//! Runs lock/unlock cycles against Redis, through the provider or as the textbook
//! `SET NX PX` + compare-and-delete script the bench compares it with, and prints what each
//! cycle cost the client and the server in CPU time:
//!
//! ```sh
//! cargo build --release -p lock-redis --example client_cycles
//! target/release/examples/client_cycles distlock 20000 32
//! valgrind --tool=callgrind target/release/examples/client_cycles distlock 1000 1
//! ```
//!
//! Arguments: mode (`distlock` or `raw`), cycles (default 10,000), tasks on distinct keys
//! (default 1). The client's CPU time is the process's own (`/proc/self/stat`), the server's is
//! `INFO cpu` before and after, and the server's time per command is `INFO commandstats`
//! (reset first: use a server of your own). Under callgrind, divide the difference of two
//! runs' totals (say 1,000 and 2,000 cycles) by the difference of their cycles. The server
//! comes from `DISTLOCK_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::scripts::Script;
use fred::types::{Builder, Expiration, SetOptions};
use lock_core::{LockOptions, LockProvider, WaitPolicy};
use lock_redis::{RedisConfig, RedisLockProvider};

const RAW_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// The process's user + system CPU time, from `/proc/self/stat` (clock ticks of 10 ms).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// The server's user + system CPU seconds from `INFO cpu`.
async fn server_cpu(client: &fred::clients::Client) -> f64 {
    let info: String = client.info(Some(fred::types::InfoKind::Cpu)).await.expect("INFO cpu");
    info.lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "distlock".into());
    let cycles: u64 = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let tasks: u64 = args.next().map_or(Ok(1), |n| n.parse())?;
    let url = std::env::var("DISTLOCK_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let config = fred::types::config::Config::from_url(&url)?;
        let admin = Builder::from_config(config.clone()).build()?;
        admin.init().await?;
        let run = format!("client-cycles/{:08x}/", fastrand::u32(..));
        let per_task = cycles / tasks;
        let (cpu0, server0, wall0) = (cpu(), server_cpu(&admin).await, Instant::now());
        let mut joins = Vec::new();
        match mode.as_str() {
            "distlock" => {
                let provider = Arc::new(RedisLockProvider::connect(RedisConfig::new(&url).pool_size(4)).await?);
                for t in 0..tasks {
                    let (provider, key) = (provider.clone(), format!("{run}{t}"));
                    joins.push(tokio::spawn(async move {
                        let opts = LockOptions::new(key.as_str(), "cycles-owner")
                            .ttl(Duration::from_secs(30))
                            .wait(WaitPolicy::deadline(Duration::from_secs(60)));
                        for _ in 0..per_task {
                            provider.lock(&opts).await.expect("lock");
                            provider.unlock(&key, "cycles-owner").await.expect("unlock");
                        }
                    }));
                }
            }
            "raw" => {
                let pool = Arc::new(Builder::from_config(config).build_pool(4)?);
                pool.init().await?;
                let release = Arc::new(Script::from_lua(RAW_RELEASE));
                release.load(pool.next()).await?;
                for t in 0..tasks {
                    let (pool, release, key) = (pool.clone(), release.clone(), format!("{run}raw/{t}"));
                    joins.push(tokio::spawn(async move {
                        for _ in 0..per_task {
                            let set: Option<String> = pool
                                .set(key.as_str(), "cycles-owner", Some(Expiration::PX(30_000)), Some(SetOptions::NX), false)
                                .await
                                .expect("SET NX PX");
                            assert!(set.is_some(), "distinct keys are free");
                            let _: i64 =
                                release.evalsha(pool.next(), key.as_str(), "cycles-owner").await.expect("release");
                        }
                    }));
                }
            }
            other => return Err(format!("unknown mode {other:?}: distlock or raw").into()),
        }
        for j in joins {
            j.await?;
        }
        let (wall, client) = (wall0.elapsed(), cpu() - cpu0);
        let server = server_cpu(&admin).await - server0;
        let n = (per_task * tasks) as f64;
        println!(
            "{mode}: {} cycles on {tasks} task(s) in {wall:?}: {:.0} cycles/s; CPU per cycle: client {:.1} µs, server {:.1} µs",
            per_task * tasks,
            n / wall.as_secs_f64(),
            client.as_secs_f64() * 1e6 / n,
            server * 1e6 / n,
        );
        Ok(())
    })
}
