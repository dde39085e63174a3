//! The process to attach to, checked before anything touches it, and why
//! the kernel said no when it did.

use crate::error::AttachError;
use crate::sys::{self, procfs, Tid};

/// What /proc says about the target before we touch it.
#[derive(Clone, Debug)]
pub struct Target {
    /// The process id (the thread-group id, also when a thread id was given).
    pub pid: Tid,
    /// The tid given, when it was a thread of `pid` rather than `pid` itself.
    pub given_thread: Option<Tid>,
    pub name: String,
    pub uid: u32,
}

/// The short name of a process (`comm`), or "?" when it is gone.
pub fn process_name(pid: Tid) -> String {
    procfs::process_name(pid)
}

/// The pid of the tracer of `tid`, 0 when none.
pub fn tracer_of(tid: Tid) -> Tid {
    procfs::status(tid).map_or(0, |s| s.tracer)
}

/// Checks the target: it exists, is a live user process, is not us, is not
/// traced by someone else. (Permission is only known when the seize is tried;
/// [`explain_eperm`] says why it failed.)
pub fn check_target(pid: Tid) -> Result<Target, AttachError> {
    if pid <= 0 {
        return Err(AttachError::NoSuchProcess { pid });
    }
    let given = procfs::status(pid).ok_or(AttachError::NoSuchProcess { pid })?;
    let tgid = if given.tgid > 0 { given.tgid } else { pid };
    if tgid == sys::getpid() {
        return Err(AttachError::Ourselves { pid });
    }
    let status = if tgid != pid {
        procfs::status(tgid).ok_or(AttachError::NoSuchProcess { pid })?
    } else {
        given
    };
    let name = status.name.clone();
    if status.is_dead() {
        // A zombie leader (it called pthread_exit) whose other threads still
        // run is still a process, and those threads are what we trace.
        let live_threads = procfs::threads(tgid)
            .map(|t| {
                t.into_iter()
                    .filter(|&t| {
                        t != tgid && procfs::thread_status(tgid, t).is_some_and(|s| !s.is_dead())
                    })
                    .count()
            })
            .unwrap_or(0);
        if live_threads == 0 {
            return Err(AttachError::Zombie {
                pid: tgid,
                name,
                parent: status.ppid,
            });
        }
    }
    // `Kthread:` (Linux 6.x) says so. Before it, a kernel thread is
    // kthreadd (pid 2) or its child, but only in the initial PID namespace:
    // in any other (a container, `kubectl debug --target`) pid 2 is an
    // ordinary process, and kernel threads are not visible at all.
    let kthreadd = procfs::in_initial_pid_namespace() && (status.ppid == 2 || tgid == 2);
    if status.kthread || kthreadd {
        return Err(AttachError::KernelThread { pid: tgid });
    }
    if status.tracer != 0 {
        return Err(AttachError::AlreadyTraced {
            pid: tgid,
            name,
            tracer: status.tracer,
            tracer_name: process_name(status.tracer),
        });
    }
    Ok(Target {
        pid: tgid,
        given_thread: (tgid != pid).then_some(pid),
        name,
        uid: status.uid,
    })
}

/// linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;

/// Why PTRACE_SEIZE said EPERM, in the user's terms.
pub fn explain_eperm(target: &Target) -> AttachError {
    let tracer = tracer_of(target.pid);
    if tracer != 0 {
        return AttachError::AlreadyTraced {
            pid: target.pid,
            name: target.name.clone(),
            tracer,
            tracer_name: process_name(tracer),
        };
    }
    let euid = sys::geteuid();
    let has_cap_sys_ptrace = procfs::own_capabilities() & (1 << CAP_SYS_PTRACE) != 0;
    let scope = procfs::yama_ptrace_scope();
    let why = if scope == Some(3) {
        "ptrace is disabled on this machine (kernel.yama.ptrace_scope = 3)".to_string()
    } else if !has_cap_sys_ptrace && euid != target.uid {
        format!(
            "spinguard runs as uid {euid} without CAP_SYS_PTRACE, and the process belongs to uid {} (run spinguard as root)",
            target.uid
        )
    } else if !has_cap_sys_ptrace && scope.unwrap_or(0) >= 1 {
        format!(
            "spinguard runs as uid {euid} without CAP_SYS_PTRACE, and kernel.yama.ptrace_scope = {} lets such a process trace only its own descendants (run spinguard as root)",
            scope.unwrap_or(0)
        )
    } else if !has_cap_sys_ptrace {
        format!(
            "spinguard runs as uid {euid} without CAP_SYS_PTRACE, and the process is not dumpable or changed credentials (setuid, file capabilities): run spinguard as root"
        )
    } else {
        "the kernel refused (a security module such as SELinux or AppArmor, or a process that is exiting)".to_string()
    };
    AttachError::NotPermitted {
        pid: target.pid,
        name: target.name.clone(),
        why,
    }
}
