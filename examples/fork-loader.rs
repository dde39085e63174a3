//! The Rust loader, run in a child process: the load happens in a task the
//! supervisor did not start itself, which it must have followed.
//!
//!     fork-loader --via fork  -- --storm-hz 1000   # fork(); the child loads, no exec
//!     fork-loader --via spawn -- --storm-hz 1000   # posix_spawn (clone with CLONE_VFORK) + exec of rust-loader
//!     fork-loader --via thread-exec -- …           # a second thread execs rust-loader (non-leader exec)
//!
//! The loader's own flags follow `--`. Prints the child's one loader line;
//! exits with the child's status (64 on usage errors).

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
enum Via {
    Fork,
    Spawn,
    ThreadExec,
}

#[derive(Parser)]
#[command(about = "Run the Rust loader in a forked or spawned child")]
struct Cli {
    #[arg(long, value_enum, default_value_t = Via::Fork)]
    via: Via,
    /// Flags for the loader (examples/rust-loader.rs)
    #[arg(last = true)]
    loader: Vec<String>,
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 64 } else { 0 });
    });
    let code = match cli.via {
        Via::Fork => via_fork(&cli.loader),
        Via::Spawn => via_spawn(&cli.loader),
        Via::ThreadExec => via_thread_exec(&cli.loader),
    };
    std::process::exit(code);
}

fn via_fork(flags: &[String]) -> i32 {
    #[derive(Parser)]
    struct LoaderCli {
        #[command(flatten)]
        args: spinguard::loader::LoaderArgs,
    }
    let argv = std::iter::once("rust-loader".to_string()).chain(flags.iter().cloned());
    let Ok(parsed) = LoaderCli::try_parse_from(argv) else {
        return 64;
    };
    // Single-threaded here, so the child may allocate and start threads freely.
    // SAFETY: fork in a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = spinguard::loader::run(&parsed.args);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: leave without running the parent's atexit state twice.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn via_spawn(flags: &[String]) -> i32 {
    let me = std::env::current_exe().expect("current_exe");
    let loader = me.with_file_name("rust-loader");
    // std spawns with posix_spawn: clone(CLONE_VM|CLONE_VFORK), then exec.
    let status = std::process::Command::new(loader)
        .args(flags)
        .status()
        .expect("spawn rust-loader (build it with --examples)");
    status.code().unwrap_or(125)
}

/// execve from a thread that is not the leader: the kernel kills the other
/// threads and gives the execing thread the leader's tid.
fn via_thread_exec(flags: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let loader = std::env::current_exe()
        .expect("current_exe")
        .with_file_name("rust-loader");
    let flags = flags.to_vec();
    let t = std::thread::spawn(move || {
        let err = std::process::Command::new(loader).args(flags).exec();
        eprintln!("exec rust-loader: {err}");
        std::process::exit(125);
    });
    let _ = t.join();
    125
}
