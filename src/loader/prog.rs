//! The programs the loader hands to the kernel, and the raw bpf(2) calls.
//!
//! Calls go through `libc::syscall(SYS_bpf, ..)` on purpose: that is what aya
//! and libbpf do, and what the LD_PRELOAD shim hooks.

use spinguard_common::bpf::{
    ProgLoadAttr, BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_PROG_LOAD, BPF_PROG_TEST_RUN,
};
use std::io;

const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// One eBPF instruction (include/uapi/linux/bpf.h, `struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8, // dst_reg in the low nibble, src_reg in the high one
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst & 0xf,
        off,
        imm,
    }
}

const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_IMM: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const JLT_IMM: u8 = 0xa5; // BPF_JMP | BPF_JLT | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// `r1 = 0; loop: r1 += 1; if r1 < N goto loop; r0 = 0; exit`.
///
/// The verifier walks every iteration of a bounded loop (r1 is a known
/// constant on each pass), so its cost grows with N: about 1.2 ms per 1,000
/// iterations on the project's machines. That makes N a dial for how long the
/// window is in which a pending signal makes `do_check()` give up with EAGAIN.
pub fn loop_program(iters: u32) -> Vec<u64> {
    let iters = iters.clamp(1, i32::MAX as u32) as i32;
    let prog = [
        insn(MOV64_IMM, 1, 0, 0),
        insn(ADD64_IMM, 1, 0, 1),
        insn(JLT_IMM, 1, -2, iters),
        insn(MOV64_IMM, 0, 0, 0),
        insn(EXIT, 0, 0, 0),
    ];
    prog.iter()
        // SAFETY: Insn is 8 bytes of plain data with no padding.
        .map(|i| unsafe { std::mem::transmute::<Insn, u64>(*i) })
        .collect()
}

/// The BPF_PROG_TEST_RUN part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

fn sys_bpf<T>(cmd: u32, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as libc::c_long,
            std::mem::size_of::<T>() as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A loaded program; closes its fd on drop.
pub struct ProgFd(libc::c_int);

impl Drop for ProgFd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

/// A BPF map; closes its fd on drop.
pub struct MapFd(libc::c_int);

impl Drop for MapFd {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

const BPF_MAP_TYPE_HASH: u32 = 1;

/// The BPF_MAP_CREATE part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The BPF_MAP_*_ELEM part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A hash map of u32 keys to u64 values: what agents look things up in all day.
pub fn map_create_hash(max_entries: u32) -> io::Result<MapFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: 4,
        value_size: 8,
        max_entries,
        ..Default::default()
    };
    sys_bpf(BPF_MAP_CREATE, &mut attr).map(|fd| MapFd(fd as libc::c_int))
}

/// One BPF_MAP_LOOKUP_ELEM: `Ok(None)` when the key is absent (ENOENT).
pub fn map_lookup(map: &MapFd, key: u32) -> io::Result<Option<u64>> {
    let mut value = 0u64;
    let mut attr = MapElemAttr {
        map_fd: map.0 as u32,
        key: &key as *const u32 as u64,
        value: &mut value as *mut u64 as u64,
        ..Default::default()
    };
    match sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One BPF_PROG_LOAD attempt of `insns` as a socket filter.
pub fn prog_load(insns: &[u64]) -> io::Result<ProgFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_LOAD, &mut attr).map(|fd| ProgFd(fd as libc::c_int))
}

/// One BPF_PROG_TEST_RUN attempt: runs `prog` `repeat` times on a dummy packet.
/// The kernel checks `signal_pending()` between repetitions and returns EINTR.
pub fn prog_test_run(prog: &ProgFd, repeat: u32) -> io::Result<()> {
    let packet = [0u8; 64]; // at least ETH_HLEN for an skb program
    let mut attr = TestRunAttr {
        prog_fd: prog.0 as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ..Default::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loop_program_encoding() {
        let p = super::loop_program(1000);
        assert_eq!(p.len(), 5);
        // r1 += 1: opcode 0x07, dst r1, imm 1 (little endian)
        assert_eq!(p[1], 0x0000_0001_0000_0107);
        assert_eq!(p[4] & 0xff, 0x95);
    }
}
