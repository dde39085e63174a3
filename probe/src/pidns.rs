//! PID namespaces: which one spinguard stands in, and how the probe's
//! programs name tasks there.
//!
//! `bpf_get_current_pid_tgid()` and the tracepoints' pid fields give a task's
//! ids in the kernel's initial PID namespace. The pids a user types, `ps`
//! shows and /proc lists are in the namespace of the /proc spinguard reads.
//! On the host the two are the same. In a container (`kubectl debug
//! --target`, an ephemeral container in a pod that shares its PID namespace,
//! `docker run --pid container:…`, `unshare --pid --fork --mount-proc`) they
//! are not, and a probe keyed by the host's ids sees nothing of the pid it
//! was given. There the programs name tasks with
//! `bpf_get_ns_current_pid_tgid(dev, ino)` (Linux 5.7) instead: a task's
//! ids in that namespace when it is the task's own (innermost) one, and
//! -EINVAL for every other task (kernel/bpf/helpers.c: `ns_match()` against
//! `task_active_pid_ns(current)`; -ENOENT only for a task that has none left,
//! one exiting).

use crate::error::ProbeError;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

/// The inode of the initial PID namespace's nsfs file
/// (include/linux/proc_ns.h: `PROC_PID_INIT_INO = 0xEFFFFFFCU`).
pub const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// Set to 1, the probe acts as on a kernel without
/// `bpf_get_ns_current_pid_tgid` (before 5.7): for tests of the refusal.
pub const NO_NS_PIDS_ENV: &str = spinguard_common::env::PROBE_NO_NS_PIDS;

/// A PID namespace as the helper takes it: the nsfs device, in the kernel's
/// own `dev_t` encoding, and the inode of `/proc/PID/ns/pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PidNs {
    pub dev: u64,
    pub ino: u64,
}

/// The kernel's `dev_t` (`MKDEV(major, minor)`: 12 bits of major above 20 of
/// minor, what `ns_match()` compares) from a `stat()` st_dev (glibc's
/// encoding: minor's low byte, the major, the rest of the minor above).
/// Equal only while the major is 0 and the minor below 256, which nsfs's
/// anonymous device happens to be.
fn kernel_dev(st_dev: u64) -> u64 {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    (major << 20) | minor
}

impl PidNs {
    fn at(path: &str) -> std::io::Result<PidNs> {
        let m = std::fs::metadata(path)?;
        Ok(PidNs {
            dev: kernel_dev(m.dev()),
            ino: m.ino(),
        })
    }

    /// The PID namespace of process `pid` (as our /proc names it).
    pub fn of(pid: i32) -> std::io::Result<PidNs> {
        PidNs::at(&format!("/proc/{pid}/ns/pid"))
    }

    /// Our own.
    pub fn ours() -> std::io::Result<PidNs> {
        PidNs::at("/proc/self/ns/pid")
    }

    pub fn is_initial(&self) -> bool {
        self.ino == PROC_PID_INIT_INO
    }
}

/// How the programs name tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// The kernel's global ids (`bpf_get_current_pid_tgid`): spinguard runs
    /// in the initial PID namespace. What the probe always did; the
    /// programs are the same instructions as before namespaces were known.
    Host,
    /// Ids in this namespace (`bpf_get_ns_current_pid_tgid`). A task whose
    /// own namespace is another is not counted, and a signal it sends is
    /// said to come from outside.
    Ns(PidNs),
}

/// The ids spinguard's own pids (and its /proc's) are in: the host's in the
/// initial PID namespace, else its namespace's. Refused when /proc belongs
/// to another namespace than ours (`unshare --pid --fork` without
/// `--mount-proc`): the pids it lists would not be ours, nor the probe's.
pub fn ours() -> Result<Ids, ProbeError> {
    let ns = PidNs::ours().map_err(|e| ProbeError::io("reading /proc/self/ns/pid", e))?;
    if ns.is_initial() {
        return Ok(Ids::Host);
    }
    let me = crate::sys::getpid();
    let proc_self = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<i32>().ok());
    if proc_self != Some(me) {
        return Err(ProbeError::ForeignProc {
            ours: me,
            proc_says: proc_self,
        });
    }
    Ok(Ids::Ns(ns))
}

