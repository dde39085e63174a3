//! `SPINGUARD_SIGNALS`, `SPINGUARD_MODE`, `SPINGUARD_LOG` (and `SPINGUARD_EVENTS`,
//! handed to [`crate::events`]): read once, in the
//! constructor, and published through atomics the hook reads without locking.
//!
//! A bad value never breaks the host: it costs one line on stderr and the
//! default is used. In a secure-execution process (setuid, setgid, file
//! capabilities: `getauxval(AT_SECURE) != 0`) no variable is read at all, so an
//! unprivileged caller cannot change what a privileged program blocks or prints.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use spinguard_common::{env, parse_signal_list, SigSet};

use crate::{line, sys};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Block the guard set around guarded calls (the default).
    Guard,
    /// Count guarded calls, block nothing.
    Observe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub guard: SigSet,
    pub mode: Mode,
    /// `SPINGUARD_LOG=summary`: one line at exit.
    pub summary: bool,
    /// `SPINGUARD_LOG=calls`: that line only from a process that made a
    /// guarded call (`run -v`: a shell starting hundreds of programs does
    /// not print a line for each).
    pub summary_calls: bool,
    /// `SPINGUARD_LOG=exec`: one line per exec, which mechanism guards what.
    pub exec_log: bool,
}

impl Config {
    pub const DEFAULT: Config = Config {
        guard: SigSet::DEFAULT_GUARD,
        mode: Mode::Guard,
        summary: false,
        summary_calls: false,
        exec_log: false,
    };

    pub fn blocks(&self) -> bool {
        self.mode == Mode::Guard && !self.guard.is_empty()
    }
}

/// Parses the three variables (`None` = unset; empty counts as unset). Returns
/// the configuration and the warning lines to print, one per bad variable.
pub(crate) fn parse(
    signals: Option<OsString>,
    mode: Option<OsString>,
    log: Option<OsString>,
) -> (Config, Vec<String>) {
    let mut cfg = Config::DEFAULT;
    let mut warnings = Vec::new();
    let text = |v: Option<OsString>, name: &str, warnings: &mut Vec<String>| {
        env::text(v).unwrap_or_else(|e| {
            warnings.push(format!("ignoring {name}: {e}"));
            None
        })
    };
    if let Some(s) = text(signals, env::SIGNALS, &mut warnings) {
        match parse_signal_list(&s) {
            Ok(set) => cfg.guard = set,
            Err(e) => warnings.push(format!("ignoring {}: {e}", env::SIGNALS)),
        }
    }
    if let Some(s) = text(mode, env::MODE, &mut warnings) {
        match s.trim().to_ascii_lowercase().as_str() {
            "guard" => cfg.mode = Mode::Guard,
            "observe" => cfg.mode = Mode::Observe,
            _ => warnings.push(format!(
                "ignoring {}: unknown mode {s:?} (expected guard or observe)",
                env::MODE
            )),
        }
    }
    if let Some(s) = text(log, env::LOG, &mut warnings) {
        let (mut summary, mut calls, mut exec) = (false, false, false);
        let mut bad = None;
        for word in s.split(',').map(|w| w.trim().to_ascii_lowercase()) {
            match word.as_str() {
                "summary" => summary = true,
                "calls" => calls = true,
                "exec" => exec = true,
                "off" | "none" | "" => {}
                _ => bad = Some(word),
            }
        }
        match bad {
            None => (cfg.summary, cfg.summary_calls, cfg.exec_log) = (summary, calls, exec),
            Some(w) => warnings.push(format!(
                "ignoring {}: unknown value {w:?} in {s:?} (expected summary, calls, exec or off)",
                env::LOG
            )),
        }
    }
    // Each warning ends with what we do instead, so the one line is the whole story.
    for w in &mut warnings {
        let _ = match cfg.mode {
            Mode::Guard => write!(w, "; guarding {}", cfg.guard),
            Mode::Observe => write!(w, "; observing {}", cfg.guard),
        };
    }
    (cfg, warnings)
}

static GUARD: AtomicU64 = AtomicU64::new(SigSet::DEFAULT_GUARD.bits());
static OBSERVE: AtomicBool = AtomicBool::new(false);
static SUMMARY: AtomicBool = AtomicBool::new(false);
static SUMMARY_CALLS: AtomicBool = AtomicBool::new(false);
static EXEC_LOG: AtomicBool = AtomicBool::new(false);
/// 0 = not loaded yet (defaults apply), 1 = loaded.
static LOADED: AtomicU8 = AtomicU8::new(0);

