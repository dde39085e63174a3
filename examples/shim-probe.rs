//! A small program the shim's integration tests (tests/shim.rs) run with and
//! without `LD_PRELOAD=libspinguard_shim.so`, to see from the inside what the
//! shim does to a thread's signal mask, to errno and to signal delivery.
//!
//! It calls `libc::syscall(SYS_bpf, ..)` the way aya does (the shim hooks that),
//! and compares against the kernel's own answer through an inline `syscall`
//! instruction, which no LD_PRELOAD can intercept. Each mode prints `key=value`
//! lines on stdout:
//!
//!     shim-probe hooked                  is libc::syscall the shim's?
//!     shim-probe mask [SIGNALS]          mask before/after a guarded load on a thread
//!                                        that blocked SIGNALS (numbers or names) first
//!     shim-probe deliver                 SIGPROF sent during a load: when is it handled?
//!     shim-probe errno                   guarded and pass-through calls vs the raw kernel
//!     shim-probe stress N                N signals whose handlers call syscall()
//!     shim-probe dlopen SHIM             dlopen the shim, load once through its syscall
//!
//! Needs root (CAP_BPF) for everything that loads a program.

use std::ffi::{c_int, c_long, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use spinguard_common::bpf::{ProgLoadAttr, BPF_MAP_LOOKUP_ELEM, BPF_PROG_LOAD, BPF_PROG_TEST_RUN};
use spinguard_common::errno::errno_name;
use spinguard_common::signals::parse_signal;

// ---- the kernel without libc ------------------------------------------------

/// A system call through the instruction itself: the kernel's own answer
/// (`-errno` on failure), invisible to any LD_PRELOAD hook.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall(n: c_long, a: [c_long; 6]) -> c_long {
    let ret: c_long;
    std::arch::asm!(
        "syscall",
        inlateout("rax") n => ret,
        in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
        in("r10") a[3], in("r8") a[4], in("r9") a[5],
        lateout("rcx") _, lateout("r11") _,
        options(nostack)
    );
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn raw_syscall(n: c_long, a: [c_long; 6]) -> c_long {
    let ret: c_long;
    std::arch::asm!(
        "svc 0",
        in("x8") n,
        inlateout("x0") a[0] => ret,
        in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
        options(nostack)
    );
    ret
}

/// The calling thread's mask as the kernel holds it (rt_sigprocmask, 8 bytes).
fn kernel_mask() -> u64 {
    let mut old = 0u64;
    // SAFETY: a query (set = NULL) writing 8 bytes into a local.
    let r = unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_BLOCK as c_long,
                0,
                &mut old as *mut u64 as c_long,
                8,
                0,
                0,
            ],
        )
    };
    assert_eq!(r, 0, "rt_sigprocmask query");
    old
}

fn set_kernel_mask(mask: u64) {
    // SAFETY: reads 8 bytes from a local.
    let r = unsafe {
        raw_syscall(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as c_long,
                &mask as *const u64 as c_long,
                0,
                8,
                0,
                0,
            ],
        )
    };
    assert_eq!(r, 0, "rt_sigprocmask set");
}

/// The mask as glibc's pthread_sigmask reports it, folded to 64 bits.
fn pthread_mask() -> u64 {
    // SAFETY: a query into a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set),
            0
        );
        (1..=64)
            .filter(|&s| libc::sigismember(&set, s) == 1)
            .fold(0u64, |m, s| m | 1 << (s - 1))
    }
}

fn gettid() -> c_long {
    // SAFETY: gettid cannot fail; raw so it never goes through the hook.
    unsafe { raw_syscall(libc::SYS_gettid, [0; 6]) }
}

fn errno() -> i32 {
    // SAFETY: glibc's thread-local errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(e: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = e };
}

// ---- the program ----------------------------------------------------------------

/// The loader's slow-to-verify loop program (~1.2 ms per 1,000 iterations).
fn loop_program(iters: i32) -> Vec<u64> {
    spinguard::loader::prog::loop_program(iters.max(1) as u32)
}

