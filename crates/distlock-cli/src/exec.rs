//! `distlock exec --key KEY [--ttl 30s] [--wait 10s] [--owner O] [--grace 10s] -- CMD ARGS...`:
//! runs a command while holding a lock.
//!
//! 1. Takes the lock through the workflow layer
//!    ([`WorkflowLockProvider::lock_with_options`]), waiting up to `--wait` (default: 24 h,
//!    the longest wait a lock call accepts; `0s`: one attempt). While the wait lasts longer
//!    than a second and stderr is a terminal, a spinner says which key it waits for and who
//!    holds it.
//! 2. Starts the command in a process group of its own, with `DISTLOCK_KEY`,
//!    `DISTLOCK_OWNER` and `DISTLOCK_FENCING_TOKEN` in its environment. The handle's watchdog
//!    refreshes the lease about every third of the TTL.
//! 3. SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `distlock` are passed on to the command's
//!    process group; the lock stays held until the command has ended.
//! 4. When the lease is lost (a refresh is refused, or none succeeded before the safety margin
//!    of the lease: see [`distlock::workflow`]), the process group gets SIGTERM and, if the
//!    command is still running after `--grace`, SIGKILL. Once the command has ended, whatever
//!    else is left in its process group is killed at once: nothing it started may go on
//!    working without the lock.
//! 5. Otherwise, when the command ends, the lock is released and `distlock` exits with the
//!    command's status.
//!
//! The command's process group is not the terminal's foreground group, so the command
//! should not read from the terminal (input from a pipe or file is fine); a terminal's Ctrl-C
//! reaches `distlock`, which passes it on exactly once.
//!
//! Exit status: the command's (128 + N when signal N ended it); 75 ([`EX_TEMPFAIL`]) when
//! the lock was not acquired within `--wait`; 76 ([`LEASE_LOST`]) when the lease was lost and
//! the command killed; 64 ([`EX_USAGE`]) for bad arguments or configuration; 69
//! ([`EX_UNAVAILABLE`]) when the backend failed; 127 when the command was not found, 126 when
//! it could not be started; 128 + N when signal N arrived while waiting for the lock.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::process::{ExitCode, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use distlock::workflow::{default_owner_prefix, WorkflowConfig, WorkflowLockHandle, WorkflowLockProvider};
use distlock::{LockConfig, LockError, LockInfo, LockOptions, LockProvider, LockProviderFactory, WaitPolicy};
use indicatif::ProgressBar;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::Child;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

/// Bad arguments or configuration (sysexits' `EX_USAGE`).
pub(crate) const EX_USAGE: u8 = 64;
/// The backend failed: unreachable, erroring or closed (sysexits' `EX_UNAVAILABLE`).
pub(crate) const EX_UNAVAILABLE: u8 = 69;
/// The lock was not acquired within `--wait` (sysexits' `EX_TEMPFAIL`): try again later.
pub(crate) const EX_TEMPFAIL: u8 = 75;
/// The lease was lost while the command ran; the command was killed.
pub(crate) const LEASE_LOST: u8 = 76;
/// The command could not be started (as in shells).
const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as in shells).
const NOT_FOUND: u8 = 127;

/// How long a wait lasts before the spinner shows.
const SPINNER_AFTER: Duration = Duration::from_secs(1);

/// Arguments of `distlock exec`.
#[derive(clap::Args, Debug)]
pub(crate) struct ExecArgs {
    /// The lock key.
    #[arg(long)]
    key: String,
    /// Lease TTL: how long the lock outlives `distlock` if it dies; refreshed about every
    /// third of it while the command runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// How long to wait for the lock, e.g. `10s` (`0s`: one attempt; default: 24 h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// The owner id to hold the lock as (default: host:pid:random).
    #[arg(long)]
    owner: Option<String>,
    /// After a lost lease, how long the command may take to stop after SIGTERM before it gets
    /// SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Why `exec` ends without the command's status: the exit code and what to say.
struct Stop {
    code: u8,
    message: String,
}

impl Stop {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Stop { code, message: message.into() }
    }
}

