//! `distlock demo`: an orchestrator in miniature, checked end to end.
//!
//! W workers each receive a stream of executions; every execution is offered to R different
//! workers (as a real scheduler re-offers work after timeouts), and executions belong to T
//! templates that admit at most L concurrent runs. A worker that gets an execution:
//!
//! 1. takes the execution lock without waiting (busy: another worker runs it; skip);
//! 2. checks the orchestrator's state under that lock (already done: skip);
//! 3. takes one of the template's L slots (waiting as configured);
//! 4. runs the work, writes the result with its fencing token, marks the execution done;
//! 5. releases the template slot and the execution lock.
//!
//! At the end the demo checks that every execution ran exactly once, no execution ran on two
//! workers at once, no template exceeded its limit, fencing tokens strictly increased per key
//! in the order the lock was held, and no lock operation failed. Any violation makes the exit
//! code non-zero.
//!
//! With `--processes N` the race runs across N worker processes instead, sharing a fenced
//! store, and `--chaos` pauses and kills them meanwhile (see [`processes`]).

mod chaos;
mod journal;
mod processes;
mod worker;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use distlock::workflow::WorkflowLockHandle;
use distlock::{LockConfig, LockError, LockManager, WaitPolicy};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

/// Options of `distlock demo`.
#[derive(Args, Debug, Clone)]
pub(crate) struct DemoArgs {
    /// Worker tasks competing for executions.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Workflow executions to run.
    #[arg(long, default_value_t = 300)]
    executions: usize,
    /// Workers each execution is offered to (in one process; across processes every worker
    /// offers itself every execution not yet done).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Workflow templates the executions belong to.
    #[arg(long, default_value_t = 4)]
    templates: usize,
    /// Concurrent runs allowed per template.
    #[arg(long, default_value_t = 2)]
    template_limit: u32,
    /// Longest simulated work per execution, in milliseconds (each run takes 0 to this;
    /// default 4, with `--chaos` 200).
    #[arg(long)]
    work_ms: Option<u64>,
    /// Run the race in N worker processes of this binary, each with its own provider and
    /// `--workers` tasks, sharing a fenced store (server backends only).
    #[arg(long, value_name = "N")]
    processes: Option<usize>,
    /// With `--processes`: pause random workers (SIGSTOP) past the lock TTL, then resume them,
    /// and kill others (SIGKILL), replacing them, while the run goes on.
    #[arg(long, requires = "processes")]
    chaos: bool,
    /// With `--processes`: the lease TTL of every lock (default 30s; with `--chaos` 2s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// With `--processes`: give up (and fail) after this long.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    time_limit: Duration,
    /// A worker process of `--processes`: its id.
    #[arg(long, hide = true, requires_all = ["run_dir", "key_prefix"])]
    worker_id: Option<usize>,
    /// A worker process of `--processes`: the run directory.
    #[arg(long, hide = true)]
    run_dir: Option<PathBuf>,
    /// A worker process of `--processes`: the run's key prefix.
    #[arg(long, hide = true)]
    key_prefix: Option<String>,
}

impl DemoArgs {
    fn work_ms(&self) -> u64 {
        self.work_ms.unwrap_or(if self.chaos { 200 } else { 4 })
    }

    fn ttl(&self) -> Duration {
        self.ttl.unwrap_or(if self.chaos { Duration::from_secs(2) } else { Duration::from_secs(30) })
    }
}

/// What the workers observed, checked at the end.
#[derive(Default)]
struct Observed {
    /// Execution -> (worker, fencing token) of each run.
    runs: Mutex<HashMap<usize, Vec<(usize, u64)>>>,
    /// The orchestrator's "done" state.
    done: Mutex<HashSet<usize>>,
    /// Key -> fencing tokens in the order the lock was held.
    tokens: Mutex<HashMap<String, Vec<u64>>>,
    /// Executions running right now, and how often one was seen running twice.
    running: Mutex<HashSet<usize>>,
    double_runs: AtomicUsize,
    /// Runs per template right now, and the highest seen.
    per_template: Vec<AtomicUsize>,
    template_max: AtomicUsize,
    acquisitions: AtomicU64,
    busy_skips: AtomicU64,
    done_skips: AtomicU64,
    errors: Mutex<Vec<String>>,
    hold: Mutex<Vec<Duration>>,
}

impl Observed {
    fn held(&self, h: &WorkflowLockHandle) {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        self.tokens
            .lock()
            .unwrap()
            .entry(h.lock_key().to_string())
            .or_default()
            .push(h.fencing_token().get());
    }

    fn error(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }
}