const SOCKET_FILTER: u32 = 1;
static LICENSE: &[u8] = b"GPL\0";

fn load_attr(insns: &[u64]) -> ProgLoadAttr {
    ProgLoadAttr {
        prog_type: SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        ..Default::default()
    }
}

/// (args for syscall(SYS_bpf, ..)): cmd, attr pointer, size.
fn bpf_args<T>(cmd: u32, attr: *const T, size: usize) -> [c_long; 6] {
    [cmd as c_long, attr as c_long, size as c_long, 0, 0, 0]
}

/// Through `libc::syscall`, i.e. through the shim when it is preloaded.
/// Returns (ret, errno after).
fn hooked(n: c_long, a: [c_long; 6]) -> (c_long, i32) {
    // SAFETY: every caller passes arguments valid for `n`, or deliberately
    // bad pointers the kernel checks (EFAULT) and never dereferences in user space.
    let r = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3], a[4], a[5]) };
    (r, errno())
}

/// One guarded BPF_PROG_LOAD through `libc::syscall`: (ret, errno).
fn hooked_load(iters: i32) -> (c_long, i32) {
    let prog = loop_program(iters);
    let attr = load_attr(&prog);
    hooked(
        libc::SYS_bpf,
        bpf_args(BPF_PROG_LOAD, &attr, std::mem::size_of_val(&attr)),
    )
}

fn close(fd: c_long) {
    if fd >= 0 {
        // SAFETY: closing an fd this program opened.
        unsafe { libc::close(fd as c_int) };
    }
}

fn describe(ret: c_long, e: i32) -> String {
    if ret == -1 {
        format!("ret=-1 errno={}", errno_name(e))
    } else {
        format!("ret={ret} errno=-")
    }
}

fn install(sig: c_int, handler: extern "C" fn(c_int)) {
    // SAFETY: a plain handler with SA_RESTART; the handlers below are
    // async-signal-safe (atomics, syscalls, errno saved and restored).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(sig, &sa, std::ptr::null_mut()),
            0,
            "sigaction"
        );
    }
}

fn tgkill(tid: c_long, sig: c_int) {
    // SAFETY: signals a thread of this process.
    unsafe {
        raw_syscall(
            libc::SYS_tgkill,
            [libc::getpid() as c_long, tid, sig as c_long, 0, 0, 0],
        )
    };
}

// ---- modes ----------------------------------------------------------------------

/// Whether `syscall` resolves into the shim in this process.
fn mode_hooked() {
    let name = c"syscall";
    // SAFETY: dlsym/dladdr on a valid name and the address they return.
    let file = unsafe {
        let addr = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        if addr.is_null() || libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
            String::from("?")
        } else {
            std::ffi::CStr::from_ptr(info.dli_fname)
                .to_string_lossy()
                .into_owned()
        }
    };
    println!(
        "hooked={} syscall_from={file}",
        u8::from(file.contains("spinguard_shim"))
    );
}

/// Blocks `extra` on a fresh thread (raw SIG_SETMASK), does a guarded load,
/// and reports the mask before and after, as the kernel and as glibc see it.
fn mode_mask(extra: u64) {
    let line = std::thread::spawn(move || {
        set_kernel_mask(extra);
        let (k0, p0) = (kernel_mask(), pthread_mask());
        let (ret, e) = hooked_load(2_000);
        let (k1, p1) = (kernel_mask(), pthread_mask());
        close(ret);
        format!(
            "mask requested={extra:#018x} before={k0:#018x} after={k1:#018x} \
             pthread_before={p0:#018x} pthread_after={p1:#018x} {}",
            describe(ret, e)
        )
    })
    .join()
    .expect("mask thread");
    println!("{line}");
}

