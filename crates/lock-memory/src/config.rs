//! [`MemoryConfig`]: the in-process provider's settings, with every default in one place.

use std::time::Duration;

use lock_core::{LockError, Result};
use serde::{Deserialize, Serialize};

/// Settings of a [`MemoryLockProvider`](crate::MemoryLockProvider).
///
/// ```
/// use std::time::Duration;
/// use lock_memory::{MemoryConfig, MemoryLockProvider};
///
/// let config = MemoryConfig::default().shards(16).reap_interval(Some(Duration::from_secs(1)));
/// let provider = MemoryLockProvider::with_config(config).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Number of independently locked shards, a power of two (default 64).
    pub shards: usize,
    /// How often the background reaper removes expired leases (default 5 s); `None` leaves
    /// cleanup to the lazy check on every access.
    #[serde(with = "humantime_serde")]
    pub reap_interval: Option<Duration>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { shards: 64, reap_interval: Some(Duration::from_secs(5)) }
    }
}

impl MemoryConfig {
    /// Sets [`shards`](Self::shards), rounded up to a power of two.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1).next_power_of_two();
        self
    }

    /// Sets [`reap_interval`](Self::reap_interval).
    pub fn reap_interval(mut self, every: Option<Duration>) -> Self {
        self.reap_interval = every;
        self
    }

    /// Checks the settings: a power-of-two shard count from 1 to 65,536, a non-zero reaper
    /// period.
    pub fn validate(&self) -> Result<()> {
        if !self.shards.is_power_of_two() || self.shards > 1 << 16 {
            return Err(LockError::invalid(
                "shards",
                format!("{} is not a power of two from 1 to 65536", self.shards),
            ));
        }
        if self.reap_interval.is_some_and(|d| d.is_zero()) {
            return Err(LockError::invalid("reap_interval", "must not be zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_the_table_cannot_use() {
        MemoryConfig::default().validate().unwrap();
        assert!(MemoryConfig { shards: 3, ..MemoryConfig::default() }.validate().is_err());
        assert!(MemoryConfig { shards: 0, ..MemoryConfig::default() }.validate().is_err());
        assert!(MemoryConfig::default().reap_interval(Some(Duration::ZERO)).validate().is_err());
        assert_eq!(MemoryConfig::default().shards(5).shards, 8);
    }
}