/// Whether the kernel may be asked for ids in a namespace: not when
/// [`NO_NS_PIDS_ENV`] pretends it cannot.
pub(crate) fn pretend_no_ns_pids() -> bool {
    std::env::var_os(NO_NS_PIDS_ENV).is_some_and(|v| v == "1")
}

/// [`NO_NS_PIDS_ENV`] checked, for a command to refuse a bad value (one
/// line, exit 2) before it starts: unset, empty or `1`.
pub fn check_env() -> Result<(), String> {
    match spinguard_common::env::text(std::env::var_os(NO_NS_PIDS_ENV)) {
        Ok(None) => Ok(()),
        Ok(Some(v)) if v == "1" => Ok(()),
        Ok(Some(v)) => Err(format!(
            "{NO_NS_PIDS_ENV}: '{v}' is not 1 (1 makes watch and diagnose act as on a kernel without bpf_get_ns_current_pid_tgid; leave it unset otherwise)"
        )),
        Err(e) => Err(format!("{NO_NS_PIDS_ENV}: {e}")),
    }
}

/// A process's pid in each PID namespace from /proc's down to its own
/// (`NSpid:`): [pid as we see it, …, pid in its own namespace].
fn nspids(status_path: &str) -> Option<Vec<i32>> {
    let st = std::fs::read_to_string(status_path).ok()?;
    let line = st.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ids: Vec<i32> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    (!ids.is_empty()).then_some(ids)
}

/// How the probe is to name the process `pid` (as we see it) and what its
/// id is then: under [`Ids::Host`], `pid` itself; else the ids of its own
/// PID namespace (ours, or one nested below it: a container started inside
/// ours) and its pid there.
pub fn ids_of(pid: i32, ours: Ids) -> Result<(Ids, u32), ProbeError> {
    if ours == Ids::Host {
        return Ok((Ids::Host, pid as u32));
    }
    let what = |e| ProbeError::io(format!("reading the PID namespace of pid {pid}"), e);
    let ns = PidNs::of(pid).map_err(what)?;
    let inner = nspids(&format!("/proc/{pid}/status"))
        .and_then(|ids| ids.last().copied())
        .ok_or_else(|| {
            what(std::io::Error::other(
                "no NSpid line in its /proc status (a kernel before 4.1)",
            ))
        })?;
    Ok((Ids::Ns(ns), inner as u32))
}

/// Every thread and process of PID namespace `ns` that we can see: its id
/// there → its id as we see it. For turning what a probe counted in a
/// namespace nested below ours back into our pids.
pub fn ids_in(ns: PidNs) -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if PidNs::of(pid).ok() != Some(ns) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let status = format!("/proc/{pid}/task/{tid}/status");
            if let Some(inner) = nspids(&status).and_then(|v| v.last().copied()) {
                out.insert(inner, tid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_in_the_kernels_encoding() {
        // nsfs here: major 0, minor 4: the same either way.
        assert_eq!(kernel_dev(4), 4);
        // major 8, minor 1 (st_dev 0x801): MKDEV(8, 1).
        assert_eq!(kernel_dev(0x801), (8 << 20) | 1);
        // A minor above 255 spills above the major in st_dev.
        let st = (0x34 & 0xff) | (0x12 << 8) | ((0x1234 & !0xff) << 12);
        assert_eq!(kernel_dev(st), (0x12 << 20) | 0x1234);
    }

    #[test]
    fn our_namespace_and_our_ids() {
        let ns = PidNs::ours().unwrap();
        assert_eq!(PidNs::of(std::process::id() as i32).unwrap(), ns);
        let me = std::process::id() as i32;
        match ours().unwrap() {
            Ids::Host => {
                assert!(ns.is_initial());
                assert_eq!(ids_of(me, Ids::Host).unwrap(), (Ids::Host, me as u32));
            }
            Ids::Ns(n) => {
                assert_eq!(n, ns);
                let (ids, inner) = ids_of(me, Ids::Ns(n)).unwrap();
                assert_eq!((ids, inner), (Ids::Ns(ns), me as u32));
            }
        }
        // In our own namespace a pid is its own.
        assert_eq!(ids_in(ns).get(&me), Some(&me));
    }
}