/// Runs the demo: in this process, across `--processes` (the `globals` flags are passed on
/// to the worker processes), or as one of those workers.
pub(crate) async fn run(
    mut config: LockConfig,
    args: DemoArgs,
    globals: Vec<OsString>,
) -> distlock::Result<ExitCode> {
    if args.workers == 0 || args.executions == 0 || args.templates == 0 || args.template_limit == 0 {
        return Err(LockError::invalid(
            "demo sizes",
            "workers, executions, templates and template limit must be > 0",
        ));
    }
    if args.ttl.is_some() && args.processes.is_none() && args.worker_id.is_none() {
        return Err(LockError::invalid("--ttl", "applies to --processes runs only"));
    }
    if args.processes == Some(0) {
        return Err(LockError::invalid("--processes", "needs at least 1 worker process"));
    }
    // Busy template slots are retried every couple of milliseconds (executions are never
    // waited for: see `worker`).
    config.default_retry_count = 50;
    config.default_retry_delay = Duration::from_millis(2);
    if let (Some(id), Some(run_dir), Some(prefix)) = (args.worker_id, &args.run_dir, &args.key_prefix) {
        config.key_prefix = prefix.clone();
        config.default_ttl = args.ttl();
        config.validate()?;
        let spec = worker::WorkerSpec {
            id,
            run_dir: run_dir.clone(),
            tasks: args.workers,
            executions: args.executions,
            templates: args.templates,
            template_limit: args.template_limit,
            work: Duration::from_millis(args.work_ms()),
            time_limit: args.time_limit,
        };
        return worker::run(config, spec).await;
    }
    if let Some(processes) = args.processes {
        config.default_ttl = args.ttl();
        config.validate()?;
        let plan = processes::Plan {
            processes,
            chaos: args.chaos,
            tasks: args.workers,
            executions: args.executions,
            templates: args.templates,
            template_limit: args.template_limit,
            work_ms: args.work_ms(),
            ttl: args.ttl(),
            time_limit: args.time_limit,
            globals,
        };
        return processes::run(config, plan).await;
    }
    let replicas = args.replicas.clamp(1, args.workers);
    // A fresh key space per run, so runs against shared servers never meet.
    config.key_prefix = format!("distlock:demo:{:08x}:", fastrand::u32(..));
    let manager = Arc::new(LockManager::new(None, config).await?);
    let backend = manager.lock_provider().name();
    println!(
        "distlock demo on the {backend} backend: {} workers, {} executions (each offered to {replicas} workers), \
         {} templates (limit {})",
        args.workers, args.executions, args.templates, args.template_limit
    );

    let observed = Arc::new(Observed {
        per_template: (0..args.templates).map(|_| AtomicUsize::new(0)).collect(),
        ..Observed::default()
    });
    let progress = ProgressBar::new(args.executions as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} executions done")
            .expect("valid template"),
    );

    // The scheduler: every execution goes to `replicas` distinct workers.
    let mut queues = Vec::new();
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let (tx, rx) = mpsc::unbounded_channel::<usize>();
        queues.push(tx);
        let (manager, observed, progress, args) =
            (manager.clone(), observed.clone(), progress.clone(), args.clone());
        workers.push(tokio::spawn(worker(w, rx, manager, observed, progress, args)));
    }
    let started = Instant::now();
    for e in 0..args.executions {
        let mut chosen = HashSet::new();
        while chosen.len() < replicas {
            chosen.insert(fastrand::usize(..args.workers));
        }
        for w in chosen {
            queues[w].send(e).expect("worker alive");
        }
    }
    drop(queues);
    for w in workers {
        w.await.expect("worker task");
    }
    let wall = started.elapsed();
    progress.finish_and_clear();
    manager.close().await?;
    Ok(report(&observed, &args, wall))
}

