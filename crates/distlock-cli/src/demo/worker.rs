//! One worker process of `distlock demo --processes`: its own provider and `--workers` tasks,
//! racing the other processes over the shared executions until the fenced store has every
//! one done.
//!
//! A task picks a random execution the store does not have done and:
//!
//! 1. takes the execution lock without waiting (busy: skip);
//! 2. claims the execution in the fenced store with its token, which also says whether it is
//!    done (done: skip; a claim rejected by fencing: a newer holder exists, stop);
//! 3. takes one of the template's slots (waiting);
//! 4. works, then writes the result to the store with its token. The work is not interrupted
//!    when the lease is lost, and nothing checks the lease between the work and the write: a
//!    process paused there could not check anyway. The store's fencing is what stops a stale
//!    write;
//! 5. releases the slot and the execution lock.
//!
//! Every lock held is written to the worker's [journal](super::journal) when let go of.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use distlock::workflow::WorkflowLockHandle;
use distlock::{LockConfig, LockError, LockManager, WaitPolicy};

use super::journal::{now_us, Event, Held, Journal};
use crate::fenced_store::{Claimed, FencedStore};

/// What a worker process needs besides the provider configuration.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSpec {
    /// The worker's id (unique in the run, also for replacements).
    pub(crate) id: usize,
    /// The run directory: the store and the journals.
    pub(crate) run_dir: PathBuf,
    /// Tasks in this process.
    pub(crate) tasks: usize,
    /// Executions in the run.
    pub(crate) executions: usize,
    /// Templates, and the runs each admits at once.
    pub(crate) templates: usize,
    /// Runs each template admits at once.
    pub(crate) template_limit: u32,
    /// Longest work per run.
    pub(crate) work: Duration,
    /// When to give up.
    pub(crate) time_limit: Duration,
}

/// The store's directory in a run directory.
pub(crate) fn store_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("store")
}

/// Runs worker `spec.id` until the store has every execution done or the time limit passes.
pub(crate) async fn run(config: LockConfig, spec: WorkerSpec) -> distlock::Result<ExitCode> {
    let io = |what: &str, e: std::io::Error| LockError::Config(format!("worker {}: {what}: {e}", spec.id));
    let store = FencedStore::open(&store_dir(&spec.run_dir)).map_err(|e| io("opening the store", e))?;
    let journal =
        Arc::new(Journal::create(&spec.run_dir, spec.id).map_err(|e| io("creating the journal", e))?);
    let manager = Arc::new(LockManager::new(None, config).await?);
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let until = Instant::now() + spec.time_limit;
    let mut tasks = Vec::new();
    for _ in 0..spec.tasks {
        let task = Task {
            worker: format!("worker-{}", spec.id),
            spec: spec.clone(),
            store: store.clone(),
            journal: journal.clone(),
            manager: manager.clone(),
            counts: counts.clone(),
        };
        tasks.push(tokio::spawn(task.run(until)));
    }
    for t in tasks {
        t.await.expect("worker task");
    }
    manager.close().await?;
    journal.write(&Event::Counts {
        busy: counts.0.load(Ordering::Relaxed),
        done: counts.1.load(Ordering::Relaxed),
    });
    Ok(ExitCode::SUCCESS)
}

struct Task {
    worker: String,
    spec: WorkerSpec,
    store: FencedStore,
    journal: Arc<Journal>,
    manager: Arc<LockManager>,
    /// Offers skipped: busy, done.
    counts: Arc<(AtomicU64, AtomicU64)>,
}

/// The store's calls block on a file lock (held, perhaps, by a paused process): off the
/// runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.expect("store call")
}

impl Task {
    async fn run(self, until: Instant) {
        let mut pending: Vec<usize> = (0..self.spec.executions).collect();
        while Instant::now() < until {
            pending.retain(|&e| !self.store.is_done(e));
            if pending.is_empty() {
                return;
            }
            let e = pending[fastrand::usize(..pending.len())];
            if !self.offer(e).await {
                // Busy or failing: let the holder get on before trying again.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=5))).await;
            }
        }
        self.journal.write(&Event::Error(format!("{}: the time limit passed", self.worker)));
    }

    /// Offers execution `e` to this task; false when it was busy or failed.
    async fn offer(&self, e: usize) -> bool {
        let workflows = self.manager.workflow_lock_provider();
        let asked_us = now_us();
        let exec =
            match workflows.lock_workflow_execution_with(&format!("exec-{e}"), &WaitPolicy::NoWait).await {
                Ok(h) => h,
                Err(err) if err.is_timeout() => {
                    self.counts.0.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Err(err) => {
                    self.error(format!("lock exec-{e}: {err}"));
                    return false;
                }
            };
        let got_us = now_us();
        let token = exec.fencing_token().get();
        let (store, worker) = (self.store.clone(), self.worker.clone());
        match blocking(move || store.claim(e, token, &worker)).await {
            Ok(Claimed::Run) => self.run_once(e, &exec).await,
            Ok(Claimed::AlreadyDone) => {
                self.counts.1.fetch_add(1, Ordering::Relaxed);
            }
            // A newer holder wrote already: this lease is stale. The store recorded the
            // rejection.
            Ok(Claimed::Stale { .. }) => {}
            Err(err) => self.error(format!("claim exec-{e} in the store: {err}")),
        }
        self.release(exec, None, asked_us, got_us).await;
        true
    }

    async fn run_once(&self, e: usize, exec: &WorkflowLockHandle) {
        let template = e % self.spec.templates;
        let asked_us = now_us();
        let slot = match super::slot_for(&self.manager, template, self.spec.template_limit).await {
            Ok(h) => h,
            Err(err) => {
                self.error(format!("template slot of exec-{e}: {err}"));
                return;
            }
        };
        let got_us = now_us();
        tokio::time::sleep(Duration::from_micros(fastrand::u64(..=self.spec.work.as_micros() as u64))).await;
        let (store, worker, token) = (self.store.clone(), self.worker.clone(), exec.fencing_token().get());
        // Accepted or rejected, the store records it; the parent counts rejections there.
        if let Err(err) = blocking(move || store.complete(e, token, &worker)).await {
            self.error(format!("write the result of exec-{e}: {err}"));
        }
        self.release(slot, Some(template), asked_us, got_us).await;
    }

    /// Journals the hold and unlocks. A lock found gone or somebody else's at unlock was
    /// lost, as when `lost()` fired: the parent decides whether that was expected.
    async fn release(&self, handle: WorkflowLockHandle, template: Option<usize>, asked_us: u64, got_us: u64) {
        let end_us = now_us();
        let (key, token) = (handle.lock_key().to_string(), handle.fencing_token().get());
        let mut lost = handle.lost().is_cancelled();
        match handle.unlock().await {
            Ok(()) => {}
            Err(LockError::NotHeld { .. } | LockError::NotOwner { .. } | LockError::LeaseLost { .. }) => {
                lost = true
            }
            Err(err) => self.error(format!("unlock {key}: {err}")),
        }
        self.journal.write(&Event::Held(Held { key, template, token, asked_us, got_us, end_us, lost }));
    }

    fn error(&self, what: String) {
        self.journal.write(&Event::Error(format!("{}: {what}", self.worker)));
    }
}