/// Reads the environment (unless AT_SECURE), prints any warnings, publishes.
/// Returns `SPINGUARD_EVENTS` (non-empty, never under AT_SECURE) for
/// [`crate::events::init`]; None the second time.
pub(crate) fn load_from_environment() -> Option<OsString> {
    if LOADED.swap(1, Ordering::AcqRel) != 0 {
        return None;
    }
    let secure = sys::secure();
    let (cfg, warnings) = if secure {
        (Config::DEFAULT, Vec::new())
    } else {
        parse(var(env::SIGNALS), var(env::MODE), var(env::LOG))
    };
    for w in warnings {
        line::say(format_args!("{w}"));
    }
    GUARD.store(cfg.guard.bits(), Ordering::Relaxed);
    OBSERVE.store(cfg.mode == Mode::Observe, Ordering::Relaxed);
    EXEC_LOG.store(cfg.exec_log, Ordering::Relaxed);
    SUMMARY_CALLS.store(cfg.summary_calls, Ordering::Relaxed);
    SUMMARY.store(cfg.summary, Ordering::Release);
    if secure {
        return None;
    }
    env::path(var(env::EVENTS)).map(Into::into)
}

fn var(name: &str) -> Option<OsString> {
    use std::os::unix::ffi::OsStrExt;
    sys::getenv(name).map(|v| std::ffi::OsStr::from_bytes(v).to_owned())
}

/// The published configuration; defaults until the constructor has run.
#[inline]
pub(crate) fn current() -> Config {
    Config {
        guard: SigSet::from_bits(GUARD.load(Ordering::Relaxed)),
        mode: if OBSERVE.load(Ordering::Relaxed) {
            Mode::Observe
        } else {
            Mode::Guard
        },
        summary: SUMMARY.load(Ordering::Relaxed),
        summary_calls: SUMMARY_CALLS.load(Ordering::Relaxed),
        exec_log: EXEC_LOG.load(Ordering::Relaxed),
    }
}

/// Whether to print the exit summary of a process that made `calls`
/// guarded calls.
pub(crate) fn summary_wanted(calls: u64) -> bool {
    SUMMARY.load(Ordering::Acquire) || (calls > 0 && SUMMARY_CALLS.load(Ordering::Acquire))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: Option<&str>, m: Option<&str>, l: Option<&str>) -> (Config, Vec<String>) {
        parse(s.map(Into::into), m.map(Into::into), l.map(Into::into))
    }

    #[test]
    fn unset_and_empty_mean_defaults() {
        assert_eq!(p(None, None, None), (Config::DEFAULT, vec![]));
        assert_eq!(p(Some(""), Some(""), Some("")), (Config::DEFAULT, vec![]));
    }

    #[test]
    fn good_values() {
        let (c, w) = p(Some("SIGUSR1,prof"), Some("observe"), Some("summary"));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.guard.iter().collect::<Vec<_>>(), vec![10, 27]);
        assert_eq!(c.mode, Mode::Observe);
        assert!(c.summary);
        assert!(!c.blocks());
        let (c, _) = p(Some("all"), Some("GUARD"), Some("off"));
        assert_eq!(c.guard.len(), 60);
        assert!(c.blocks());
    }

    #[test]
    fn bad_signals_warn_once_naming_the_token_and_keep_the_default() {
        let (c, w) = p(Some("SIGPROF,SIGBOGUS"), None, None);
        assert_eq!(c.guard, SigSet::DEFAULT_GUARD);
        assert_eq!(
            w,
            vec![
                "ignoring SPINGUARD_SIGNALS: bad signal \"SIGBOGUS\": unknown signal name; \
                 guarding SIGALRM,SIGVTALRM,SIGPROF"
            ]
        );
        let (_, w) = p(Some("KILL"), None, None);
        assert!(w[0].contains("\"KILL\""), "{w:?}");
    }

    #[test]
    fn bad_mode_and_log_warn_and_keep_guarding() {
        let (c, w) = p(None, Some("bogus"), Some("loud"));
        assert_eq!(c, Config::DEFAULT);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("\"bogus\"") && w[0].ends_with("guarding SIGALRM,SIGVTALRM,SIGPROF"));
        assert!(w[1].contains("\"loud\""), "{w:?}");
    }

    #[test]
    fn log_is_a_list() {
        let (c, w) = p(None, None, Some("exec, summary"));
        assert!(w.is_empty() && c.summary && c.exec_log, "{w:?}");
        let (c, w) = p(None, None, Some("exec"));
        assert!(w.is_empty() && !c.summary && c.exec_log, "{w:?}");
        let (c, w) = p(None, None, Some("calls,exec"));
        assert!(
            w.is_empty() && !c.summary && c.summary_calls && c.exec_log,
            "{w:?}"
        );
        let (c, w) = p(None, None, Some("exec,loud"));
        assert!(!c.exec_log && w[0].contains("\"loud\""), "{w:?}");
    }

    #[test]
    fn non_utf8_warns() {
        use std::os::unix::ffi::OsStringExt;
        let (c, w) = parse(Some(OsString::from_vec(vec![0xff, b'P'])), None, None);
        assert_eq!(c, Config::DEFAULT);
        assert_eq!(w.len(), 1);
    }
}
