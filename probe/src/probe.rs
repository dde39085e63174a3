//! The probe as a whole: maps created, programs loaded, the signal programs
//! attached for good, bpf(2) counting switched on and off, the counters read.

use crate::error::ProbeError;
use crate::maps::{
    CallKey, CallVal, DeliveredKey, Maps, SigKey, HEALTH_DELIVERIES, HEALTH_MAP_FULL,
};
use crate::pidns::{Ids, PidNs};
use crate::programs::{self, ExitFields, GenerateFields, Scope, SyscallFields};
use crate::sys::{self, PerfEventAttr, PERF_TYPE_TRACEPOINT};
use crate::tracefs::{Tracefs, Tracepoint};
use crate::trigger::{Suspect, Trigger};
use std::os::fd::OwnedFd;

const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;

/// The bpf syscall number for 32-bit callers on a 64-bit kernel, as
/// raw_syscalls sees it. On x86_64, 357 is no 64-bit syscall (the native
/// table has a hole from 335 to 423), so it means i386 bpf and nothing else.
#[cfg(target_arch = "x86_64")]
const COMPAT_NR_BPF: Option<i32> = Some(357);
#[cfg(target_arch = "aarch64")]
const COMPAT_NR_BPF: Option<i32> = None; // arm's 386 collides with arm64's numbers
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const COMPAT_NR_BPF: Option<i32> = None;

/// A loaded program and the tracepoint it goes on.
struct Prog {
    name: &'static str,
    fd: OwnedFd,
    tp: Tracepoint,
}

impl Prog {
    fn load(name: &'static str, insns: Vec<u64>, tp: Tracepoint) -> Result<Prog, ProbeError> {
        let fd = match sys::prog_load(BPF_PROG_TYPE_TRACEPOINT, &insns, c"GPL", name, None) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
                return Err(ProbeError::from_bpf("loading a program", e))
            }
            Err(_) => {
                // Again with the verifier's log, to say why.
                let mut log = vec![0u8; 1 << 20];
                let source = match sys::prog_load(
                    BPF_PROG_TYPE_TRACEPOINT,
                    &insns,
                    c"GPL",
                    name,
                    Some(&mut log),
                ) {
                    Ok(fd) => return Ok(Prog { name, fd, tp }),
                    Err(e) => e,
                };
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                return Err(ProbeError::Rejected {
                    program: name,
                    source,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                });
            }
        };
        Ok(Prog { name, fd, tp })
    }

    /// Attaches to the tracepoint: a perf event on CPU 0 carrying the
    /// program, which then runs on every CPU. Closing the event detaches it.
    fn attach(&self) -> Result<OwnedFd, ProbeError> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            config: self.tp.id,
            ..Default::default()
        };
        let what = || {
            format!(
                "attaching {} to {}:{}",
                self.name, self.tp.group, self.tp.name
            )
        };
        let ev = sys::perf_event_open_cpu(&attr, 0).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => ProbeError::NotPermitted,
            _ => ProbeError::io(what(), e),
        })?;
        sys::perf_set_bpf(&ev, &self.fd).map_err(|e| ProbeError::io(what(), e))?;
        sys::perf_enable(&ev).map_err(|e| ProbeError::io(what(), e))?;
        Ok(ev)
    }
}

/// The counters as read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub calls: Vec<(CallKey, CallVal)>,
    pub sigs: Vec<(SigKey, u64)>,
    pub delivered: Vec<(DeliveredKey, u64)>,
    /// Updates the programs could not make (a map was full), since the start.
    pub map_full: u64,
    /// Signal deliveries on the whole host since the start.
    pub deliveries: u64,
}

/// Which bpf(2) callers are being counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counting {
    /// 64-bit callers (syscalls:sys_{enter,exit}_bpf).
    pub native: bool,
    /// 32-bit callers (raw_syscalls, filtered).
    pub compat: bool,
}

