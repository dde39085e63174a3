//! What one exec becomes: the same program with the shim kept in its
//! environment (a dynamically linked program on glibc, not Go), or
//! `spinguard run --mode ptrace -- PROGRAM ARGS` with the same environment
//! (a static or Go program, or anything else LD_PRELOAD cannot reach).
//!
//! The choice is [`mechanism::choose`], the same one `spinguard run` and
//! `diagnose` make. Everything here is allocation-free and async-signal-safe
//! (a vfork child runs it): stack buffers, an mmap [`Arena`], raw syscalls.

use core::ffi::CStr;
use core::fmt::Write as _;

use libc::c_char;
use spinguard_common::mechanism::{self, Choice, Kind, Mechanism};

use super::arena::Arena;
use super::carray::CArray;
use super::env::Check;
use super::state::{self, State};
use super::supervisor;
use crate::config::{self, Mode};
use crate::line::{Line, Lossy};
use crate::sys;

/// What to exec.
pub(crate) enum Plan {
    /// The program as asked, with this environment (the caller's own array
    /// when it already had everything).
    AsAsked { envp: *const *const c_char },
    /// The spinguard binary, which traces the program.
    Handoff {
        path: *const c_char,
        argv: *const *const c_char,
        envp: *const *const c_char,
    },
}

/// A [`Plan`] and the memory its arrays live in (unmapped on drop: keep it
/// until the exec or posix_spawn has returned).
pub(crate) struct Decision {
    pub plan: Plan,
    _arena: Option<Arena>,
}

impl Decision {
    fn as_asked(envp: CArray) -> Decision {
        Decision {
            plan: Plan::AsAsked {
                envp: envp.as_ptr(),
            },
            _arena: None,
        }
    }
}

/// The program to exec: the file to inspect, and the name a handoff would
/// give `spinguard run` (None when it has none: an fd without a path).
pub(crate) struct Target<'a> {
    pub inspect: &'a CStr,
    pub name: Option<&'a CStr>,
}

/// Decides for one exec of `target` with `argv` and `envp`.
pub(crate) fn decide(target: Target<'_>, argv: CArray, envp: CArray) -> Decision {
    let Some(state) = state::get() else {
        // Secure execution, or the shim does not know its own path: hands off.
        return Decision::as_asked(envp);
    };
    let choice = mechanism::choose(target.inspect);
    let shown = target.name.unwrap_or(target.inspect).to_bytes();
    match choice.mechanism() {
        Some(Mechanism::Preload) => {
            if config::current().exec_log {
                say_for(shown, "preload", &choice, "");
            }
            keep_shim(state, envp)
        }
        Some(Mechanism::Ptrace) => ptrace(state, &target, shown, &choice, argv, envp),
        None => {
            if let Kind::SetId { .. } = choice.kind {
                not_guarded(shown, &choice, "");
            }
            Decision::as_asked(envp)
        }
    }
}

/// The program as asked, with the shim (and the settings) in its environment.
fn keep_shim(state: &State, envp: CArray) -> Decision {
    let check = Check::of(state, envp);
    if check.complete() {
        return Decision::as_asked(envp);
    }
    let (pointers, bytes) = check.needs(state);
    let Some(mut arena) = Arena::new(pointers, bytes) else {
        return Decision::as_asked(envp);
    };
    match check.write(state, envp, &mut arena) {
        Some(fixed) => Decision {
            plan: Plan::AsAsked { envp: fixed },
            _arena: Some(arena),
        },
        None => Decision::as_asked(envp),
    }
}

