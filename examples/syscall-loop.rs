//! A syscall-heavy program for benchmarks and stop counting: N calls of one
//! kind through `libc::syscall`, then one line `calls=N ns_per_call=X
//! cpu_ns_per_call=Y` (wall time per call per thread; CPU time per call).
//!
//!     syscall-loop --call getppid --n 10000000     # the null syscall
//!     syscall-loop --call map-lookup --n 500000    # BPF_MAP_LOOKUP_ELEM on a hash map
//!     syscall-loop --call prog-load --n 1          # guarded: must stop under `run`
//!
//! `--threads T` runs the loop on T threads at once (for attach benchmarks);
//! `--forever` loops until killed (a busy process to attach to);
//! `--wait-traced` starts timing only once a tracer is attached;
//! `--seccomp-floor` runs under spinguard's filter with no tracer (its cost alone);
//! `--delay-ms` waits before the clock starts (for an observer to get going).

use clap::{Parser, ValueEnum};
use spinguard::loader::prog;
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum)]
enum Call {
    Getppid,
    MapLookup,
    ProgLoad,
}

#[derive(Parser)]
struct Cli {
    #[arg(long, value_enum, default_value_t = Call::Getppid)]
    call: Call,
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    #[arg(long, default_value_t = 1)]
    threads: u32,
    #[arg(long)]
    forever: bool,
    /// Start the clock only once a tracer is attached (TracerPid in
    /// /proc/self/status), so `spinguard attach` can be measured while attached
    #[arg(long)]
    wait_traced: bool,
    /// Install spinguard's seccomp filter in never-trapping form first: what
    /// the filter alone costs each syscall, without any tracer
    #[arg(long)]
    seccomp_floor: bool,
    /// Sleep this long before the clock starts (time for an observer such as
    /// `spinguard diagnose` to get going)
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

fn run(call: Call, n: u64, forever: bool) -> std::io::Result<()> {
    let map = prog::map_create_hash(16)?;
    let insns = prog::loop_program(1);
    let mut i = 0;
    while forever || i < n {
        match call {
            // SAFETY: getppid takes no arguments and cannot fail.
            Call::Getppid => unsafe {
                libc::syscall(libc::SYS_getppid);
            },
            Call::MapLookup => {
                std::hint::black_box(prog::map_lookup(&map, i as u32 & 15)?);
            }
            Call::ProgLoad => drop(prog::prog_load(&insns)?),
        }
        i += 1;
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if cli.seccomp_floor {
        use spinguard_supervisor::sys::seccomp;
        let filter = seccomp::Filter::guard().never_trapping();
        if let Err(e) = seccomp::set_no_new_privs().and_then(|()| filter.install()) {
            eprintln!("syscall-loop: installing the filter: {e}");
            std::process::exit(1);
        }
    }
    if cli.wait_traced {
        while !spinguard::loader::traced() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // `attach` seizes threads one by one; let it finish before timing.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(cli.delay_ms));
    let start = Instant::now();
    let cpu_start = spinguard::loader::cpu_ns();
    let threads: Vec<_> = (0..cli.threads)
        .map(|_| {
            let (call, n, forever) = (cli.call, cli.n, cli.forever);
            std::thread::spawn(move || run(call, n, forever))
        })
        .collect();
    for t in threads {
        if let Err(e) = t.join().expect("loop thread panicked") {
            eprintln!("syscall-loop: {e}");
            std::process::exit(1);
        }
    }
    let ns = start.elapsed().as_nanos() as f64;
    let cpu = (spinguard::loader::cpu_ns() - cpu_start) as f64;
    let calls = cli.n * u64::from(cli.threads);
    println!(
        "calls={calls} ns_per_call={:.1} cpu_ns_per_call={:.1}",
        ns / cli.n.max(1) as f64,
        cpu / calls.max(1) as f64
    );
}