pub struct Probe {
    ids: Ids,
    maps: Maps,
    enter: Prog,
    exit: Prog,
    /// None when the kernel has no raw_syscalls tracepoints or no compat ABI.
    compat: Option<(Prog, Prog)>,
    deliver: Tracepoint,
    _signal_links: Vec<OwnedFd>,
    native_links: Vec<OwnedFd>,
    compat_links: Vec<OwnedFd>,
    trigger: Option<Trigger>,
}

impl Probe {
    /// Loads everything and attaches the signal programs; bpf(2) counting
    /// starts off ([`Probe::count`]). `ids` names the tasks (a
    /// [`Scope::Process`] is that process's id in them): [`Ids::Host`] in the
    /// initial PID namespace, else the namespace's, refused where the
    /// kernel cannot give them (before 5.7).
    pub fn open(scope: Scope, ids: Ids) -> Result<Probe, ProbeError> {
        if !crate::procfs::privileged() {
            return Err(ProbeError::NotPermitted);
        }
        // Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones
        // to the memory cgroup, and this changes nothing there.
        sys::raise_memlock();
        let tracefs = Tracefs::open()?;
        let sys_enter = tracefs.tracepoint("syscalls", "sys_enter_bpf")?;
        let sys_exit = tracefs.tracepoint("syscalls", "sys_exit_bpf")?;
        let generate = tracefs.tracepoint("signal", "signal_generate")?;
        let deliver = tracefs.tracepoint("signal", "signal_deliver")?;
        if let Ids::Ns(ns) = ids {
            Self::check_ns_ids(ns)?;
        }
        let maps = Maps::create()?;
        // Our pid as `ids` name it: under Ids::Ns the namespace is ours.
        let me = sys::getpid() as u32;
        let asm = |name: &'static str| {
            move |e: crate::asm::AsmError| ProbeError::Rejected {
                program: name,
                source: std::io::Error::other(e.to_string()),
                log: String::new(),
            }
        };

        let f = SyscallFields {
            id: None,
            cmd: sys_enter.field("cmd", 4)?.clone(),
        };
        let insns = programs::bpf_enter(&maps, &f, scope, ids, me).map_err(asm("bpf_enter"))?;
        let enter = Prog::load("sg_bpf_enter", insns, sys_enter)?;
        let f = ExitFields {
            id: None,
            ret: sys_exit.field("ret", 8)?.clone(),
        };
        let insns = programs::bpf_exit(&maps, &f, ids).map_err(asm("bpf_exit"))?;
        let exit = Prog::load("sg_bpf_exit", insns, sys_exit)?;

        let compat = match COMPAT_NR_BPF {
            Some(nr) => Self::compat_programs(&tracefs, &maps, scope, ids, me, nr)
                .inspect_err(|e| log::info!("32-bit bpf calls cannot be counted: {e}"))
                .ok(),
            None => None,
        };

