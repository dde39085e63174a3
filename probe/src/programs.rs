//! The eBPF programs, written with [`crate::asm`]: the incident's bpftrace
//! one-liners (`sys_exit_bpf` results, `signal_deliver`) made exact and
//! attributed. Field offsets come from the running kernel's tracefs format
//! files, map fds and the scope are baked in as immediates.
//!
//! - `bpf_enter` / `bpf_exit` on syscalls:sys_{enter,exit}_bpf (or, for
//!   32-bit callers, raw_syscalls:sys_{enter,exit} filtered to the compat bpf
//!   number): each call's command, result and time, per thread, into `calls`;
//!   the threads inside a guarded call in `inflight`.
//! - `sig_generate` on signal:signal_generate: who sent which signal to a
//!   watched process, how, and whether it was queued while the target was
//!   inside a guarded call (what makes the verifier give up), into `sigs`.
//! - `sig_deliver` on signal:signal_deliver: signals a watched process took,
//!   into `delivered`.
//!
//! Tasks are named by their ids in the initial PID namespace
//! (`bpf_get_current_pid_tgid`), or, when spinguard runs in another
//! ([`Ids::Ns`]), by their ids there (`bpf_get_ns_current_pid_tgid`); the
//! tracepoints' own pid fields are always the initial namespace's, so the
//! per-thread maps (`inflight`, `threads`) stay keyed by those and
//! `threads` translates (crate::pidns says why).
//!
//! Every program returns 1: a tracepoint program's result gates the perf
//! samples of every other user of that tracepoint (they are ANDed), and we
//! must never hide events from perf or bpftrace running beside us.

use crate::asm::{Alu, Asm, AsmError, Cond, Helper, Label, Reg, Size};
use crate::maps::{
    CallKey, CallVal, DeliveredKey, InFlight, Maps, SigKey, HEALTH_DELIVERIES, HEALTH_MAP_FULL,
    SIG_DURING, SIG_GROUP, SIG_RESULT_SHIFT, SIG_SENDER_OUTSIDE,
};
use crate::pidns::{Ids, PidNs};
use crate::tracefs::Field;
use spinguard_common::bpf::GUARDED_COMMANDS;

/// Which processes the programs count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every process: the guarded commands only, so the map lookups agents
    /// make all day cost a tracepoint and a compare, no map update.
    Host,
    /// One process (a thread-group id): every bpf command it makes.
    Process(u32),
}

/// Where a syscall tracepoint keeps what the programs read.
#[derive(Clone, Debug)]
pub struct SyscallFields {
    /// raw_syscalls only: the syscall number, and the one that means bpf.
    pub id: Option<(Field, i32)>,
    /// enter: the command (bpf's first argument).
    pub cmd: Field,
}

#[derive(Clone, Debug)]
pub struct ExitFields {
    pub id: Option<(Field, i32)>,
    pub ret: Field,
}

#[derive(Clone, Debug)]
pub struct GenerateFields {
    pub sig: Field,
    pub code: Field,
    pub pid: Field,
    pub group: Field,
    pub result: Field,
}

/// `BPF_NOEXIST`.
const NOEXIST: i32 = 1;
/// `enum trace_signal_result`: queued, and queued without its siginfo.
const TRACE_SIGNAL_DELIVERED: i32 = 0;
const TRACE_SIGNAL_LOSE_INFO: i32 = 4;
/// si_code values whose sender is not a process: a POSIX timer, the kernel
/// (setitimer, the terminal). Whatever runs when they fire is no sender.
const SI_TIMER: i32 = -2;
const SI_KERNEL: i32 = 0x80;

/// Loads the low `want` bytes of a tracepoint field (little-endian: the low
/// bytes come first, whatever the field's width).
fn load_field(a: &mut Asm, dst: Reg, ctx: Reg, f: &Field, want: Size) {
    a.load(want, dst, ctx, f.offset as i16);
}

/// `if cmd is not guarded goto not` — derived from the one list of guarded
/// commands, so a third one cannot be forgotten here.
fn unless_guarded(a: &mut Asm, cmd: Reg, not: Label) {
    let yes = a.new_label();
    for c in GUARDED_COMMANDS {
        a.jump_imm(Cond::Eq, cmd, c as i32, yes);
    }
    a.goto(not).label(yes);
}

/// What to add to a counter.
enum Add {
    Imm(i32),
    /// A u64 on the stack at this offset from R10.
    Stack(i16),
}

