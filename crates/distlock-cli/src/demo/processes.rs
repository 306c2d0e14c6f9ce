//! `distlock demo --processes N [--chaos]`: the demo's race across N worker processes of this
//! binary, each with its own provider, sharing a [fenced store](crate::fenced_store); the
//! parent then checks the same guarantees across processes.
//!
//! The parent makes a run directory (the store and one [journal] per
//! worker), starts the workers (see [`worker`](mod@super::worker)) with the same configuration
//! (its `--config`/`--provider` flags and the environment they inherit), shows progress from
//! the store, injects faults with `--chaos` (see [`chaos`]), and once every
//! execution is done (or the time limit passed) checks:
//!
//! - every execution has exactly one accepted completion in the store;
//! - the accepted writes of different holders of one execution never interleave;
//! - per key, no lock was granted with a higher fencing token before a lower one was asked
//!   for (tokens strictly increase in the order the lock was held);
//! - no execution lock was held by two workers at once and no template ran more executions
//!   at once than its limit, among holds whose lease was not lost and whose worker was not
//!   paused meanwhile (a paused worker's lease runs out by design);
//! - no lock operation failed, no worker failed, and, without `--chaos`, no lease was lost.
//!
//! With `--chaos` it also counts the stale writes the store rejected and prints what each
//! fault caused.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use distlock::{LockConfig, LockError, LockManager, LockProviderType};
use indicatif::{ProgressBar, ProgressStyle};

use super::chaos::{self, Action, Chaos, Todo};
use super::journal::{self, Event, Held};
use super::worker::store_dir;
use crate::fenced_store::{FencedStore, Kind, Record};

/// The settings of a run across processes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Worker processes at a time.
    pub(crate) processes: usize,
    /// Inject faults.
    pub(crate) chaos: bool,
    /// Tasks per worker process.
    pub(crate) tasks: usize,
    /// Executions.
    pub(crate) executions: usize,
    /// Templates.
    pub(crate) templates: usize,
    /// Runs each template admits at once.
    pub(crate) template_limit: u32,
    /// Longest work per run, in milliseconds.
    pub(crate) work_ms: u64,
    /// Lease TTL of every lock.
    pub(crate) ttl: Duration,
    /// When to give up.
    pub(crate) time_limit: Duration,
    /// The global flags (`--config`, `--provider`, `--log`) to start the workers with.
    pub(crate) globals: Vec<OsString>,
}

/// A worker process.
struct Worker {
    id: usize,
    child: Child,
    killed: bool,
    exit: Option<ExitStatus>,
}

/// Refuses what cannot work across processes, before anything is started.
pub(crate) fn check(config: &LockConfig, plan: &Plan) -> distlock::Result<()> {
    if config.provider == LockProviderType::Memory {
        return Err(LockError::invalid(
            "--processes",
            "the memory backend keeps its locks inside one process, so processes cannot share them; \
             use a server backend (--provider mysql, postgres, redis or etcd)",
        ));
    }
    if plan.processes < 2 && plan.chaos {
        return Err(LockError::invalid("--processes", "--chaos needs at least 2 worker processes"));
    }
    Ok(())
}