/// The exit code for a lock error: busy is 75, bad input 64, everything else the backend's
/// fault (69).
fn code_of(e: &LockError) -> u8 {
    match e {
        LockError::Timeout { .. } | LockError::Deadlock { .. } => EX_TEMPFAIL,
        LockError::InvalidArgument { .. } | LockError::Config(_) => EX_USAGE,
        _ => EX_UNAVAILABLE,
    }
}

fn stop(e: LockError) -> Stop {
    Stop::new(code_of(&e), e.to_string())
}

/// Runs `distlock exec` and says how it ended.
pub(crate) async fn run(config: LockConfig, args: ExecArgs) -> ExitCode {
    match execute(config, args).await {
        Ok(code) => ExitCode::from(code),
        Err(stopped) => report(stopped),
    }
}

/// The exit of an exec whose configuration could not be loaded (a usage error).
pub(crate) fn failed(e: LockError) -> ExitCode {
    report(stop(e))
}

fn report(Stop { code, message }: Stop) -> ExitCode {
    eprintln!("distlock exec: {message}");
    ExitCode::from(code)
}

async fn execute(config: LockConfig, args: ExecArgs) -> Result<u8, Stop> {
    let owner = args.owner.clone().unwrap_or_else(default_owner_prefix);
    let wait = match args.wait {
        None => WaitPolicy::deadline(distlock::validate::MAX_WAIT),
        Some(Duration::ZERO) => WaitPolicy::NoWait,
        Some(d) => WaitPolicy::deadline(d),
    };
    let opts = LockOptions::new(args.key.as_str(), owner.as_str()).ttl(args.ttl).wait(wait);
    // Before any connection: bad input never reaches a server.
    opts.validate().map_err(stop)?;
    let mut signals =
        Signals::new().map_err(|e| Stop::new(EX_UNAVAILABLE, format!("cannot watch for signals: {e}")))?;

    let provider = LockProviderFactory::new(None).create_lock_provider(&config).await.map_err(stop)?;
    let workflows = WorkflowLockProvider::new(
        provider.clone(),
        WorkflowConfig { ttl: args.ttl, ..config.workflow_config() },
    );
    let outcome = match acquire(&workflows, &opts, &mut signals).await {
        Ok(handle) => supervise(handle, &args, &mut signals).await,
        Err(stopped) => Err(stopped),
    };
    if let Err(e) = provider.close().await {
        eprintln!("distlock exec: closing the {} provider: {e}", provider.name());
    }
    outcome
}

/// Takes the lock, showing a spinner on a terminal once the wait passes a second; a signal
/// ends the wait (the lock call is cancel safe, so nothing is left behind).
async fn acquire(
    workflows: &WorkflowLockProvider,
    opts: &LockOptions,
    signals: &mut Signals,
) -> Result<WorkflowLockHandle, Stop> {
    let started = Instant::now();
    let locking = workflows.lock_with_options(opts);
    tokio::pin!(locking);
    let mut spinner: Option<Spinner> = None;
    let spinner_at = tokio::time::sleep(SPINNER_AFTER);
    tokio::pin!(spinner_at);
    let outcome = loop {
        tokio::select! {
            outcome = &mut locking => break outcome,
            n = signals.recv() => {
                return Err(Stop::new(128 + n as u8, format!("signal {n} while waiting for `{}`", opts.key)));
            }
            _ = &mut spinner_at, if spinner.is_none() && std::io::stderr().is_terminal() => {
                spinner = Some(Spinner::start(workflows.provider().clone(), opts.key.clone(), started));
            }
        }
    };
    drop(spinner);
    outcome.map_err(|e| match e {
        LockError::Timeout { .. } => Stop::new(EX_TEMPFAIL, format!("not acquired: {e}")),
        e => stop(e),
    })
}