async fn worker(
    id: usize,
    mut queue: mpsc::UnboundedReceiver<usize>,
    manager: Arc<LockManager>,
    observed: Arc<Observed>,
    progress: ProgressBar,
    args: DemoArgs,
) {
    let workflows = manager.workflow_lock_provider();
    while let Some(e) = queue.recv().await {
        let exec_id = format!("exec-{e}");
        let exec = match workflows.lock_workflow_execution_with(&exec_id, &WaitPolicy::NoWait).await {
            Ok(h) => h,
            Err(err) if err.is_timeout() => {
                observed.busy_skips.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(err) => {
                observed.error(format!("worker {id}: lock {exec_id}: {err}"));
                continue;
            }
        };
        let exec_held = Instant::now();
        observed.held(&exec);
        if observed.done.lock().unwrap().contains(&e) {
            observed.done_skips.fetch_add(1, Ordering::Relaxed);
        } else {
            run_once(id, e, &exec, &manager, &observed, &args).await;
            progress.inc(1);
        }
        observed.hold.lock().unwrap().push(exec_held.elapsed());
        if let Err(err) = exec.unlock().await {
            observed.error(format!("worker {id}: unlock {exec_id}: {err}"));
        }
    }
}

async fn run_once(
    worker: usize,
    e: usize,
    exec: &WorkflowLockHandle,
    manager: &LockManager,
    observed: &Observed,
    args: &DemoArgs,
) {
    let template = e % args.templates;
    let slot = match slot_for(manager, template, args.template_limit).await {
        Ok(h) => h,
        Err(err) => {
            observed.error(format!("worker {worker}: template slot of exec-{e}: {err}"));
            return;
        }
    };
    let slot_held = Instant::now();
    observed.held(&slot);
    let now_running = observed.per_template[template].fetch_add(1, Ordering::SeqCst) + 1;
    observed.template_max.fetch_max(now_running, Ordering::SeqCst);
    if !observed.running.lock().unwrap().insert(e) {
        observed.double_runs.fetch_add(1, Ordering::SeqCst);
    }

    // The work. A lost lease means stop: never finish work the lock no longer protects.
    let work = Duration::from_micros(fastrand::u64(..=args.work_ms() * 1000));
    tokio::select! {
        _ = exec.lost().cancelled() => observed.error(format!("worker {worker}: lease of exec-{e} lost")),
        _ = tokio::time::sleep(work) => {
            observed.runs.lock().unwrap().entry(e).or_default().push((worker, exec.fencing_token().get()));
            observed.done.lock().unwrap().insert(e);
        }
    }

    observed.running.lock().unwrap().remove(&e);
    observed.per_template[template].fetch_sub(1, Ordering::SeqCst);
    observed.hold.lock().unwrap().push(slot_held.elapsed());
    if let Err(err) = slot.unlock().await {
        observed.error(format!("worker {worker}: unlock template slot: {err}"));
    }
}

/// A slot of the template, waiting (up to two minutes) as a scheduler would.
async fn slot_for(
    manager: &LockManager,
    template: usize,
    limit: u32,
) -> distlock::Result<WorkflowLockHandle> {
    let workflows = manager.workflow_lock_provider();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match workflows.lock_workflow_template_slot(&format!("tpl-{template}"), limit).await {
            Err(e) if e.is_timeout() && Instant::now() < deadline => continue,
            other => return other,
        }
    }
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn report(o: &Observed, args: &DemoArgs, wall: Duration) -> ExitCode {
    let mut violations = Vec::new();
    let runs = o.runs.lock().unwrap();
    let once = (0..args.executions).filter(|e| runs.get(e).is_some_and(|r| r.len() == 1)).count();
    let twice = runs.values().filter(|r| r.len() > 1).count();
    let never = args.executions - runs.len();
    if once != args.executions {
        violations.push(format!("{twice} executions ran more than once, {never} never ran"));
    }
    let double = o.double_runs.load(Ordering::SeqCst);
    if double > 0 {
        violations.push(format!("{double} times an execution ran on two workers at once"));
    }
    let max = o.template_max.load(Ordering::SeqCst);
    if max > args.template_limit as usize {
        violations.push(format!("a template ran {max} executions at once (limit {})", args.template_limit));
    }
    let tokens = o.tokens.lock().unwrap();
    let unordered: Vec<_> =
        tokens.iter().filter(|(_, t)| t.windows(2).any(|w| w[1] <= w[0])).map(|(k, _)| k.clone()).collect();
    if !unordered.is_empty() {
        violations.push(format!(
            "fencing tokens did not strictly increase on {} keys, e.g. {}",
            unordered.len(),
            unordered[0]
        ));
    }
    let errors = o.errors.lock().unwrap();
    if !errors.is_empty() {
        violations.push(format!("{} lock operations failed, first: {}", errors.len(), errors[0]));
    }
    let mut hold = o.hold.lock().unwrap().clone();
    hold.sort_unstable();
    let ok = |b: bool| if b { "ok" } else { "VIOLATED" };

    println!(
        "  every execution ran exactly once        {once}/{}  {}",
        args.executions,
        ok(once == args.executions)
    );
    println!("  no execution ran twice at once          {double} overlaps  {}", ok(double == 0));
    println!(
        "  template limit held                     max {max} of {}  {}",
        args.template_limit,
        ok(max <= args.template_limit as usize)
    );
    println!(
        "  fencing tokens strictly increased       {} keys, {} acquisitions  {}",
        tokens.len(),
        o.acquisitions.load(Ordering::Relaxed),
        ok(unordered.is_empty())
    );
    println!("  lock operations failed                  {}  {}", errors.len(), ok(errors.is_empty()));
    println!(
        "  contention: {} offers skipped because another worker held the execution, {} because it was already done",
        o.busy_skips.load(Ordering::Relaxed),
        o.done_skips.load(Ordering::Relaxed)
    );
    println!("  hold time p50 {:?}, p99 {:?}; wall time {:?}", pct(&hold, 0.5), pct(&hold, 0.99), wall);
    verdict(&violations)
}

/// Prints PASS, or every violation and FAIL, and gives the exit code to match.
fn verdict(violations: &[String]) -> ExitCode {
    if violations.is_empty() {
        println!("PASS: 0 violations");
        ExitCode::SUCCESS
    } else {
        for v in violations {
            println!("VIOLATION: {v}");
        }
        println!("FAIL: {} violations", violations.len());
        ExitCode::FAILURE
    }
}