/// Finds the value at key (R10 + `key`), creating it from the zeroed value
/// at (R10 + `zero`) if absent, and atomically adds each `adds` to it. A full
/// map is counted in `health` and skipped. Clobbers R0–R5.
fn count(a: &mut Asm, map: i32, key: i16, zero: i16, adds: &[(i16, Add)], health: i32) {
    let (have, full, done) = (a.new_label(), a.new_label(), a.new_label());
    a.load_map(Reg::R1, map)
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, key.into())
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Ne, Reg::R0, 0, have);
    // Absent: insert zeros (a racing insert by another CPU is fine: EEXIST),
    // then look again.
    a.load_map(Reg::R1, map)
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, key.into())
        .mov(Reg::R3, Reg::R10)
        .alu_imm(Alu::Add, Reg::R3, zero.into())
        .mov_imm(Reg::R4, NOEXIST)
        .call(Helper::MapUpdateElem)
        .load_map(Reg::R1, map)
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, key.into())
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, full)
        .label(have);
    for (off, add) in adds {
        match add {
            Add::Imm(v) => a.mov_imm(Reg::R1, *v),
            Add::Stack(s) => a.load(Size::DW, Reg::R1, Reg::R10, *s),
        };
        a.atomic_add(Size::DW, Reg::R0, *off, Reg::R1);
    }
    a.goto(done).label(full);
    bump_health(a, health, HEALTH_MAP_FULL);
    a.label(done);
}

/// `health[slot] += 1`. Uses the stack slot at R10-128 for the index.
fn bump_health(a: &mut Asm, health: i32, slot: u32) {
    let skip = a.new_label();
    a.store_imm(Size::W, Reg::R10, -128, slot as i32)
        .load_map(Reg::R1, health)
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -128)
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, skip)
        .mov_imm(Reg::R1, 1)
        .atomic_add(Size::DW, Reg::R0, 0, Reg::R1)
        .label(skip);
}

fn finish(mut a: Asm, out: Label) -> Result<Vec<u64>, AsmError> {
    a.label(out).mov_imm(Reg::R0, 1).exit();
    Ok(crate::asm::encode(&a.finish()?))
}

/// Where `bpf_get_ns_current_pid_tgid` writes `struct bpf_pidns_info`
/// (`{ u32 pid; u32 tgid; }`), below every other slot the programs use.
const NS_INFO: i16 = -136;

/// R0 = the current task's `tgid << 32 | tid` as `ids` name them (the layout
/// of both helpers' results: bpf_pidns_info read as one little-endian u64);
/// under [`Ids::Ns`], a task whose own PID namespace is another goes to
/// `other`. Clobbers R1–R5.
fn current_ids(a: &mut Asm, ids: Ids, other: Label) {
    match ids {
        Ids::Host => {
            a.call(Helper::GetCurrentPidTgid);
        }
        Ids::Ns(ns) => {
            a.mov_imm64(Reg::R1, ns.dev)
                .mov_imm64(Reg::R2, ns.ino)
                .mov(Reg::R3, Reg::R10)
                .alu_imm(Alu::Add, Reg::R3, NS_INFO.into())
                .mov_imm(Reg::R4, 8)
                .call(Helper::GetNsCurrentPidTgid)
                .jump_imm(Cond::Ne, Reg::R0, 0, other)
                .load(Size::DW, Reg::R0, Reg::R10, NS_INFO);
        }
    }
}

/// The smallest program that asks for ids in `ns`: whether this kernel has
/// `bpf_get_ns_current_pid_tgid` for tracepoint programs (5.7+) is whether
/// the verifier takes it.
pub fn ns_ids_check(ns: PidNs) -> Result<Vec<u64>, AsmError> {
    let mut a = Asm::new();
    let out = a.new_label();
    current_ids(&mut a, Ids::Ns(ns), out);
    finish(a, out)
}

/// `threads[*(R10 + key)] = *(R10 + value)`. Clobbers R0–R5.
fn remember_thread(a: &mut Asm, maps: &Maps, key: i16, value: i16) {
    a.load_map(Reg::R1, maps.threads.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, key.into())
        .mov(Reg::R3, Reg::R10)
        .alu_imm(Alu::Add, Reg::R3, value.into())
        .mov_imm(Reg::R4, 0)
        .call(Helper::MapUpdateElem);
}

