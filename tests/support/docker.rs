//! A private Docker daemon for the tests that run the container image and
//! the Kubernetes recipes: Debian's dockerd with its own data root under
//! target/docker (image layers cached across runs), its own socket, exec root
//! and containerd namespace, no bridge and no iptables rules. It touches none
//! of the host's networking and never meets a system daemon. Containers run
//! with `--network none`.
//!
//! One daemon per test (started in ~3 s); a lock file keeps two test
//! processes from sharing the data root.

use super::{bullseye, describe, find_in_path, go_loader, run_timeout, Scratch};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Dockerd {
    child: Child,
    host: String,
    exec_root: PathBuf,
    _lock: std::fs::File,
}

/// A running private daemon, or None (after printing why) when dockerd is
/// not installed. Under SPINGUARD_REQUIRE_PRIVILEGED=1 that is a failure:
/// scripts/test installs docker.io.
pub fn dockerd() -> Option<Dockerd> {
    if find_in_path("dockerd").is_none() || find_in_path("docker").is_none() {
        let why = "dockerd or docker not found (apt-get install docker.io)";
        if std::env::var_os("SPINGUARD_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
            panic!("SPINGUARD_REQUIRE_PRIVILEGED=1 but this test would skip: {why}");
        }
        eprintln!("SKIP: {why}");
        return None;
    }
    Some(Dockerd::start())
}

impl Dockerd {
    fn start() -> Dockerd {
        let base = super::target_dir()
            .parent()
            .expect("target/<profile> has a parent")
            .join("docker");
        std::fs::create_dir_all(&base).unwrap();
        let lock = std::fs::File::create(base.join("lock")).unwrap();
        // SAFETY: flock on an fd we own; blocks until another test process's
        // daemon on this data root has stopped.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

        // The socket path must fit in sun_path (108 bytes): a short exec root.
        let exec_root = std::env::temp_dir().join(format!("sgd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&exec_root);
        std::fs::create_dir_all(&exec_root).unwrap();
        let sock = exec_root.join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let log = std::fs::File::create(exec_root.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(base.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("dockerd.pid"))
            .args(["-H", &host])
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--containerd-namespace=spinguard-test",
                "--containerd-plugins-namespace=spinguard-test-plugins",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start dockerd");
        let mut d = Dockerd {
            child,
            host,
            exec_root,
            _lock: lock,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("dockerd exited at start ({st}):\n{}", d.log_tail());
            }
            let ok = d
                .docker()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not answering after {START_TIMEOUT:?}:\n{}",
                d.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Containers a killed test run left behind.
        d.run(&["container", "prune", "-f"], Duration::from_secs(60));
        d
    }

    /// `docker` talking to this daemon.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host);
        c
    }

    /// The value of DOCKER_HOST for this daemon (for scripts that run docker).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// `docker ARGS` with a timeout; the output whatever the status.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_timeout(self.docker().args(args), timeout)
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.run(args, timeout);
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Builds `context` (with its Dockerfile) into `tag`, with no network.
    pub fn build(&self, context: &Path, tag: &str) {
        let ctx = context.to_str().unwrap();
        self.ok(
            &["build", "-q", "--network", "none", "-t", tag, ctx],
            Duration::from_secs(600),
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.exec_root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers and containerd and unmounts
        // its layers. SIGKILL only if it hangs.
        let pid = self.child.id() as i32;
        // SAFETY: our child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                // SAFETY: the daemon leads its own process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

/// The stand-in for a third-party Go agent's image, as such images are: a
/// Debian base (the bullseye root) and a static Go binary as the entrypoint,
/// here the Go loader on cilium/ebpf 0.9.1 at [`GO_AGENT_PATH`].
pub const GO_AGENT_IMAGE: &str = "spinguard-test/my-ebpf-agent:1";
pub const GO_AGENT_PATH: &str = "/usr/bin/my-ebpf-agent";

/// Builds [`GO_AGENT_IMAGE`] (cached by the daemon after the first time).
pub fn go_agent_image(docker: &Dockerd, scratch: &Scratch) -> &'static str {
    let ctx = scratch.path("agent-image");
    std::fs::create_dir_all(&ctx).unwrap();
    let rootfs = bullseye(true);
    if std::fs::hard_link(&rootfs, ctx.join("rootfs.tar")).is_err() {
        std::fs::copy(&rootfs, ctx.join("rootfs.tar")).unwrap();
    }
    std::fs::copy(go_loader(), ctx.join("agent")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nADD rootfs.tar /\nCOPY agent {GO_AGENT_PATH}\n\
             ENTRYPOINT [\"{GO_AGENT_PATH}\"]\n"
        ),
    )
    .unwrap();
    docker.build(&ctx, GO_AGENT_IMAGE);
    GO_AGENT_IMAGE
}

/// Capability names by number (linux/capability.h), as docker spells them.
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `docker run` flags for a privileged container (`privileged: true`,
/// `kubectl debug --profile=sysadmin`). Docker's `--privileged` asks runc for
/// every capability docker knows, and runc fails ("unable to apply caps")
/// where the host's bounding set lacks one: this machine's lacks
/// CAP_SYS_RESOURCE. There the flags are every capability the host has and
/// no seccomp or AppArmor confinement, which is --privileged less its device
/// access and the capabilities nothing here could have.
pub fn privileged_flags() -> Vec<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status");
    let missing: Vec<&str> = (0..=37) // the capabilities docker 20.10 knows
        .filter(|bit| bnd & (1u64 << bit) == 0)
        .map(|bit| CAP_NAMES[bit])
        .collect();
    if missing.is_empty() {
        return vec!["--privileged".into()];
    }
    eprintln!("privileged: --privileged less {missing:?}, which this host's bounding set lacks");
    let mut f: Vec<String> = ["--cap-add", "ALL"].map(String::from).to_vec();
    for cap in missing {
        f.extend(["--cap-drop".into(), cap.into()]);
    }
    f.extend(
        [
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
        ]
        .map(String::from),
    );
    f
}
