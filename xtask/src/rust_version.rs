//! `cargo xtask rust-version-check`: the workspace's `rust-version` is at least what its
//! dependency graph needs.
//!
//! Only one toolchain is at hand, so the minimum is read from the graph instead of found by
//! building with older compilers: for each of [`TARGETS`], `cargo metadata --all-features
//! --filter-platform T` resolves the packages every feature, test, bench and build script of
//! the workspace pulls in on that target, and the highest `rust-version` one of them declares
//! is the least the workspace can state. The check fails when a workspace crate states less and
//! names the package that needs more. The workspace's own code is held to its `rust-version`
//! by clippy (`incompatible_msrv`), which `ci` runs with warnings denied.

use std::process::Stdio;

use serde_json::Value;

use crate::{cargo, Result};

/// The targets whose graphs are looked at: the tier-1 platforms of the three families.
const TARGETS: &[&str] = &["x86_64-unknown-linux-gnu", "x86_64-pc-windows-msvc", "aarch64-apple-darwin"];

/// A `rust-version`: major, minor, patch.
type Version = (u64, u64, u64);

pub(crate) fn check() -> Result {
    let mut needed: Option<(Version, String)> = None;
    let mut stated: Vec<(Version, String)> = Vec::new();
    for target in TARGETS {
        let graph = metadata(target)?;
        let members: Vec<&str> =
            graph["workspace_members"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let resolved: Vec<&str> = graph["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["id"].as_str())
            .collect();
        for package in graph["packages"].as_array().into_iter().flatten() {
            let id = package["id"].as_str().unwrap_or_default();
            let name = format!(
                "{} {}",
                package["name"].as_str().unwrap_or("?"),
                package["version"].as_str().unwrap_or("?")
            );
            let version = match package["rust_version"].as_str() {
                Some(v) => parse(v).ok_or_else(|| format!("{name}: unreadable rust-version `{v}`"))?,
                None if members.contains(&id) => return Err(format!("{name} states no rust-version")),
                None => continue,
            };
            if members.contains(&id) {
                if !stated.iter().any(|(_, n)| *n == name) {
                    stated.push((version, name));
                }
            } else if resolved.contains(&id) && needed.as_ref().is_none_or(|(v, _)| version > *v) {
                needed = Some((version, format!("{name} (on {target})")));
            }
        }
    }
    let Some((needed, by)) = needed else {
        return Err("no dependency states a rust-version; is the graph empty?".into());
    };
    let low: Vec<String> =
        stated.iter().filter(|(v, _)| *v < needed).map(|(v, n)| format!("{n} states {}", show(*v))).collect();
    if !low.is_empty() {
        return Err(format!(
            "rust-version too low: {} needs {}, but {}; raise `rust-version` in the workspace's Cargo.toml",
            by,
            show(needed),
            low.join(", ")
        ));
    }
    let lowest = stated.iter().map(|(v, _)| *v).min().unwrap_or(needed);
    eprintln!(
        "xtask rust-version-check: the workspace states {}; its graph needs {} ({by})",
        show(lowest),
        show(needed)
    );
    Ok(())
}

/// `cargo metadata` for `target`, every feature on.
fn metadata(target: &str) -> Result<Value> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--all-features", "--filter-platform", target]);
    eprintln!("$ {cmd:?}");
    let out =
        cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("cannot start cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata --filter-platform {target} failed with {}", out.status));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))
}

/// `1.90`, `1.90.0` (a missing part counts as 0).
fn parse(s: &str) -> Option<Version> {
    let mut parts = s.trim().split('.').map(|p| p.parse::<u64>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    parts.next().is_none().then_some((major, minor, patch))
}

fn show((major, minor, patch): Version) -> String {
    if patch == 0 {
        format!("{major}.{minor}")
    } else {
        format!("{major}.{minor}.{patch}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert_eq!(parse("1.90"), Some((1, 90, 0)));
        assert_eq!(parse("1.80.1"), Some((1, 80, 1)));
        assert!(parse("1.9").unwrap() < parse("1.80").unwrap());
        assert_eq!(parse("1.x"), None);
        assert_eq!(parse("1.2.3.4"), None);
        assert_eq!(show((1, 90, 0)), "1.90");
        assert_eq!(show((1, 80, 1)), "1.80.1");
    }
}
