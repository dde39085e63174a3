//! What differs between x86_64 and aarch64: the seccomp architecture token,
//! the bpf syscall number, and how to make a thread run a syscall again.

/// `AUDIT_ARCH_*` (include/uapi/linux/audit.h) of native syscalls, as seccomp
/// and PTRACE_GET_SYSCALL_INFO report it.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xc000_003e; // EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xc000_00b7; // EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE

/// `__NR_bpf` on this architecture.
pub const NR_BPF: u64 = libc::SYS_bpf as u64;

/// Length of the syscall instruction: `syscall` is 0f 05, `svc #0` is one
/// 32-bit word. At syscall-exit-stop the instruction pointer is just past it.
#[cfg(target_arch = "x86_64")]
pub const SYSCALL_INSN_LEN: u64 = 2;
#[cfg(target_arch = "aarch64")]
pub const SYSCALL_INSN_LEN: u64 = 4;

/// The general registers as NT_PRSTATUS lays them out.
#[derive(Clone, Copy)]
pub struct Regs(libc::user_regs_struct);

impl Regs {
    pub const SIZE: usize = std::mem::size_of::<libc::user_regs_struct>();

    pub fn zeroed() -> Regs {
        // SAFETY: user_regs_struct is plain integers; all-zero is valid.
        Regs(unsafe { std::mem::zeroed() })
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        (&mut self.0 as *mut libc::user_regs_struct).cast()
    }

    /// The instruction pointer.
    pub fn ip(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        return self.0.rip;
        #[cfg(target_arch = "aarch64")]
        return self.0.pc;
    }

    /// At a stop on the way back from a syscall (a PTRACE_INTERRUPT that
    /// caught the thread inside one): the syscall number, its return value
    /// and its first argument. None when the thread last entered the kernel
    /// by something else (x86_64 then has -1 or an interrupt vector in
    /// orig_rax), and always on aarch64, whose x0 holds the return value in
    /// place of the first argument.
    pub fn last_syscall(&self) -> Option<(u64, i64, u64)> {
        #[cfg(target_arch = "x86_64")]
        return (self.0.orig_rax as i64 >= 0).then_some((
            self.0.orig_rax,
            self.0.rax as i64,
            self.0.rdi,
        ));
        #[cfg(target_arch = "aarch64")]
        return None;
    }

    /// At a syscall-enter-stop: make the kernel skip the syscall (it returns
    /// -ENOSYS and reports the exit stop). False where we do not know how
    /// (aarch64 needs the NT_ARM_SYSTEM_CALL regset).
    pub fn skip_syscall(&mut self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.0.orig_rax = u64::MAX; // -1: "no syscall"
            true
        }
        #[cfg(target_arch = "aarch64")]
        false
    }

    /// Turns a syscall-exit-stop into "about to execute the same syscall
    /// again": step the instruction pointer back over the syscall instruction
    /// and put the syscall number and first argument back where the entry
    /// code reads them. x86_64 keeps the arguments in rdi..r9 (the return
    /// value only overwrote rax; orig_rax still holds the number). aarch64
    /// returns in x0, overwriting the first argument, so `args[0]` comes from
    /// the stop that started the call.
    pub fn rewind_syscall(&mut self, nr: u64, args: &[u64; 6]) {
        #[cfg(target_arch = "x86_64")]
        {
            let _ = args;
            self.0.rip -= SYSCALL_INSN_LEN;
            self.0.rax = nr;
            self.0.orig_rax = nr;
        }
        #[cfg(target_arch = "aarch64")]
        {
            self.0.pc -= SYSCALL_INSN_LEN;
            self.0.regs[8] = nr;
            self.0.regs[0] = args[0];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_steps_back_one_instruction() {
        let mut r = Regs::zeroed();
        #[cfg(target_arch = "x86_64")]
        {
            r.0.rip = 0x1000;
            r.0.rax = (-11i64) as u64;
        }
        #[cfg(target_arch = "aarch64")]
        {
            r.0.pc = 0x1000;
            r.0.regs[0] = (-11i64) as u64;
        }
        r.rewind_syscall(NR_BPF, &[5, 0, 0, 0, 0, 0]);
        assert_eq!(r.ip(), 0x1000 - SYSCALL_INSN_LEN);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(r.0.rax, NR_BPF);
        #[cfg(target_arch = "aarch64")]
        assert_eq!((r.0.regs[8], r.0.regs[0]), (NR_BPF, 5));
    }
}
