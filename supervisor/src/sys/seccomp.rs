//! The seccomp filter a spawned child installs before exec, built from the
//! one list of what is guarded ([`spinguard_common::bpf::GUARDED_COMMANDS`])
//! and the ABIs this build guards ([`Abi::GUARDED`]).
//!
//! It hands the tracer exactly the guarded bpf commands and nothing else: a
//! map lookup, like every other syscall, runs at full speed (measured: a
//! filter that traps every bpf call makes 1M map lookups 50x slower).
//!
//! ```text
//!         ld  [arch]
//!         jeq AUDIT_ARCH_X86_64, x86, next
//!         jeq AUDIT_ARCH_I386, i386, allow
//!   x86:  ld  [nr]
//!         jeq 321, cmd ; jeq 321|x32 bit, cmd ; ja allow
//!   i386: ld  [nr]
//!         jeq 357, cmd ; ja allow
//!   cmd:  ld  [args[0] low 32 bits]     ; the bpf command is an int
//!         jeq BPF_PROG_LOAD, trace ; jeq BPF_PROG_TEST_RUN, trace
//!   allow: ret SECCOMP_RET_ALLOW
//!   trace: ret SECCOMP_RET_TRACE | OUR_RET_DATA
//! ```
//!
//! [`OUR_RET_DATA`] marks our stops: a program that installs its own filter
//! returning SECCOMP_RET_TRACE makes seccomp stops too, with its own data,
//! and those must behave as they would without us (ENOSYS: no tracer of its
//! own answers them).

use super::arch::Abi;
use super::procfs;
use spinguard_common::bpf::GUARDED_COMMANDS;
use std::io;

/// SECCOMP_RET_DATA of our filter's trace verdict ("SG").
pub const OUR_RET_DATA: u16 = 0x5347;

// Offsets into `struct seccomp_data` (include/uapi/linux/seccomp.h).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const OFF_ARG0_LO: u32 = 16;
#[cfg(target_endian = "big")]
const OFF_ARG0_LO: u32 = 20;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Where a jump goes, before offsets are known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    Next,
    Label(usize),
}

/// A tiny assembler: instructions with symbolic forward jumps.
#[derive(Default)]
struct Asm {
    insns: Vec<(u16, u32, To, To)>,
    labels: Vec<usize>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(usize::MAX);
        self.labels.len() - 1
    }
    fn here(&mut self, label: usize) {
        self.labels[label] = self.insns.len();
    }
    fn ld(&mut self, off: u32) {
        self.insns.push((LD_W_ABS, off, To::Next, To::Next));
    }
    fn jeq(&mut self, k: u32, yes: To, no: To) {
        self.insns.push((JEQ_K, k, yes, no));
    }
    fn ja(&mut self, to: usize) {
        self.insns.push((JA, 0, To::Label(to), To::Next));
    }
    fn ret(&mut self, k: u32) {
        self.insns.push((RET_K, k, To::Next, To::Next));
    }
    fn finish(self) -> Vec<libc::sock_filter> {
        let labels = self.labels;
        self.insns
            .iter()
            .enumerate()
            .map(|(i, &(code, k, jt, jf))| {
                let off = |to: To| match to {
                    To::Next => 0,
                    To::Label(l) => labels[l] - (i + 1),
                };
                if code == JA {
                    libc::sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k: off(jt) as u32,
                    }
                } else {
                    let (t, f) = (off(jt), off(jf));
                    assert!(
                        t < 256 && f < 256,
                        "classic BPF conditional jumps reach 255 ahead"
                    );
                    libc::sock_filter {
                        code,
                        jt: t as u8,
                        jf: f as u8,
                        k,
                    }
                }
            })
            .collect()
    }
}

/// A classic-BPF seccomp program, built before fork so that installing it
/// allocates nothing.
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

