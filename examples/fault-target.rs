//! Targets for the fault tests (tests/faults.rs): programs that do awkward
//! things while a thread is inside a bpf load.
//!
//!     fault-target exit-mid-load --threads 4 --after-ms 300
//!         N threads load (slow to verify) over and over; the main thread calls
//!         exit(0) (exit_group) while they are inside their loads.
//!     fault-target exec-mid-load --after-ms 300 -- PROGRAM ARGS…
//!         one thread starts a long load; a second (non-leader) thread execs
//!         PROGRAM while that load is still in the verifier.
//!     fault-target thread-churn --secs 3
//!         one thread loads over and over while the main thread starts and
//!         ends short-lived threads as fast as it can; prints
//!         `churn threads=N loads=M` and exits 0 (1 if a load failed).
//!
//! Loads go through `libc::syscall(SYS_bpf, ..)` (spinguard::loader::prog).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use spinguard::loader::prog;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    ExitMidLoad {
        #[arg(long, default_value_t = 4)]
        threads: u32,
        #[arg(long, default_value_t = 300)]
        after_ms: u64,
        #[arg(long, default_value_t = 450_000)]
        iters: u32,
    },
    ExecMidLoad {
        #[arg(long, default_value_t = 300)]
        after_ms: u64,
        #[arg(long, default_value_t = 450_000)]
        iters: u32,
        #[arg(last = true, required = true)]
        program: Vec<String>,
    },
    ThreadChurn {
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 20_000)]
        iters: u32,
    },
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 64 } else { 0 });
    });
    match cli.mode {
        Mode::ExitMidLoad {
            threads,
            after_ms,
            iters,
        } => exit_mid_load(threads, after_ms, iters),
        Mode::ExecMidLoad {
            after_ms,
            iters,
            program,
        } => exec_mid_load(after_ms, iters, program),
        Mode::ThreadChurn { secs, iters } => thread_churn(secs, iters),
    }
}

/// Loads until the process ends; a failure ends the process with 3.
fn load_forever(iters: u32) -> ! {
    let insns = prog::loop_program(iters);
    loop {
        if let Err(e) = prog::prog_load(&insns) {
            eprintln!("fault-target: load failed: {e}");
            std::process::exit(3);
        }
    }
}

fn exit_mid_load(threads: u32, after_ms: u64, iters: u32) {
    for _ in 0..threads {
        std::thread::spawn(move || load_forever(iters));
    }
    std::thread::sleep(Duration::from_millis(after_ms));
    println!("exiting with {threads} threads inside loads");
    std::process::exit(0);
}

fn exec_mid_load(after_ms: u64, iters: u32, program: Vec<String>) {
    std::thread::spawn(move || load_forever(iters));
    let execer = std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        std::thread::sleep(Duration::from_millis(after_ms));
        let err = std::process::Command::new(&program[0])
            .args(&program[1..])
            .exec();
        eprintln!("fault-target: exec {}: {err}", program[0]);
        std::process::exit(125);
    });
    let _ = execer.join();
    std::process::exit(125);
}

fn thread_churn(secs: f64, iters: u32) {
    let loads = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let l = loads.clone();
    let loader = std::thread::spawn(move || {
        let insns = prog::loop_program(iters);
        while Instant::now() < end {
            match prog::prog_load(&insns) {
                Ok(_fd) => l.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("fault-target: load failed: {e}");
                    return false;
                }
            };
        }
        true
    });
    let mut started = 0u64;
    while Instant::now() < end {
        // A few at a time, so some are always starting or ending.
        let batch: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    // SAFETY: getppid cannot fail.
                    unsafe { libc::getppid() };
                })
            })
            .collect();
        started += batch.len() as u64;
        for t in batch {
            let _ = t.join();
        }
    }
    let ok = loader.join().unwrap_or(false);
    println!(
        "churn threads={started} loads={}",
        loads.load(Ordering::Relaxed)
    );
    std::process::exit(if ok { 0 } else { 1 });
}
