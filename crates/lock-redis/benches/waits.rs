//! The cost of the waiting layer (waits published for deadlock detection) on Redis.
//!
//! `cargo bench -p lock-redis --bench waits`, against `DISTLOCK_TEST_REDIS_URL`.

use std::sync::Arc;

use lock_core::LockProvider;
use lock_redis::{RedisConfig, RedisLockProvider};
use lock_testkit::env::redis_url;

fn main() {
    lock_testkit::bench::waits::main("redis", || async {
        match RedisLockProvider::connect(RedisConfig::new(redis_url())).await {
            Ok(p) => Some(Arc::new(p) as Arc<dyn LockProvider>),
            Err(e) => {
                eprintln!("SKIPPED redis waits bench: {e}");
                None
            }
        }
    });
}
