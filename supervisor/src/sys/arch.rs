//! What differs between architectures and syscall ABIs: the seccomp/audit
//! architecture tokens, the bpf syscall number in each syscall table, the
//! register file and how to make a thread run a syscall again.
//!
//! x86_64 has three syscall ABIs, all reachable from one 64-bit process:
//! the native one (`syscall`), x32 (`syscall` with bit 30 set in the number)
//! and i386 (`int 0x80` from any code, or `sysenter` through the vDSO of a
//! 32-bit process). bpf is 321 natively and in x32 (plus the x32 bit), and
//! 357 in the i386 table (arch/x86/entry/syscalls/syscall_32.tbl), where the
//! arguments travel in ebx, ecx, edx, esi, edi, ebp. A 64-bit tracer sees
//! the registers of a 32-bit tracee in the 64-bit layout.

/// `AUDIT_ARCH_X86_64`: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`: EM_386 | __AUDIT_ARCH_LE.
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`: EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
pub const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
/// `__X32_SYSCALL_BIT`: x32 calls are native numbers with this bit set.
pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// The syscall table a call went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Abi {
    /// The process's own 64-bit table.
    Native,
    /// x86_64's x32 table (64-bit registers, 32-bit pointers).
    X32,
    /// The i386 table: a 32-bit program, or `int 0x80` from 64-bit code.
    I386,
}

impl Abi {
    /// The ABIs this build can guard.
    #[cfg(target_arch = "x86_64")]
    pub const GUARDED: [Abi; 3] = [Abi::Native, Abi::X32, Abi::I386];
    #[cfg(target_arch = "aarch64")]
    pub const GUARDED: [Abi; 1] = [Abi::Native];

    /// The architecture token seccomp and PTRACE_GET_SYSCALL_INFO report.
    pub const fn audit_arch(self) -> u32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Abi::Native | Abi::X32 => AUDIT_ARCH_X86_64,
            #[cfg(target_arch = "aarch64")]
            Abi::Native | Abi::X32 => AUDIT_ARCH_AARCH64,
            Abi::I386 => AUDIT_ARCH_I386,
        }
    }

    /// `__NR_bpf` in this ABI's table (with the x32 bit for x32).
    pub const fn nr_bpf(self) -> u64 {
        match self {
            Abi::Native => libc::SYS_bpf as u64,
            Abi::X32 => libc::SYS_bpf as u64 | X32_SYSCALL_BIT,
            Abi::I386 => 357,
        }
    }

    /// The ABI of a call from its audit arch and number, as seccomp and
    /// PTRACE_GET_SYSCALL_INFO give them. None for an arch we do not know.
    pub fn from_audit(arch: u32, nr: u64) -> Option<Abi> {
        match arch {
            AUDIT_ARCH_I386 if cfg!(target_arch = "x86_64") => Some(Abi::I386),
            AUDIT_ARCH_X86_64 if cfg!(target_arch = "x86_64") => {
                Some(if nr & X32_SYSCALL_BIT != 0 {
                    Abi::X32
                } else {
                    Abi::Native
                })
            }
            AUDIT_ARCH_AARCH64 if cfg!(target_arch = "aarch64") => Some(Abi::Native),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Abi::Native => "native",
            Abi::X32 => "x32",
            Abi::I386 => "i386",
        }
    }
}

/// Length of the syscall instruction: `syscall` (0f 05), `int 0x80` (cd 80)
/// and, for `sysenter` in the 32-bit vDSO, the `int 0x80` the kernel returns
/// past ("SYSENTER_RETURN"), are all 2 bytes; `svc #0` is one 32-bit word.
/// At a stop after the syscall the instruction pointer is just past it.
#[cfg(target_arch = "x86_64")]
pub const SYSCALL_INSN_LEN: u64 = 2;
#[cfg(target_arch = "aarch64")]
pub const SYSCALL_INSN_LEN: u64 = 4;

/// `int 0x80`.
pub const INT80: [u8; 2] = [0xcd, 0x80];

/// The general registers as NT_PRSTATUS lays them out.
#[derive(Clone, Copy)]
pub struct Regs(pub(super) libc::user_regs_struct);

impl std::fmt::Debug for Regs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Regs {{ ip: {:#x}, sp: {:#x} }}", self.ip(), self.sp())
    }
}

impl Regs {
    pub const SIZE: usize = std::mem::size_of::<libc::user_regs_struct>();

    pub fn zeroed() -> Regs {
        // SAFETY: user_regs_struct is plain integers; all-zero is valid.
        Regs(unsafe { std::mem::zeroed() })
    }

    pub fn ip(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        return self.0.rip;
        #[cfg(target_arch = "aarch64")]
        return self.0.pc;
    }

    pub fn sp(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        return self.0.rsp;
        #[cfg(target_arch = "aarch64")]
        return self.0.sp;
    }