/// `threads[key] = value` unless it holds that already: a lookup costs less
/// than an update, and a thread's process never changes. Clobbers R0–R5.
fn refresh_thread(a: &mut Asm, maps: &Maps, key: i16, value: i16) {
    let (update, done) = (a.new_label(), a.new_label());
    a.load_map(Reg::R1, maps.threads.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, key.into())
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, update)
        .load(Size::W, Reg::R1, Reg::R0, 0)
        .load(Size::W, Reg::R2, Reg::R10, value)
        .jump(Cond::Eq, Reg::R1, Reg::R2, done)
        .label(update);
    remember_thread(a, maps, key, value);
    a.label(done);
}

/// `if id != nr goto out` for the raw_syscalls variants.
fn only_syscall(a: &mut Asm, ctx: Reg, id: &Option<(Field, i32)>, out: Label) {
    if let Some((field, nr)) = id {
        load_field(a, Reg::R1, ctx, field, Size::DW);
        a.jump_imm(Cond::Ne, Reg::R1, *nr, out);
    }
}

/// On bpf(2) entry: remember the call (command, start) for the thread, and
/// the thread's process; count a guarded call in progress for the process.
/// `self_tgid` (ours, in `ids`' terms) is never counted.
pub fn bpf_enter(
    maps: &Maps,
    f: &SyscallFields,
    scope: Scope,
    ids: Ids,
    self_tgid: u32,
) -> Result<Vec<u64>, AsmError> {
    let mut a = Asm::new();
    let out = a.new_label();
    a.mov(Reg::R6, Reg::R1);
    only_syscall(&mut a, Reg::R6, &f.id, out);
    load_field(&mut a, Reg::R7, Reg::R6, &f.cmd, Size::W);
    // R8: the host's tgid << 32 | tid (the per-thread maps' keys); R9: the
    // process as `ids` name it.
    a.call(Helper::GetCurrentPidTgid).mov(Reg::R8, Reg::R0);
    match ids {
        Ids::Host => {
            a.mov(Reg::R9, Reg::R0)
                .alu_imm(Alu::Rsh, Reg::R9, 32)
                .jump_imm(Cond::Eq, Reg::R9, self_tgid as i32, out);
        }
        Ids::Ns(_) => {
            // Host scope counts guarded commands only: decide that before
            // the namespace helper, which every map lookup on the host
            // would otherwise pay for.
            if scope == Scope::Host {
                unless_guarded(&mut a, Reg::R7, out);
            }
            current_ids(&mut a, ids, out);
            a.mov(Reg::R9, Reg::R0).alu_imm(Alu::Rsh, Reg::R9, 32);
            // A process of a nested namespace may have our pid there: only
            // the host scope, whose ids are ours, can meet us.
            if scope == Scope::Host {
                a.jump_imm(Cond::Eq, Reg::R9, self_tgid as i32, out);
            }
        }
    }
    match scope {
        Scope::Process(t) => {
            a.jump_imm(Cond::Ne, Reg::R9, t as i32, out);
        }
        // (With namespace ids, checked above.)
        Scope::Host if ids == Ids::Host => unless_guarded(&mut a, Reg::R7, out),
        Scope::Host => {}
    }
    // Stack: -4 tid (key); -24.. InFlight value; -32 tgid (key); -40 zero.
    let value = -24i16;
    a.store(Size::W, Reg::R10, -4, Reg::R8)
        .store(Size::W, Reg::R10, value + InFlight::TGID, Reg::R9)
        .store(Size::W, Reg::R10, value + InFlight::CMD, Reg::R7)
        .call(Helper::KtimeGetNs)
        .store(Size::DW, Reg::R10, value + InFlight::START, Reg::R0);
    a.load_map(Reg::R1, maps.inflight.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -4)
        .mov(Reg::R3, Reg::R10)
        .alu_imm(Alu::Add, Reg::R3, value.into())
        .mov_imm(Reg::R4, 0)
        .call(Helper::MapUpdateElem);
    // threads[tid] = tgid (the value's first word).
    match ids {
        Ids::Host => remember_thread(&mut a, maps, -4, value + InFlight::TGID),
        Ids::Ns(_) => {
            refresh_thread(&mut a, maps, -4, value + InFlight::TGID);
            // And the leader's host tid (the tgid): a process-directed
            // signal names the leader, which may make no bpf call itself.
            a.mov(Reg::R1, Reg::R8)
                .alu_imm(Alu::Rsh, Reg::R1, 32)
                .store(Size::W, Reg::R10, -48, Reg::R1);
            refresh_thread(&mut a, maps, -48, value + InFlight::TGID);
        }
    }
    unless_guarded(&mut a, Reg::R7, out);
    a.store(Size::W, Reg::R10, -32, Reg::R9)
        .store_imm(Size::DW, Reg::R10, -40, 0);
    count(
        &mut a,
        maps.procs.raw_fd(),
        -32,
        -40,
        &[(0, Add::Imm(1))],
        maps.health.raw_fd(),
    );
    finish(a, out)
}

