//! Compiles src/exec/list.c (execl, execle, execlp: C variadic functions,
//! which stable Rust cannot define) into the shim, and links the shim's
//! unwinder statically (libgcc_eh.a) instead of against libgcc_s.so.1.
//!
//! Rust std asks for `-lgcc_s` on linux-gnu. Preloaded into every program,
//! that library costs each process start ~0.1 ms on a VM: its constructor
//! (`__cpu_indicator_init`) executes `cpuid`, which traps to the hypervisor
//! (measured here with `perf stat -r 400 /bin/true`: 0.67 ms native, 0.77 ms
//! with libgcc_s.so.1 preloaded, 0.66 ms with this shim linked this way).
//! gcc supports exactly this for shared objects (`-shared -static-libgcc`), but
//! rustc names gcc_s explicitly, so a `libgcc_s.so` linker script in a
//! directory searched first turns `-lgcc_s` into the static archive.
//!
//! Only when the C compiler knows where its libgcc_eh.a is (gcc does; a cross
//! toolchain such as `zig cc` may not): otherwise the link is left as it was.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/exec/list.c");
    println!("cargo:rerun-if-env-changed=CC");
    cc::Build::new()
        .file("src/exec/list.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("spinguard_exec_list");
    static_unwinder();
}

fn static_unwinder() {
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "gnu")
        && std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|o| o == "linux");
    if !gnu {
        return;
    }
    let Some(eh) = libgcc_eh() else {
        println!("cargo:warning=libgcc_eh.a not found: the shim links libgcc_s.so.1 (slower process start on VMs)");
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let script = out.join("libgcc_s.so");
    if std::fs::write(&script, format!("INPUT ( {} )\n", eh.display())).is_ok() {
        println!("cargo:rustc-link-search=native={}", out.display());
    }
}

/// The absolute path of libgcc_eh.a as the C compiler reports it, if it exists.
fn libgcc_eh() -> Option<PathBuf> {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // gcc echoes the bare name back when it does not know the file.
    (out.status.success() && path.is_absolute() && path.is_file()).then_some(path)
}