        let f = GenerateFields {
            sig: generate.field("sig", 4)?.clone(),
            code: generate.field("code", 4)?.clone(),
            pid: generate.field("pid", 4)?.clone(),
            group: generate.field("group", 4)?.clone(),
            result: generate.field("result", 4)?.clone(),
        };
        let insns = programs::sig_generate(&maps, &f, scope, ids).map_err(asm("sig_generate"))?;
        let gen = Prog::load("sg_sig_generate", insns, generate)?;
        let insns = programs::sig_deliver(&maps, deliver.field("sig", 4)?, scope, ids)
            .map_err(asm("sig_deliver"))?;
        let del = Prog::load("sg_sig_deliver", insns, deliver.clone())?;
        let signal_links = vec![gen.attach()?, del.attach()?];
        Ok(Probe {
            ids,
            maps,
            enter,
            exit,
            compat,
            deliver,
            _signal_links: signal_links,
            native_links: Vec::new(),
            compat_links: Vec::new(),
            trigger: None,
        })
    }

    /// Refuses, with why and what to do instead, where the kernel cannot
    /// name tasks by their ids in `ns`: without `bpf_get_ns_current_pid_tgid`
    /// the programs would see every task by its host ids, and the process
    /// the user named by its pid here would look idle.
    fn check_ns_ids(ns: PidNs) -> Result<(), ProbeError> {
        if crate::pidns::pretend_no_ns_pids() {
            return Err(ProbeError::NoNsPids {
                why: format!(
                    "{}=1 pretends this kernel lacks the eBPF helper bpf_get_ns_current_pid_tgid (Linux 5.7)",
                    crate::pidns::NO_NS_PIDS_ENV
                ),
            });
        }
        let insns = programs::ns_ids_check(ns)
            .map_err(|e| ProbeError::io("assembling", std::io::Error::other(e.to_string())))?;
        match sys::prog_load(BPF_PROG_TYPE_TRACEPOINT, &insns, c"GPL", "sg_ns_ids", None) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|r| r.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                Err(ProbeError::NoNsPids {
                    why: format!(
                        "this kernel ({release}) has no eBPF helper bpf_get_ns_current_pid_tgid for tracepoint programs (it came in Linux 5.7)"
                    ),
                })
            }
            Err(e) => Err(ProbeError::from_bpf("loading a program", e)),
        }
    }

    fn compat_programs(
        tracefs: &Tracefs,
        maps: &Maps,
        scope: Scope,
        ids: Ids,
        me: u32,
        nr: i32,
    ) -> Result<(Prog, Prog), ProbeError> {
        let raw_enter = tracefs.tracepoint("raw_syscalls", "sys_enter")?;
        let raw_exit = tracefs.tracepoint("raw_syscalls", "sys_exit")?;
        let f = SyscallFields {
            id: Some((raw_enter.field("id", 8)?.clone(), nr)),
            cmd: raw_enter.field("args", 8)?.clone(),
        };
        let asm = |e: crate::asm::AsmError| {
            ProbeError::io("assembling", std::io::Error::other(e.to_string()))
        };
        let enter = Prog::load(
            "sg_bpf32_enter",
            programs::bpf_enter(maps, &f, scope, ids, me).map_err(asm)?,
            raw_enter,
        )?;
        let f = ExitFields {
            id: Some((raw_exit.field("id", 8)?.clone(), nr)),
            ret: raw_exit.field("ret", 8)?.clone(),
        };
        let exit = Prog::load(
            "sg_bpf32_exit",
            programs::bpf_exit(maps, &f, ids).map_err(asm)?,
            raw_exit,
        )?;
        Ok((enter, exit))
    }

    /// True when 32-bit callers can be counted on this kernel.
    pub fn can_count_compat(&self) -> bool {
        self.compat.is_some()
    }

    /// Switches bpf(2) counting. While native counting is on, every syscall
    /// on the host takes the kernel's syscall-tracepoint slow path (a few
    /// ns); while compat counting is on, every syscall also runs a short
    /// program. Off, neither costs anything. Exits attach before entries,
    /// so no call is seen entering without its exit being watched.
    pub fn count(&mut self, want: Counting) -> Result<Counting, ProbeError> {
        let now = self.counting();
        if want.native && !now.native {
            let exit = self.exit.attach()?;
            let enter = self.enter.attach()?;
            self.native_links = vec![exit, enter];
        } else if !want.native && now.native {
            self.native_links.clear();
        }
        if want.compat && !now.compat {
            if let Some((enter, exit)) = &self.compat {
                let x = exit.attach()?;
                let e = enter.attach()?;
                self.compat_links = vec![x, e];
            }
        } else if !want.compat && now.compat {
            self.compat_links.clear();
        }
        if !self.counting().native && !self.counting().compat {
            // Calls cut off mid-way would stay "in progress" for ever.
            self.reset_in_progress();
        }
        Ok(self.counting())
    }

    pub fn counting(&self) -> Counting {
        Counting {
            native: !self.native_links.is_empty(),
            compat: !self.compat_links.is_empty(),
        }
    }

    fn reset_in_progress(&self) {
        if let Ok(entries) = self.maps.inflight.entries() {
            for (tid, _) in entries {
                let _ = self.maps.inflight.remove(&tid);
            }
        }
        if let Ok(procs) = self.maps.procs.entries() {
            for (pid, n) in procs {
                if n != 0 {
                    let _ = self.maps.procs.set(&pid, &0);
                }
            }
        }
    }

    /// Starts sampling signal deliveries for suspects ([`Probe::suspects`]).
    pub fn start_trigger(&mut self) -> Result<(), ProbeError> {
        if self.trigger.is_none() {
            self.trigger = Some(Trigger::open(&self.deliver)?);
        }
        Ok(())
    }

    /// Threads that took a signal right after a syscall failed with EAGAIN
    /// or EINTR, since the last call.
    pub fn suspects(&mut self) -> Vec<Suspect> {
        self.trigger
            .as_mut()
            .map(Trigger::drain)
            .unwrap_or_default()
    }

    /// (samples, lost) of the trigger so far.
    pub fn trigger_stats(&self) -> (u64, u64) {
        self.trigger
            .as_ref()
            .map_or((0, 0), |t| (t.samples, t.lost))
    }

    /// Marks `pid` as watched (its signals are counted) and its threads as
    /// its own, so signals sent to any of them are attributed. Ids as the
    /// probe's [`Ids`] name them. Under [`Ids::Ns`] the threads are left to
    /// the programs: `threads` is keyed by host tids, which a namespace
    /// cannot see (a thread is known once it makes a bpf call or takes a
    /// signal).
    pub fn watch_process(&self, pid: i32, tids: &[i32]) -> Result<(), ProbeError> {
        if self.maps.procs.get(&(pid as u32))?.is_none() {
            self.maps.procs.set(&(pid as u32), &0)?;
        }
        if self.ids == Ids::Host {
            for &t in tids {
                self.maps.threads.set(&(t as u32), &(pid as u32))?;
            }
        }
        Ok(())
    }

    /// Processes the programs count (Host scope: those that made a guarded
    /// call while counting was on, or were named by [`Probe::watch_process`]).
    pub fn watched(&self) -> Result<Vec<i32>, ProbeError> {
        Ok(self
            .maps
            .procs
            .entries()?
            .into_iter()
            .map(|(p, _)| p as i32)
            .collect())
    }

    pub fn snapshot(&self) -> Result<Snapshot, ProbeError> {
        Ok(Snapshot {
            calls: self.maps.calls.entries()?,
            sigs: self.maps.sigs.entries()?,
            delivered: self.maps.delivered.entries()?,
            map_full: self.maps.health.get(&HEALTH_MAP_FULL)?.unwrap_or(0),
            deliveries: self.maps.health.get(&HEALTH_DELIVERIES)?.unwrap_or(0),
        })
    }

    /// Drops every counter of the processes in `gone` (they have exited):
    /// the maps stay small and a recycled pid starts from zero.
    pub fn forget(&self, gone: &[i32]) -> Result<(), ProbeError> {
        let gone: std::collections::HashSet<u32> = gone.iter().map(|&p| p as u32).collect();
        if gone.is_empty() {
            return Ok(());
        }
        for (k, _) in self.maps.calls.entries()? {
            if gone.contains(&k.tgid) {
                self.maps.calls.remove(&k)?;
            }
        }
        for (k, _) in self.maps.sigs.entries()? {
            if gone.contains(&k.tgid) {
                self.maps.sigs.remove(&k)?;
            }
        }
        for (k, _) in self.maps.delivered.entries()? {
            if gone.contains(&k.tgid) {
                self.maps.delivered.remove(&k)?;
            }
        }
        for (t, p) in self.maps.threads.entries()? {
            if gone.contains(&p) {
                self.maps.threads.remove(&t)?;
            }
        }
        for p in &gone {
            self.maps.procs.remove(p)?;
        }
        Ok(())
    }
}
