//! A small typed eBPF assembler: the probe's programs are written in Rust
//! with it and built by plain `cargo build` (no clang, no bpf-linker, no
//! BTF). Encodings follow include/uapi/linux/bpf.h and
//! Documentation/bpf/standardization/instruction-set.rst.
//!
//! Jumps name a [`Label`]; [`Asm::finish`] resolves them and refuses a label
//! that was never placed or an offset that does not fit 16 bits, so a
//! program that assembles has every jump inside it.

use std::fmt;

/// A register. R0 holds return values, R1–R5 arguments (clobbered by calls),
/// R6–R9 survive calls, R10 is the read-only frame pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}

/// Width of a memory access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
    DW = 0x18,
}

impl Size {
    /// The access that reads `bytes` bytes (1, 2, 4 or 8).
    pub fn of_bytes(bytes: usize) -> Option<Size> {
        Some(match bytes {
            1 => Size::B,
            2 => Size::H,
            4 => Size::W,
            8 => Size::DW,
            _ => return None,
        })
    }
}

/// 64-bit arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Mul = 0x20,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Xor = 0xa0,
    Mov = 0xb0,
    Arsh = 0xc0,
}

/// Jump conditions; `Gt`… compare unsigned, `Sgt`… signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Sgt = 0x60,
    Sge = 0x70,
    Lt = 0xa0,
    Le = 0xb0,
    Slt = 0xc0,
    Sle = 0xd0,
}

/// The kernel helpers the probe calls (`enum bpf_func_id`). Tracepoint
/// programs have had all but the last since Linux 4.7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    MapLookupElem = 1,
    MapUpdateElem = 2,
    MapDeleteElem = 3,
    KtimeGetNs = 5,
    GetCurrentPidTgid = 14,
    /// `bpf_get_ns_current_pid_tgid(dev, ino, *info, sizeof info)` (Linux
    /// 5.7): the current task's pid and tgid in the PID namespace (dev, ino),
    /// only when that is the task's own (its innermost) namespace.
    GetNsCurrentPidTgid = 120,
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const MODE_ATOMIC: u8 = 0xc0;
const JMP_JA: u8 = 0x00;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load whose imm is a map fd.
const PSEUDO_MAP_FD: u8 = 1;

/// One `struct bpf_insn`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads, as a little-endian u64 (registers: dst
    /// in the low nibble of byte 1, src in the high one).
    pub fn encode(self) -> u64 {
        u64::from(self.code)
            | u64::from((self.dst & 0xf) | (self.src << 4)) << 8
            | u64::from(self.off as u16) << 16
            | u64::from(self.imm as u32) << 32
    }
}

impl fmt::Debug for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x} r{} r{} {:+} {}",
            self.code, self.dst, self.src, self.off, self.imm
        )
    }
}

/// A jump target, placed once with [`Asm::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AsmError {
    #[error("label {0} used but never placed")]
    Unplaced(usize),
    #[error("label {0} placed twice")]
    PlacedTwice(usize),
    #[error("jump from instruction {from} to {to} does not fit 16 bits")]
    TooFar { from: usize, to: usize },
}

