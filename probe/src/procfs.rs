//! What /proc says about a process: its name, its pid inside its own PID
//! namespace, its cgroup and container, its tracer, whether spinguard
//! already guards it, its threads. Nothing here touches the process.

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn status(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn num(status: &str, name: &str) -> Option<i64> {
    field(status, name)?.split_whitespace().next()?.parse().ok()
}

/// True when this process may load tracing eBPF programs and open
/// tracepoints for every CPU: CAP_BPF and CAP_PERFMON (Linux 5.8+), or
/// CAP_SYS_ADMIN.
pub fn privileged() -> bool {
    // /proc/self, not our pid: that names us even when /proc is another
    // PID namespace's.
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| field(&s, "CapEff").and_then(|h| u64::from_str_radix(h, 16).ok()))
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// The process name (`/proc/PID/comm`), "?" once it is gone.
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_else(|_| "?".into())
}

/// True while the process runs: it exists and is not a zombie waiting for
/// its parent (a zombie leader whose other threads still run is alive).
pub fn alive(pid: i32) -> bool {
    let Some(st) = status(pid) else {
        return false;
    };
    let state = field(&st, "State").unwrap_or("");
    !(state.starts_with('Z') || state.starts_with('X')) || threads(pid).iter().any(|&t| t != pid)
}

/// The thread ids of `pid`, sorted; empty once it is gone.
pub fn threads(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort_unstable();
    tids
}

/// Where a process lives: its pid in its innermost PID namespace, its
/// cgroup, the container that cgroup names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The pid inside the process's own PID namespace, when that is not the
    /// host's (the last `NSpid:` entry).
    pub nspid: Option<i32>,
    /// The process's cgroup (the unified hierarchy's path; on a v1-only
    /// host, the longest controller path); None at the root.
    pub cgroup: Option<String>,
    /// A container id found in the cgroup path (docker, containerd, CRI-O,
    /// podman: 64 hex digits), shortened to 12 like `docker ps`.
    pub container: Option<String>,
}

pub fn placement(pid: i32) -> Placement {
    let nspid = status(pid)
        .and_then(|s| field(&s, "NSpid").map(str::to_string))
        .and_then(|ns| {
            let ids: Vec<i32> = ns
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            (ids.len() > 1).then(|| *ids.last().unwrap_or(&pid))
        });
    let cgroup_text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = cgroup_path(&cgroup_text);
    let container = cgroup_text.lines().find_map(container_id);
    Placement {
        nspid,
        cgroup,
        container,
    }
}

/// The most telling cgroup path of a `/proc/PID/cgroup` text.
fn cgroup_path(text: &str) -> Option<String> {
    let paths: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, _controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((id, path))
        })
        .collect();
    let unified = paths.iter().find(|(id, _)| *id == "0").map(|(_, p)| *p);
    let chosen = match unified {
        Some(p) if p != "/" => Some(p),
        _ => paths
            .iter()
            .map(|(_, p)| *p)
            .filter(|p| *p != "/")
            .max_by_key(|p| p.len()),
    };
    chosen.map(str::to_string)
}

/// `…/docker-<64 hex>.scope`, `…/cri-containerd-<id>.scope`, `…/crio-<id>`,
/// `/docker/<id>`, `…/libpod-<id>.scope`: the id, first 12 digits.
fn container_id(line: &str) -> Option<String> {
    let path = line.splitn(3, ':').nth(2)?;
    path.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id[..12].to_string())
    })
}

/// The pid of the process's tracer, 0 when none.
pub fn tracer(pid: i32) -> i32 {
    status(pid).and_then(|s| num(&s, "TracerPid")).unwrap_or(0) as i32
}

/// How spinguard already guards a process, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The LD_PRELOAD shim is mapped in it.
    Shim,
    /// Traced by a spinguard process (`run` or `attach`), by that pid.
    Traced { by: i32 },
}

