//! The release tarball (`scripts/dist`) is an install prefix whose binary and
//! shim need at most glibc 2.17, and it works on an older userland than the
//! one it was built on: a Debian bullseye chroot (glibc 2.31), where the
//! binary runs, the shim preloads into /bin/true and guards a real load, and
//! `spinguard run` guards the static Go loader.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The oldest glibc the artifacts may need (scripts/dist links against it).
const MAX_GLIBC: (u32, u32) = (2, 17);

/// Libraries the artifacts may name: glibc's own, present on every glibc system.
const GLIBC_LIBS: [&str; 7] = [
    "libc.so.6",
    "ld-linux-x86-64.so.2",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libm.so.6",
    "libutil.so.1",
];

/// `GLIBC_2.17` -> (2, 17); None for anything else (GLIBC_PRIVATE, GCC_3.0…).
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let v = name.strip_prefix("GLIBC_")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The newest glibc version `elf` needs. Other libraries' versions (GCC_3.0
/// from libgcc_s) are not counted here; the artifacts' list of libraries is
/// checked on its own. GLIBC_PRIVATE would tie the file to one glibc build.
fn newest_glibc(elf: &Path) -> (u32, u32) {
    glibc_needs(elf)
        .iter()
        .filter(|(_, name)| name.starts_with("GLIBC_"))
        .map(|(file, name)| {
            glibc_version(name).unwrap_or_else(|| {
                panic!(
                    "{}: needs {name} from {file}, not a glibc release",
                    elf.display()
                )
            })
        })
        .max()
        .unwrap_or_else(|| panic!("{}: needs no glibc version at all", elf.display()))
}

