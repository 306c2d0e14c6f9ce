//! `distlock serve`: the configured provider's `/metrics`, `/healthz`, `/locks` and live page
//! over HTTP ([`distlock_serve`]), until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use distlock::{LockConfig, LockManager, LockOptions, LockProvider, WaitPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Arguments of `distlock serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = distlock_serve::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Take and keep this lock while serving, for demos and checks: KEY:OWNER, split at the
    /// last `:`. Repeatable. Held with the configured default TTL, refreshed until the server
    /// stops, then released.
    #[arg(long = "hold", value_name = "KEY:OWNER", value_parser = parse_hold)]
    hold: Vec<(String, String)>,
}

fn parse_hold(s: &str) -> Result<(String, String), String> {
    match s.rsplit_once(':') {
        Some((key, owner)) if !key.is_empty() && !owner.is_empty() => Ok((key.into(), owner.into())),
        _ => Err(format!("`{s}` is not KEY:OWNER")),
    }
}

/// Serves until Ctrl-C or SIGTERM, then releases the `--hold` locks and closes the provider.
pub(crate) async fn run(config: LockConfig, args: ServeArgs) -> distlock::Result<ExitCode> {
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("distlock serve: cannot listen on {}: {e}", args.listen);
            return Ok(ExitCode::from(2));
        }
    };
    // Before the provider is built, so that it records into this recorder.
    let metrics = distlock_serve::install_recorder()
        .map_err(|e| distlock::LockError::Config(format!("metrics recorder: {e}")))?;
    let ttl = config.default_ttl;
    let manager = LockManager::new(None, config).await?;
    let provider = manager.lock_provider().clone();
    let holds = match Holds::take(&provider, args.hold, ttl).await {
        Ok(holds) => holds,
        Err(e) => {
            manager.close().await?;
            return Err(e);
        }
    };
    // Installed before the address is announced: a signal sent right after it stops cleanly.
    let stop = match crate::stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("distlock serve: cannot watch for signals: {e}");
            holds.release().await;
            manager.close().await?;
            return Ok(ExitCode::from(2));
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| args.listen.to_string());
    println!("distlock serve: listening on http://{addr}/ ({}: /metrics /healthz /locks)", provider.name());
    let served = distlock_serve::serve_on(listener, provider, Some(metrics), stop).await;
    holds.release().await;
    manager.close().await?;
    match served {
        Ok(()) => {
            println!("distlock serve: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("distlock serve: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The `--hold` locks, refreshed in the background.
struct Holds {
    provider: Arc<dyn LockProvider>,
    held: Vec<(String, String)>,
    refresher: Option<JoinHandle<()>>,
}

impl Holds {
    /// Takes every lock without waiting (a busy one fails the command, releasing the others)
    /// and refreshes them every third of `ttl`.
    async fn take(
        provider: &Arc<dyn LockProvider>,
        wanted: Vec<(String, String)>,
        ttl: Duration,
    ) -> distlock::Result<Holds> {
        let mut holds = Holds { provider: provider.clone(), held: Vec::new(), refresher: None };
        for (key, owner) in wanted {
            let opts = LockOptions::new(key.as_str(), owner.as_str()).ttl(ttl).wait(WaitPolicy::NoWait);
            match provider.lock(&opts).await {
                Ok(lease) => {
                    println!("distlock serve: holding `{key}` as {owner} (token {})", lease.token);
                    holds.held.push((key, owner));
                }
                Err(e) => {
                    holds.release().await;
                    return Err(e);
                }
            }
        }
        if !holds.held.is_empty() {
            let (provider, held) = (provider.clone(), holds.held.clone());
            holds.refresher = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    for (key, owner) in &held {
                        if let Err(e) = provider.refresh_lock(key, owner, ttl).await {
                            eprintln!("distlock serve: cannot refresh `{key}` held by {owner}: {e}");
                        }
                    }
                }
            }));
        }
        Ok(holds)
    }

    /// Stops refreshing and releases every lock.
    async fn release(mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        for (key, owner) in std::mem::take(&mut self.held) {
            if let Err(e) = self.provider.unlock(&key, &owner).await {
                eprintln!("distlock serve: cannot release `{key}` held by {owner}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_splits_at_the_last_colon() {
        assert_eq!(parse_hold("reports:daily:worker-1"), Ok(("reports:daily".into(), "worker-1".into())));
        for bad in ["no-colon", ":owner", "key:"] {
            assert!(parse_hold(bad).is_err(), "{bad}");
        }
    }
}
