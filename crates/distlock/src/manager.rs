//! [`LockManager`]: the single entry point: one configuration, one provider, its workflow locks.

use std::sync::Arc;

use lock_core::workflow::WorkflowLockProvider;
use lock_core::{LockProvider, Result};

use crate::config::LockConfig;
use crate::factory::{Db, LockProviderFactory};

/// Owns the configured provider and its workflow layer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> distlock::Result<()> {
/// use distlock::{LockConfig, LockManager};
///
/// let manager = LockManager::new(None, LockConfig::memory()).await?;
/// let workflows = manager.workflow_lock_provider();
/// let handle = workflows.lock_workflow_execution("execution_123").await?;
/// // business logic ...
/// handle.unlock().await?;
/// manager.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LockManager {
    factory: LockProviderFactory,
    workflow: WorkflowLockProvider,
    config: LockConfig,
}

impl LockManager {
    /// Builds the provider of `config` (MySQL uses `db` when given).
    pub async fn new(db: Option<Db>, config: LockConfig) -> Result<Self> {
        let factory = LockProviderFactory::new(db);
        let workflow = factory.create_workflow_lock_provider(&config).await?;
        Ok(LockManager { factory, workflow, config })
    }

    /// The workflow locks.
    pub fn workflow_lock_provider(&self) -> &WorkflowLockProvider {
        &self.workflow
    }

    /// The underlying provider (inspection, raw locks).
    pub fn lock_provider(&self) -> &Arc<dyn LockProvider> {
        self.workflow.provider()
    }

    /// The factory it was built with.
    pub fn factory(&self) -> &LockProviderFactory {
        &self.factory
    }

    /// The configuration in force.
    pub fn config(&self) -> &LockConfig {
        &self.config
    }

    /// Closes the provider.
    pub async fn close(&self) -> Result<()> {
        self.workflow.close().await
    }
}
