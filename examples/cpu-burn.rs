//! A CPU-bound program that receives signals: T threads each do a fixed amount
//! of arithmetic while a storm thread sends each of them SIGPROF at `--hz`.
//! Prints `ms=X cpu_ms=Y signals=N` (wall time; CPU time of all its threads). Under ptrace every delivered signal is a stop, so
//! this is what a supervisor costs a profiled program that never calls bpf().

use clap::Parser;
use spinguard::loader::storm;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Instant;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value_t = 4)]
    threads: u32,
    /// Iterations of the arithmetic loop per thread
    #[arg(long, default_value_t = 400_000_000)]
    work: u64,
    /// SIGPROF rate per thread (0: none)
    #[arg(long, default_value_t = 1000)]
    hz: u32,
}

fn burn(work: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..work {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

fn main() {
    let cli = Cli::parse();
    storm::install_counter(libc::SIGPROF);
    let storm = (cli.hz > 0).then(|| Arc::new(storm::TgkillStorm::start(libc::SIGPROF, cli.hz)));
    let barrier = Arc::new(Barrier::new(cli.threads as usize + 1));
    let workers: Vec<_> = (0..cli.threads)
        .map(|_| {
            let (storm, barrier, work) = (storm.clone(), barrier.clone(), cli.work);
            std::thread::spawn(move || {
                if let Some(s) = &storm {
                    s.add(storm::gettid());
                }
                barrier.wait();
                std::hint::black_box(burn(work));
                if let Some(s) = &storm {
                    s.remove(storm::gettid());
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let cpu_start = spinguard::loader::cpu_ns();
    for w in workers {
        w.join().expect("worker panicked");
    }
    println!(
        "ms={:.1} cpu_ms={:.1} signals={}",
        start.elapsed().as_secs_f64() * 1000.0,
        (spinguard::loader::cpu_ns() - cpu_start) as f64 / 1e6,
        storm::HANDLED.load(Ordering::Relaxed)
    );
}