/// The tarball unpacked with the host's tar into a scratch dir.
fn unpacked(tag: &str) -> (Scratch, std::path::PathBuf) {
    let d = dist();
    let scratch = Scratch::new(tag);
    let out = run_timeout(
        Command::new("tar")
            .arg("-C")
            .arg(scratch.dir())
            .arg("-xzf")
            .arg(&d.tarball),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let top = scratch.path(&d.top);
    (scratch, top)
}

#[test]
fn the_tarball_is_an_install_prefix_with_its_checksum() {
    let d = dist();
    let (_scratch, top) = unpacked("layout");
    for (f, mode) in [
        ("bin/spinguard", 0o755),
        ("lib/spinguard/libspinguard_shim.so", 0o644),
        ("share/man/man1/spinguard.1", 0o644),
        ("share/man/man1/spinguard-run.1", 0o644),
        ("share/bash-completion/completions/spinguard", 0o644),
        ("share/zsh/site-functions/_spinguard", 0o644),
        ("share/fish/vendor_completions.d/spinguard.fish", 0o644),
        ("share/doc/spinguard/README.md", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(top.join(f))
            .unwrap_or_else(|e| panic!("{} missing from the tarball: {e}", f));
        assert!(m.len() > 0, "{f} is empty");
        assert_eq!(m.permissions().mode() & 0o777, mode, "{f}: mode");
    }

    // Every entry under the one top directory, owned by root.
    let out = run_timeout(
        Command::new("tar").arg("-tvzf").arg(&d.tarball),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.get(1), Some(&"0/0"), "not owned by root: {line}");
        let path = fields.last().unwrap();
        assert!(
            path.starts_with(&format!("{}/", d.top)),
            "outside {}/: {line}",
            d.top
        );
    }

    // The .sha256 beside it checks with sha256sum -c, as a user would.
    let out = run_timeout(
        Command::new("sha256sum")
            .args(["-c", &format!("{}.tar.gz.sha256", d.top)])
            .current_dir(d.tarball.parent().unwrap()),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn the_tarball_is_reproducible() {
    let d = dist();
    let sum = |what: &str| {
        let out = run_timeout(
            Command::new("sha256sum").arg(&d.tarball),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{what}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let first = sum("first build");
    // Built again from the same commit, byte for byte the same file: sorted
    // entries, root ownership, the commit's date, gzip without a timestamp.
    let out = run_timeout(
        &mut Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dist")),
        Duration::from_secs(20 * 60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(sum("second build"), first);
}

#[test]
fn binary_and_shim_need_at_most_glibc_2_17() {
    let (_scratch, top) = unpacked("glibc");
    for f in ["bin/spinguard", "lib/spinguard/libspinguard_shim.so"] {
        let elf = top.join(f);
        let newest = newest_glibc(&elf);
        assert!(
            newest <= MAX_GLIBC,
            "{f} needs GLIBC_{}.{} (at most GLIBC_{}.{} allowed): {:?}",
            newest.0,
            newest.1,
            MAX_GLIBC.0,
            MAX_GLIBC.1,
            glibc_needs(&elf)
        );
        for lib in needed_libs(&elf) {
            assert!(
                GLIBC_LIBS.contains(&lib.as_str()),
                "{f} needs {lib}, which is not part of glibc"
            );
        }
    }

    // The same check on the ordinary build proves it can fail: linked
    // against this machine's glibc (2.34 or newer), it needs GLIBC_2.34.
    let out = run_timeout(
        Command::new("getconf").arg("GNU_LIBC_VERSION"),
        Duration::from_secs(10),
    );
    let host = String::from_utf8_lossy(&out.stdout);
    let host = host
        .trim()
        .strip_prefix("glibc ")
        .and_then(|v| glibc_version(&format!("GLIBC_{v}")));
    if host.is_some_and(|h| h >= (2, 34)) {
        for elf in [spinguard_bin(), shim_path()] {
            let newest = newest_glibc(&elf);
            assert!(
                newest > MAX_GLIBC,
                "{} built here needs only GLIBC_{}.{}: the check would not notice a regression",
                elf.display(),
                newest.0,
                newest.1
            );
        }
    } else {
        eprintln!("host glibc {host:?} is older than 2.34: skipped the control on the host build");
    }
}

#[test]
fn on_bullseye_the_binary_runs_and_the_shim_preloads_into_true() {
    require_privileged!();
    let d = dist();
    let chroot = Chroot::new("bullseye-basics");
    chroot.install_tarball();
    let t = Duration::from_secs(60);

    let out = chroot.sh("ldd --version", &[], t);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("GLIBC 2.31"),
        "not bullseye's glibc: {}",
        describe(&out)
    );

    let out = chroot.sh("spinguard --version", &[], t);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("spinguard {}", d.version)
    );

    let out = chroot.sh("spinguard shim-path", &[], t);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "/usr/local/lib/spinguard/libspinguard_shim.so"
    );

    // ld.so refuses to start a program when a preloaded library needs a
    // newer glibc; success with nothing on stderr means the shim loaded.
    let out = chroot.sh("LD_PRELOAD=$(spinguard shim-path) /bin/true", &[], t);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "the shim does not preload on bullseye: {}",
        describe(&out)
    );

    // The control: the shim built on this machine stops /bin/true there.
    let host_shim = chroot.put(&shim_path(), "host-shim.so");
    let out = chroot.sh(&format!("LD_PRELOAD={host_shim} /bin/true"), &[], t);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("GLIBC_2.3"),
        "the host-built shim should need a newer glibc than bullseye's: {}",
        describe(&out)
    );
}

#[test]
fn on_bullseye_the_shim_and_run_guard_a_real_load() {
    require_privileged!();
    let _s = serial();
    let d = dist();
    let chroot = Chroot::new("bullseye-load");
    chroot.install_tarball();
    let loader = chroot.put(&d.rust_loader, "rust-loader");
    let t = Duration::from_secs(60);
    let storm = "--storm-hz 1000";

    // Unguarded, the storm keeps the load from ever finishing.
    let out = chroot.sh(&format!("{loader} {storm} --wait 2"), &[], t);
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "spinning", "{}", describe(&out));

    for (how, script) in [
        (
            "LD_PRELOAD",
            format!("LD_PRELOAD=$(spinguard shim-path) {loader} {storm} --wait 20"),
        ),
        (
            "spinguard run",
            format!("spinguard run -- {loader} {storm} --wait 20"),
        ),
        (
            "spinguard run --mode ptrace",
            format!("spinguard run --mode ptrace -- {loader} {storm} --wait 20"),
        ),
    ] {
        let out = chroot.sh(&script, &[], t);
        let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            (l.result.as_str(), l.get("attempts")),
            ("loaded", Some(1)),
            "{how} on bullseye: {}",
            describe(&out)
        );
        assert!(out.status.success(), "{how}: {}", describe(&out));
    }
}