fn ptrace(
    state: &State,
    target: &Target<'_>,
    shown: &[u8],
    choice: &Choice,
    argv: CArray,
    envp: CArray,
) -> Decision {
    let cfg = config::current();
    if cfg.mode == Mode::Observe {
        if cfg.exec_log {
            say_for(shown, "observe mode, not handing to ptrace", choice, "");
        }
        return keep_shim(state, envp);
    }
    let bin = supervisor::binary(state);
    if supervisor::is_self(bin) {
        // spinguard's own exec of the program it traces (the shim preloaded
        // into spinguard): already in hand.
        return Decision::as_asked(envp);
    }
    if let Some(t) = supervisor::tracer(bin) {
        if t.spinguard {
            if cfg.exec_log {
                let mut why = Line::raw();
                let _ = write!(why, " (traced by spinguard, pid {}, already)", t.pid);
                say_for(shown, "ptrace", choice, utf8(why.as_bytes()));
            }
        } else {
            let mut why = Line::raw();
            let _ = write!(
                why,
                ", and this process is traced by pid {} already (ptrace does not nest)",
                t.pid
            );
            not_guarded(shown, choice, utf8(why.as_bytes()));
        }
        return Decision::as_asked(envp);
    }
    let Some(bin) = bin else {
        let mut why = Line::raw();
        let _ = write!(
            why,
            ", and no spinguard binary was found to trace it (set {})",
            spinguard_common::env::BIN
        );
        not_guarded(shown, choice, utf8(why.as_bytes()));
        return Decision::as_asked(envp);
    };
    let Some(name) = target.name else {
        not_guarded(
            shown,
            choice,
            ", and it has no path to hand to spinguard run",
        );
        return Decision::as_asked(envp);
    };
    match handoff(state, bin, name, argv, envp, cfg.exec_log) {
        Some(d) => {
            if cfg.exec_log {
                say_for(
                    shown,
                    "ptrace",
                    choice,
                    "; handing it to spinguard run --mode ptrace",
                );
            }
            d
        }
        None => {
            not_guarded(
                shown,
                choice,
                ", and there was no memory to hand it to spinguard run",
            );
            Decision::as_asked(envp)
        }
    }
}

/// `BIN run --mode ptrace --raise-signal --argv0=ARGV0 [-v] -- NAME ARGS...`
/// with the environment `keep_shim` would give.
fn handoff(
    state: &State,
    bin: &CStr,
    name: &CStr,
    argv: CArray,
    envp: CArray,
    verbose: bool,
) -> Option<Decision> {
    const FIXED: [&CStr; 4] = [c"run", c"--mode", c"ptrace", c"--raise-signal"];
    let check = Check::of(state, envp);
    let (env_pointers, env_bytes) = check.needs(state);
    let argv0 = argv.get(0);
    let argc = argv.len();
    let name_b = name.to_bytes();
    // execve does not search PATH; run would, for a name without a slash.
    let dot = !name_b.contains(&b'/');
    let pointers = argc + FIXED.len() + 5 + env_pointers;
    let bytes = env_bytes + name_b.len() + 3 + argv0.map_or(0, |a| a.to_bytes().len() + 10);
    let mut arena = Arena::new(pointers, bytes)?;
    let mut out = arena.array(argc + FIXED.len() + 5)?;
    out.push(bin.as_ptr())?;
    for a in FIXED {
        out.push(a.as_ptr())?;
    }
    let program = if dot {
        arena.string(&[b"./", name_b])?
    } else {
        name.as_ptr()
    };
    if let Some(a0) = argv0 {
        if a0.to_bytes() != name_b {
            out.push(arena.string(&[b"--argv0=", a0.to_bytes()])?)?;
        }
    }
    if verbose {
        out.push(c"-v".as_ptr())?;
    }
    out.push(c"--".as_ptr())?;
    out.push(program)?;
    for a in argv.iter().skip(1) {
        out.push(a.as_ptr())?;
    }
    let argv = out.finish();
    let envp = if check.complete() {
        envp.as_ptr()
    } else {
        check.write(state, envp, &mut arena)?
    };
    Some(Decision {
        plan: Plan::Handoff {
            path: bin.as_ptr(),
            argv,
            envp,
        },
        _arena: Some(arena),
    })
}

fn utf8(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("")
}

/// `pid N: MECH for PATH: REASON[TAIL]`, with `SPINGUARD_LOG=exec` (run -v).
fn say_for(path: &[u8], mechanism: &str, choice: &Choice, tail: &str) {
    say(format_args!("{mechanism} for"), path, choice, tail);
}

/// The one line a program nothing guards gets, always: a gap is never silent.
fn not_guarded(path: &[u8], choice: &Choice, tail: &str) {
    say(format_args!("NOT guarded:"), path, choice, tail);
}

fn say(what: core::fmt::Arguments<'_>, path: &[u8], choice: &Choice, tail: &str) {
    let mut l = Line::new();
    let _ = write!(
        l,
        "pid {}: {what} {}: {choice}{tail}",
        sys::getpid(),
        Lossy(path)
    );
    l.emit();
}
