//! The guard at seccomp stops (`spinguard run`'s default).
//!
//! The program runs our filter (sys/seccomp.rs): a guarded bpf call in any
//! ABI stops at its entry with our SECCOMP_RET_DATA, nothing else stops.
//! Every thread runs under PTRACE_CONT; a thread in the kernel in a call is
//! resumed with PTRACE_SYSCALL so that its exit stop comes ([`Calls`]).
//!
//! A seccomp stop with other data comes from the program's own filter
//! (SECCOMP_RET_TRACE for a tracer it does not have): the syscall is skipped
//! and returns -ENOSYS, as seccomp(2) says it does when no tracer is there.

use super::calls::Calls;
use super::policy::GuardPolicy;
use super::{Cx, Engine, Spawn};
use crate::event::Event;
use crate::sys::ptrace::{PtraceError, Resume};
use crate::sys::Tid;
use crate::tracee::{Stop, Stopped};

pub struct SeccompGuard {
    calls: Calls,
}

impl SeccompGuard {
    pub fn new(policy: GuardPolicy) -> SeccompGuard {
        SeccompGuard {
            calls: Calls::new(policy),
        }
    }
}

impl Engine for SeccompGuard {
    fn spawn(&self) -> Spawn {
        Spawn::Filtered
    }

    fn left(&mut self, tid: Tid) {
        self.calls.forget(tid);
    }

    fn exec(&mut self, pid: Tid, former: Tid) {
        self.calls.forget(pid);
        self.calls.forget(former);
    }

    fn stop(
        &mut self,
        cx: &mut Cx,
        task: &Stopped,
        pid: Tid,
        stop: &Stop,
    ) -> Result<i32, PtraceError> {
        match *stop {
            Stop::Seccomp { call, ours: true } => {
                if let Some(cmd) = GuardPolicy::guarded_command(&call) {
                    self.calls.enter(cx, task, pid, &call, cmd)?;
                }
                Ok(0)
            }
            Stop::Seccomp { call, ours: false } => {
                let mut regs = task.regs()?;
                if regs.skip_syscall() {
                    task.set_regs(&regs)?;
                }
                cx.stats.foreign_seccomp_stops += 1;
                cx.emit(Event::ForeignTrace {
                    pid,
                    tid: task.tid(),
                    nr: call.nr,
                });
                Ok(0)
            }
            Stop::SyscallExit { ret } => {
                self.calls.exit(cx, task, pid, ret)?;
                Ok(0)
            }
            Stop::Signal(sig) => {
                self.calls.signal(cx, task, pid)?;
                Ok(sig)
            }
            _ => Ok(0),
        }
    }

    fn resume_mode(&self, tid: Tid) -> Resume {
        // A rewound call comes back through our seccomp stop: no syscall
        // stops needed for it.
        if self.calls.in_kernel(tid) {
            Resume::Syscall
        } else {
            Resume::Cont
        }
    }

    fn busy(&self, tid: Tid) -> bool {
        self.calls.busy(tid)
    }

    fn releasing(&mut self) {
        self.calls.release();
    }
}
