//! Signal storms that really interrupt the verifier on this kernel.
//!
//! CPU-time timers (ITIMER_PROF, CLOCK_THREAD_CPUTIME_ID: what Go's pprof uses)
//! expire in task_work on the way back to user space since 5.9 on x86, so they
//! never make `signal_pending()` true inside the verifier. A signal sent by
//! another thread (tgkill) or a wall-clock timer does; those are the two kinds
//! here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Signals the loader's handler has run for (the storm's real effect).
pub static HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Installs a counting handler for `sig`, so the storm is survivable and counted.
pub fn install_counter(sig: i32) {
    // SAFETY: a plain sigaction with a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Sets `sig` to SIG_IGN: sent to us, the kernel discards it on arrival.
pub fn ignore(sig: i32) {
    // SAFETY: sets the disposition of one signal; no handler runs.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

pub use spinguard_common::gettid;

/// A storm thread sending `sig` with tgkill to every registered thread at `hz`.
pub struct TgkillStorm {
    targets: Arc<Mutex<Vec<libc::pid_t>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TgkillStorm {
    pub fn start(sig: i32, hz: u32) -> TgkillStorm {
        let targets: Arc<Mutex<Vec<libc::pid_t>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let period = Duration::from_secs_f64(1.0 / f64::from(hz.max(1)));
        let (t, s) = (targets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: getpid cannot fail.
            let pid = unsafe { libc::getpid() };
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                for &tid in t.lock().unwrap().iter() {
                    // SAFETY: plain syscall; a tid that has exited gives ESRCH.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
                }
                // Absolute deadlines keep the rate right even when a send is slow.
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        TgkillStorm {
            targets,
            stop,
            thread: Some(thread),
        }
    }

    pub fn add(&self, tid: libc::pid_t) {
        self.targets.lock().unwrap().push(tid);
    }

    pub fn remove(&self, tid: libc::pid_t) {
        self.targets.lock().unwrap().retain(|&t| t != tid);
    }
}

impl Drop for TgkillStorm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A per-thread CLOCK_MONOTONIC timer delivering `sig` to the thread that made
/// it (SIGEV_THREAD_ID), like a wall-clock profiler. Deleted on drop.
pub struct ThreadTimer(libc::timer_t);

impl ThreadTimer {
    pub fn start(sig: i32, hz: u32) -> std::io::Result<ThreadTimer> {
        let period_ns = 1_000_000_000 / i64::from(hz.max(1));
        // SAFETY: sigevent/itimerspec are plain data; the timer id is ours.
        unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = sig;
            sev.sigev_notify_thread_id = gettid();
            let mut id: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ts = libc::timespec {
                tv_sec: period_ns / 1_000_000_000,
                tv_nsec: period_ns % 1_000_000_000,
            };
            let spec = libc::itimerspec {
                it_interval: ts,
                it_value: ts,
            };
            if libc::timer_settime(id, 0, &spec, std::ptr::null_mut()) != 0 {
                let e = std::io::Error::last_os_error();
                libc::timer_delete(id);
                return Err(e);
            }
            Ok(ThreadTimer(id))
        }
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: we own the timer.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// The process's ITIMER_REAL at `hz`: SIGALRM to the whole process, which
/// the kernel hands to any thread that does not block it
/// (`complete_signal()`). Disarmed on drop.
pub struct ProcessTimer;

impl ProcessTimer {
    pub fn start(hz: u32) -> std::io::Result<ProcessTimer> {
        let period_us = 1_000_000 / i64::from(hz.max(1));
        let tv = libc::timeval {
            tv_sec: period_us / 1_000_000,
            tv_usec: period_us % 1_000_000,
        };
        let spec = libc::itimerval {
            it_interval: tv,
            it_value: tv,
        };
        // SAFETY: a plain itimerval; no old value asked for.
        if unsafe { libc::setitimer(libc::ITIMER_REAL, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ProcessTimer)
    }
}

impl Drop for ProcessTimer {
    fn drop(&mut self) {
        // SAFETY: all-zero itimerval disarms the timer.
        unsafe {
            let zero: libc::itimerval = std::mem::zeroed();
            libc::setitimer(libc::ITIMER_REAL, &zero, std::ptr::null_mut());
        }
    }
}

/// Threads that compute (no syscalls) until dropped.
pub struct BusyThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyThreads {
    pub fn start(n: u32) -> BusyThreads {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let s = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !s.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(1),
                            );
                        }
                    }
                })
            })
            .collect();
        BusyThreads { stop, threads }
    }
}

impl Drop for BusyThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