static HANDLED: AtomicU64 = AtomicU64::new(0);
static EXPECTED_FD: AtomicI32 = AtomicI32::new(-1);
/// At the first SIGPROF: 1 if the program's fd already existed, 0 if not.
static FD_AT_HANDLER: AtomicI32 = AtomicI32::new(-1);
static IN_CALL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_prof_deliver(_: c_int) {
    let saved = errno();
    if HANDLED.fetch_add(1, SeqCst) == 0 {
        // The kernel installs the new program's fd only after the verifier is
        // done: if it exists now, the bpf() call had returned before we ran.
        // SAFETY: fcntl is async-signal-safe.
        let r = unsafe { libc::fcntl(EXPECTED_FD.load(SeqCst), libc::F_GETFD) };
        FD_AT_HANDLER.store(i32::from(r >= 0), SeqCst);
    }
    set_errno(saved);
}

/// A thread loads a program that takes ~180 ms to verify; another thread sends
/// it SIGPROF three times while it is inside the call, and samples the handler
/// count while the call is still running.
fn mode_deliver() {
    install(libc::SIGPROF, on_prof_deliver);
    let loader_tid = AtomicI64::new(0);
    let loader_tid = &loader_tid;
    std::thread::scope(|s| {
        let sender = s.spawn(move || {
            while !IN_CALL.load(SeqCst) {
                std::thread::sleep(Duration::from_micros(200));
            }
            let tid = loader_tid.load(SeqCst);
            let mut sent_in_call = 0;
            let mut handled_during = u64::MAX;
            let mut in_call_at_sample = false;
            for i in 0..3 {
                std::thread::sleep(Duration::from_millis(15));
                let before = IN_CALL.load(SeqCst);
                tgkill(tid, libc::SIGPROF);
                if before && IN_CALL.load(SeqCst) {
                    sent_in_call += 1;
                }
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(15));
                    handled_during = HANDLED.load(SeqCst);
                    in_call_at_sample = IN_CALL.load(SeqCst);
                }
            }
            (sent_in_call, handled_during, in_call_at_sample)
        });
        loader_tid.store(gettid(), SeqCst);
        // The lowest free fd is what the kernel will give the program.
        // SAFETY: dup/close of our own stderr; the sender thread opens no fds.
        let fd = unsafe {
            let fd = libc::dup(2);
            libc::close(fd);
            fd
        };
        EXPECTED_FD.store(fd, SeqCst);
        let prog = loop_program(150_000);
        let attr = load_attr(&prog);
        let args = bpf_args(BPF_PROG_LOAD, &attr, std::mem::size_of_val(&attr));
        IN_CALL.store(true, SeqCst);
        let (ret, e) = hooked(libc::SYS_bpf, args);
        IN_CALL.store(false, SeqCst);
        let handled_after = HANDLED.load(SeqCst);
        let (sent_in_call, handled_during, in_call_at_sample) = sender.join().expect("sender");
        println!(
            "deliver {} expected_fd={fd} sent_in_call={sent_in_call} \
             in_call_at_sample={} handled_during={handled_during} handled_after={handled_after} \
             fd_at_handler={} handled_total={}",
            describe(ret, e),
            u8::from(in_call_at_sample),
            FD_AT_HANDLER.load(SeqCst),
            HANDLED.load(SeqCst)
        );
        close(ret);
    });
}