#[test]
fn on_bullseye_run_guards_the_static_go_loader() {
    require_privileged!();
    let _s = serial();
    let chroot = Chroot::new("bullseye-go");
    chroot.install_tarball();
    let loader = chroot.put(&go_loader(), "go-loader");
    let out = chroot.sh(
        &format!("spinguard run -v -- {loader} --storm-hz 1000 --wait 20"),
        &[],
        Duration::from_secs(60),
    );
    let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(l.result, "loaded", "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ptrace"),
        "a static Go program is guarded by ptrace: {}",
        describe(&out)
    );
}

/// The aarch64 code paths (register layout, syscall instruction length,
/// the shim's raw syscalls and its C file) compile for aarch64 with every
/// target of the workspace. Only type-checked: nothing here can run an
/// aarch64 program under ptrace. `cargo zigbuild check` because the shim's
/// build script compiles C, and zig is the aarch64 C compiler at hand. Needs
/// the toolchain's aarch64 standard library (`rustup target add
/// aarch64-unknown-linux-gnu`), which this test cannot fetch itself.
#[test]
fn the_workspace_type_checks_for_aarch64() {
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        eprintln!(
            "SKIP: the toolchain has no {TARGET} standard library (rustup target add {TARGET})"
        );
        return;
    }
    let out = run_timeout(
        Command::new("cargo-zigbuild")
            .args(["check", "--workspace", "--all-targets", "--target", TARGET])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        Duration::from_secs(15 * 60),
    );
    assert!(
        out.status.success(),
        "cargo zigbuild check --target {TARGET}: {}",
        describe(&out)
    );
}

/// The ptrace path's fallbacks for kernels before 5.3 (registers instead of
/// PTRACE_GET_SYSCALL_INFO, kill instead of pidfd), forced with
/// SPINGUARD_FORCE_FALLBACK=all: on bullseye, `run --mode ptrace` still
/// guards the Rust loader and the static Go loader, and bpftrace counts none
/// of the two calls from it (the same run unforced makes both: the count
/// sees them).
#[test]
fn on_bullseye_run_guards_with_the_pre_5_3_fallbacks_forced() {
    require_privileged!();
    let _s = serial();
    let d = dist();
    let chroot = Chroot::new("bullseye-fallback");
    chroot.install_tarball();
    let rust = chroot.put(&d.rust_loader, "rust-loader");
    let go = chroot.put(&go_loader(), "go-loader");
    let exe = chroot.usr_local("bin/spinguard");

    let counting = syscalls::count_fallback_calls();
    let mut runs = Vec::new();
    for (force, loader) in [("", &rust), ("all", &rust), ("all", &go)] {
        let script = format!("spinguard run --mode ptrace -- {loader} --storm-hz 1000 --wait 20");
        let mut cmd = chroot.command(&script, &[("SPINGUARD_FORCE_FALLBACK", force)]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut g = spawn_guarded(&mut cmd);
        // Its pids on the host, seen while it runs (the supervisor, and
        // its child until that execs the loader).
        let mut pids = std::collections::HashSet::new();
        while g.child.try_wait().unwrap().is_none() {
            pids.extend(syscalls::host_pids_running(&exe));
            std::thread::sleep(Duration::from_millis(2));
        }
        let out = wait_timeout(g, Duration::from_secs(60), &script);
        let l = LoaderLine::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(
            l.result,
            "loaded",
            "forced '{force}', {loader}: {}",
            describe(&out)
        );
        assert!(!pids.is_empty(), "never saw spinguard running: {script}");
        runs.push((force, loader.clone(), pids));
    }
    let lines = counting.finish();
    for (force, loader, pids) in runs {
        let c = syscalls::calls_of(&lines, &pids);
        if force.is_empty() {
            assert!(
                c.syscall_info > 0 && c.pidfd_open > 0,
                "unforced, {loader}: the count should see both calls: {c:?}"
            );
        } else {
            assert_eq!(
                c,
                syscalls::Counts::default(),
                "forced, {loader}: no PTRACE_GET_SYSCALL_INFO, no pidfd_open"
            );
        }
    }
}
