//! A Rust eBPF loader in the style of aya and cilium/ebpf: raw
//! `libc::syscall(SYS_bpf, ..)` and an EAGAIN retry loop, with a built-in
//! signal storm. See `spinguard::loader` for the output line and exit codes.
//!
//!     cargo run --example rust-loader -- --storm-hz 1000 --wait 2
//!     LD_PRELOAD=$(spinguard shim-path) target/debug/examples/rust-loader --storm-hz 1000

use clap::Parser;

#[derive(Parser)]
#[command(about = "Load a slow-to-verify eBPF program, optionally under a signal storm")]
struct Cli {
    #[command(flatten)]
    args: spinguard::loader::LoaderArgs,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            std::process::exit(64);
        }
        Err(e) => {
            let _ = e.print();
            std::process::exit(0);
        }
    };
    std::process::exit(spinguard::loader::run(&cli.args));
}