pub(crate) async fn run(mut config: LockConfig, plan: Plan) -> distlock::Result<ExitCode> {
    check(&config, &plan)?;
    // An unreachable backend fails here, once, rather than in every worker.
    let probe = LockManager::new(None, config.clone()).await?;
    let health = probe.lock_provider().health().await;
    probe.close().await?;
    health?;
    let prefix = format!("distlock:demo:{:08x}:", fastrand::u32(..));
    config.key_prefix = prefix.clone();
    let run_dir =
        std::env::temp_dir().join(format!("distlock-demo-{}-{:08x}", std::process::id(), fastrand::u32(..)));
    let io = |what: &str, e: std::io::Error| LockError::Config(format!("{what}: {e}"));
    let store = FencedStore::open(&store_dir(&run_dir)).map_err(|e| io("creating the run directory", e))?;
    println!(
        "distlock demo on the {} backend: {} worker processes of {} tasks, {} executions, {} templates (limit {}), \
         TTL {:?}{}",
        config.provider.as_str(),
        plan.processes,
        plan.tasks,
        plan.executions,
        plan.templates,
        plan.template_limit,
        plan.ttl,
        if plan.chaos { ", with chaos: SIGSTOP past the TTL and SIGKILL" } else { "" }
    );
    println!("  run directory (fenced store, journals): {}", run_dir.display());

    let progress = ProgressBar::new(plan.executions as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} executions done")
            .expect("valid template"),
    );
    let spawn = |id: usize| start_worker(&plan, &prefix, &run_dir, id);
    let mut workers = Vec::new();
    for id in 0..plan.processes {
        workers.push(spawn(id).map_err(|e| io("starting a worker", e))?);
    }
    let mut chaos = plan.chaos.then(|| Chaos::new(plan.ttl));
    let started = Instant::now();
    let started_us = journal::now_us();
    let deadline = started + plan.time_limit;
    let mut timed_out = false;
    loop {
        let done = (0..plan.executions).filter(|&e| store.is_done(e)).count();
        progress.set_position(done as u64);
        for w in workers.iter_mut().filter(|w| w.exit.is_none()) {
            w.exit = w.child.try_wait().ok().flatten();
        }
        if done == plan.executions {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        let running: Vec<(usize, u32)> =
            workers.iter().filter(|w| w.exit.is_none() && !w.killed).map(|w| (w.id, w.child.id())).collect();
        if running.is_empty() {
            break;
        }
        if let Some(chaos) = chaos.as_mut() {
            if let Todo::Replace(killed) = chaos.tick(&running) {
                let id = workers.len();
                if let Some(w) = workers.iter_mut().find(|w| w.id == killed) {
                    w.killed = true;
                }
                workers.push(spawn(id).map_err(|e| io("starting a worker", e))?);
                chaos.replaced(id);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended_us = journal::now_us();
    if let Some(chaos) = chaos.as_mut() {
        chaos.resume_all();
    }
    // Done: the workers see it in the store and end. Out of time: they are stopped.
    let grace = Instant::now() + if timed_out { Duration::ZERO } else { plan.ttl + Duration::from_secs(30) };
    for w in &mut workers {
        while w.exit.is_none() {
            w.exit = w.child.try_wait().ok().flatten();
            if w.exit.is_none() && Instant::now() >= grace {
                let _ = w.child.kill();
                w.killed = true;
                w.exit = w.child.wait().ok();
            }
            if w.exit.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    progress.finish_and_clear();

    let records = store_records(&store, plan.executions).map_err(|e| io("reading the store", e))?;
    let journals: BTreeMap<usize, Vec<Event>> =
        workers.iter().map(|w| (w.id, journal::read(&run_dir, w.id))).collect();
    let mut errors = Vec::new();
    for w in &workers {
        if !w.killed && !w.exit.is_some_and(|s| s.success()) {
            let stderr = std::fs::read_to_string(stderr_path(&run_dir, w.id)).unwrap_or_default();
            let exit = w.exit.map_or("no exit status".to_string(), |s| s.to_string());
            errors.push(format!("worker {} ended with {exit}: {}", w.id, stderr.trim()));
        }
    }
    if timed_out {
        errors.push(format!("the time limit of {:?} passed", plan.time_limit));
    }
    let faults = chaos.map(|c| c.faults).unwrap_or_default();
    let code = report(&plan, &records, &journals, &faults, errors, (started_us, ended_us));
    if code == ExitCode::SUCCESS {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        println!("  the run directory is kept for inspection: {}", run_dir.display());
    }
    Ok(code)
}

fn stderr_path(run_dir: &Path, id: usize) -> PathBuf {
    run_dir.join(format!("worker-{id}.stderr"))
}

/// Starts worker `id` as this binary's hidden `demo --worker-id` mode.
fn start_worker(plan: &Plan, prefix: &str, run_dir: &Path, id: usize) -> std::io::Result<Worker> {
    let stderr = File::create(stderr_path(run_dir, id))?;
    let child = Command::new(std::env::current_exe()?)
        .args(&plan.globals)
        .arg("demo")
        .args(["--worker-id", &id.to_string(), "--key-prefix", prefix])
        .arg("--run-dir")
        .arg(run_dir)
        .args(["--workers", &plan.tasks.to_string(), "--executions", &plan.executions.to_string()])
        .args([
            "--templates",
            &plan.templates.to_string(),
            "--template-limit",
            &plan.template_limit.to_string(),
        ])
        .args(["--work-ms", &plan.work_ms.to_string()])
        .args(["--ttl", &humantime::format_duration(plan.ttl).to_string()])
        .args(["--time-limit", &humantime::format_duration(plan.time_limit).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    Ok(Worker { id, child, killed: false, exit: None })
}

/// Every record of the store, with its execution.
fn store_records(store: &FencedStore, executions: usize) -> std::io::Result<Vec<(usize, Record)>> {
    let mut all = Vec::new();
    for e in 0..executions {
        all.extend(store.history(e)?.into_iter().map(|r| (e, r)));
    }
    Ok(all)
}

/// Executions with no, one, and more than one accepted completion.
fn completions(records: &[(usize, Record)], executions: usize) -> (usize, usize, usize) {
    let mut per = vec![0usize; executions];
    for (e, r) in records {
        if r.accepted && r.kind == Kind::Complete {
            per[*e] += 1;
        }
    }
    (
        per.iter().filter(|&&n| n == 0).count(),
        per.iter().filter(|&&n| n == 1).count(),
        per.iter().filter(|&&n| n > 1).count(),
    )
}

/// Executions whose accepted writes from different tokens interleave (a holder wrote after
/// the next holder had started writing).
fn interleaved_runs(records: &[(usize, Record)]) -> usize {
    let mut runs: BTreeMap<(usize, u64), (u64, u64)> = BTreeMap::new();
    for (e, r) in records.iter().filter(|(_, r)| r.accepted) {
        let run = runs.entry((*e, r.token)).or_insert((r.at_us, r.at_us));
        run.0 = run.0.min(r.at_us);
        run.1 = run.1.max(r.at_us);
    }
    let mut bad = std::collections::HashSet::new();
    let runs: Vec<_> = runs.into_iter().collect();
    for pair in runs.windows(2) {
        let (((e1, _), (_, last)), ((e2, _), (first, _))) = (pair[0], pair[1]);
        if e1 == e2 && last > first {
            bad.insert(e1);
        }
    }
    bad.len()
}

/// Keys on which a lock was granted with a higher token before a lower one was asked for,
/// or two grants had one token.
fn unordered_keys(held: &[&Held]) -> Vec<String> {
    let mut per_key: HashMap<&str, Vec<&Held>> = HashMap::new();
    for h in held {
        per_key.entry(&h.key).or_default().push(h);
    }
    let mut bad = Vec::new();
    for (key, mut grants) in per_key {
        grants.sort_by_key(|h| h.token);
        let mut latest_ask = 0;
        let mut previous = None;
        for h in grants {
            if previous == Some(h.token) || h.got_us < latest_ask {
                bad.push(key.to_string());
                break;
            }
            latest_ask = latest_ask.max(h.asked_us);
            previous = Some(h.token);
        }
    }
    bad.sort();
    bad
}

/// The most holds of one group (a key, or a template's slots) at one instant, and where.
fn most_at_once<'a>(holds: impl Iterator<Item = (String, &'a Held)>) -> BTreeMap<String, usize> {
    let mut edges: BTreeMap<String, Vec<(u64, i32)>> = BTreeMap::new();
    for (group, h) in holds {
        let e = edges.entry(group).or_default();
        e.push((h.got_us, 1));
        e.push((h.end_us, -1));
    }
    edges
        .into_iter()
        .map(|(group, mut e)| {
            // Ends before starts at the same instant: a hand-over is not an overlap.
            e.sort();
            let (mut now, mut max) = (0i32, 0i32);
            for (_, d) in e {
                now += d;
                max = max.max(now);
            }
            (group, max as usize)
        })
        .collect()
}

fn report(
    plan: &Plan,
    records: &[(usize, Record)],
    journals: &BTreeMap<usize, Vec<Event>>,
    faults: &[chaos::Fault],
    mut errors: Vec<String>,
    (started_us, ended_us): (u64, u64),
) -> ExitCode {
    let wall = Duration::from_micros(ended_us.saturating_sub(started_us));
    let pauses: Vec<(usize, u64, u64)> = faults
        .iter()
        .filter_map(|f| match f.action {
            Action::Pause { resumed_us } => Some((f.worker, f.at_us, resumed_us.unwrap_or(u64::MAX))),
            Action::Kill { .. } => None,
        })
        .collect();
    let paused_during = |worker: usize, h: &Held| {
        pauses.iter().any(|&(w, from, to)| w == worker && h.got_us < to && h.end_us > from)
    };
    let mut held_all = Vec::new();
    let mut trusted = Vec::new();
    let (mut lost, mut interrupted, mut busy, mut done_skips) = (0, 0, 0u64, 0u64);
    for (&worker, events) in journals {
        for e in events {
            match e {
                Event::Held(h) => {
                    held_all.push(h);
                    if h.lost {
                        lost += 1;
                        if !plan.chaos {
                            errors.push(format!("worker {worker}: lease of {} lost", h.key));
                        }
                    } else if paused_during(worker, h) {
                        interrupted += 1;
                    } else {
                        trusted.push(h);
                    }
                }
                Event::Error(what) => errors.push(what.clone()),
                Event::Counts { busy: b, done: d } => {
                    busy += b;
                    done_skips += d;
                }
            }
        }
    }

    let (never, once, twice) = completions(records, plan.executions);
    let interleaved = interleaved_runs(records);
    let unordered = unordered_keys(&held_all);
    let exec_overlaps: usize =
        most_at_once(trusted.iter().filter(|h| h.template.is_none()).map(|h| (h.key.clone(), *h)))
            .values()
            .filter(|&&n| n > 1)
            .count();
    let template_max =
        most_at_once(trusted.iter().filter_map(|h| h.template.map(|t| (format!("tpl-{t}"), *h))))
            .values()
            .copied()
            .max()
            .unwrap_or(0);
    let rejected_claims = records.iter().filter(|(_, r)| !r.accepted && r.kind == Kind::Claim).count();
    let rejected_results = records.iter().filter(|(_, r)| !r.accepted && r.kind == Kind::Complete).count();

    let mut violations = Vec::new();
    if once != plan.executions {
        violations.push(format!("{twice} executions completed more than once, {never} never"));
    }
    if interleaved > 0 {
        violations.push(format!("{interleaved} executions had two holders' writes interleaved in the store"));
    }
    if exec_overlaps > 0 {
        violations.push(format!("{exec_overlaps} executions were held by two workers at once"));
    }
    if template_max > plan.template_limit as usize {
        violations.push(format!(
            "a template ran {template_max} executions at once (limit {})",
            plan.template_limit
        ));
    }
    if !unordered.is_empty() {
        violations.push(format!(
            "fencing tokens did not strictly increase on {} keys, e.g. {}",
            unordered.len(),
            unordered[0]
        ));
    }
    if !errors.is_empty() {
        violations.push(format!("{} lock operations or workers failed, first: {}", errors.len(), errors[0]));
    }
    let ok = |b: bool| if b { "ok" } else { "VIOLATED" };

    if plan.chaos {
        println!("  faults:");
        for (i, f) in faults.iter().enumerate() {
            let since_us = faults[..i].iter().rfind(|p| p.worker == f.worker).map_or(0, |p| p.at_us);
            let until_us =
                faults[i + 1..].iter().find(|n| n.worker == f.worker).map_or(u64::MAX, |n| n.at_us);
            let worker_holds: Vec<Held> = journals
                .get(&f.worker)
                .map(|ev| {
                    ev.iter()
                        .filter_map(|e| if let Event::Held(h) = e { Some(h.clone()) } else { None })
                        .collect()
                })
                .unwrap_or_default();
            let fx = chaos::effect(f, (since_us, until_us), records, &worker_holds);
            let at = f.at_us.saturating_sub(started_us);
            let what = match f.action {
                Action::Pause { resumed_us } => format!(
                    "SIGSTOP, SIGCONT after {:.1}s{}: {} locks lost, {} stale writes rejected by fencing, ",
                    resumed_us.map_or(0.0, |r| r.saturating_sub(f.at_us) as f64 / 1e6),
                    if resumed_us.is_some_and(|r| r >= ended_us) { " (at the end of the run)" } else { "" },
                    fx.locks_lost,
                    fx.rejected,
                ),
                Action::Kill { replacement } => format!(
                    "SIGKILL, {}: ",
                    replacement
                        .map_or("no replacement needed".to_string(), |r| format!("replaced by worker {r}"))
                ),
            };
            println!(
                "    #{:<2} +{:>5.1}s worker {} (pid {}): {what}{} executions taken over",
                i + 1,
                at as f64 / 1e6,
                f.worker,
                f.pid,
                fx.taken_over
            );
        }
    }
    println!(
        "  every execution completed exactly once  {once}/{} in the fenced store  {}",
        plan.executions,
        ok(once == plan.executions)
    );
    println!("  no two holders' writes interleaved      {interleaved} executions  {}", ok(interleaved == 0));
    println!(
        "  no execution held twice at once         {exec_overlaps} overlaps  {}",
        ok(exec_overlaps == 0)
    );
    println!(
        "  template limit held                     max {template_max} of {}  {}",
        plan.template_limit,
        ok(template_max <= plan.template_limit as usize)
    );
    println!(
        "  fencing tokens strictly increased       {} acquisitions  {}",
        held_all.len(),
        ok(unordered.is_empty())
    );
    println!("  lock operations and workers failed      {}  {}", errors.len(), ok(errors.is_empty()));
    if plan.chaos {
        println!(
            "  chaos: {} faults ({} pauses, {} kills); {lost} leases lost, {interrupted} holds spanned a pause \
             (left out of the overlap and limit checks)",
            faults.len(),
            pauses.len(),
            faults.len() - pauses.len()
        );
        let rejected = rejected_claims + rejected_results;
        if rejected > 0 {
            println!(
                "  stale writes rejected by fencing        {rejected} ({rejected_claims} claims, {rejected_results} results)"
            );
        } else {
            println!("  stale writes rejected by fencing        none in this run: no paused holder wrote after its lease was taken over");
        }
    }
    println!(
        "  contention: {busy} offers skipped because another worker held the execution, {done_skips} because it was \
         already done (workers that ended normally)"
    );
    println!("  wall time {wall:?}");
    super::verdict(&violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(key: &str, token: u64, asked_us: u64, got_us: u64, end_us: u64) -> Held {
        Held { key: key.into(), template: None, token, asked_us, got_us, end_us, lost: false }
    }

    fn record(token: u64, kind: Kind, at_us: u64, accepted: bool) -> Record {
        Record { token, kind, writer: "w".into(), at_us, accepted }
    }

    #[test]
    fn a_higher_token_granted_before_a_lower_one_was_asked_for_is_unordered() {
        let ordered = [held("a", 1, 0, 1, 5), held("a", 2, 2, 6, 9), held("b", 1, 50, 60, 70)];
        assert!(unordered_keys(&ordered.iter().collect::<Vec<_>>()).is_empty());
        // Asked concurrently, granted in either order: the tokens cannot tell.
        let concurrent = [held("a", 2, 0, 3, 5), held("a", 1, 1, 2, 3)];
        assert!(unordered_keys(&concurrent.iter().collect::<Vec<_>>()).is_empty());
        let reversed = [held("a", 2, 0, 1, 5), held("a", 1, 6, 7, 9)];
        assert_eq!(unordered_keys(&reversed.iter().collect::<Vec<_>>()), ["a"]);
        let reused = [held("a", 1, 0, 1, 5), held("a", 1, 6, 7, 9)];
        assert_eq!(unordered_keys(&reused.iter().collect::<Vec<_>>()), ["a"]);
    }

    #[test]
    fn holds_that_meet_do_not_overlap_holds_that_cross_do() {
        let a = [held("a", 1, 0, 0, 5), held("a", 2, 0, 5, 9), held("b", 1, 0, 0, 9), held("b", 2, 0, 8, 10)];
        let most = most_at_once(a.iter().map(|h| (h.key.clone(), h)));
        assert_eq!(most["a"], 1);
        assert_eq!(most["b"], 2);
    }

    #[test]
    fn the_store_shows_completions_and_interleaved_holders() {
        let records = vec![
            (0, record(1, Kind::Claim, 1, true)),
            (0, record(1, Kind::Complete, 2, true)),
            (1, record(3, Kind::Claim, 3, true)),
            (1, record(2, Kind::Complete, 4, false)),
            (1, record(3, Kind::Complete, 5, true)),
            (1, record(4, Kind::Complete, 6, true)),
        ];
        assert_eq!(completions(&records, 3), (1, 1, 1));
        assert_eq!(interleaved_runs(&records), 0);
        let interleaved = vec![
            (0, record(1, Kind::Claim, 1, true)),
            (0, record(2, Kind::Claim, 2, true)),
            (0, record(1, Kind::Complete, 3, true)),
        ];
        assert_eq!(interleaved_runs(&interleaved), 1);
    }
}