/// On bpf(2) exit: the call's result and time into `calls`; the guarded call
/// no longer in progress. A call whose entry we did not see (it began before
/// we attached) is not counted.
pub fn bpf_exit(maps: &Maps, f: &ExitFields, ids: Ids) -> Result<Vec<u64>, AsmError> {
    let mut a = Asm::new();
    let (out, positive, gone) = (a.new_label(), a.new_label(), a.new_label());
    a.mov(Reg::R6, Reg::R1);
    only_syscall(&mut a, Reg::R6, &f.id, out);
    load_field(&mut a, Reg::R7, Reg::R6, &f.ret, Size::DW);
    a.call(Helper::GetCurrentPidTgid)
        .mov(Reg::R8, Reg::R0)
        .store(Size::W, Reg::R10, -4, Reg::R8)
        .load_map(Reg::R1, maps.inflight.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -4)
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, out)
        .mov(Reg::R9, Reg::R0);
    if let Ids::Ns(_) = ids {
        // The thread as the namespace names it (the entry found it there, and
        // a task's own namespace never changes).
        current_ids(&mut a, ids, out);
        a.mov(Reg::R8, Reg::R0);
    }
    // Stack: -24.. CallKey; -32 duration; -48.. zero CallVal; -56 procs key.
    let key = -24i16;
    a.load(Size::W, Reg::R1, Reg::R9, InFlight::TGID)
        .store(Size::W, Reg::R10, key + CallKey::TGID, Reg::R1)
        .store(Size::W, Reg::R10, -56, Reg::R1)
        .store(Size::W, Reg::R10, key + CallKey::TID, Reg::R8)
        .load(Size::W, Reg::R1, Reg::R9, InFlight::CMD)
        .store(Size::W, Reg::R10, key + CallKey::CMD, Reg::R1)
        .mov_imm(Reg::R2, 0)
        .jump_imm(Cond::Sge, Reg::R7, 0, positive)
        .alu(Alu::Sub, Reg::R2, Reg::R7)
        .label(positive)
        .store(Size::W, Reg::R10, key + CallKey::ERRNO, Reg::R2)
        .load(Size::DW, Reg::R1, Reg::R9, InFlight::START)
        .store(Size::DW, Reg::R10, -32, Reg::R1)
        .call(Helper::KtimeGetNs)
        .load(Size::DW, Reg::R1, Reg::R10, -32)
        .alu(Alu::Sub, Reg::R0, Reg::R1)
        .store(Size::DW, Reg::R10, -32, Reg::R0)
        .load_map(Reg::R1, maps.inflight.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -4)
        .call(Helper::MapDeleteElem)
        .store_imm(Size::DW, Reg::R10, -48, 0)
        .store_imm(Size::DW, Reg::R10, -40, 0);
    count(
        &mut a,
        maps.calls.raw_fd(),
        key,
        -48,
        &[
            (CallVal::COUNT, Add::Imm(1)),
            (CallVal::NS, Add::Stack(-32)),
        ],
        maps.health.raw_fd(),
    );
    a.load(Size::W, Reg::R7, Reg::R10, key + CallKey::CMD);
    unless_guarded(&mut a, Reg::R7, out);
    a.load_map(Reg::R1, maps.procs.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -56)
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, gone)
        .mov_imm(Reg::R1, -1)
        .atomic_add(Size::DW, Reg::R0, 0, Reg::R1)
        .label(gone);
    finish(a, out)
}

