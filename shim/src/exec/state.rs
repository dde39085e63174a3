//! What the exec hooks need, taken once in the constructor (where allocating
//! is fine) and read afterwards with one atomic load (`OnceLock::get`), which
//! is safe in a vfork child.
//!
//! Not taken in a secure-execution process: there the hooks pass everything
//! through untouched.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::OnceLock;

use spinguard_common::{env, BIN_FILE_NAME};

use crate::sys;

pub(crate) struct State {
    /// This library's absolute path, as LD_PRELOAD must name it.
    pub shim: CString,
    /// `NAME=value` for each of [`env::CARRIED`] set (non-empty) when the
    /// program started: put back into a child's environment that lacks it.
    pub carried: Vec<CString>,
    /// Where the spinguard binary may be, in order: `$SPINGUARD_BIN`, the
    /// installed layout (`PREFIX/lib/spinguard/` → `PREFIX/bin/`), cargo's
    /// target directory (the shim next to the binary).
    pub bins: Vec<CString>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// The state, once [`capture`] has run (None in a secure process, or if the
/// shim could not find its own path).
#[inline]
pub(crate) fn get() -> Option<&'static State> {
    STATE.get()
}

/// Called from the constructor.
pub(crate) fn capture() {
    let Some(shim) = own_path() else {
        return;
    };
    let carried = env::CARRIED
        .iter()
        .filter_map(|name| {
            let v = sys::getenv(name).filter(|v| !v.is_empty())?;
            let mut kv = name.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v);
            CString::new(kv).ok()
        })
        .collect();
    let mut bins = Vec::new();
    if let Some(b) = sys::getenv(env::BIN).filter(|v| !v.is_empty()) {
        bins.extend(CString::new(b).ok());
    }
    if let Some(dir) = Path::new(std::ffi::OsStr::from_bytes(shim.to_bytes())).parent() {
        for p in [
            dir.join("../../bin").join(BIN_FILE_NAME),
            dir.join(BIN_FILE_NAME),
        ] {
            bins.extend(CString::new(p.as_os_str().as_bytes()).ok());
        }
    }
    let _ = STATE.set(State {
        shim,
        carried,
        bins,
    });
}

/// The path the dynamic loader opened this library by, made absolute (run
/// and `shim-path` give an absolute one; a relative LD_PRELOAD entry is
/// resolved against the working directory, as the loader did).
fn own_path() -> Option<CString> {
    // SAFETY: a zeroed Dl_info is a valid out-parameter; dladdr fills it for
    // an address inside a loaded object (this function's own).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = own_path as *const libc::c_void;
    // SAFETY: as above.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr gives a NUL-terminated name owned by the loader.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    if name.to_bytes().starts_with(b"/") {
        return Some(name.to_owned());
    }
    let path = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    let path = std::fs::canonicalize(path).ok()?;
    CString::new(path.into_os_string().into_vec()).ok()
}