/// Each case: the same call through `libc::syscall` (errno preset to a
/// sentinel) and through the raw instruction.
fn mode_errno() {
    const SENTINEL: i32 = 4242;
    let prog = loop_program(10);
    let good = load_attr(&prog);
    let zero_insns = ProgLoadAttr {
        insn_cnt: 0,
        ..good
    };
    let bad_insns = ProgLoadAttr {
        insns: 0x10,
        ..good
    };
    let bad_type = ProgLoadAttr {
        prog_type: 0xffff,
        ..good
    };
    // Bigger than a page: the kernel refuses with E2BIG before reading it.
    let huge = vec![0u8; 2 * 4096];
    // BPF_MAP_LOOKUP_ELEM / BPF_PROG_TEST_RUN on an fd that is not open.
    let bad_fd_attr = [9_999u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let size = std::mem::size_of::<ProgLoadAttr>();
    let cases: Vec<(&str, c_long, [c_long; 6])> = vec![
        (
            "load_ok",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_LOAD, &good, size),
        ),
        (
            "load_zero_insn_cnt",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_LOAD, &zero_insns, size),
        ),
        (
            "load_bad_insns_ptr",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_LOAD, &bad_insns, size),
        ),
        (
            "load_bad_prog_type",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_LOAD, &bad_type, size),
        ),
        (
            "load_bad_attr_ptr",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_LOAD, 0x10 as *const u8, size),
        ),
        (
            "load_attr_too_big",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_LOAD, huge.as_ptr(), huge.len()),
        ),
        (
            "test_run_bad_fd",
            libc::SYS_bpf,
            bpf_args(BPF_PROG_TEST_RUN, &bad_fd_attr, 48),
        ),
        (
            "map_lookup_bad_fd",
            libc::SYS_bpf,
            bpf_args(BPF_MAP_LOOKUP_ELEM, &bad_fd_attr, 32),
        ),
        (
            "bpf_bad_cmd",
            libc::SYS_bpf,
            bpf_args(9_999, &bad_fd_attr, 32),
        ),
        ("getpid", libc::SYS_getpid, [0; 6]),
        ("gettid", libc::SYS_gettid, [0; 6]),
        ("getppid", libc::SYS_getppid, [0; 6]),
        ("close_minus_one", libc::SYS_close, [-1, 0, 0, 0, 0, 0]),
        ("no_such_syscall", 100_000, [0; 6]),
    ];
    for (name, n, args) in cases {
        set_errno(SENTINEL);
        let (ret, e) = hooked(n, args);
        // Close a loaded fd before the raw call so both get the same number.
        close(if n == libc::SYS_bpf { ret } else { -1 });
        // SAFETY: same arguments as the hooked call.
        let raw = unsafe { raw_syscall(n, args) };
        close(if n == libc::SYS_bpf { raw } else { -1 });
        let errno_text = if e == SENTINEL {
            "unchanged".to_string()
        } else {
            errno_name(e)
        };
        println!("case={name} hooked_ret={ret} hooked_errno={errno_text} raw_ret={raw}");
    }
}

static MAIN_TID: AtomicI64 = AtomicI64::new(0);
static HANDLER_BAD: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal_stress(_: c_int) {
    let saved = errno();
    // SAFETY: plain syscalls through libc::syscall (the hook), from a handler.
    unsafe {
        if libc::syscall(libc::SYS_gettid) != MAIN_TID.load(SeqCst) {
            HANDLER_BAD.fetch_add(1, SeqCst);
        }
        if libc::syscall(libc::SYS_close, -1 as c_long) != -1 || errno() != libc::EBADF {
            HANDLER_BAD.fetch_add(1, SeqCst);
        }
    }
    set_errno(saved);
    HANDLED.fetch_add(1, SeqCst);
}