/// After the target's tgid is in R8: `goto out` unless it is in scope.
fn in_scope(a: &mut Asm, maps: &Maps, scope: Scope, out: Label) {
    match scope {
        Scope::Process(t) => {
            a.jump_imm(Cond::Ne, Reg::R8, t as i32, out);
        }
        Scope::Host => {
            a.store(Size::W, Reg::R10, -48, Reg::R8)
                .load_map(Reg::R1, maps.procs.raw_fd())
                .mov(Reg::R2, Reg::R10)
                .alu_imm(Alu::Add, Reg::R2, -48)
                .call(Helper::MapLookupElem)
                .jump_imm(Cond::Eq, Reg::R0, 0, out);
        }
    }
}

/// On signal generation, for a watched target: (target, signal, sender,
/// si_code, during a guarded call?, process-directed?, result) += 1.
pub fn sig_generate(
    maps: &Maps,
    f: &GenerateFields,
    scope: Scope,
    ids: Ids,
) -> Result<Vec<u64>, AsmError> {
    let mut a = Asm::new();
    let (out, known, flags_done, group, no_group, sender_done) = (
        a.new_label(),
        a.new_label(),
        a.new_label(),
        a.new_label(),
        a.new_label(),
        a.new_label(),
    );
    a.mov(Reg::R6, Reg::R1);
    load_field(&mut a, Reg::R7, Reg::R6, &f.pid, Size::W);
    // The target's process: from `threads`; else the target is a leader (a
    // process-directed signal names the leader), so its tid is the tgid.
    // In a namespace the field's host tid means nothing there: a thread
    // `threads` does not know is not ours to count.
    let unknown = match ids {
        Ids::Host => known,
        Ids::Ns(_) => out,
    };
    a.store(Size::W, Reg::R10, -4, Reg::R7)
        .mov(Reg::R8, Reg::R7)
        .load_map(Reg::R1, maps.threads.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -4)
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, unknown)
        .load(Size::W, Reg::R8, Reg::R0, 0)
        .label(known);
    in_scope(&mut a, maps, scope, out);
    // R9: flags. Queued (not ignored, not merged with one already pending)
    // while the target was inside a guarded call?
    a.mov_imm(Reg::R9, 0);
    load_field(&mut a, Reg::R1, Reg::R6, &f.result, Size::W);
    a.store(Size::W, Reg::R10, -8, Reg::R1);
    let queued = a.new_label();
    a.jump_imm(Cond::Eq, Reg::R1, TRACE_SIGNAL_DELIVERED, queued)
        .jump_imm(Cond::Ne, Reg::R1, TRACE_SIGNAL_LOSE_INFO, flags_done)
        .label(queued);
    load_field(&mut a, Reg::R1, Reg::R6, &f.group, Size::W);
    a.jump_imm(Cond::Ne, Reg::R1, 0, group);
    // To one thread: is that thread inside a guarded call?
    a.load_map(Reg::R1, maps.inflight.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -4)
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, flags_done)
        .load(Size::W, Reg::R1, Reg::R0, InFlight::CMD);
    unless_guarded(&mut a, Reg::R1, flags_done);
    a.alu_imm(Alu::Or, Reg::R9, SIG_DURING as i32)
        .goto(flags_done)
        .label(group);
    // To the process: is one of its threads inside a guarded call?
    a.store(Size::W, Reg::R10, -48, Reg::R8)
        .load_map(Reg::R1, maps.procs.raw_fd())
        .mov(Reg::R2, Reg::R10)
        .alu_imm(Alu::Add, Reg::R2, -48)
        .call(Helper::MapLookupElem)
        .jump_imm(Cond::Eq, Reg::R0, 0, flags_done)
        .load(Size::DW, Reg::R1, Reg::R0, 0)
        .jump_imm(Cond::Sle, Reg::R1, 0, flags_done)
        .alu_imm(Alu::Or, Reg::R9, SIG_DURING as i32)
        .label(flags_done);
    load_field(&mut a, Reg::R1, Reg::R6, &f.group, Size::W);
    a.jump_imm(Cond::Eq, Reg::R1, 0, no_group)
        .alu_imm(Alu::Or, Reg::R9, SIG_GROUP as i32)
        .label(no_group)
        .load(Size::W, Reg::R1, Reg::R10, -8)
        .alu_imm(Alu::And, Reg::R1, 0xff)
        .alu_imm(Alu::Lsh, Reg::R1, SIG_RESULT_SHIFT as i32)
        .alu(Alu::Or, Reg::R9, Reg::R1);
    // Key at -32..-8.
    let key = -32i16;
    a.store(Size::W, Reg::R10, key + SigKey::TGID, Reg::R8);
    load_field(&mut a, Reg::R1, Reg::R6, &f.sig, Size::W);
    a.store(Size::W, Reg::R10, key + SigKey::SIG, Reg::R1);
    load_field(&mut a, Reg::R7, Reg::R6, &f.code, Size::W);
    a.store(Size::W, Reg::R10, key + SigKey::CODE, Reg::R7)
        .store(Size::W, Reg::R10, key + SigKey::FLAGS, Reg::R9)
        .store_imm(Size::W, Reg::R10, key + SigKey::SENDER_TGID, 0)
        .store_imm(Size::W, Reg::R10, key + SigKey::SENDER_TID, 0);
    // The sender is whoever runs now, except for timers and the kernel.
    // In a namespace, a sender of another one is named as such, never by a
    // pid that means nothing here.
    let outside = a.new_label();
    a.alu_imm(Alu::Lsh, Reg::R7, 32)
        .alu_imm(Alu::Arsh, Reg::R7, 32)
        .jump_imm(Cond::Eq, Reg::R7, SI_TIMER, sender_done)
        .jump_imm(Cond::Eq, Reg::R7, SI_KERNEL, sender_done);
    current_ids(&mut a, ids, outside);
    a.store(Size::W, Reg::R10, key + SigKey::SENDER_TID, Reg::R0)
        .alu_imm(Alu::Rsh, Reg::R0, 32)
        .store(Size::W, Reg::R10, key + SigKey::SENDER_TGID, Reg::R0);
    if let Ids::Ns(_) = ids {
        a.goto(sender_done)
            .label(outside)
            .alu_imm(Alu::Or, Reg::R9, SIG_SENDER_OUTSIDE as i32)
            .store(Size::W, Reg::R10, key + SigKey::FLAGS, Reg::R9);
    } else {
        a.label(outside);
    }
    a.label(sender_done).store_imm(Size::DW, Reg::R10, -40, 0);
    count(
        &mut a,
        maps.sigs.raw_fd(),
        key,
        -40,
        &[(0, Add::Imm(1))],
        maps.health.raw_fd(),
    );
    finish(a, out)
}

