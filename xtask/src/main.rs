//! Project chores as code (`cargo xtask <command>`):
//!
//! - `test`: make sure the services the backends need are up, then run the whole test suite
//!   with `DISTLOCK_REQUIRE_SERVICES=1` (a missing service fails the run, never skips it).
//! - `ci`: `cargo fmt --check`, clippy with `-D warnings` on every target and feature, `test`,
//!   the examples (the README's main job among them) and the docs with warnings denied.
//! - `services up|down|status`: start (installing from Debian packages when running as root)
//!   or stop the local services, or show which are reachable.
//! - `bench`: the criterion benches of every backend, with their summaries.

mod services;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

type Result<T = (), E = String> = std::result::Result<T, E>;

const USAGE: &str =
    "usage: cargo xtask <test | ci | services up|down|status | bench> [-- extra cargo test args]";

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = project_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        exit(2);
    }
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("ci") => ci(),
        Some("services") => match args.get(1).map(String::as_str) {
            Some("up") => services::up(&services::needed()).map(|_| ()),
            Some("down") => services::down(&services::needed()),
            Some("status") | None => {
                services::status(&services::needed());
                Ok(())
            }
            Some(other) => Err(format!("unknown services command `{other}`\n{USAGE}")),
        },
        Some("bench") => bench(),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        exit(1);
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace root").to_path_buf()
}

/// Runs a command, echoing it first; fails on a non-zero exit.
fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo xtask test`: services up, then every test of every crate with every feature.
fn test(extra: &[String]) -> Result {
    let envs = services::up(&services::needed())?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--all-features", "--all-targets"])
        .args(extra)
        .env("DISTLOCK_REQUIRE_SERVICES", "1")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    run(&mut cmd)?;
    // Doctests are not part of --all-targets.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--all-features", "--doc"])
        .env("DISTLOCK_REQUIRE_SERVICES", "1")
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    run(&mut cmd)
}

/// The examples CI runs (each must exit 0). The first is the README's main job.
const EXAMPLES: &[(&str, &str)] = &[("distlock", "quickstart")];

fn ci() -> Result {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;
    test(&[])?;
    for (package, example) in EXAMPLES {
        run(cargo().args(["run", "--quiet", "-p", package, "--example", example]))?;
    }
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}

/// Benches per backend crate; each prints a summary table after criterion's output.
const BENCHES: &[(&str, &str)] = &[("lock-memory", "memory"), ("lock-redis", "redis")];

fn bench() -> Result {
    let envs = services::up(&services::needed())?;
    for (package, bench) in BENCHES {
        run(cargo()
            .args(["bench", "-p", package, "--bench", bench])
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str()))))?;
    }
    Ok(())
}
