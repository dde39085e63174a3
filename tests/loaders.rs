//! The non-Rust loaders themselves, on the real kernel: the C loader (libbpf's
//! `bpf_prog_load()`) and the static Go loader (Debian's cilium/ebpf 0.9.1).
//! Without a storm both load; under a 1 kHz SIGPROF storm cilium spins, as in
//! the incident, and libbpf gives up with EAGAIN after its 5 attempts.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

/// Generous: a loader with `--wait 2` exits by itself in ~2 s; no-storm loads
/// get a long `--wait` so a busy machine cannot turn them into "spinning".
const TIMEOUT: Duration = Duration::from_secs(120);
const NO_STORM_WAIT: &str = "60";

fn run_loader(bin: &Path, args: &[&str]) -> (Output, LoaderLine) {
    let out = run_timeout(Command::new(bin).args(args), TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.lines().count() == 1,
        "{} {args:?} must print exactly one line:\n{}",
        bin.display(),
        describe(&out)
    );
    let line = LoaderLine::parse(&stdout);
    (out, line)
}

fn field<'a>(line: &'a LoaderLine, key: &str) -> &'a str {
    line.str(key)
        .unwrap_or_else(|| panic!("no {key}= in {:?}", line.line))
}

/// ELF program header types present in `bin` (PT_INTERP = 3 means it asks
/// for the dynamic loader).
fn elf_segment_types(bin: &Path) -> Vec<u32> {
    let data = std::fs::read(bin).expect("read binary");
    assert_eq!(&data[..4], b"\x7fELF", "{} is not ELF", bin.display());
    assert_eq!(data[4], 2, "expected a 64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(data[o..o + 4].try_into().unwrap())
        })
        .collect()
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

// ---- builds and usage (no privileges needed) ---------------------------------------------------

#[test]
fn go_loader_is_statically_linked() {
    let bin = go_loader();
    let types = elf_segment_types(&bin);
    assert!(
        !types.contains(&PT_INTERP) && !types.contains(&PT_DYNAMIC),
        "{} must be static (no PT_INTERP/PT_DYNAMIC), segment types: {types:?}",
        bin.display()
    );
}

#[test]
fn c_loader_is_dynamically_linked() {
    // LD_PRELOAD only reaches a dynamically linked libbpf.
    let bin = c_loader();
    let types = elf_segment_types(&bin);
    assert!(
        types.contains(&PT_INTERP),
        "{} must be dynamic (PT_INTERP), segment types: {types:?}",
        bin.display()
    );
}

#[test]
fn bad_usage_exits_64() {
    for bin in [go_loader(), c_loader()] {
        for args in [
            &["--bogus"][..],
            &["--iters", "many"],
            &["--storm", "ptrace"],
            &["--storm-signal", "SIGNOPE"],
            &["--cmd", "test-run"],
            &["--wait", "0"],
        ] {
            let out = run_timeout(Command::new(&bin).args(args), TIMEOUT);
            assert_eq!(
                out.status.code(),
                Some(64),
                "{} {args:?}: want exit 64\n{}",
                bin.display(),
                describe(&out)
            );
            assert!(out.stdout.is_empty(), "usage errors print no result line");
            assert!(!out.stderr.is_empty(), "usage errors explain themselves");
        }
    }
}

// ---- no storm: both load ------------------------------------------------------------------------

