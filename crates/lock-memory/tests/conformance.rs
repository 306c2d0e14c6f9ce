//! The shared conformance suite on the memory backend.

use std::sync::Arc;

use lock_core::LockProvider;
use lock_memory::MemoryLockProvider;
use lock_testkit::Harness;

/// One provider per case: the memory backend's "server" is the provider itself.
struct Memory(Arc<MemoryLockProvider>);

#[async_trait::async_trait]
impl Harness for Memory {
    async fn provider(&self) -> Arc<dyn LockProvider> {
        self.0.clone()
    }
}

async fn harness() -> Result<Memory, String> {
    Ok(Memory(Arc::new(MemoryLockProvider::new())))
}

lock_testkit::conformance_suite!(harness);