    /// The number of the syscall this thread last entered the kernel with
    /// (orig_rax), at any stop on its way back to user space. None when it
    /// last entered by something else (an interrupt or fault: orig_rax is
    /// -1 or ~vector), and on aarch64, which does not expose it here.
    pub fn syscall_nr(&self) -> Option<u64> {
        #[cfg(target_arch = "x86_64")]
        return (self.0.orig_rax as i64 >= 0).then_some(self.0.orig_rax);
        #[cfg(target_arch = "aarch64")]
        return None;
    }

    /// The return register (`-errno` on error once the syscall returned;
    /// -ENOSYS at a syscall-entry stop on x86).
    pub fn ret(&self) -> i64 {
        #[cfg(target_arch = "x86_64")]
        return self.0.rax as i64;
        #[cfg(target_arch = "aarch64")]
        return self.0.regs[0] as i64;
    }

    /// The six syscall arguments of `abi`. Valid at entry stops, and after
    /// the return on x86 (the kernel preserves the argument registers; only
    /// rax, rcx and r11 change). On aarch64 x0 holds the return value then.
    pub fn args(&self, abi: Abi) -> [u64; 6] {
        #[cfg(target_arch = "x86_64")]
        {
            let r = &self.0;
            match abi {
                Abi::I386 => [r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp].map(|v| v & 0xffff_ffff),
                Abi::Native | Abi::X32 => [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9],
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let _ = abi;
            let r = &self.0.regs;
            [r[0], r[1], r[2], r[3], r[4], r[5]]
        }
    }

    /// The ABI of the syscall this thread is in or just left, from the
    /// registers alone (no PTRACE_GET_SYSCALL_INFO): the 32-bit code segment
    /// of an i386 process (USER32_CS, 0x23), `int 0x80` right before the
    /// instruction pointer, the x32 bit in the number. `insn_before_ip`: the
    /// two bytes before the instruction pointer, if readable.
    pub fn abi(&self, insn_before_ip: Option<[u8; 2]>) -> Abi {
        #[cfg(target_arch = "x86_64")]
        {
            const USER32_CS: u64 = 0x23;
            if self.0.cs == USER32_CS || insn_before_ip == Some(INT80) {
                Abi::I386
            } else if self.0.orig_rax & X32_SYSCALL_BIT != 0 && self.0.orig_rax as i64 > 0 {
                Abi::X32
            } else {
                Abi::Native
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let _ = insn_before_ip;
            Abi::Native
        }
    }

    /// At a syscall-enter-stop or seccomp stop: make the kernel skip the
    /// syscall ("the tracer may skip the system call by changing the syscall
    /// number to -1", seccomp(2)); it returns what is in the return register,
    /// -ENOSYS at that point. False where we do not know how (aarch64 needs
    /// the NT_ARM_SYSTEM_CALL regset).
    pub fn skip_syscall(&mut self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.0.orig_rax = u64::MAX;
            true
        }
        #[cfg(target_arch = "aarch64")]
        false
    }

    /// Turns a stop after a syscall returned (its exit stop, or a
    /// signal-delivery stop on the way out) into "about to execute the same
    /// syscall again": the instruction pointer back over the syscall
    /// instruction, the number back where the entry code reads it. x86
    /// keeps the arguments (only rax changed); aarch64 returned in x0, so
    /// `args[0]` comes from the stop that started the call. The kernel does
    /// the same for -ERESTARTNOINTR (arch/x86/kernel/signal.c).
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn rewind_steps_back_one_instruction() {
        let mut r = Regs::zeroed();
        r.0.rip = 0x1000;
        r.0.rax = (-11i64) as u64;
        r.0.orig_rax = 321;
        r.rewind_syscall(321, &[5, 0, 0, 0, 0, 0]);
        assert_eq!(r.ip(), 0x1000 - SYSCALL_INSN_LEN);
        assert_eq!((r.0.rax, r.syscall_nr()), (321, Some(321)));
    }

    #[test]
    fn abis_from_registers_and_audit() {
        let mut r = Regs::zeroed();
        r.0.cs = 0x33;
        r.0.orig_rax = 321;
        assert_eq!(r.abi(Some([0x0f, 0x05])), Abi::Native);
        assert_eq!(r.abi(Some(INT80)), Abi::I386);
        r.0.cs = 0x23;
        assert_eq!(r.abi(None), Abi::I386);
        r.0.cs = 0x33;
        r.0.orig_rax = 321 | X32_SYSCALL_BIT;
        assert_eq!(r.abi(None), Abi::X32);
        r.0.orig_rax = u64::MAX;
        assert_eq!(r.syscall_nr(), None);
        assert_eq!(Abi::from_audit(AUDIT_ARCH_I386, 357), Some(Abi::I386));
        assert_eq!(
            Abi::from_audit(AUDIT_ARCH_X86_64, 321 | X32_SYSCALL_BIT),
            Some(Abi::X32)
        );
        assert_eq!(Abi::from_audit(AUDIT_ARCH_AARCH64, 280), None);
        assert_eq!(Abi::I386.nr_bpf(), 357);
        r.0.rbx = 0xdead_0000_0005;
        assert_eq!(r.args(Abi::I386)[0], 5);
    }
}
