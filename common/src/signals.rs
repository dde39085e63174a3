//! Signal sets in the kernel's own layout, and the guard-set syntax users type.
//!
//! A [`SigSet`] is the 64-bit mask the kernel keeps per thread (`sigset_t` as
//! `rt_sigprocmask(2)` and `PTRACE_GETSIGMASK` see it, bit `n-1` for signal `n`),
//! not glibc's 1024-bit `sigset_t`. Keeping raw numbers rather than an enum lets
//! the set hold real-time signals, which the supervisor must forward untouched.

use std::fmt;

/// Highest signal number on Linux (`_NSIG - 1`).
pub const MAX_SIGNAL: i32 = 64;

/// glibc reserves 32 (SIGCANCEL) and 33 (SIGSETXID) for itself; `pthread_sigmask`
/// silently refuses to block them, and blocking them by other means breaks
/// thread cancellation and `setuid()` in multi-threaded programs.
const GLIBC_INTERNAL: [i32; 2] = [32, 33];

/// Standard names, indexed by signal number (x86_64 and aarch64 agree on these).
const NAMES: [(&str, i32); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A set of signal numbers 1..=64, laid out as the kernel's sigset.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SigSet(u64);

impl SigSet {
    pub const EMPTY: SigSet = SigSet(0);

    /// The default guard set: the profiling and timer signals (SIGPROF, SIGVTALRM,
    /// SIGALRM), which are what profilers and wall-clock timers deliver.
    pub const DEFAULT_GUARD: SigSet = SigSet((1 << (27 - 1)) | (1 << (26 - 1)) | (1 << (14 - 1)));

    pub const fn from_bits(bits: u64) -> SigSet {
        SigSet(bits)
    }

    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every signal that can be blocked, less glibc's internal ones: what `all` means.
    pub fn all_blockable() -> SigSet {
        let mut set = SigSet(u64::MAX);
        set.remove(libc::SIGKILL);
        set.remove(libc::SIGSTOP);
        for s in GLIBC_INTERNAL {
            set.remove(s);
        }
        set
    }

    pub fn contains(self, sig: i32) -> bool {
        (1..=MAX_SIGNAL).contains(&sig) && self.0 & (1 << (sig - 1)) != 0
    }

    pub fn insert(&mut self, sig: i32) {
        if (1..=MAX_SIGNAL).contains(&sig) {
            self.0 |= 1 << (sig - 1);
        }
    }

    pub fn remove(&mut self, sig: i32) {
        if (1..=MAX_SIGNAL).contains(&sig) {
            self.0 &= !(1 << (sig - 1));
        }
    }

    pub const fn union(self, other: SigSet) -> SigSet {
        SigSet(self.0 | other.0)
    }

    pub const fn difference(self, other: SigSet) -> SigSet {
        SigSet(self.0 & !other.0)
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Signal numbers in ascending order.
    pub fn iter(self) -> impl Iterator<Item = i32> {
        (1..=MAX_SIGNAL).filter(move |&s| self.contains(s))
    }

    /// The same set as a libc `sigset_t`, for `pthread_sigmask`.
    pub fn to_libc(self) -> libc::sigset_t {
        // SAFETY: sigemptyset/sigaddset only write into the set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in self.iter() {
                libc::sigaddset(&mut set, s);
            }
            set
        }
    }
}

impl fmt::Debug for SigSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigSet({self})")
    }
}

/// Comma-separated names, e.g. `SIGALRM,SIGVTALRM,SIGPROF`; `(none)` when empty.
impl fmt::Display for SigSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(none)");
        }
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_signal_name(f, s)?;
        }
        Ok(())
    }
}

/// The conventional name of a signal (`SIGPROF`), or `SIGRTMIN+n` / `SIG<n>`.
pub fn signal_name(sig: i32) -> String {
    struct Name(i32);
    impl fmt::Display for Name {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_signal_name(f, self.0)
        }
    }
    Name(sig).to_string()
}

/// The static name of a standard signal, for code that must not allocate.
pub fn standard_signal_name(sig: i32) -> Option<&'static str> {
    const FULL: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(sig - 1)
        .ok()
        .and_then(|i| FULL.get(i).copied())
}

fn write_signal_name(f: &mut fmt::Formatter<'_>, sig: i32) -> fmt::Result {
    match standard_signal_name(sig) {
        Some(name) => f.write_str(name),
        None if sig >= libc::SIGRTMIN() && sig <= MAX_SIGNAL => {
            write!(f, "SIGRTMIN+{}", sig - libc::SIGRTMIN())
        }
        None => write!(f, "SIG{sig}"),
    }
}