/// On signal delivery (in the receiving thread): (process, signal) += 1;
/// and every delivery on the host counted once, for the trigger's check.
pub fn sig_deliver(maps: &Maps, sig: &Field, scope: Scope, ids: Ids) -> Result<Vec<u64>, AsmError> {
    let mut a = Asm::new();
    let out = a.new_label();
    a.mov(Reg::R6, Reg::R1);
    bump_health(&mut a, maps.health.raw_fd(), HEALTH_DELIVERIES);
    match ids {
        Ids::Host => {
            a.call(Helper::GetCurrentPidTgid)
                .mov(Reg::R8, Reg::R0)
                .alu_imm(Alu::Rsh, Reg::R8, 32);
            in_scope(&mut a, maps, scope, out);
        }
        Ids::Ns(_) => {
            a.call(Helper::GetCurrentPidTgid).mov(Reg::R7, Reg::R0);
            current_ids(&mut a, ids, out);
            a.mov(Reg::R8, Reg::R0).alu_imm(Alu::Rsh, Reg::R8, 32);
            in_scope(&mut a, maps, scope, out);
            // Userspace cannot tell the host tids of a namespace's threads:
            // a watched thread that takes a signal is remembered (and its
            // leader), so signals sent to it later are attributed.
            a.store(Size::W, Reg::R10, -32, Reg::R7)
                .store(Size::W, Reg::R10, -36, Reg::R8);
            refresh_thread(&mut a, maps, -32, -36);
            a.mov(Reg::R1, Reg::R7)
                .alu_imm(Alu::Rsh, Reg::R1, 32)
                .store(Size::W, Reg::R10, -32, Reg::R1);
            refresh_thread(&mut a, maps, -32, -36);
        }
    }
    let key = -16i16;
    a.store(Size::W, Reg::R10, key + DeliveredKey::TGID, Reg::R8);
    load_field(&mut a, Reg::R1, Reg::R6, sig, Size::W);
    a.store(Size::W, Reg::R10, key + DeliveredKey::SIG, Reg::R1)
        .store_imm(Size::DW, Reg::R10, -24, 0);
    count(
        &mut a,
        maps.delivered.raw_fd(),
        key,
        -24,
        &[(0, Add::Imm(1))],
        maps.health.raw_fd(),
    );
    finish(a, out)
}
