//! `distlock`: the demo orchestrator and the operator's tools.
//!
//! - `distlock demo`: workers race to run workflow executions and the run checks, at the end,
//!   that every lock guarantee held (see [`demo`]).
//! - `distlock inspect [PREFIX]`: the held locks, with holder, token and TTL left.
//! - `distlock release KEY --owner OWNER`: force-release a lock as its owner.
//! - `distlock health`: probe the backend.
//! - `distlock deadlocks [PREFIX]`: who waits for whom, and the cycles among them.
//! - `distlock serve [--listen 127.0.0.1:9464]`: `/metrics` (Prometheus), `/healthz`, `/locks`
//!   (JSON) and a live page of held locks, waits and deadlocks over HTTP, until Ctrl-C or
//!   SIGTERM (see [`serve`]); `--hold KEY:OWNER` takes and keeps locks, for demos and checks.
//! - `distlock top [PREFIX] [--once]`: the same view in the terminal, redrawn every second
//!   (see [`top`]).
//!
//! Every command uses the memory backend unless `--config distlock.toml`, `DISTLOCK_*`
//! variables (e.g. `DISTLOCK_PROVIDER=mysql DISTLOCK_MYSQL__URL=mysql://...`) or `--provider`
//! say otherwise.

mod demo;
mod serve;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distlock::{LockConfig, LockManager, LockProviderType};

#[derive(Parser, Debug)]
#[command(name = "distlock", version, about = "Distributed locks: demo, inspection and tools")]
struct Cli {
    /// TOML configuration file (also read: DISTLOCK_* environment variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Backend to use, overriding the configuration: memory, mysql, redis, etcd.
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
}

fn parse_provider(s: &str) -> Result<LockProviderType, String> {
    match s {
        "memory" => Ok(LockProviderType::Memory),
        "mysql" => Ok(LockProviderType::Mysql),
        "redis" => Ok(LockProviderType::Redis),
        "etcd" => Ok(LockProviderType::Etcd),
        other => Err(format!("unknown provider `{other}` (memory, mysql, redis, etcd)")),
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
    Ok(config)
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
    let cli = Cli::parse();
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
    let config = config(&cli)?;
    match cli.command {
        Command::Demo(args) => demo::run(config, args).await,
        Command::Inspect { prefix } => {
            let manager = LockManager::new(None, config).await?;
            let locks = manager.lock_provider().list(&prefix).await?;
            println!("{:<60} {:<40} {:>20} {:>10} {:>5}", "KEY", "OWNER", "TOKEN", "TTL LEFT", "DEPTH");
            for l in &locks {
                println!(
                    "{:<60} {:<40} {:>20} {:>9.1}s {:>5}",
                    l.key,
                    l.owner,
                    l.token,
                    l.remaining_ttl.as_secs_f64(),
                    l.depth
                );
            }
            println!("{} held lock(s) on {}", locks.len(), manager.lock_provider().name());
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
    }
}
