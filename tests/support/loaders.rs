//! The two non-Rust loaders, built from examples/ once per test process into
//! target/<profile>/test-loaders/:
//! - `go_loader()`: examples/go-loader on Debian's cilium/ebpf 0.9.1, static,
//!   built offline in GOPATH mode (no module download, no cgo);
//! - `c_loader()`: examples/c-loader on libbpf, dynamically linked so that an
//!   LD_PRELOAD shim sees libbpf's `syscall()`.
//!
//! A missing toolchain panics naming the Debian package to install; a failed
//! build panics with the compiler's output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Debian's source tree for Go packages (golang-*-dev install here).
const DEBIAN_GOCODE: &str = "/usr/share/gocode";
/// GOPATH import path the Go loader is built under.
const GO_IMPORT_PATH: &str = "spinguard-go-loader";
/// A cold `go build` of the Go loader takes ~3 s here; leave room for a busy machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// target/<profile>/test-loaders/, created if need be.
fn loaders_dir() -> PathBuf {
    let dir = super::target_dir().join("test-loaders");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn require_tool(program: &str, package: &str) -> PathBuf {
    find_in_path(program).unwrap_or_else(|| {
        panic!("`{program}` not found in PATH: install the Debian package {package} (apt-get install {package})")
    })
}

fn require_path(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (apt-get install {package})"
    );
}

/// Runs a build command with a timeout; panics with its output unless it succeeded.
fn run_build(cmd: &mut Command, what: &str) {
    let out = super::run_timeout(cmd, BUILD_TIMEOUT);
    assert!(
        out.status.success(),
        "building the {what} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds to a per-process temporary name and renames it into place, so two
/// test processes building at once never run a half-written binary.
fn install(tmp: &Path, dest: &Path) {
    std::fs::rename(tmp, dest)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), dest.display()));
}

/// The static Go loader on Debian's cilium/ebpf 0.9.1, built once per process.
pub fn go_loader() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_go_loader).clone()
}

fn build_go_loader() -> PathBuf {
    let go = require_tool("go", "golang-go");
    require_path(
        &format!("{DEBIAN_GOCODE}/src/github.com/cilium/ebpf/prog.go"),
        "golang-github-cilium-ebpf-dev",
    );
    require_path(
        &format!("{DEBIAN_GOCODE}/src/golang.org/x/sys/unix"),
        "golang-golang-x-sys-dev",
    );

    let dir = loaders_dir();
    let pid = std::process::id();
    // GOPATH mode needs the package under <GOPATH>/src/<import path>. A private
    // copy per process: another process may be refreshing its own at this moment.
    let gopath = dir.join(format!("gopath-{pid}"));
    let pkg = gopath.join("src").join(GO_IMPORT_PATH);
    let _ = std::fs::remove_dir_all(&gopath);
    std::fs::create_dir_all(&pkg).unwrap_or_else(|e| panic!("create {}: {e}", pkg.display()));
    let src = examples_dir().join("go-loader");
    for entry in std::fs::read_dir(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display())) {
        let path = entry.expect("read_dir entry").path();
        if path.extension().is_some_and(|e| e == "go") {
            let to = pkg.join(path.file_name().expect("file name"));
            std::fs::copy(&path, &to)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", path.display(), to.display()));
        }
    }

    let dest = dir.join("go-loader");
    let tmp = dir.join(format!("go-loader.{pid}.tmp"));
    let mut gopath_env = gopath.clone().into_os_string();
    gopath_env.push(":");
    gopath_env.push(DEBIAN_GOCODE);
    let mut cmd = Command::new(go);
    cmd.args(["build", "-buildvcs=false", "-o"])
        .arg(&tmp)
        .arg(GO_IMPORT_PATH)
        .current_dir(&dir)
        // Offline, from Debian's sources only: GOPATH mode, no proxy, no cgo
        // (so the binary is static), and no inherited GOFLAGS such as
        // -mod=mod, which GOPATH mode rejects.
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath_env)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", dir.join("gocache"));
    run_build(&mut cmd, "Go loader (examples/go-loader)");
    let _ = std::fs::remove_dir_all(&gopath);
    install(&tmp, &dest);
    dest
}

/// The C loader on libbpf's `bpf_prog_load()`, built once per process.
pub fn c_loader() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_c_loader).clone()
}

fn build_c_loader() -> PathBuf {
    let cc = require_tool("cc", "gcc");
    // pkg-config is the honest source of flags; without it, Debian's libbpf-dev
    // still links with plain -lbpf.
    let flags: Vec<String> = find_in_path("pkg-config")
        .and_then(|pc| {
            let out = super::run_timeout(
                Command::new(pc).args(["--cflags", "--libs", "libbpf"]),
                Duration::from_secs(30),
            );
            out.status.success().then(|| {
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
        })
        .unwrap_or_else(|| {
            require_path("/usr/include/bpf/bpf.h", "libbpf-dev");
            vec!["-lbpf".to_string()]
        });

    let dir = loaders_dir();
    let dest = dir.join("c-loader");
    let tmp = dir.join(format!("c-loader.{}.tmp", std::process::id()));
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-Wall", "-Wextra", "-pthread"])
        .arg(examples_dir().join("c-loader").join("loader.c"))
        .args(&flags)
        .arg("-o")
        .arg(&tmp);
    run_build(&mut cmd, "C loader (examples/c-loader)");
    install(&tmp, &dest);
    dest
}

/// examples/starter: a C program that starts another in one of 14 ways
/// (the exec family, posix_spawn(p), system, popen, vfork), built once per
/// process. Dynamically linked, so the shim reaches it.
pub fn starter() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cc = require_tool("cc", "gcc");
            let dir = loaders_dir();
            let dest = dir.join("starter");
            let tmp = dir.join(format!("starter.{}.tmp", std::process::id()));
            let mut cmd = Command::new(cc);
            cmd.args(["-O2", "-Wall", "-Wextra"])
                .arg(examples_dir().join("starter").join("starter.c"))
                .arg("-o")
                .arg(&tmp);
            run_build(&mut cmd, "starter (examples/starter)");
            install(&tmp, &dest);
            dest
        })
        .clone()
}