#[test]
fn c_loader_loads_without_storm_in_one_attempt() {
    require_privileged!();
    let _serial = serial();
    let (out, line) = run_loader(&c_loader(), &["--iters", "100000", "--wait", NO_STORM_WAIT]);
    assert_eq!(line.result, "loaded", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(line.get("threads"), Some(1), "{}", line.line);
    // Counted at libbpf's own syscall() calls: no signal, no retry.
    assert_eq!(line.get("attempts"), Some(1), "{}", line.line);
    assert_eq!(line.get("max_attempts"), Some(1), "{}", line.line);
    assert_eq!(line.get("signals"), Some(0), "{}", line.line);
    assert!(line.get("ms").is_some(), "{}", line.line);
}

#[test]
fn c_loader_loads_with_4_threads() {
    require_privileged!();
    let _serial = serial();
    let (out, line) = run_loader(&c_loader(), &["--threads", "4", "--wait", NO_STORM_WAIT]);
    assert_eq!(line.result, "loaded", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(line.get("threads"), Some(4), "{}", line.line);
    assert_eq!(line.get("attempts"), Some(4), "{}", line.line);
    assert_eq!(line.get("max_attempts"), Some(1), "{}", line.line);
}

#[test]
fn go_loader_loads_without_storm() {
    require_privileged!();
    let _serial = serial();
    let (out, line) = run_loader(
        &go_loader(),
        &["--iters", "100000", "--wait", NO_STORM_WAIT],
    );
    assert_eq!(line.result, "loaded", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(line.get("threads"), Some(1), "{}", line.line);
    // cilium retries inside internal/sys.BPF(): the loader cannot see attempts.
    assert_eq!(field(&line, "attempts"), "?", "{}", line.line);
    assert_eq!(line.get("signals"), Some(0), "{}", line.line);
    assert!(line.get("ms").is_some(), "{}", line.line);
}

#[test]
fn go_loader_loads_with_8_threads() {
    require_privileged!();
    let _serial = serial();
    let (out, line) = run_loader(&go_loader(), &["--threads", "8", "--wait", NO_STORM_WAIT]);
    assert_eq!(line.result, "loaded", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(line.get("threads"), Some(8), "{}", line.line);
}

// ---- 1 kHz storm: cilium spins, libbpf gives up -------------------------------------------------

fn assert_go_spins(storm: &str, signal: &str) {
    let (out, line) = run_loader(
        &go_loader(),
        &[
            "--storm-hz",
            "1000",
            "--storm",
            storm,
            "--storm-signal",
            signal,
            "--wait",
            "2",
        ],
    );
    assert_eq!(
        line.result,
        "spinning",
        "cilium/ebpf 0.9.1 under a 1 kHz {storm} {signal} storm must still be retrying after 2 s\n{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let ms = line.get("ms").expect("ms");
    assert!(
        ms >= 2000,
        "spinning is reported only after --wait 2: ms={ms}"
    );
    if storm == "tgkill" {
        let sent = line.get("signals").expect("signals");
        assert!(
            sent > 0,
            "the storm sent no signal, so this proves nothing: {}",
            line.line
        );
    }
}

#[test]
fn go_loader_spins_under_1khz_tgkill_sigprof_storm() {
    require_privileged!();
    let _serial = serial();
    assert_go_spins("tgkill", "SIGPROF");
}

#[test]
fn go_loader_spins_under_1khz_timer_sigprof_storm() {
    require_privileged!();
    let _serial = serial();
    assert_go_spins("timer", "SIGPROF");
}

#[test]
fn go_loader_survives_and_spins_under_sigalrm_storm() {
    // Any unblocked signal spins cilium, not only the profiler's; and the Go
    // runtime's default action for SIGALRM must not end the process.
    require_privileged!();
    let _serial = serial();
    assert_go_spins("tgkill", "SIGALRM");
}

/// libbpf retries EAGAIN `expect_attempts` times, then fails; each of those
/// attempts was cut short by a signal that our handler then counted.
fn assert_c_gives_up(storm: &str, extra: &[&str], expect_attempts: u64) {
    let mut args = vec!["--storm-hz", "1000", "--storm", storm, "--wait", "2"];
    args.extend_from_slice(extra);
    let (out, line) = run_loader(&c_loader(), &args);
    match line.result.as_str() {
        "failed" => {
            assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
            assert_eq!(
                field(&line, "errno"),
                "EAGAIN",
                "libbpf under a 1 kHz {storm} storm: {}",
                line.line
            );
            assert_eq!(
                line.get("attempts"),
                Some(expect_attempts),
                "libbpf gives up after {expect_attempts} BPF_PROG_LOAD attempts: {}",
                line.line
            );
            let signals = line.get("signals").expect("signals");
            assert!(
                signals >= expect_attempts,
                "every EAGAIN means a signal was delivered: {}",
                line.line
            );
        }
        // Only if libbpf's attempts outlast --wait (a very slow machine).
        "spinning" => assert_eq!(out.status.code(), Some(2), "{}", describe(&out)),
        _ => panic!(
            "libbpf under a 1 kHz {storm} SIGPROF storm must fail with EAGAIN or spin:\n{}",
            describe(&out)
        ),
    }
}

#[test]
fn c_loader_fails_with_eagain_under_1khz_tgkill_sigprof_storm() {
    require_privileged!();
    let _serial = serial();
    assert_c_gives_up("tgkill", &[], 5);
}

#[test]
fn c_loader_fails_with_eagain_under_1khz_timer_sigprof_storm() {
    require_privileged!();
    let _serial = serial();
    assert_c_gives_up("timer", &[], 5);
}

#[test]
fn c_loader_counts_every_libbpf_attempt() {
    // --max-attempts sets libbpf's own retry budget: the count seen at
    // syscall() must match it exactly.
    require_privileged!();
    let _serial = serial();
    assert_c_gives_up("tgkill", &["--max-attempts", "20"], 20);
}

#[test]
fn c_loader_attempts_reach_the_shim() {
    // The loader's own syscall() forwards to the next definition: under
    // LD_PRELOAD that is the shim, which must still guard the load.
    require_privileged!();
    let _serial = serial();
    let shim = shim_path();
    let out = run_timeout(
        Command::new(c_loader())
            .args(["--storm-hz", "1000", "--wait", "30"])
            .env("LD_PRELOAD", &shim),
        TIMEOUT,
    );
    let line = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        line.result,
        "loaded",
        "libbpf under the shim and a 1 kHz storm:\n{}",
        describe(&out)
    );
    assert_eq!(line.get("attempts"), Some(1), "{}", line.line);
}