/// The program being written.
#[derive(Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    twice: Option<usize>,
    /// (instruction index, label) of every jump to patch.
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(Insn {
            code,
            dst: dst as u8,
            src: src as u8,
            off,
            imm,
        });
        self
    }

    /// A fresh label, to be placed with [`Asm::label`].
    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub fn label(&mut self, l: Label) -> &mut Asm {
        if self.labels[l.0].is_some() {
            self.twice.get_or_insert(l.0);
        }
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    /// `dst = imm` (sign-extended to 64 bits).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) -> &mut Asm {
        self.alu_imm(Alu::Mov, dst, imm)
    }

    /// `dst = src`.
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Asm {
        self.alu(Alu::Mov, dst, src)
    }

    /// `dst op= imm`, 64-bit.
    pub fn alu_imm(&mut self, op: Alu, dst: Reg, imm: i32) -> &mut Asm {
        self.push(CLASS_ALU64 | SRC_K | op as u8, dst, Reg::R0, 0, imm)
    }

    /// `dst op= src`, 64-bit.
    pub fn alu(&mut self, op: Alu, dst: Reg, src: Reg) -> &mut Asm {
        self.push(CLASS_ALU64 | SRC_X | op as u8, dst, src, 0, 0)
    }

    /// `dst = *(size *)(src + off)`, zero-extended.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Asm {
        self.push(CLASS_LDX | MODE_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(CLASS_STX | MODE_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub fn store_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Asm {
        self.push(CLASS_ST | MODE_MEM | size as u8, dst, Reg::R0, off, imm)
    }

    /// `lock *(size *)(dst + off) += src` (BPF_ATOMIC | BPF_ADD, the old
    /// BPF_XADD encoding: Linux 3.18+ for 32 and 64 bits).
    pub fn atomic_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Asm {
        self.push(CLASS_STX | MODE_ATOMIC | size as u8, dst, src, off, 0)
    }

    /// `dst = imm` for any 64-bit value (two instructions; `mov_imm`
    /// sign-extends 32 bits).
    pub fn mov_imm64(&mut self, dst: Reg, imm: u64) -> &mut Asm {
        self.insns.push(Insn {
            code: CLASS_LD | MODE_IMM | Size::DW as u8,
            dst: dst as u8,
            src: 0,
            off: 0,
            imm: imm as u32 as i32,
        });
        self.insns.push(Insn {
            code: 0,
            dst: 0,
            src: 0,
            off: 0,
            imm: (imm >> 32) as u32 as i32,
        });
        self
    }

    /// `dst = map` (two instructions: the 64-bit immediate load of a map fd).
    pub fn load_map(&mut self, dst: Reg, map_fd: i32) -> &mut Asm {
        self.insns.push(Insn {
            code: CLASS_LD | MODE_IMM | Size::DW as u8,
            dst: dst as u8,
            src: PSEUDO_MAP_FD,
            off: 0,
            imm: map_fd,
        });
        self.insns.push(Insn {
            code: 0,
            dst: 0,
            src: 0,
            off: 0,
            imm: 0,
        });
        self
    }

    /// `if dst cond imm goto to`.
    pub fn jump_imm(&mut self, cond: Cond, dst: Reg, imm: i32, to: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), to));
        self.push(CLASS_JMP | SRC_K | cond as u8, dst, Reg::R0, 0, imm)
    }

    /// `if dst cond src goto to`.
    pub fn jump(&mut self, cond: Cond, dst: Reg, src: Reg, to: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), to));
        self.push(CLASS_JMP | SRC_X | cond as u8, dst, src, 0, 0)
    }

    /// `goto to`.
    pub fn goto(&mut self, to: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), to));
        self.push(CLASS_JMP | JMP_JA, Reg::R0, Reg::R0, 0, 0)
    }

    /// `r0 = helper(r1, …, r5)`; R1–R5 are clobbered.
    pub fn call(&mut self, helper: Helper) -> &mut Asm {
        self.push(CLASS_JMP | JMP_CALL, Reg::R0, Reg::R0, 0, helper as i32)
    }

    /// `return r0`.
    pub fn exit(&mut self) -> &mut Asm {
        self.push(CLASS_JMP | JMP_EXIT, Reg::R0, Reg::R0, 0, 0)
    }

    /// The instructions with every jump resolved.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(l) = self.twice {
            return Err(AsmError::PlacedTwice(l));
        }
        for &(at, Label(l)) in &self.fixups {
            let to = self.labels[l].ok_or(AsmError::Unplaced(l))?;
            let off = to as i64 - at as i64 - 1;
            self.insns[at].off =
                i16::try_from(off).map_err(|_| AsmError::TooFar { from: at, to })?;
        }
        Ok(self.insns)
    }
}

