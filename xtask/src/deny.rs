//! `cargo xtask deny-check`: the dependency policy of `deny.toml` with
//! `cargo deny check licenses bans sources`: every license in the graph allowed, no wildcard
//! versions, every crate from crates.io. Advisories need the RustSec database from the
//! network, which CI does not have, so they are left to a run by hand (`cargo deny check
//! advisories`). cargo-deny is installed with `cargo install --locked cargo-deny` when missing.

use crate::{cargo, run, Result};

pub(crate) fn check() -> Result {
    let installed = cargo().args(["deny", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        run(cargo().args(["install", "--locked", "cargo-deny"]))?;
    }
    run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))
}
