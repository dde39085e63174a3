//! Finding the LD_PRELOAD shim on disk.

use anyhow::{bail, Result};
use spinguard_common::{env, SHIM_FILE_NAME};
use std::path::{Path, PathBuf};

/// The places `locate` looks, in order, for a binary at `exe`.
pub fn candidates(exe: &Path, env_override: Option<PathBuf>) -> Vec<PathBuf> {
    if let Some(p) = env_override {
        // An explicit override is the only place: falling back to another
        // copy would silently run a shim the user did not ask for.
        return vec![p];
    }
    let dir = exe.parent().unwrap_or(Path::new("/"));
    vec![
        dir.join(SHIM_FILE_NAME),
        dir.join("../lib/spinguard").join(SHIM_FILE_NAME),
    ]
}

/// The shim's absolute path: `$SPINGUARD_SHIM` if set (and not empty), else
/// next to this binary, else `../lib/spinguard/` relative to it.
pub fn locate() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let places = candidates(&exe, env::path(std::env::var_os(env::SHIM)));
    for p in &places {
        if p.is_file() {
            return Ok(std::fs::canonicalize(p)?);
        }
    }
    let list: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "cannot find the shim {SHIM_FILE_NAME}: looked at {} (build it with `cargo build --release`, or set {})",
        list.join(", "),
        env::SHIM
    )
}
