//! What can stop the probe, each said in one line with what is missing and
//! how to get it.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("needs root: loading eBPF programs and opening tracepoints takes CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run it with sudo, or grant those capabilities")]
    NotPermitted,

    #[error("tracefs is not mounted at /sys/kernel/tracing and could not be mounted there ({source}): mount it with `mount -t tracefs nodev /sys/kernel/tracing` (in a container, mount the host's /sys/kernel/tracing)")]
    NoTracefs { source: io::Error },

    #[error("eBPF is not available: the kernel refused bpf(2) ({source}) although this process has the capabilities; it needs a kernel built with CONFIG_BPF_SYSCALL, and no seccomp profile (a container's default one refuses bpf) or LSM that blocks bpf(2) here")]
    BpfUnavailable { source: io::Error },

    #[error("the kernel has no tracepoint {group}:{name} (no {path}): {hint}")]
    MissingTracepoint {
        group: String,
        name: String,
        path: String,
        hint: &'static str,
    },

    #[error("tracepoint {group}:{name} has no usable field {field:?} in its format file: this kernel's layout is not one spinguard knows")]
    BadField {
        group: String,
        name: String,
        field: String,
    },

    #[error("the kernel rejected spinguard's {program} program ({source}); this is a bug in spinguard, please report it with this log:\n{log}")]
    Rejected {
        program: &'static str,
        source: io::Error,
        log: String,
    },

    #[error("/proc here is not of spinguard's PID namespace (spinguard is pid {ours}, /proc says {}): the pids it lists would name other processes; mount a proc for this namespace (`unshare --pid --fork --mount-proc`, or `mount -t proc proc /proc` in a mount namespace of its own), or run spinguard in the namespace /proc belongs to", proc_says.map_or("nothing".to_string(), |p| p.to_string()))]
    ForeignProc { ours: i32, proc_says: Option<i32> },

    #[error("spinguard runs in a PID namespace of its own (a container, `kubectl debug --target`), and {why}: it cannot tell which process its eBPF probe sees there; run it from the node's PID namespace instead (`kubectl debug node/NODE`, `docker run --pid host`, or on the host), where pids are the kernel's own")]
    NoNsPids { why: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl ProbeError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> ProbeError {
        ProbeError::Io {
            what: what.into(),
            source,
        }
    }

    /// A refused bpf(2): without the capabilities, [`ProbeError::NotPermitted`];
    /// with them (root in a container whose seccomp profile refuses bpf(2),
    /// an LSM), or on a kernel without it (ENOSYS),
    /// [`ProbeError::BpfUnavailable`].
    pub(crate) fn from_bpf(what: &str, source: io::Error) -> ProbeError {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) if !crate::procfs::privileged() => {
                ProbeError::NotPermitted
            }
            Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSYS) => {
                ProbeError::BpfUnavailable { source }
            }
            _ => ProbeError::io(what, source),
        }
    }
}
