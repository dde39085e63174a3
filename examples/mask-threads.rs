//! Threads with unusual signal masks, for checking that `spinguard attach`
//! gives every thread back exactly the mask it had.
//!
//!     mask-threads [--threads 6] [--storm-hz 1000] [--iters 5000]
//!
//! Thread i blocks its own set: nothing (i = 0), or some of SIGUSR1, SIGUSR2,
//! SIGALRM (a guard signal, already blocked: a detach must not unblock it),
//! SIGPROF (the storm signal itself, on a loading thread) and a real-time
//! signal unique to it. Even threads load the slow program in a cilium-style
//! EAGAIN retry loop under a tgkill SIGPROF storm (so an attach guards real
//! loads and must restore masks mid-storm); odd threads make syscalls and
//! sleep; one more thread sleeps for good in nanosleep (an attach interrupts
//! it, and it must resume its sleep). Prints `ready tids=T1,T2,...` once every
//! thread has its mask, then runs until killed.

use clap::Parser;
use spinguard::loader::{prog, storm};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

#[derive(Parser)]
struct Cli {
    #[arg(long, default_value_t = 6)]
    threads: u32,
    #[arg(long, default_value_t = 1000)]
    storm_hz: u32,
    #[arg(long, default_value_t = 5000)]
    iters: u32,
}

fn mask_for(i: u32) -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if i == 0 {
            return set;
        }
        if i & 1 != 0 {
            libc::sigaddset(&mut set, libc::SIGUSR1);
        }
        if i & 2 != 0 {
            libc::sigaddset(&mut set, libc::SIGUSR2);
        }
        if i.is_multiple_of(3) {
            libc::sigaddset(&mut set, libc::SIGALRM);
        }
        if i == 4 {
            libc::sigaddset(&mut set, libc::SIGPROF);
        }
        libc::sigaddset(&mut set, 40 + i as i32 % 20);
        set
    }
}

fn main() {
    let cli = Cli::parse();
    storm::install_counter(libc::SIGPROF);
    let storm = (cli.storm_hz > 0)
        .then(|| Arc::new(storm::TgkillStorm::start(libc::SIGPROF, cli.storm_hz)));
    let n = cli.threads + 1;
    let ready = Arc::new(Barrier::new(n as usize + 1));
    let tids = Arc::new(Mutex::new(Vec::new()));
    for i in 0..n {
        let (ready, tids, storm) = (ready.clone(), tids.clone(), storm.clone());
        let iters = cli.iters;
        let sleeper = i == n - 1;
        std::thread::spawn(move || {
            let set = mask_for(i);
            // SAFETY: setting this thread's own mask from a valid set.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
            let tid = storm::gettid();
            tids.lock().unwrap().push(tid);
            ready.wait();
            if sleeper {
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            if i % 2 == 0 {
                if let Some(s) = &storm {
                    s.add(tid);
                }
                let insns = prog::loop_program(iters);
                loop {
                    match prog::prog_load(&insns) {
                        Ok(fd) => drop(fd),
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => {}
                        Err(e) => {
                            eprintln!("mask-threads: load: {e}");
                            std::process::exit(1);
                        }
                    }
                }
            }
            loop {
                // SAFETY: getppid cannot fail.
                unsafe { libc::getppid() };
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
    ready.wait();
    let mut t = tids.lock().unwrap().clone();
    t.sort_unstable();
    let list: Vec<String> = t.iter().map(|t| t.to_string()).collect();
    println!("ready tids={}", list.join(","));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
