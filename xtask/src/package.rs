//! `cargo xtask package-check`: every published crate can go to crates.io and docs.rs.
//!
//! For each workspace crate whose `publish` is not `false` (xtask and lock-testkit are not
//! published), the manifest must have what crates.io requires and what the project promises:
//! a description, a license, the repository and a `rust-version`; a library crate also the
//! docs.rs settings (`all-features`, `rustdoc-args = ["--cfg", "docsrs"]`, which turns on the
//! feature badges). Then `cargo publish --workspace --dry-run --no-verify` packages every
//! published crate in dependency order, as a release would; any warning it prints (a missing
//! field, a readme outside the package, ...) fails the check.

use std::process::Stdio;

use serde_json::Value;

use crate::{cargo, Result};

pub(crate) fn check() -> Result {
    manifests()?;
    dry_run()
}

/// The fields every published crate must have.
fn manifests() -> Result {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
    let out =
        cmd.stderr(Stdio::inherit()).output().map_err(|e| format!("cannot start cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed with {}", out.status));
    }
    let meta: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let mut missing = Vec::new();
    let mut published = Vec::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or("?");
        // `publish = false` is an empty list of registries.
        if package["publish"].as_array().is_some_and(Vec::is_empty) {
            continue;
        }
        published.push(name);
        for field in ["description", "license", "repository", "rust_version"] {
            if package[field].as_str().is_none_or(|v| v.trim().is_empty()) {
                missing.push(format!("{name}: {}", field.replace('_', "-")));
            }
        }
        let is_lib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "lib"));
        if is_lib {
            let docs_rs = &package["metadata"]["docs"]["rs"];
            if docs_rs["all-features"] != Value::Bool(true) {
                missing.push(format!("{name}: [package.metadata.docs.rs] all-features = true"));
            }
            let args: Vec<&str> =
                docs_rs["rustdoc-args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if !args.windows(2).any(|w| w == ["--cfg", "docsrs"]) {
                missing.push(format!(
                    r#"{name}: [package.metadata.docs.rs] rustdoc-args = ["--cfg", "docsrs"]"#
                ));
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!("published crates lack:\n  {}", missing.join("\n  ")));
    }
    eprintln!("xtask package-check: manifests of {} complete", published.join(", "));
    Ok(())
}

/// `cargo publish --workspace --dry-run --no-verify`, failing on any warning but the dry run's own.
fn dry_run() -> Result {
    let mut cmd = cargo();
    cmd.args(["publish", "--workspace", "--dry-run", "--no-verify", "--allow-dirty"]);
    eprintln!("$ {cmd:?}");
    let out =
        cmd.stdout(Stdio::inherit()).output().map_err(|e| format!("cannot start cargo publish: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.trim_start().starts_with("Archiving")) {
        eprintln!("{line}");
    }
    if !out.status.success() {
        return Err(format!("cargo publish --dry-run failed with {}", out.status));
    }
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:") && !l.contains("aborting upload due to dry run"))
        .collect();
    if !warnings.is_empty() {
        return Err(format!("cargo publish --dry-run warned:\n  {}", warnings.join("\n  ")));
    }
    eprintln!("xtask package-check: every published crate packages without a warning");
    Ok(())
}
