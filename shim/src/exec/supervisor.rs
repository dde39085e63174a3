//! Who can trace a static or Go program: the spinguard binary, unless this
//! process is spinguard itself or is traced already.
//!
//! Raw calls on stack buffers only (vfork child), and only on the ptrace
//! path: a dynamically linked target never comes here.

use core::ffi::CStr;
use core::fmt::Write as _;

use spinguard_common::sys::{self as csys, File};

use super::state::State;
use crate::line::Line;
use crate::sys;

/// The first executable candidate for the spinguard binary.
pub(crate) fn binary(state: &State) -> Option<&CStr> {
    state
        .bins
        .iter()
        .map(|b| b.as_c_str())
        .find(|b| csys::executable(b))
}

/// Whether this process runs the spinguard binary `bin` (spinguard's own
/// exec of a program, with the shim preloaded into spinguard: handing that
/// to spinguard again would never end).
pub(crate) fn is_self(bin: Option<&CStr>) -> bool {
    match (bin.and_then(sys::file_id), sys::file_id(c"/proc/self/exe")) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Our tracer, if this process is traced: its pid and whether it is
/// spinguard (which then already guards what we exec: its seccomp filter and
/// its tracing are inherited across exec).
pub(crate) fn tracer(bin: Option<&CStr>) -> Option<Tracer> {
    let pid = tracer_pid()?;
    let mut path = Line::raw();
    let _ = write!(path, "/proc/{pid}/exe\0");
    let exe = CStr::from_bytes_until_nul(path.as_bytes()).ok()?;
    let by_file = match (bin.and_then(sys::file_id), sys::file_id(exe)) {
        (Some(a), Some(b)) => Some(a == b),
        _ => None,
    };
    // Without the right to look at its executable, its name says enough.
    let spinguard = by_file.unwrap_or_else(|| comm_is_spinguard(pid));
    Some(Tracer { pid, spinguard })
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Tracer {
    pub pid: u32,
    pub spinguard: bool,
}

/// `TracerPid:` of /proc/self/status; None when 0 or unreadable.
fn tracer_pid() -> Option<u32> {
    let f = File::open(c"/proc/self/status").ok()?;
    let mut buf = [0u8; 1024];
    let n = f.read_at(&mut buf, 0).ok()?;
    let text = buf.get(..n)?;
    let line = text
        .split(|&c| c == b'\n')
        .find_map(|l| l.strip_prefix(b"TracerPid:"))?;
    let pid = line
        .iter()
        .filter(|c| c.is_ascii_digit())
        .try_fold(0u32, |n, &c| {
            n.checked_mul(10)?.checked_add((c - b'0') as u32)
        })?;
    (pid != 0).then_some(pid)
}

fn comm_is_spinguard(pid: u32) -> bool {
    let mut path = Line::raw();
    let _ = write!(path, "/proc/{pid}/comm\0");
    let Ok(p) = CStr::from_bytes_until_nul(path.as_bytes()) else {
        return false;
    };
    let Ok(f) = File::open(p) else {
        return false;
    };
    let mut buf = [0u8; 16];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    buf.get(..n) == Some(b"spinguard\n".as_slice())
}
