//! The command that fixes it: now (attach to the running process) and at the
//! next start (the shim or `run`, whichever reaches its bpf calls), with the
//! guard set that covers the signals seen during its guarded calls.

use super::ProcessReport;
use spinguard_common::SigSet;
use spinguard_probe::procfs::Guard;
use spinguard_probe::Verdict;
use spinguard_supervisor::elf::{self, Binary};

/// What the fix depends on: how the program is built, how it was started.
/// Read before the window: the process may be gone after.
#[derive(Clone, Debug, Default)]
pub struct Program {
    binary: Option<Binary>,
    exe: Option<String>,
    cmdline: Vec<String>,
}

impl Program {
    pub fn of(pid: i32) -> Program {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string());
        let binary = elf::inspect(std::path::Path::new(&format!("/proc/{pid}/exe"))).ok();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Program {
            binary,
            exe,
            cmdline,
        }
    }

    /// The command line as a shell would take it, argv[0] replaced by the
    /// executable's full path unless it is absolute (a relative one was
    /// relative to the program's working directory, not the user's).
    fn shell_command(&self) -> String {
        let mut argv = self.cmdline.clone();
        if argv.is_empty() {
            argv.push(self.exe.clone().unwrap_or_else(|| "PROGRAM".into()));
            argv.push("ARGS...".into());
        } else if !argv[0].starts_with('/') {
            if let Some(exe) = &self.exe {
                argv[0] = exe.clone();
            }
        }
        argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    }

    fn kind(&self) -> &'static str {
        match self.binary {
            Some(Binary::Elf { go: true, .. }) => "a Go program",
            Some(Binary::Elf { dynamic: false, .. }) => "statically linked",
            Some(Binary::Elf { dynamic: true, .. }) => "dynamically linked, not Go",
            Some(Binary::NotElf) => "not an ELF binary",
            Some(Binary::OtherElf) | None => "of unknown kind",
        }
    }

    fn preload_reaches_it(&self) -> bool {
        matches!(
            self.binary,
            Some(Binary::Elf {
                dynamic: true,
                go: false
            })
        )
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advice {
    /// The command that rescues the running process.
    pub now: String,
    /// Why `now` cannot work yet, when it cannot (another tracer holds it).
    pub blocked: Option<String>,
    /// The command that starts it guarded next time.
    pub next_start: String,
    pub why: String,
}

/// The guard set that covers every signal seen during a guarded call.
pub fn guard_needed(r: &ProcessReport) -> SigSet {
    // A signal that interrupts a call now and then (Go's SIGURG preemption)
    // is absorbed by the guard's restarts; one that interrupts a good share
    // of the calls must be blocked.
    let total = r.activity.during_guarded();
    let mut set = SigSet::DEFAULT_GUARD;
    for (&sig, s) in &r.activity.signals {
        if s.during_guarded > 0
            && s.during_guarded * 10 >= total
            && sig != libc::SIGKILL
            && sig != libc::SIGSTOP
        {
            set.insert(sig);
        }
    }
    set
}

pub fn advice(r: &ProcessReport, p: &Program) -> Option<Advice> {
    if !matches!(r.verdict, Verdict::Livelock | Verdict::AtRisk) {
        return None;
    }
    let guard = guard_needed(r);
    let custom = guard != SigSet::DEFAULT_GUARD;
    let flag = if custom {
        format!("--signals {guard} ")
    } else {
        String::new()
    };
    let now = format!("spinguard attach {flag}{}", r.pid);
    let blocked = match (r.tracer, r.guard) {
        (0, _) => None,
        (t, Some(Guard::Traced { .. })) => Some(format!(
            "it already runs under spinguard (pid {t}), whose guard set misses these signals: restart it with the command below"
        )),
        (t, _) => Some(format!(
            "pid {t} ({}) traces it, and a process has one tracer: stop that tracer first",
            spinguard_probe::procfs::comm(t)
        )),
    };
    let cmd = p.shell_command();
    let (next_start, how) = if p.preload_reaches_it() {
        let env = if custom {
            format!("SPINGUARD_SIGNALS={guard} ")
        } else {
            String::new()
        };
        (
            format!("{env}LD_PRELOAD=$(spinguard shim-path) {cmd}"),
            "it is dynamically linked and not Go, so the LD_PRELOAD shim reaches its bpf calls",
        )
    } else {
        (
            format!("spinguard run {flag}-- {cmd}"),
            "LD_PRELOAD cannot reach its bpf calls (Go makes raw syscalls; a static binary has no dynamic loader): spinguard run traces only the guarded calls",
        )
    };
    Some(Advice {
        now,
        blocked,
        next_start,
        why: format!("the program is {}: {how}", p.kind()),
    })
}
