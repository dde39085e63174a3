//! Who to suspect, for nothing: every signal delivery on the host, sampled
//! by perf with the receiving thread's user registers. A thread that takes a
//! signal right after a syscall returned EAGAIN or EINTR (the return value is
//! still in its return register) may be a loader the verifier just gave up
//! on; watch then turns bpf(2) counting on. Processes that get no signals
//! (and so cannot be in the livelock) never pay for syscall tracing.
//!
//! perf, not eBPF, because a tracepoint program sees the tracepoint's record,
//! not the thread's user registers (reading them from the task's kernel stack
//! would need the kernel's struct layouts, i.e. BTF).

use crate::error::ProbeError;
use crate::sys::{self, PerfEventAttr, Ring, PERF_TYPE_TRACEPOINT};
use crate::tracefs::Tracepoint;
use std::os::fd::OwnedFd;

const PERF_SAMPLE_TID: u64 = 1 << 1;
const PERF_SAMPLE_REGS_USER: u64 = 1 << 12;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// `enum perf_sample_regs_abi`.
const ABI_32: u64 = 1;

/// The user registers sampled, in the kernel's bit order for this arch:
/// the syscall return register, then the instruction pointer.
#[cfg(target_arch = "x86_64")]
const REGS: u64 = (1 << 0) | (1 << 8); // PERF_REG_X86_AX, PERF_REG_X86_IP
#[cfg(target_arch = "aarch64")]
const REGS: u64 = (1 << 0) | (1 << 32); // PERF_REG_ARM64_X0, PERF_REG_ARM64_PC

/// Data pages per CPU: at ~32 bytes a sample, about a thousand samples
/// between two reads.
const RING_PAGES: usize = 8;

/// A thread that took a signal right after a syscall failed with EAGAIN or
/// EINTR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suspect {
    pub pid: i32,
    pub tid: i32,
    /// A 32-bit (compat) thread: its bpf calls bypass the syscalls:* tracepoints.
    pub compat: bool,
    /// The errno the syscall returned.
    pub errno: i32,
}

pub struct Trigger {
    rings: Vec<(OwnedFd, Ring)>,
    buf: Vec<u8>,
    /// Samples the kernel could not write (a ring was full).
    pub lost: u64,
    /// Deliveries sampled in all.
    pub samples: u64,
}

/// The CPUs perf can open events on (`/sys/devices/system/cpu/online`, "0-3,6").
pub fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
            cpus.extend(a..=b);
        }
    }
    if cpus.is_empty() {
        cpus.push(0);
    }
    cpus
}

impl Trigger {
    /// A sampling event on `deliver` (signal:signal_deliver) on every CPU.
    pub fn open(deliver: &Tracepoint) -> Result<Trigger, ProbeError> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            config: deliver.id,
            sample_period: 1,
            sample_type: PERF_SAMPLE_TID | PERF_SAMPLE_REGS_USER,
            sample_regs_user: REGS,
            ..Default::default()
        };
        let mut rings = Vec::new();
        for cpu in online_cpus() {
            let fd = sys::perf_event_open_cpu(&attr, cpu).map_err(|e| match e.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => ProbeError::NotPermitted,
                _ => ProbeError::io(format!("perf_event_open on CPU {cpu}"), e),
            })?;
            let ring = Ring::map(&fd, RING_PAGES).map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::EPERM) {
                    " (more locked memory than kernel.perf_event_mlock_kb and RLIMIT_MEMLOCK allow: grant CAP_IPC_LOCK, or CAP_SYS_RESOURCE to raise the limit)"
                } else {
                    ""
                };
                ProbeError::io(format!("mapping the perf buffer of CPU {cpu}{why}"), e)
            })?;
            rings.push((fd, ring));
        }
        Ok(Trigger {
            rings,
            buf: Vec::new(),
            lost: 0,
            samples: 0,
        })
    }

    /// The suspects sampled since the last call (one per thread, in order).
    pub fn drain(&mut self) -> Vec<Suspect> {
        let mut out: Vec<Suspect> = Vec::new();
        for (_, ring) in &mut self.rings {
            self.buf.clear();
            ring.drain(&mut self.buf);
            let (samples, lost) = parse_records(&self.buf, &mut |s| {
                if !out.iter().any(|o| o.tid == s.tid) {
                    out.push(s);
                }
            });
            self.samples += samples;
            self.lost += lost;
        }
        out
    }
}

