//! The release artifacts and the old userland they must run on:
//! - `dist()`: `scripts/dist` run once per test process (the tarball, and the
//!   Rust loader built the same way for glibc 2.17);
//! - `bullseye()`: the Debian bullseye root `scripts/rootfs` keeps under
//!   target/rootfs (glibc 2.31), made once and reused across runs;
//! - `Chroot`: that root with private /usr/local and /tmp, entered the way a
//!   container runtime would (new mount, PID, UTS and IPC namespaces, /proc
//!   mounted) but with chroot(2) rather than pivot_root(2). The cached root
//!   itself is never written: every write lands in the test's scratch dirs.

use super::{run_timeout, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

/// A cold release build of the workspace takes ~2 min on the 2-core machine
/// (longer when the other builds overlap); a warm one, seconds.
const DIST_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// debootstrap of bullseye minbase: ~1 min on a quiet mirror.
const ROOTFS_TIMEOUT: Duration = Duration::from_secs(10 * 60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What `scripts/dist` built.
pub struct Dist {
    /// From `cargo pkgid`, as in the tarball's name.
    pub version: String,
    /// target/dist/spinguard-VERSION-x86_64-linux-gnu.tar.gz
    pub tarball: PathBuf,
    /// The top directory inside the tarball.
    pub top: String,
    /// target/dist/examples/rust-loader, linked for glibc 2.17 like the tarball.
    pub rust_loader: PathBuf,
}

/// Runs `scripts/dist --example rust-loader` once per test process.
pub fn dist() -> &'static Dist {
    static DIST: OnceLock<Dist> = OnceLock::new();
    DIST.get_or_init(|| {
        let out = run_timeout(
            Command::new(repo().join("scripts/dist")).args(["--example", "rust-loader"]),
            DIST_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "scripts/dist failed: {}",
            super::describe(&out)
        );
        let tarball = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let tarball = repo().join(tarball);
        let file = tarball.file_name().unwrap().to_string_lossy().into_owned();
        let top = file
            .strip_suffix(".tar.gz")
            .unwrap_or_else(|| panic!("scripts/dist printed {file}, not a .tar.gz"))
            .to_string();
        let version = top
            .strip_prefix("spinguard-")
            .and_then(|v| v.strip_suffix("-x86_64-linux-gnu"))
            .unwrap_or_else(|| panic!("unexpected tarball name {file}"))
            .to_string();
        Dist {
            version,
            tarball,
            top,
            rust_loader: repo().join("target/dist/examples/rust-loader"),
        }
    })
}

/// `scripts/dist --image` against `docker`'s daemon; the image's tag.
pub fn dist_image(docker: &super::Dockerd) -> String {
    let out = run_timeout(
        Command::new(repo().join("scripts/dist"))
            .args(["--image", "--example", "rust-loader"])
            .env("DOCKER_HOST", docker.host()),
        DIST_TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("scripts/dist: image "),
        "scripts/dist --image did not build the image: {}",
        super::describe(&out)
    );
    format!("spinguard:{}", dist().version)
}

/// target/rootfs/bullseye, made by `scripts/rootfs` if need be (`--tar`: the
/// same tree as a tarball, for the container image).
pub fn bullseye(tar: bool) -> PathBuf {
    let mut cmd = Command::new(repo().join("scripts/rootfs"));
    if tar {
        cmd.arg("--tar");
    }
    let out = run_timeout(cmd.arg("bullseye"), ROOTFS_TIMEOUT);
    assert!(
        out.status.success(),
        "scripts/rootfs failed: {}",
        super::describe(&out)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The bullseye root with this test's own /usr/local and /tmp.
pub struct Chroot {
    root: PathBuf,
    scratch: Scratch,
}

impl Chroot {
    pub fn new(tag: &str) -> Chroot {
        let root = bullseye(false);
        let scratch = Scratch::new(tag);
        use std::os::unix::fs::PermissionsExt;
        for d in ["usr-local", "tmp"] {
            std::fs::create_dir_all(scratch.path(d)).unwrap();
        }
        // Like any /tmp: world-writable and sticky.
        std::fs::set_permissions(scratch.path("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        Chroot { root, scratch }
    }

    /// The directory the chroot sees as /tmp: put files here to use them inside.
    pub fn tmp(&self) -> PathBuf {
        self.scratch.path("tmp")
    }

    /// Copies a host file into the chroot's /tmp; returns its path inside.
    pub fn put(&self, host: &Path, name: &str) -> String {
        std::fs::copy(host, self.tmp().join(name))
            .unwrap_or_else(|e| panic!("copy {} into the chroot: {e}", host.display()));
        format!("/tmp/{name}")
    }

    /// Runs `script` with bullseye's /bin/sh inside the chroot, in a clean
    /// environment (PATH with /usr/local/bin first, HOME=/root) plus `env`.
    pub fn sh(&self, script: &str, env: &[(&str, &str)], timeout: Duration) -> Output {
        run_timeout(&mut self.command(script, env), timeout)
    }

    /// The command [`Chroot::sh`] runs, to spawn it instead.
    pub fn command(&self, script: &str, env: &[(&str, &str)]) -> Command {
        // The host-side shell is PID 1 of the new PID namespace and stays
        // there, so the program under test is never an init process (which
        // the kernel shields from signals it has no handler for: a storm
        // would be silently dropped).
        let setup = r#"set -eu
root=$1 scratch=$2; shift 2
mount --bind "$scratch/usr-local" "$root/usr/local"
mount --bind "$scratch/tmp" "$root/tmp"
mount -t proc proc "$root/proc"
chroot "$root" "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--fork",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            setup,
            "sh",
        ])
        .arg(&self.root)
        .arg(self.scratch.dir())
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME=/root",
        ]);
        for (k, v) in env {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.args(["/bin/sh", "-c", script]);
        cmd
    }

    /// The host's path of a file the chroot sees at `/usr/local/PATH`.
    pub fn usr_local(&self, path: &str) -> PathBuf {
        self.scratch.path("usr-local").join(path)
    }

    /// Unpacks the release tarball into the chroot's /usr/local with the
    /// chroot's own tar, the way the README says to install it.
    pub fn install_tarball(&self) {
        let d = dist();
        let inside = self.put(&d.tarball, "spinguard.tar.gz");
        let out = self.sh(
            &format!("tar -C /usr/local --strip-components=1 -xzf {inside}"),
            &[],
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "unpacking the tarball in bullseye: {}",
            super::describe(&out)
        );
    }
}

/// The GLIBC_x.y versions an ELF file needs, by library, from `readelf -V`'s
/// version-needs section (`File: libc.so.6` … `Name: GLIBC_2.17`).
pub fn glibc_needs(elf: &Path) -> Vec<(String, String)> {
    let out = run_timeout(
        Command::new("readelf").args(["-V", "-W"]).arg(elf),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "readelf -V {}: {}",
        elf.display(),
        super::describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut needs = Vec::new();
    let mut in_needs = false;
    let mut file = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_needs = line.starts_with("Version needs section");
            continue;
        }
        if !in_needs {
            continue;
        }
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "File:" => file = words.next().unwrap_or_default().to_string(),
                "Name:" => needs.push((file.clone(), words.next().unwrap_or_default().into())),
                _ => {}
            }
        }
    }
    needs
}

/// The libraries an ELF file names in DT_NEEDED (`readelf -d`).
pub fn needed_libs(elf: &Path) -> Vec<String> {
    let out = run_timeout(
        Command::new("readelf").args(["-d", "-W"]).arg(elf),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", super::describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}