impl Filter {
    /// SECCOMP_RET_TRACE (with [`OUR_RET_DATA`]) for `bpf(cmd, ..)` in every
    /// ABI of [`Abi::GUARDED`] with `cmd` one of the guarded commands; ALLOW
    /// for everything else, other architectures included.
    pub fn guard() -> Filter {
        let mut a = Asm::default();
        let (allow, trace, cmd) = (a.label(), a.label(), a.label());
        // One block per audit arch, testing the bpf numbers of its ABIs.
        let mut arches: Vec<(u32, Vec<u64>)> = Vec::new();
        for abi in Abi::GUARDED {
            match arches
                .iter_mut()
                .find(|(arch, _)| *arch == abi.audit_arch())
            {
                Some((_, nrs)) => nrs.push(abi.nr_bpf()),
                None => arches.push((abi.audit_arch(), vec![abi.nr_bpf()])),
            }
        }
        let blocks: Vec<usize> = arches.iter().map(|_| a.label()).collect();
        a.ld(OFF_ARCH);
        for (i, (arch, _)) in arches.iter().enumerate() {
            let no = if i + 1 == arches.len() {
                To::Label(allow)
            } else {
                To::Next
            };
            a.jeq(*arch, To::Label(blocks[i]), no);
        }
        for (i, (_, nrs)) in arches.iter().enumerate() {
            a.here(blocks[i]);
            a.ld(OFF_NR);
            for &nr in nrs {
                a.jeq(nr as u32, To::Label(cmd), To::Next);
            }
            a.ja(allow);
        }
        a.here(cmd);
        a.ld(OFF_ARG0_LO);
        for &c in &GUARDED_COMMANDS {
            a.jeq(c, To::Label(trace), To::Next);
        }
        a.here(allow);
        a.ret(libc::SECCOMP_RET_ALLOW);
        a.here(trace);
        a.ret(libc::SECCOMP_RET_TRACE | u32::from(OUR_RET_DATA));
        Filter { insns: a.finish() }
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The same filter with its TRACE verdict replaced by ALLOW: it runs the
    /// same instructions on every syscall and never stops one. Benchmarks use
    /// it to measure what the filter itself costs, apart from the tracer.
    pub fn never_trapping(mut self) -> Filter {
        for insn in &mut self.insns {
            if insn.code == RET_K
                && insn.k & libc::SECCOMP_RET_ACTION_FULL == libc::SECCOMP_RET_TRACE
            {
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
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
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
    procfs::own_capabilities() & (1 << CAP_SYS_ADMIN) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::arch::{AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT};

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
                JA => pc += 1 + i.k as usize,
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn traces_only_guarded_bpf_commands_in_every_abi() {
        let f = Filter::guard();
        let bpf = libc::SYS_bpf as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        let trace = libc::SECCOMP_RET_TRACE | u32::from(OUR_RET_DATA);
        let x86 = AUDIT_ARCH_X86_64;
        assert_eq!(eval(&f, x86, bpf, 5), trace);
        assert_eq!(eval(&f, x86, bpf, 10), trace);
        assert_eq!(eval(&f, x86, bpf, 1), allow, "map lookup");
        // Only the low 32 bits are the command; junk above them does not matter.
        assert_eq!(eval(&f, x86, bpf, 0xdead_0000_0000_0005), trace);
        assert_eq!(eval(&f, x86, libc::SYS_getppid as u32, 5), allow);
        assert_eq!(eval(&f, x86, bpf | X32_SYSCALL_BIT as u32, 5), trace, "x32");
        assert_eq!(eval(&f, AUDIT_ARCH_I386, 357, 5), trace, "i386 bpf");
        assert_eq!(eval(&f, AUDIT_ARCH_I386, 357, 1), allow, "i386 map lookup");
        assert_eq!(
            eval(&f, AUDIT_ARCH_I386, bpf, 5),
            allow,
            "i386 321 is not bpf"
        );
        assert_eq!(eval(&f, 0xc000_00b7, bpf, 5), allow, "another arch");
        let never = Filter::guard().never_trapping();
        assert_eq!(eval(&never, x86, bpf, 5), allow);
    }
}
