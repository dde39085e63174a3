//! The environment preload mode gives the program: the shim first in
//! LD_PRELOAD (in front of any LD_PRELOAD the user has, which stays), and
//! what the shim needs to guard and to follow exec: the guard set, where
//! spinguard is (for a static or Go program started later), and what to log.

use spinguard_common::{env, SigSet};
use std::ffi::OsString;
use std::path::Path;

/// What to tell the shim.
pub struct Settings<'a> {
    pub shim: &'a Path,
    pub guard: SigSet,
    /// `--events PATH`.
    pub events: Option<&'a Path>,
    /// `-v`: a line per exec and a summary from each process that made a
    /// guarded call, unless the user set SPINGUARD_LOG.
    pub verbose: bool,
}

/// The variables to set, given the current LD_PRELOAD and SPINGUARD_LOG.
pub fn variables(
    s: &Settings<'_>,
    ld_preload: Option<OsString>,
    log: Option<OsString>,
) -> Vec<(&'static str, OsString)> {
    let mut preload = OsString::from(s.shim.as_os_str());
    if let Some(existing) = ld_preload.filter(|v| !v.is_empty()) {
        // Ours first, so our `syscall` is the one a lookup finds; keep theirs.
        if std::env::split_paths(&existing).any(|p| p == s.shim) {
            preload = existing;
        } else {
            preload.push(":");
            preload.push(&existing);
        }
    }
    let mut vars = vec![
        ("LD_PRELOAD", preload),
        (env::SIGNALS, s.guard.to_string().into()),
    ];
    if let Ok(bin) = std::env::current_exe() {
        vars.push((env::BIN, bin.into_os_string()));
    }
    if let Some(p) = s.events {
        vars.push((env::EVENTS, p.as_os_str().to_owned()));
    }
    if s.verbose && log.filter(|v| !v.is_empty()).is_none() {
        vars.push((env::LOG, "exec,calls".into()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(shim: &Path) -> Settings<'_> {
        Settings {
            shim,
            guard: SigSet::DEFAULT_GUARD,
            events: None,
            verbose: true,
        }
    }

    fn get(v: &[(&str, OsString)], k: &str) -> Option<String> {
        v.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string_lossy().into_owned())
    }

    #[test]
    fn the_shim_goes_first_and_theirs_stays() {
        let shim = Path::new("/s/libspinguard_shim.so");
        let v = variables(&settings(shim), Some("/p.so".into()), None);
        assert_eq!(
            get(&v, "LD_PRELOAD").unwrap(),
            "/s/libspinguard_shim.so:/p.so"
        );
        assert_eq!(get(&v, "SPINGUARD_LOG").unwrap(), "exec,calls");
        assert!(get(&v, "SPINGUARD_BIN").is_some());
        let v = variables(
            &settings(shim),
            Some("/p.so:/s/libspinguard_shim.so".into()),
            Some("off".into()),
        );
        assert_eq!(
            get(&v, "LD_PRELOAD").unwrap(),
            "/p.so:/s/libspinguard_shim.so"
        );
        assert_eq!(
            get(&v, "SPINGUARD_LOG"),
            None,
            "the user's own SPINGUARD_LOG wins"
        );
    }
}
