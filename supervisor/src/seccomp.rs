//! The seccomp filter a spawned child installs before exec.
//!
//! It hands the tracer exactly the guarded bpf commands and nothing else:
//! a map lookup, like every other syscall, runs at full speed (measured: a
//! filter that traps every bpf call makes 1M map lookups 50x slower).
//!
//! ```text
//!   ld  [arch]                 ; seccomp_data.arch
//!   jne AUDIT_ARCH, allow      ; a foreign ABI (i386 on x86_64) is not ours to judge
//!   ld  [nr]
//!   jne __NR_bpf, allow
//!   ld  [args[0] low 32 bits]  ; the bpf command is an int
//!   jeq cmd1, trace
//!   jeq cmd2, trace ...
//! allow: ret SECCOMP_RET_ALLOW
//! trace: ret SECCOMP_RET_TRACE
//! ```

use crate::arch::{AUDIT_ARCH, NR_BPF};
use std::io;

// Offsets into `struct seccomp_data` (include/uapi/linux/seccomp.h).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const OFF_ARG0_LO: u32 = 16;
#[cfg(target_endian = "big")]
const OFF_ARG0_LO: u32 = 20;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// A classic-BPF seccomp program, built before fork so that installing it
/// allocates nothing.
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl Filter {
    /// SECCOMP_RET_TRACE for `bpf(cmd, ..)` with `cmd` in `commands`, ALLOW for
    /// everything else.
    pub fn trace_bpf_commands(commands: &[u32]) -> Filter {
        assert!(
            !commands.is_empty() && commands.len() < 200,
            "jump offsets are u8"
        );
        let n = commands.len();
        // Instruction indexes: 0..=4 header, 5..5+n the command tests, then the two returns.
        let allow = 5 + n;
        let trace = allow + 1;
        let off = |from: usize, to: usize| (to - (from + 1)) as u8;
        let mut insns = vec![
            stmt(LD_W_ABS, OFF_ARCH),
            jump(JEQ_K, AUDIT_ARCH, 0, off(1, allow)),
            stmt(LD_W_ABS, OFF_NR),
            jump(JEQ_K, NR_BPF as u32, 0, off(3, allow)),
            stmt(LD_W_ABS, OFF_ARG0_LO),
        ];
        for (i, &cmd) in commands.iter().enumerate() {
            insns.push(jump(JEQ_K, cmd, off(5 + i, trace), 0));
        }
        insns.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
        insns.push(stmt(RET_K, libc::SECCOMP_RET_TRACE));
        Filter { insns }
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The same filter with SECCOMP_RET_TRACE replaced by ALLOW: it runs the
    /// same instructions on every syscall and never stops one. Benchmarks use
    /// it to measure what the filter itself costs, apart from the tracer.
    pub fn never_trapping(mut self) -> Filter {
        for insn in &mut self.insns {
            if insn.code == RET_K && insn.k == libc::SECCOMP_RET_TRACE {
                insn.k = libc::SECCOMP_RET_ALLOW;
            }
        }
        self
    }

    /// Installs the filter on the calling thread (and, at exec, the process).
    /// Needs CAP_SYS_ADMIN or no_new_privs. Async-signal-safe: called between
    /// fork and exec.
    ///
    /// SECCOMP_FILTER_FLAG_SPEC_ALLOW: where the kernel runs with
    /// `spec_store_bypass_disable=seccomp` (the x86 default before 5.16 on
    /// affected CPUs), installing a filter otherwise also turns on the
    /// speculative-store-bypass mitigation for the whole process, which slows
    /// every instruction it runs, not just its syscalls. This filter is not a
    /// sandbox (it only picks which syscalls the tracer sees), so it must not
    /// change how the program runs. seccomp(2): "SECCOMP_FILTER_FLAG_SPEC_ALLOW
    /// (since Linux 4.17) Disable Speculative Store Bypass mitigation." Older
    /// kernels reject the flag with EINVAL, and have no such mitigation to
    /// avoid: fall back to the plain prctl there.
    pub fn install(&self) -> io::Result<()> {
        const SECCOMP_SET_MODE_FILTER: libc::c_long = 1;
        const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_long = 1 << 2;
        let prog = libc::sock_fprog {
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at our instructions, which outlive the call;
        // the kernel copies them. A raw syscall: glibc has no seccomp() wrapper.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                SECCOMP_FILTER_FLAG_SPEC_ALLOW,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err);
        }
        // SAFETY: as above.
        let ret = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Sets no_new_privs on the calling thread (async-signal-safe). seccomp(2):
/// "the caller must have the CAP_SYS_ADMIN capability in its user namespace,
/// or the thread must already have the no_new_privs bit set".
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: plain integer arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process has CAP_SYS_ADMIN in its effective set (read from
/// /proc/self/status, which is what the kernel's own `capable()` consults).
pub fn have_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program on a seccomp_data, the way the kernel would.
    fn eval(f: &Filter, arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = f.insns[pc];
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                JEQ_K => pc += 1 + if acc == i.k { i.jt } else { i.jf } as usize,
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn traces_only_guarded_bpf_commands() {
        let f = Filter::trace_bpf_commands(&[5, 10]);
        let bpf = NR_BPF as u32;
        let (allow, trace) = (libc::SECCOMP_RET_ALLOW, libc::SECCOMP_RET_TRACE);
        assert_eq!(eval(&f, AUDIT_ARCH, bpf, 5), trace);
        assert_eq!(eval(&f, AUDIT_ARCH, bpf, 10), trace);
        assert_eq!(eval(&f, AUDIT_ARCH, bpf, 1), allow, "map lookup");
        // Only the low 32 bits are the command; junk above them does not matter.
        assert_eq!(eval(&f, AUDIT_ARCH, bpf, 0xdead_0000_0000_0005), trace);
        assert_eq!(eval(&f, AUDIT_ARCH, libc::SYS_getppid as u32, 5), allow);
        assert_eq!(eval(&f, 0x4000_0003, bpf, 5), allow, "i386 ABI");
    }
}