/// Why a signal list did not parse; `token` is the offending piece as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSignalError {
    pub token: String,
    pub reason: &'static str,
}

impl fmt::Display for ParseSignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad signal {:?}: {}", self.token, self.reason)
    }
}

impl std::error::Error for ParseSignalError {}

/// Parses one signal: `PROF`, `SIGPROF`, `sigprof`, `27`, `RTMIN+2`, `SIGRTMAX-1`.
pub fn parse_signal(token: &str) -> Result<i32, ParseSignalError> {
    let err = |reason| ParseSignalError {
        token: token.to_string(),
        reason,
    };
    let t = token.trim();
    if t.is_empty() {
        return Err(err("empty name"));
    }
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=MAX_SIGNAL).contains(&n) {
            Ok(n)
        } else {
            Err(err("signal numbers run from 1 to 64"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(nm, _)| *nm == name) {
        return Ok(n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32, ParseSignalError> {
        let off = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>()
                .map_err(|_| err("bad real-time offset"))?
        };
        let n = base + sign * off;
        if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(err("real-time signal out of range"))
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(libc::SIGRTMIN(), rest.strip_prefix('+').unwrap_or(rest), 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(libc::SIGRTMAX(), rest.strip_prefix('-').unwrap_or(rest), -1);
    }
    Err(err("unknown signal name"))
}

/// Parses a guard list: comma-separated signals, or `all`.
///
/// SIGKILL and SIGSTOP cannot be blocked, and glibc's internal 32 and 33 must not
/// be: naming them is an error rather than a silent no-op, so a user never
/// believes a signal is held back when it is not.
pub fn parse_signal_list(list: &str) -> Result<SigSet, ParseSignalError> {
    if list.trim().eq_ignore_ascii_case("all") {
        return Ok(SigSet::all_blockable());
    }
    let mut set = SigSet::EMPTY;
    for token in list.split(',') {
        let sig = parse_signal(token)?;
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return Err(ParseSignalError {
                token: token.to_string(),
                reason: "SIGKILL and SIGSTOP cannot be blocked",
            });
        }
        if GLIBC_INTERNAL.contains(&sig) {
            return Err(ParseSignalError {
                token: token.to_string(),
                reason: "signals 32 and 33 are reserved by glibc",
            });
        }
        set.insert(sig);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_prof_vtalrm_alrm() {
        let d = SigSet::DEFAULT_GUARD;
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![14, 26, 27]);
        assert_eq!(d.to_string(), "SIGALRM,SIGVTALRM,SIGPROF");
    }

    #[test]
    fn names_numbers_and_case() {
        let s = parse_signal_list("SIGPROF, alrm,26,sigusr1").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10, 14, 26, 27]);
        assert_eq!(parse_signal("RTMIN+2").unwrap(), libc::SIGRTMIN() + 2);
        assert_eq!(parse_signal("SIGRTMAX-1").unwrap(), libc::SIGRTMAX() - 1);
        assert_eq!(signal_name(libc::SIGRTMIN() + 3), "SIGRTMIN+3");
    }

    #[test]
    fn all_excludes_unblockable_and_glibc_internal() {
        let all = parse_signal_list("all").unwrap();
        for s in [9, 19, 32, 33] {
            assert!(!all.contains(s), "{s} must not be in all");
        }
        assert_eq!(all.len(), 60);
    }

    #[test]
    fn errors_name_the_token() {
        let e = parse_signal_list("SIGPROF,SIGBOGUS").unwrap_err();
        assert_eq!(e.token, "SIGBOGUS");
        assert!(parse_signal_list("").is_err());
        assert!(parse_signal_list("PROF,").is_err());
        assert!(parse_signal_list("0").is_err());
        assert!(parse_signal_list("65").is_err());
        assert_eq!(parse_signal_list("KILL").unwrap_err().token, "KILL");
        assert_eq!(parse_signal_list("32").unwrap_err().token, "32");
        assert!(parse_signal("RTMIN+99").is_err());
    }

    #[test]
    fn libc_round_trip() {
        let set = SigSet::DEFAULT_GUARD.to_libc();
        for s in 1..=64 {
            let member = unsafe { libc::sigismember(&set, s) } == 1;
            assert_eq!(member, SigSet::DEFAULT_GUARD.contains(s), "signal {s}");
        }
    }
}