/// Runs the command under the held lock until it ends or the lease is lost.
async fn supervise(handle: WorkflowLockHandle, args: &ExecArgs, signals: &mut Signals) -> Result<u8, Stop> {
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .env("DISTLOCK_KEY", handle.lock_key())
        .env("DISTLOCK_OWNER", handle.owner())
        .env("DISTLOCK_FENCING_TOKEN", handle.fencing_token().to_string())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            release(handle).await;
            let code = if e.kind() == std::io::ErrorKind::NotFound { NOT_FOUND } else { CANNOT_EXECUTE };
            return Err(Stop::new(code, format!("cannot run {}: {e}", program.to_string_lossy())));
        }
    };
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    loop {
        tokio::select! {
            biased;
            status = child.wait() => {
                let status = status.map_err(|e| Stop::new(EX_UNAVAILABLE, format!("waiting for the command: {e}")))?;
                release(handle).await;
                return Ok(status_code(status));
            }
            _ = handle.lost().cancelled() => {
                eprintln!(
                    "distlock exec: the lease on `{}` was lost; stopping the command (SIGTERM)",
                    handle.lock_key()
                );
                stop_group(&mut child, group, args.grace).await;
                // Owner-checked: removes nothing but this process's hold, if any is left.
                release(handle).await;
                return Err(Stop::new(LEASE_LOST, "the command was stopped because the lease was lost"));
            }
            n = signals.recv() => {
                if let (Some(group), Some(sig)) = (group, Signal::from_named_raw(n)) {
                    let _ = kill_process_group(group, sig);
                }
            }
        }
    }
}

/// SIGTERM to the group; SIGKILL to the command if it outlives `grace`; then SIGKILL to
/// whatever is left of the group.
async fn stop_group(child: &mut Child, group: Option<Pid>, grace: Duration) {
    let Some(group) = group else {
        // Already reaped: nothing of it runs under this group id any more.
        return;
    };
    let _ = kill_process_group(group, Signal::TERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        eprintln!(
            "distlock exec: the command still runs {} after SIGTERM; sending SIGKILL",
            humantime::format_duration(grace)
        );
        let _ = kill_process_group(group, Signal::KILL);
        let _ = child.wait().await;
    }
    let _ = kill_process_group(group, Signal::KILL);
}

/// Releases the lock; a failure is reported but changes nothing about the exit status (the
/// lease then ends with its TTL).
async fn release(handle: WorkflowLockHandle) {
    let key = handle.lock_key().to_string();
    match handle.unlock().await {
        Ok(())
        | Err(LockError::NotHeld { .. } | LockError::NotOwner { .. } | LockError::LeaseLost { .. }) => {}
        Err(e) => eprintln!("distlock exec: releasing `{key}`: {e} (the lease ends with its TTL)"),
    }
}

/// A shell's view of an exit status: the code, or 128 + the signal that ended the process.
fn status_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => EX_UNAVAILABLE,
    }
}

/// The signals passed on to the command.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The number of the next signal that arrives.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => SignalKind::interrupt().as_raw_value(),
            _ = self.terminate.recv() => SignalKind::terminate().as_raw_value(),
            _ = self.hangup.recv() => SignalKind::hangup().as_raw_value(),
            _ = self.quit.recv() => SignalKind::quit().as_raw_value(),
        }
    }
}

/// The spinner on stderr and the task that looks up the holder once a second.
struct Spinner {
    bar: ProgressBar,
    lookup: tokio::task::JoinHandle<()>,
}

