//! The cost of the waiting layer (waits published for deadlock detection) on MySQL.
//!
//! `cargo bench -p lock-mysql --bench waits`, against `DISTLOCK_TEST_MYSQL_URL`.

use std::sync::Arc;

use lock_core::LockProvider;
use lock_mysql::{MySqlLockConfig, MySqlLockProvider};
use lock_testkit::env::mysql_url;

fn main() {
    lock_testkit::bench::waits::main("mysql", || async {
        match MySqlLockProvider::connect(&mysql_url(), MySqlLockConfig::default()).await {
            Ok(p) => Some(Arc::new(p) as Arc<dyn LockProvider>),
            Err(e) => {
                eprintln!("SKIPPED mysql waits bench: {e}");
                None
            }
        }
    });
}
