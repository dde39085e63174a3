//! The command that fixes it: now (attach to the running process) and at the
//! next start (the shim or `run`, whichever reaches its bpf calls), with the
//! guard set that covers the signals seen during its guarded calls.

use super::ProcessReport;
use spinguard_common::mechanism::{self, Choice, Kind, Mechanism};
use spinguard_common::SigSet;
use spinguard_probe::procfs::Guard;
use spinguard_probe::Verdict;

/// What the fix depends on: how the program is built, how it was started.
/// Read before the window: the process may be gone after.
#[derive(Clone, Debug)]
pub struct Program {
    choice: Choice,
    exe: Option<String>,
    cmdline: Vec<String>,
}

impl Program {
    pub fn of(pid: i32) -> Program {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string());
        let exe_link = std::ffi::CString::new(format!("/proc/{pid}/exe")).unwrap_or_default();
        let choice = mechanism::choose(&exe_link);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Program {
            choice,
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

    fn preload_reaches_it(&self) -> bool {
        self.choice.mechanism() == Some(Mechanism::Preload)
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
            ", so the LD_PRELOAD shim reaches its bpf calls",
        )
    } else {
        (
            format!("spinguard run {flag}-- {cmd}"),
            ": spinguard run traces only its guarded calls",
        )
    };
    // A process that has exited (or whose executable cannot be read) cannot
    // be looked at: say so rather than "the program is cannot be opened".
    let why = match p.choice.kind {
        Kind::Missing(_) | Kind::Unreadable(_) => format!(
            "its program could not be looked at (its executable {}){how}",
            p.choice.kind
        ),
        _ => format!("the program is {}{how}", p.choice),
    };
    Some(Advice {
        now,
        blocked,
        next_start,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_cannot_be_looked_at_is_said_so() {
        let r = ProcessReport {
            pid: i32::MAX,
            name: "gone".into(),
            window: std::time::Duration::from_secs(1),
            threads: 1,
            activity: Default::default(),
            verdict: Verdict::Livelock,
            exited: true,
            placement: Default::default(),
            tracer: 0,
            guard: None,
            compat: false,
            unseen: None,
        };
        // No such process: its /proc/PID/exe cannot be opened.
        let a = advice(&r, &Program::of(i32::MAX)).expect("livelock has advice");
        assert!(
            a.why
                .starts_with("its program could not be looked at (its executable cannot be opened"),
            "{}",
            a.why
        );
        let me = Program::of(std::process::id() as i32);
        let a = advice(&r, &me).unwrap();
        assert!(a.why.starts_with("the program is "), "{}", a.why);
    }
}