/// A socket-filter object for `bpftool prog load`: the test program's bounded
/// loop (100,000 iterations), compiled by clang for the BPF target, built
/// once per process.
pub fn bpf_loop_object() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let clang = require_tool("clang", "clang");
            let dir = loaders_dir();
            let src = dir.join(format!("loop.bpf.{}.c", std::process::id()));
            std::fs::write(&src, BPF_LOOP_C)
                .unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
            let dest = dir.join("loop.bpf.o");
            let tmp = dir.join(format!("loop.bpf.{}.tmp", std::process::id()));
            let mut cmd = Command::new(clang);
            cmd.args(["-O2", "-target", "bpf", "-c"])
                .arg(&src)
                .arg("-o")
                .arg(&tmp);
            run_build(&mut cmd, "bpf loop object");
            let _ = std::fs::remove_file(&src);
            install(&tmp, &dest);
            dest
        })
        .clone()
}

const BPF_LOOP_C: &str = r#"
#include <linux/bpf.h>
__attribute__((section("socket"), used)) int loop(void *ctx) {
    volatile unsigned long i = 0;
    for (unsigned long n = 0; n < 100000; n++)
        i += 1;
    return 0;
}
__attribute__((section("license"), used)) char LICENSE[] = "GPL";
"#;

/// gperftools' CPU profiler (Debian google-perftools), to preload.
pub fn profiler() -> PathBuf {
    let p = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|d| Path::new(d).join("libprofiler.so.0"))
    .find(|p| p.is_file());
    p.unwrap_or_else(|| {
        panic!("libprofiler.so.0 is missing: install the Debian package google-perftools (apt-get install google-perftools)")
    })
}

/// `bpftool` (Debian bpftool).
pub fn bpftool() -> PathBuf {
    ["/usr/sbin/bpftool", "/sbin/bpftool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_in_path("bpftool"))
        .unwrap_or_else(|| panic!("bpftool is missing: install the Debian package bpftool"))
}

/// A statically linked C program that waits for a signal (`pause()`): a
/// static program that is not Go, for handoffs and exit statuses.
pub fn static_pause() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cc = require_tool("cc", "gcc");
            let dir = loaders_dir();
            let src = dir.join(format!("pause.{}.c", std::process::id()));
            std::fs::write(
                &src,
                "#include <unistd.h>\nint main(void) { pause(); return 0; }\n",
            )
            .unwrap_or_else(|e| panic!("write {}: {e}", src.display()));
            let dest = dir.join("pause-static");
            let tmp = dir.join(format!("pause-static.{}.tmp", std::process::id()));
            let mut cmd = Command::new(cc);
            cmd.args(["-static", "-O2"]).arg(&src).arg("-o").arg(&tmp);
            run_build(&mut cmd, "static pause program (needs libc6-dev's libc.a)");
            let _ = std::fs::remove_file(&src);
            install(&tmp, &dest);
            dest
        })
        .clone()
}

/// tests/c/NAME.c built with `cc FLAGS` into target/<profile>/test-loaders/,
/// once per process and name.
fn c_tool(name: &str, flags: &[&str]) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let cc = require_tool("cc", "gcc");
    let dir = loaders_dir();
    let dest = dir.join(name);
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{name}.c"));
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-Wall", "-Wextra"])
        .args(flags)
        .arg(&src)
        .arg("-o")
        .arg(&tmp);
    run_build(&mut cmd, &format!("tests/c/{name}.c"));
    install(&tmp, &dest);
    built.push((name.to_string(), dest.clone()));
    dest
}

/// The 32-bit (i386) loader, tests/c/loader32.c, built with `gcc -m32`: its
/// bpf calls take the compat syscall path.
pub fn i386_loader() -> PathBuf {
    require_path("/usr/lib32/crt1.o", "gcc-multilib");
    c_tool("loader32", &["-m32", "-pthread"])
}

/// tests/c/no_bpf.c: runs a command with bpf(2) refused (EPERM) by a seccomp
/// filter, as a container's default profile does.
pub fn no_bpf() -> PathBuf {
    c_tool("no_bpf", &[])
}

/// tests/c/mute_deliver.c: holds a program returning 0 on
/// signal:signal_deliver, hiding deliveries from perf samplers.
pub fn mute_deliver() -> PathBuf {
    c_tool("mute_deliver", &[])
}

/// tests/c/corners.c: one program per corner of the ptrace guard (siglongjmp
/// out of a handler, a handler that loads, children exiting, its own seccomp
/// filter, a zombie leader, int 0x80, load-then-idle).
pub fn corners() -> PathBuf {
    c_tool("corners", &["-pthread"])
}
