//! `cargo xtask bare-check`: the README's main command on a machine with nothing but a Rust
//! toolchain.
//!
//! `cargo run --bin distlock -- demo` must build and pass without `protoc` (etcd-client's build
//! script needs it, so the etcd backend is an opt-in feature of the CLI). The check hides
//! `protoc`: every `PATH` directory that holds one is replaced by a directory of links to all
//! its other entries, and `PROTOC` is unset. It builds into its own target directory,
//! `target/bare-check/target`, so that every build script in the graph really runs there:
//! were etcd-client back in the default graph, the build would fail. Then the built binary,
//! asked for `--provider etcd`, must fail naming the command that builds it in.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, run, Result};

/// The tool the default build must not need.
const HIDDEN: &str = "protoc";
/// What `distlock --provider etcd` must say on a binary built without etcd.
const HINT: &str = "cargo run --features etcd --bin distlock";

pub(crate) fn bare_check() -> Result {
    let dir = env::current_dir().map_err(|e| e.to_string())?.join("target").join("bare-check");
    let path = path_without(HIDDEN, &dir.join("path"))?;
    if let Some(found) = env::split_paths(&path).map(|d| d.join(HIDDEN)).find(|p| p.exists()) {
        return Err(format!("{} is still on the filtered PATH", found.display()));
    }
    let target = dir.join("target");
    let bare = |cmd: &mut Command| {
        cmd.env("PATH", &path)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("PROTOC")
            .env_remove("PROTOC_INCLUDE");
    };

    let mut demo = cargo();
    demo.args(["run", "--quiet", "--bin", "distlock", "--", "demo"]);
    bare(&mut demo);
    run(&mut demo)?;

    let bin = target.join("debug").join(format!("distlock{}", env::consts::EXE_SUFFIX));
    let mut etcd = Command::new(&bin);
    etcd.args(["demo", "--provider", "etcd"]);
    bare(&mut etcd);
    eprintln!("$ {etcd:?}");
    let out = etcd.output().map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains(HINT) {
        return Err(format!(
            "`distlock demo --provider etcd` without etcd support should fail naming `{HINT}`; \
             it exited with {} and said: {stderr}",
            out.status
        ));
    }
    eprint!("{stderr}");
    eprintln!(
        "xtask bare-check: the main command builds and runs without {HIDDEN}; etcd names its build command"
    );
    Ok(())
}

/// `PATH` with `tool` hidden: each directory holding it is replaced by a directory under
/// `shadows` of links to all its other entries (so the compilers and linkers next to it stay).
fn path_without(tool: &str, shadows: &Path) -> Result<OsString> {
    let path = env::var_os("PATH").unwrap_or_default();
    if shadows.exists() {
        std::fs::remove_dir_all(shadows).map_err(|e| format!("cannot clear {}: {e}", shadows.display()))?;
    }
    let mut dirs = Vec::new();
    for (i, dir) in env::split_paths(&path).enumerate() {
        if !dir.join(tool).exists() {
            dirs.push(dir);
            continue;
        }
        let shadow = shadows.join(i.to_string());
        link_all_but(tool, &dir, &shadow)?;
        dirs.push(shadow);
    }
    env::join_paths(dirs).map_err(|e| e.to_string())
}

fn link_all_but(tool: &str, dir: &Path, shadow: &Path) -> Result {
    let err = |e: std::io::Error| format!("{}: {e}", shadow.display());
    std::fs::create_dir_all(shadow).map_err(err)?;
    let dir = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let name = entry.map_err(err)?.file_name();
        if name == tool {
            continue;
        }
        let from: PathBuf = dir.join(&name);
        link(&from, &shadow.join(&name)).map_err(err)?;
    }
    Ok(())
}

#[cfg(unix)]
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(from, to)
}

#[cfg(not(unix))]
fn link(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to).map(drop)
}