/// `n` signals (SIGPROF and SIGUSR1 alternately, one at a time) at the main
/// thread, whose handlers call `syscall()`, while the main thread itself calls
/// `syscall()` in a loop: pass-through calls and, every 256th, a guarded load.
fn mode_stress(n: u64) {
    MAIN_TID.store(gettid(), SeqCst);
    install(libc::SIGPROF, on_signal_stress);
    install(libc::SIGUSR1, on_signal_stress);
    let done = AtomicBool::new(false);
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() } as c_long;
    let prog = loop_program(50);
    let attr = load_attr(&prog);
    let (mut calls, mut bad, mut loads, mut load_eagain) = (0u64, 0u64, 0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            let tid = MAIN_TID.load(SeqCst);
            for i in 0..n {
                let before = HANDLED.load(SeqCst);
                tgkill(
                    tid,
                    if i % 2 == 0 {
                        libc::SIGPROF
                    } else {
                        libc::SIGUSR1
                    },
                );
                // One at a time, so none coalesce with a pending one.
                while HANDLED.load(SeqCst) == before {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
            }
            done.store(true, SeqCst);
        });
        while !done.load(SeqCst) {
            calls += 1;
            set_errno(7777);
            let (r, e) = hooked(libc::SYS_getppid, [0; 6]);
            bad += u64::from(r != ppid || e != 7777);
            let (r, _) = hooked(libc::SYS_gettid, [0; 6]);
            bad += u64::from(r != MAIN_TID.load(SeqCst));
            let (r, e) = hooked(libc::SYS_close, [-1, 0, 0, 0, 0, 0]);
            bad += u64::from(r != -1 || e != libc::EBADF);
            if calls % 256 == 0 {
                let (r, e) = hooked(
                    libc::SYS_bpf,
                    bpf_args(BPF_PROG_LOAD, &attr, std::mem::size_of_val(&attr)),
                );
                loads += 1;
                // EAGAIN is the kernel's answer to a pending signal that is
                // not in the guard set: counted, not a fault.
                if r < 0 && e == libc::EAGAIN {
                    load_eagain += 1;
                } else if r < 0 {
                    eprintln!("stress: guarded load failed: {}", errno_name(e));
                    bad += 1;
                }
                close(r);
            }
        }
    });
    println!(
        "stress signals={n} handled={} handler_bad={} main_calls={calls} main_bad={bad} guarded_loads={loads} load_eagain={load_eagain}",
        HANDLED.load(SeqCst),
        HANDLER_BAD.load(SeqCst)
    );
}

/// dlopen()s the shim (no LD_PRELOAD: that is ignored in secure-execution
/// processes, dlopen by path is not) and loads one program through its
/// `syscall`; the shim's constructor and exit summary run as usual.
fn mode_dlopen(shim: &str) {
    // SAFETY: getauxval has no preconditions.
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) };
    let path = CString::new(shim).expect("path");
    // SAFETY: dlopen/dlsym with valid strings; the symbol has syscall's ABI.
    let (ret, e) = unsafe {
        let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!h.is_null(), "dlopen {shim} failed");
        let sym = libc::dlsym(h, c"syscall".as_ptr());
        assert!(!sym.is_null(), "no syscall in {shim}");
        let f: unsafe extern "C" fn(
            c_long,
            c_long,
            c_long,
            c_long,
            c_long,
            c_long,
            c_long,
        ) -> c_long = std::mem::transmute(sym);
        let prog = loop_program(10);
        let attr = load_attr(&prog);
        let a = bpf_args(BPF_PROG_LOAD, &attr, std::mem::size_of_val(&attr));
        let r = f(libc::SYS_bpf, a[0], a[1], a[2], a[3], a[4], a[5]);
        (r, errno())
    };
    println!("dlopen at_secure={secure} {}", describe(ret, e));
    close(ret);
}

fn parse_mask(list: &str) -> u64 {
    list.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| parse_signal(t).unwrap_or_else(|e| usage(&e.to_string())))
        .fold(0u64, |m, s| m | 1 << (s - 1))
}

fn usage(msg: &str) -> ! {
    eprintln!("shim-probe: {msg}\nusage: shim-probe hooked | mask [SIGNALS] | deliver | errno | stress N | dlopen SHIM");
    std::process::exit(64);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["hooked"] => mode_hooked(),
        ["mask"] => mode_mask(0),
        ["mask", list] => mode_mask(parse_mask(list)),
        ["deliver"] => mode_deliver(),
        ["errno"] => mode_errno(),
        ["stress", n] => mode_stress(n.parse().unwrap_or_else(|_| usage("stress N"))),
        ["dlopen", shim] => mode_dlopen(shim),
        _ => usage("unknown mode"),
    }
}