/// The program as the kernel takes it.
pub fn encode(insns: &[Insn]) -> Vec<u64> {
    insns.iter().map(|i| i.encode()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodings as `llvm-mc -triple bpfel -show-encoding` gives them for
    /// the same instructions (LLVM 14 has no syntax for the store of an
    /// immediate; that one is from the uapi opcode table), little-endian.
    #[test]
    fn encodings_match_clang() {
        let mut a = Asm::new();
        let out = a.new_label();
        a.mov_imm(Reg::R1, 0) // b7 01 00 00 00 00 00 00
            .alu_imm(Alu::Add, Reg::R1, 1) // 07 01 00 00 01 00 00 00
            .mov(Reg::R6, Reg::R1) // bf 16 00 00 00 00 00 00
            .load(Size::W, Reg::R2, Reg::R6, 16) // 61 62 10 00 00 00 00 00
            .store(Size::DW, Reg::R10, -8, Reg::R0) // 7b 0a f8 ff 00 00 00 00
            .store_imm(Size::W, Reg::R10, -4, 7) // 62 0a fc ff 07 00 00 00
            .atomic_add(Size::DW, Reg::R0, 8, Reg::R1) // db 10 08 00 00 00 00 00
            .jump_imm(Cond::Ne, Reg::R2, 5, out) // 55 02 01 00 05 00 00 00
            .call(Helper::GetCurrentPidTgid) // 85 00 00 00 0e 00 00 00
            .label(out)
            .exit(); // 95 00 00 00 00 00 00 00
        let got = encode(&a.finish().unwrap());
        let want: [u64; 10] = [
            0x0000_0000_0000_01b7,
            0x0000_0001_0000_0107,
            0x0000_0000_0000_16bf,
            0x0000_0000_0010_6261,
            0x0000_0000_fff8_0a7b,
            0x0000_0007_fffc_0a62,
            0x0000_0000_0008_10db,
            0x0000_0005_0001_0255,
            0x0000_000e_0000_0085,
            0x0000_0000_0000_0095,
        ];
        assert_eq!(got, want, "{got:x?}");
    }

    #[test]
    fn map_fd_load_is_two_slots() {
        let mut a = Asm::new();
        a.load_map(Reg::R1, 42);
        let got = encode(&a.finish().unwrap());
        // 18 11 00 00 2a 00 00 00, then 8 zero bytes.
        assert_eq!(got, [0x0000_002a_0000_1118, 0]);
    }

    /// `r1 = 0x1000000002 ll` and `r3 = 4026532175 ll` as llvm-mc encodes
    /// them: the low half in the first slot, the high half in the second.
    #[test]
    fn wide_immediates_match_clang() {
        let mut a = Asm::new();
        a.mov_imm64(Reg::R1, 0x10_0000_0002)
            .mov_imm64(Reg::R3, 4_026_532_175);
        let got = encode(&a.finish().unwrap());
        assert_eq!(
            got,
            [
                0x0000_0002_0000_0118,
                0x0000_0010_0000_0000,
                0xf000_014f_0000_0318,
                0
            ],
            "{got:x?}"
        );
    }

    #[test]
    fn backward_and_forward_jumps() {
        let mut a = Asm::new();
        let (top, end) = (a.new_label(), a.new_label());
        a.label(top)
            .alu_imm(Alu::Add, Reg::R1, 1)
            .jump_imm(Cond::Lt, Reg::R1, 10, top)
            .goto(end)
            .mov_imm(Reg::R0, 1)
            .label(end)
            .exit();
        let insns = a.finish().unwrap();
        assert_eq!(insns[1].off, -2);
        assert_eq!(insns[2].off, 1);
    }

    #[test]
    fn bad_labels_are_errors() {
        let mut a = Asm::new();
        let l = a.new_label();
        a.goto(l);
        assert_eq!(a.finish().unwrap_err(), AsmError::Unplaced(0));
        let mut a = Asm::new();
        let l = a.new_label();
        a.label(l).exit().label(l);
        assert_eq!(a.finish().unwrap_err(), AsmError::PlacedTwice(0));
        let mut a = Asm::new();
        let l = a.new_label();
        a.goto(l);
        for _ in 0..40_000 {
            a.exit();
        }
        a.label(l);
        assert!(matches!(a.finish(), Err(AsmError::TooFar { .. })));
    }
}
