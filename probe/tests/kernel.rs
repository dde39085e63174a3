//! The probe on the real kernel: its programs pass the verifier, and what it
//! counts of a child that loads programs and gets signals is what the child
//! did. Needs root; skips with a reason without it (fails under
//! SPINGUARD_REQUIRE_PRIVILEGED=1).
//!
//! The child is this test binary run again with `PROBE_TEST_CHILD` set: it
//! loads a trivial program N times, sending itself a SIGUSR2 (handled) after
//! each load, and K times makes a call that fails (BPF_PROG_LOAD of zero
//! instructions).

use spinguard_probe::{activity, pidns, procfs, Counting, Ids, Probe, Scope, Verdict};
use std::process::Command;
use std::time::{Duration, Instant};

const LOADS: u64 = 40;
const FAILS: u64 = 7;

fn privileged() -> bool {
    if procfs::privileged() {
        return true;
    }
    let why = "not root (the probe loads eBPF programs and opens tracepoints)";
    if std::env::var("SPINGUARD_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
        panic!("SPINGUARD_REQUIRE_PRIVILEGED=1 but this test would skip: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

extern "C" fn on_usr2(_: libc::c_int) {}

#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
}

fn prog_load(insns: &[u64]) -> i64 {
    let attr = LoadAttr {
        prog_type: 1, // socket filter
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
    };
    // SAFETY: a valid bpf_attr prefix of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5,
            &attr as *const LoadAttr,
            std::mem::size_of::<LoadAttr>(),
        )
    }
}

/// The child: wait for "go" on stdin, do the calls, exit.
fn child() {
    // SAFETY: a handler that does nothing, so SIGUSR2 is delivered, not fatal.
    unsafe { libc::signal(libc::SIGUSR2, on_usr2 as *const () as libc::sighandler_t) };
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let ok = [0x0000_0000_0000_00b7u64, 0x95]; // r0 = 0; exit
    for _ in 0..LOADS {
        let fd = prog_load(&ok);
        assert!(fd >= 0, "load failed: {}", std::io::Error::last_os_error());
        // SAFETY: closing our own fd; signalling ourselves.
        unsafe {
            libc::close(fd as i32);
            libc::raise(libc::SIGUSR2);
        }
    }
    for _ in 0..FAILS {
        assert_eq!(prog_load(&[]), -1);
    }
    std::process::exit(0);
}

#[test]
fn counts_a_childs_calls_and_signals() {
    if std::env::var_os("PROBE_TEST_CHILD").is_some() {
        return child();
    }
    if !privileged() {
        return;
    }
    let kid = Kid::spawn(false, "counts_a_childs_calls_and_signals");
    let pid = kid.0.id() as i32;
    count_child(kid, Ids::Host, pid);
}

/// The same child as pid 1 of a PID namespace of its own (`unshare --pid
/// --fork`), and the probe naming tasks by their ids there
/// (bpf_get_ns_current_pid_tgid): the same counts, every id the namespace's.
#[test]
fn counts_a_child_in_its_own_pid_namespace_by_its_ids_there() {
    if std::env::var_os("PROBE_TEST_CHILD").is_some() {
        return child();
    }
    if !privileged() {
        return;
    }
    let kid = Kid::spawn(
        true,
        "counts_a_child_in_its_own_pid_namespace_by_its_ids_there",
    );
    // unshare forks the test binary as pid 1 of the new namespace.
    let deadline = Instant::now() + Duration::from_secs(30);
    let inner = loop {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", kid.0.id()))
            .unwrap_or_default();
        if let Some(p) = kids.split_whitespace().next() {
            break p.parse::<i32>().unwrap();
        }
        assert!(Instant::now() < deadline, "unshare started no child");
        std::thread::sleep(Duration::from_millis(10));
    };
    let ns = pidns::PidNs::of(inner).unwrap();
    assert_ne!(ns, pidns::PidNs::ours().unwrap());
    assert_eq!(
        pidns::ids_of(inner, Ids::Ns(pidns::PidNs::ours().unwrap())).unwrap(),
        (Ids::Ns(ns), 1)
    );
    count_child(kid, Ids::Ns(ns), 1);
}

/// Watches `kid` (known to the probe as `id` in `ids`) do its calls, and
/// checks what was counted.
fn count_child(mut kid: Kid, ids: Ids, id: i32) {
    let pid = id;
    let mut probe = Probe::open(Scope::Process(pid as u32), ids).expect("open the probe");
    if ids == Ids::Host {
        probe.watch_process(pid, &procfs::threads(pid)).unwrap();
    } else {
        probe.watch_process(pid, &[]).unwrap();
    }
    let on = probe
        .count(Counting {
            native: true,
            compat: false,
        })
        .unwrap();
    assert!(on.native);
    let before = probe.snapshot().unwrap();
    use std::io::Write;
    kid.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kid.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "child did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = probe.snapshot().unwrap();
    let acts = activity::between(&before, &after);
    let a = acts
        .get(&pid)
        .unwrap_or_else(|| panic!("nothing counted for {pid}: {acts:?}"));
    let load = &a.bpf[&spinguard_common::bpf::BPF_PROG_LOAD];
    assert_eq!(load.calls, LOADS + FAILS, "{a:?}");
    assert_eq!(load.ok, LOADS, "{a:?}");
    assert_eq!(load.errors.values().sum::<u64>(), FAILS, "{a:?}");
    assert!(load.inside > Duration::ZERO);
    let usr2 = &a.signals[&libc::SIGUSR2];
    assert_eq!(usr2.generated, LOADS, "{a:?}");
    assert_eq!(usr2.delivered, LOADS, "{a:?}");
    // raise() is tgkill to itself, after the load returned.
    assert_eq!(
        usr2.senders[&activity::Sender::Tkill { pid: Some(pid) }],
        LOADS
    );
    assert_eq!(usr2.during_guarded, 0);
    // Sent by the thread that loads (libtest runs the test on its own
    // thread), the one thread that made bpf calls.
    assert_eq!(a.threads.len(), 1, "{a:?}");
    let loader = *a.threads.first().unwrap();
    assert_eq!(a.sent_by_threads[&libc::SIGUSR2][&loader], LOADS);
    if ids != Ids::Host {
        // Named as the namespace names it: pid 1, its thread a small number.
        assert!(loader > 1 && loader < 100, "{a:?}");
    }
    assert_eq!(a.verdict(false), Verdict::Healthy);
    assert_eq!(after.map_full, 0);
    // Nothing of any other process (the scope is one process).
    assert_eq!(acts.len(), 1, "{acts:?}");
}

/// Kills and reaps the child however the test ends.
struct Kid(std::process::Child);

impl Kid {
    /// This test binary again, running `test` as the child, under `unshare
    /// --pid --fork` when `own_pidns`.
    fn spawn(own_pidns: bool, test: &str) -> Kid {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = if own_pidns {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--kill-child"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(["--exact", test, "--nocapture"])
            .env("PROBE_TEST_CHILD", "1")
            .stdin(std::process::Stdio::piped());
        Kid(cmd.spawn().unwrap())
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
