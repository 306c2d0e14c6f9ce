//! `distlock`: the demo orchestrator and the operator's tools.
//!
//! - `distlock demo`: workers race to run workflow executions and the run checks, at the end,
//!   that every lock guarantee held (see [`demo`]).
//! - `distlock inspect [PREFIX] [--older-than 5m] [--waiters]`: the held locks, with holder,
//!   token, TTL left and how long they have been held; only those held longer than the given
//!   time; with `--waiters`, also the published waits and the holder each waits for.
//! - `distlock release KEY --owner OWNER`: force-release a lock as its owner.
//! - `distlock health`: probe the backend.
//! - `distlock deadlocks [PREFIX]`: who waits for whom, and the cycles among them.
//! - `distlock serve [--listen 127.0.0.1:9464]`: `/metrics` (Prometheus), `/healthz`, `/locks`
//!   (JSON) and a live page of held locks, waits and deadlocks over HTTP, until Ctrl-C or
//!   SIGTERM (see [`serve`]); `--hold KEY:OWNER` takes and keeps locks, for demos and checks.
//! - `distlock top [PREFIX] [--once]`: the same view in the terminal, redrawn every second
//!   (see [`top`]).
//! - `distlock exec --key KEY [--ttl 30s] [--wait 10s] -- CMD ARGS...`: run a command while
//!   holding a lock, refreshed as long as it runs; the command is stopped when the lease is
//!   lost (see [`exec`] for its exit statuses).
//! - `distlock bench [--workloads uncontended,distinct,hot] [--duration 5s] [--json]`: the
//!   standard lock workloads against the configured backend: throughput, acquire and hand-over
//!   percentiles (see [`bench`](mod@bench)).
//!
//! The backends built in are memory, MySQL, PostgreSQL and Redis, plus etcd with feature `etcd` (off by
//! default: etcd-client's build needs `protoc`); a configuration naming a backend the binary
//! lacks fails with the command that builds it in.
//!
//! Every command uses the memory backend unless `--config distlock.toml`, `DISTLOCK_*`
//! variables (e.g. `DISTLOCK_PROVIDER=mysql DISTLOCK_MYSQL__URL=mysql://...`) or `--provider`
//! say otherwise.

mod bench;
mod demo;
mod exec;
mod fenced_store;
mod progress;
mod serve;
mod top;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use distlock::{LockConfig, LockInfo, LockManager, LockProviderType};