pub fn guard(pid: i32) -> Option<Guard> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if maps.contains(spinguard_common::SHIM_FILE_NAME) {
        return Some(Guard::Shim);
    }
    match tracer(pid) {
        0 => None,
        t if comm(t) == "spinguard" => Some(Guard::Traced { by: t }),
        _ => None,
    }
}

/// True when the process's executable is a 32-bit ELF (i386 on x86_64): its
/// bpf calls go through the compat syscall table.
pub fn is_compat(pid: i32) -> bool {
    let mut head = [0u8; 5];
    std::fs::File::open(format!("/proc/{pid}/exe"))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| &head[..4] == b"\x7fELF" && head[4] == 1)
}

/// A process to diagnose, checked.
#[derive(Clone, Debug)]
pub struct Target {
    /// The process (thread-group) id, also when a thread id was given.
    pub pid: i32,
    /// The thread id given, when it was a thread of `pid`.
    pub given_thread: Option<i32>,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: i32 },
    #[error("pid {pid} is spinguard itself")]
    Ourselves { pid: i32 },
    #[error("pid {pid} ({name}) is a zombie: it has exited, and its parent has not reaped it yet")]
    Zombie { pid: i32, name: String },
    #[error("pid {pid} is a kernel thread: it makes no bpf calls of its own")]
    KernelThread { pid: i32 },
}

/// Checks that `pid` is a live user process other than us. Being traced by
/// someone else is fine: the probe never touches the process.
pub fn check_target(pid: i32) -> Result<Target, TargetError> {
    let st = status(pid).ok_or(TargetError::NoSuchProcess { pid })?;
    let tgid = num(&st, "Tgid").unwrap_or(pid.into()) as i32;
    if tgid == std::process::id() as i32 {
        return Err(TargetError::Ourselves { pid });
    }
    let st = if tgid == pid {
        st
    } else {
        status(tgid).ok_or(TargetError::NoSuchProcess { pid })?
    };
    let name = field(&st, "Name").unwrap_or("?").to_string();
    let state = field(&st, "State").unwrap_or("");
    if !alive(tgid) && (state.starts_with('Z') || state.starts_with('X')) {
        return Err(TargetError::Zombie { pid: tgid, name });
    }
    // Kernel threads have no memory map: an empty /proc/PID/maps… and no exe.
    if std::fs::read_link(format!("/proc/{tgid}/exe")).is_err()
        && std::fs::read_to_string(format!("/proc/{tgid}/maps")).is_ok_and(|m| m.is_empty())
    {
        return Err(TargetError::KernelThread { pid: tgid });
    }
    Ok(Target {
        pid: tgid,
        given_thread: (tgid != pid).then_some(pid),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_from_cgroup_lines() {
        let id = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";
        for line in [
            format!("0::/system.slice/docker-{id}.scope"),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"),
            format!("12:memory:/docker/{id}"),
            format!("0::/kubepods/besteffort/pod7/crio-{id}"),
            format!("0::/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(container_id(&line).as_deref(), Some(&id[..12]), "{line}");
        }
        assert_eq!(
            container_id("0::/user.slice/user-1000.slice/session-2.scope"),
            None
        );
        assert_eq!(container_id("0::/"), None);
        assert_eq!(container_id("garbage"), None);
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(cgroup_path("0::/\n"), None);
        assert_eq!(
            cgroup_path("0::/system.slice/agent.service\n").as_deref(),
            Some("/system.slice/agent.service")
        );
        // This machine's hybrid v1 layout: the unified root says nothing.
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/b45b\n1:cpu:/\n0::/\n";
        assert_eq!(cgroup_path(hybrid).as_deref(), Some("/process_api/b45b"));
    }

    #[test]
    fn our_own_process() {
        let me = std::process::id() as i32;
        assert!(threads(me).contains(&me));
        assert!(!comm(me).is_empty());
        assert_eq!(
            check_target(me).unwrap_err(),
            TargetError::Ourselves { pid: me }
        );
        assert_eq!(
            check_target(i32::MAX).unwrap_err(),
            TargetError::NoSuchProcess { pid: i32::MAX }
        );
        assert!(!is_compat(me));
    }
}