impl Spinner {
    fn start(provider: Arc<dyn LockProvider>, key: Arc<str>, started: Instant) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        let lookup = tokio::spawn({
            let bar = bar.clone();
            async move {
                loop {
                    let holder = provider.is_locked(&key).await;
                    bar.set_message(waiting_message(
                        &key,
                        holder.as_ref().ok().and_then(Option::as_ref),
                        started.elapsed(),
                    ));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
        Spinner { bar, lookup }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.lookup.abort();
        self.bar.finish_and_clear();
    }
}

/// What the spinner says: the key, its holder when known, and how long the wait has lasted.
fn waiting_message(key: &str, holder: Option<&LockInfo>, waited: Duration) -> String {
    let waited = waited.as_secs();
    match holder {
        Some(h) => format!(
            "waiting for `{key}`, held by {} (token {}) for {:.0}s; waited {waited}s",
            h.owner,
            h.token,
            h.held_for.as_secs_f64()
        ),
        None => format!("waiting for `{key}`; waited {waited}s"),
    }
}

/// Exits with [`EX_USAGE`] when the command line that failed to parse asked for `exec`;
/// other commands keep clap's usual exit status. Help and version requests exit 0.
pub(crate) fn exit_on_parse_error(e: clap::Error) -> ! {
    if e.use_stderr() && asks_for_exec(std::env::args_os().skip(1)) {
        let _ = e.print();
        std::process::exit(EX_USAGE.into());
    }
    e.exit()
}

/// Whether the first command word of `args` (after the global options) is `exec`.
fn asks_for_exec(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            return false;
        }
        if ["--config", "--provider", "--log"].contains(&arg.as_ref()) {
            args.next();
        } else if !arg.starts_with('-') {
            return arg == "exec";
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<ExecArgs, clap::Error> {
        match Cli::try_parse_from(args)?.command {
            Command::Exec(args) => Ok(args),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_command_follows_the_double_dash_with_its_own_options() {
        let a = parse(&["distlock", "exec", "--key", "k", "--wait", "1m 30s", "--", "ls", "-l", "--all"])
            .unwrap();
        assert_eq!(a.key, "k");
        assert_eq!(a.command, ["ls", "-l", "--all"]);
        assert_eq!(
            (a.ttl, a.wait, a.grace),
            (Duration::from_secs(30), Some(Duration::from_secs(90)), Duration::from_secs(10))
        );
        assert_eq!(a.owner, None);
        assert!(parse(&["distlock", "exec", "--key", "k"]).is_err(), "a command is required");
        assert!(parse(&["distlock", "exec", "--key", "k", "ls"]).is_err(), "the command comes after --");
        assert!(parse(&["distlock", "exec", "--", "ls"]).is_err(), "a key is required");
    }

    #[test]
    fn only_exec_parse_errors_are_usage_errors() {
        let words = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        assert!(asks_for_exec(words("exec --key")));
        assert!(asks_for_exec(words("--provider redis --log debug exec --ttl x")));
        assert!(asks_for_exec(words("--config=a.toml exec")));
        assert!(!asks_for_exec(words("--provider exec inspect")));
        assert!(!asks_for_exec(words("inspect exec")));
        assert!(!asks_for_exec(words("-- exec")));
    }

    #[test]
    fn lock_errors_map_to_sysexits_codes() {
        let timeout = LockError::Timeout { key: "k".into(), holder: None, waited: Duration::ZERO };
        assert_eq!(code_of(&timeout), EX_TEMPFAIL);
        assert_eq!(code_of(&LockError::invalid("ttl", "zero")), EX_USAGE);
        assert_eq!(code_of(&LockError::Config("enable feature `x`".into())), EX_USAGE);
        assert_eq!(code_of(&LockError::unavailable("redis", "connection refused")), EX_UNAVAILABLE);
        assert_eq!(code_of(&LockError::backend("mysql", "syntax")), EX_UNAVAILABLE);
        assert_eq!(code_of(&LockError::Closed), EX_UNAVAILABLE);
    }

    #[test]
    fn spinner_names_the_holder_when_known() {
        let info = LockInfo {
            key: "jobs/a".into(),
            owner: "host:7:ab".into(),
            token: distlock::FencingToken(12),
            remaining_ttl: Duration::from_secs(20),
            depth: 1,
            held_for: Duration::from_secs(42),
        };
        assert_eq!(
            waiting_message("jobs/a", Some(&info), Duration::from_millis(3500)),
            "waiting for `jobs/a`, held by host:7:ab (token 12) for 42s; waited 3s"
        );
        assert_eq!(
            waiting_message("jobs/a", None, Duration::from_secs(2)),
            "waiting for `jobs/a`; waited 2s"
        );
    }
}