#[derive(Parser, Debug)]
#[command(name = "distlock", version, about = "Distributed locks: demo, inspection and tools")]
struct Cli {
    /// TOML configuration file (also read: DISTLOCK_* environment variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Backend to use, overriding the configuration: memory, mysql, postgres, redis, etcd (etcd
    /// only in a binary built with `--features etcd`).
    #[arg(long, global = true, value_parser = parse_provider)]
    provider: Option<LockProviderType>,
    /// Log lock operations (`RUST_LOG` syntax, e.g. `distlock=debug,lock_core=debug`).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate an orchestrator and check every lock guarantee end to end.
    Demo(demo::DemoArgs),
    /// List held locks under a key prefix.
    Inspect {
        /// Key prefix (empty: everything).
        #[arg(default_value = "")]
        prefix: String,
        /// Only locks held longer than this, e.g. `90s`, `5m`, `1h 30m` (the configuration's
        /// duration syntax).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Also list the published waits under the prefix: who waits for which key, for how
        /// long, and who holds it.
        #[arg(long)]
        waiters: bool,
    },
    /// Force-release a lock held by OWNER.
    Release {
        /// The lock key.
        key: String,
        /// The holder to release it as.
        #[arg(long)]
        owner: String,
    },
    /// Probe the backend.
    Health,
    /// Show the wait-for graph under a key prefix and any deadlock in it (exit status 1 when
    /// there is one).
    Deadlocks {
        /// Key prefix (empty: everything).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Serve /metrics, /healthz, /locks (JSON) and a live page of the locks over HTTP.
    Serve(serve::ServeArgs),
    /// Live terminal view of held locks, waits, deadlocks and contention.
    Top(top::TopArgs),
    /// Run a command while holding a lock (exit 75: not acquired in time; 76: lease lost).
    Exec(exec::ExecArgs),
    /// Measure the backend: uncontended, distinct-key and hot-key lock cycles.
    Bench(bench::BenchArgs),
}

fn parse_provider(s: &str) -> Result<LockProviderType, String> {
    match s {
        "memory" => Ok(LockProviderType::Memory),
        "mysql" => Ok(LockProviderType::Mysql),
        "postgres" => Ok(LockProviderType::Postgres),
        "redis" => Ok(LockProviderType::Redis),
        "etcd" => Ok(LockProviderType::Etcd),
        other => Err(format!("unknown provider `{other}` (memory, mysql, postgres, redis, etcd)")),
    }
}

/// The memory backend, overridden by the file (if given), `DISTLOCK_*` variables and then
/// `--provider`.
fn config(cli: &Cli) -> distlock::Result<LockConfig> {
    let mut config = LockConfig::load_over(LockConfig::memory(), cli.config.as_deref())?;
    if let Some(p) = cli.provider {
        config.provider = p;
        config.validate()?;
    }
    if !built_in(config.provider) {
        return Err(not_built_in(config.provider));
    }
    Ok(config)
}

/// Whether this binary was built with the backend `kind`. etcd is off by default (its client's
/// build needs `protoc`); a backend this list does not name is left to the facade, which
/// names the feature to enable.
fn built_in(kind: LockProviderType) -> bool {
    match kind {
        LockProviderType::Mysql => cfg!(feature = "mysql"),
        LockProviderType::Postgres => cfg!(feature = "postgres"),
        LockProviderType::Redis => cfg!(feature = "redis"),
        LockProviderType::Etcd => cfg!(feature = "etcd"),
        _ => true,
    }
}

/// The error for a backend this binary was built without: the command that builds it in.
fn not_built_in(kind: LockProviderType) -> distlock::LockError {
    let name = kind.as_str();
    let mut msg = format!(
        "this distlock binary was built without the {name} backend; run it with \
         `cargo run --features {name} --bin distlock -- ...` (installed: \
         `cargo install distlock-cli --features {name}`)"
    );
    if kind == LockProviderType::Etcd {
        msg.push_str(
            " (etcd-client's build compiles etcd's protobuf files and needs protoc: \
             `apt-get install protobuf-compiler`, or set PROTOC to a protoc binary)",
        );
    }
    distlock::LockError::Config(msg)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM; the handlers are installed when this is called.
pub(crate) fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| exec::exit_on_parse_error(e));
    if let Some(filter) = &cli.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("distlock: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> distlock::Result<ExitCode> {
    let config = match config(&cli) {
        Err(e) if matches!(cli.command, Command::Exec(_)) => return Ok(exec::failed(e)),
        config => config?,
    };
    let waiting = match &cli.command {
        Command::Inspect { .. } => Some("reading the locks"),
        Command::Release { .. } => Some("releasing the lock"),
        Command::Deadlocks { .. } => Some("reading the waits"),
        Command::Health => Some("probing the backend"),
        // These show their own progress, or run until stopped.
        Command::Demo(_) | Command::Serve(_) | Command::Top(_) | Command::Exec(_) | Command::Bench(_) => None,
    };
    let globals = globals(&cli);
    let work = command(config, cli.command, globals);
    match waiting {
        Some(what) => progress::while_waiting(what, work).await,
        None => work.await,
    }
}

/// The global flags given, to start another `distlock` process with the same configuration.
fn globals(cli: &Cli) -> Vec<std::ffi::OsString> {
    let mut flags = Vec::new();
    if let Some(path) = &cli.config {
        flags.extend(["--config".into(), path.clone().into_os_string()]);
    }
    if let Some(provider) = cli.provider {
        flags.extend(["--provider".into(), provider.as_str().into()]);
    }
    if let Some(filter) = &cli.log {
        flags.extend(["--log".into(), filter.into()]);
    }
    flags
}

/// Runs one command.
async fn command(
    config: LockConfig,
    command: Command,
    globals: Vec<std::ffi::OsString>,
) -> distlock::Result<ExitCode> {
    match command {
        Command::Demo(args) => demo::run(config, args, globals).await,
        Command::Inspect { prefix, older_than, waiters } => {
            let manager = LockManager::new(None, config).await?;
            let provider = manager.lock_provider();
            let locks = provider.list(&prefix).await?;
            print!("{}", inspect_table(&locks, older_than, provider.name()));
            if waiters {
                let waits = provider.waits(&prefix).await?;
                print!("{}", waits_table(&waits, &locks, provider.name()));
            }
            manager.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Release { key, owner } => {
            let manager = LockManager::new(None, config).await?;
            manager.lock_provider().unlock(&key, &owner).await?;
            println!("released {key} held by {owner}");
            manager.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Deadlocks { prefix } => {
            let manager = LockManager::new(None, config).await?;
            let graph = distlock::WaitForGraph::read(&**manager.lock_provider(), &prefix).await;
            manager.close().await?;
            let graph = graph?;
            for e in &graph.edges {
                let waited = std::time::SystemTime::now().duration_since(e.since).unwrap_or_default();
                println!(
                    "{} waits for `{}` held by {} (for {:.1}s)",
                    e.waiter,
                    e.key,
                    e.holder,
                    waited.as_secs_f64()
                );
            }
            for w in &graph.loose {
                println!("{} waits for `{}` (free or its own now)", w.owner, w.key);
            }
            let cycles = graph.cycles();
            for c in &cycles {
                let v = c.victim();
                println!("DEADLOCK: {c} (youngest wait: {} for `{}`)", v.waiter, v.key);
            }
            println!(
                "{} wait(s), {} deadlock(s) on {}",
                graph.edges.len() + graph.loose.len(),
                cycles.len(),
                manager.lock_provider().name()
            );
            Ok(if cycles.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Health => {
            let manager = LockManager::new(None, config).await?;
            let h = manager.lock_provider().health().await?;
            println!("{}: healthy in {:?} ({})", h.backend, h.latency, h.detail);
            manager.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve::run(config, args).await,
        Command::Top(args) => top::run(config, args).await,
        Command::Exec(args) => Ok(exec::run(config, args).await),
        Command::Bench(args) => bench::run(config, args).await,
    }
}

/// The `inspect` table: the locks (in the order `list` gives, by key) held longer than
/// `older_than` if given, and a summary line.
/// The published waits, with the holder of each waited key where `locks` has it.
fn waits_table(waits: &[distlock::WaitInfo], locks: &[LockInfo], provider: &str) -> String {
    let mut out = format!("\n{:<60} {:<40} {:<40} {:>10}\n", "WAITED KEY", "WAITER", "HOLDER", "WAITED");
    for w in waits {
        let holder = locks.iter().find(|l| l.key == w.key).map_or("-", |l| l.owner.as_str());
        let _ =
            writeln!(out, "{:<60} {:<40} {:<40} {:>9.1}s", w.key, w.owner, holder, w.waited().as_secs_f64());
    }
    let _ = writeln!(out, "{} wait(s) on {provider}", waits.len());
    out
}

fn inspect_table(locks: &[LockInfo], older_than: Option<Duration>, provider: &str) -> String {
    let shown: Vec<&LockInfo> =
        locks.iter().filter(|l| older_than.is_none_or(|d| l.held_longer_than(d))).collect();
    let mut out = format!(
        "{:<60} {:<40} {:>20} {:>10} {:>10} {:>5}\n",
        "KEY", "OWNER", "TOKEN", "TTL LEFT", "HELD", "DEPTH"
    );
    for l in &shown {
        let _ = writeln!(
            out,
            "{:<60} {:<40} {:>20} {:>9.1}s {:>9.1}s {:>5}",
            l.key,
            l.owner,
            l.token,
            l.remaining_ttl.as_secs_f64(),
            l.held_for.as_secs_f64(),
            l.depth
        );
    }
    let _ = match older_than {
        Some(d) => writeln!(
            out,
            "{} of {} held lock(s) on {provider} held longer than {}",
            shown.len(),
            locks.len(),
            humantime::format_duration(d)
        ),
        None => writeln!(out, "{} held lock(s) on {provider}", locks.len()),
    };
    out
}

#[cfg(test)]
mod tests {
    use distlock::FencingToken;

    use super::*;

    fn info(key: &str, held_secs: u64) -> LockInfo {
        LockInfo {
            key: key.into(),
            owner: format!("owner of {key}"),
            token: FencingToken(7),
            remaining_ttl: Duration::from_secs(30),
            depth: 1,
            held_for: Duration::from_secs(held_secs),
        }
    }

    #[test]
    fn a_backend_built_out_names_the_command_that_builds_it_in() {
        let msg = not_built_in(LockProviderType::Etcd).to_string();
        assert!(msg.contains("`cargo run --features etcd --bin distlock -- ...`"), "{msg}");
        assert!(msg.contains("protobuf-compiler") && msg.contains("PROTOC"), "{msg}");
        let msg = not_built_in(LockProviderType::Redis).to_string();
        assert!(msg.contains("`cargo run --features redis --bin distlock -- ...`"), "{msg}");
        assert!(!msg.contains("protoc"), "{msg}");
        assert!(built_in(LockProviderType::Memory));
        assert_eq!(built_in(LockProviderType::Etcd), cfg!(feature = "etcd"));
    }

    #[test]
    fn older_than_takes_the_configuration_duration_syntax() {
        let cli = Cli::try_parse_from(["distlock", "inspect", "jobs/", "--older-than", "1h 30m"]).unwrap();
        match cli.command {
            Command::Inspect { prefix, older_than, waiters } => {
                assert_eq!((prefix.as_str(), older_than), ("jobs/", Some(Duration::from_secs(5400))));
                assert!(!waiters);
            }
            other => panic!("{other:?}"),
        }
        match Cli::try_parse_from(["distlock", "inspect"]).unwrap().command {
            Command::Inspect { prefix, older_than, waiters } => {
                assert_eq!((prefix.as_str(), older_than, waiters), ("", None, false))
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["distlock", "inspect", "--older-than", "five minutes"]).is_err());
    }

    #[test]
    fn inspect_lists_only_locks_held_longer_than_asked_in_key_order() {
        let locks = [info("a", 10), info("b", 600), info("c", 300), info("d", 3600)];
        let table = inspect_table(&locks, Some(Duration::from_secs(300)), "memory");
        let lines: Vec<&str> = table.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header, ["KEY", "OWNER", "TOKEN", "TTL", "LEFT", "HELD", "DEPTH"]);
        let keys: Vec<&str> =
            lines[1..lines.len() - 1].iter().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(keys, ["b", "d"], "held for exactly 5 minutes is not longer than 5 minutes");
        assert!(lines[1].contains("600.0s") && lines[2].contains("3600.0s"), "{table}");
        assert_eq!(lines[lines.len() - 1], "2 of 4 held lock(s) on memory held longer than 5m");

        let all = inspect_table(&locks, None, "memory");
        assert_eq!(all.lines().count(), 6);
        assert!(all.ends_with("4 held lock(s) on memory\n"), "{all}");
    }

    #[test]
    fn inspect_waiters_names_each_waits_holder() {
        let locks = [info("a", 10)];
        let wait = |key: &str, owner: &str| distlock::WaitInfo {
            key: key.into(),
            owner: owner.into(),
            id: 1,
            since: std::time::SystemTime::now() - Duration::from_secs(3),
            remaining_ttl: Duration::from_secs(3),
        };
        let table = waits_table(&[wait("a", "bob"), wait("z", "carol")], &locks, "memory");
        let rows: Vec<&str> = table.lines().skip(2).take(2).collect();
        let holder = format!(" {} ", locks[0].owner);
        assert!(
            rows[0].starts_with("a ") && rows[0].contains(" bob ") && rows[0].contains(&holder),
            "{table}"
        );
        assert!(
            rows[1].starts_with("z ") && rows[1].contains(" carol ") && rows[1].contains(" - "),
            "{table}"
        );
        assert!(table.ends_with("2 wait(s) on memory\n"), "{table}");
        match Cli::try_parse_from(["distlock", "inspect", "--waiters"]).unwrap().command {
            Command::Inspect { waiters, .. } => assert!(waiters),
            other => panic!("{other:?}"),
        }
    }
}