/// Walks perf records: each sample whose return register holds -EAGAIN or
/// -EINTR goes to `suspect`. Returns (samples seen, samples lost).
fn parse_records(buf: &[u8], suspect: &mut dyn FnMut(Suspect)) -> (u64, u64) {
    let (mut samples, mut lost) = (0, 0);
    let mut at = 0;
    let word = |b: &[u8], o: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?))
    };
    while at + 8 <= buf.len() {
        let ty = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let size = u16::from_ne_bytes(buf[at + 6..at + 8].try_into().expect("2 bytes")) as usize;
        if size < 8 || at + size > buf.len() {
            break;
        }
        let rec = &buf[at + 8..at + size];
        match ty {
            PERF_RECORD_SAMPLE => {
                samples += 1;
                // pid, tid (u32 each), then abi and, unless abi is NONE (a
                // kernel thread), the registers in bit order.
                let ids = word(rec, 0).unwrap_or(0);
                let (pid, tid) = (ids as u32 as i32, (ids >> 32) as u32 as i32);
                let abi = word(rec, 8).unwrap_or(0);
                if let (true, Some(ret)) = (abi != 0, word(rec, 16)) {
                    let compat = abi == ABI_32;
                    let ret = if compat {
                        ret as u32 as i32 as i64
                    } else {
                        ret as i64
                    };
                    if spinguard_common::bpf::is_signal_failure_ret(ret) {
                        suspect(Suspect {
                            pid,
                            tid,
                            compat,
                            errno: -ret as i32,
                        });
                    }
                }
            }
            PERF_RECORD_LOST => lost += word(rec, 8).unwrap_or(0),
            _ => {}
        }
        at += size;
    }
    (samples, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, tid: u32, abi: u64, ret: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&PERF_RECORD_SAMPLE.to_ne_bytes());
        r.extend_from_slice(&0u16.to_ne_bytes());
        r.extend_from_slice(&40u16.to_ne_bytes());
        r.extend_from_slice(&pid.to_ne_bytes());
        r.extend_from_slice(&tid.to_ne_bytes());
        r.extend_from_slice(&abi.to_ne_bytes());
        r.extend_from_slice(&ret.to_ne_bytes());
        r.extend_from_slice(&0x401000u64.to_ne_bytes());
        r
    }

    #[test]
    fn eagain_and_eintr_make_suspects() {
        let mut buf = sample(10, 11, 2, (-11i64) as u64);
        buf.extend(sample(20, 20, 2, 0));
        // A 32-bit thread: the register's high half is not the return value.
        buf.extend(sample(30, 31, ABI_32, 0xdead_beef_ffff_fffc));
        buf.extend(sample(40, 40, 0, (-11i64) as u64)); // no user regs
        let mut lost = Vec::new();
        lost.extend_from_slice(&PERF_RECORD_LOST.to_ne_bytes());
        lost.extend_from_slice(&0u16.to_ne_bytes());
        lost.extend_from_slice(&24u16.to_ne_bytes());
        lost.extend_from_slice(&7u64.to_ne_bytes());
        lost.extend_from_slice(&5u64.to_ne_bytes());
        buf.extend(lost);
        buf.extend([1, 2, 3]); // a torn tail is left alone
        let mut got = Vec::new();
        let (samples, lost) = parse_records(&buf, &mut |s| got.push(s));
        assert_eq!((samples, lost), (4, 5));
        assert_eq!(
            got,
            [
                Suspect {
                    pid: 10,
                    tid: 11,
                    compat: false,
                    errno: libc::EAGAIN
                },
                Suspect {
                    pid: 30,
                    tid: 31,
                    compat: true,
                    errno: libc::EINTR
                }
            ]
        );
    }

    #[test]
    fn cpu_list() {
        assert!(!online_cpus().is_empty());
    }
}
