//! system() and popen(): glibc runs `/bin/sh -c CMD` through an internal
//! posix_spawn that LD_PRELOAD cannot reach. The shell is dynamically linked,
//! so the shim reaches it, and its own exec hooks the rest, as long as the
//! environment still names the shim. When the program has dropped it
//! (`setenv("LD_PRELOAD", ...)`, `unsetenv`), the command is wrapped so the
//! shell puts the shim (and the settings) back before running it:
//!
//! ```sh
//! export LD_PRELOAD='SHIM'"${LD_PRELOAD:+:$LD_PRELOAD}" [NAME='value'...]; exec /bin/sh -c 'CMD' sh
//! ```
//!
//! and libc's own function runs that, so its signal handling, its waiting
//! and pclose stay exactly libc's. (Neither function is async-signal-safe, so
//! allocating here is fine, unlike in the exec family.)

use core::ffi::CStr;
use std::ffi::CString;

use libc::{c_char, c_int, FILE};

use super::carray::CArray;
use super::env::Check;
use super::state::{self, State};
use crate::real::Next;

static SYSTEM: Next = Next::new(c"system");
static POPEN: Next = Next::new(c"popen");

/// # Safety
/// Same contract as libc's `system`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    type F = unsafe extern "C" fn(*const c_char) -> c_int;
    let Some(a) = SYSTEM.get() else {
        return -1;
    };
    // SAFETY: dlsym's address for system, whose C type this is.
    let real = core::mem::transmute::<usize, F>(a);
    match wrapped(command) {
        Some(c) => real(c.as_ptr()),
        None => real(command),
    }
}

/// # Safety
/// Same contract as libc's `popen`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut FILE {
    type F = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
    let Some(a) = POPEN.get() else {
        return core::ptr::null_mut();
    };
    // SAFETY: dlsym's address for popen, whose C type this is.
    let real = core::mem::transmute::<usize, F>(a);
    match wrapped(command) {
        Some(c) => real(c.as_ptr(), mode),
        None => real(command, mode),
    }
}

/// The wrapped command, or None to run it as it is (the environment is
/// complete, or there is nothing to do).
unsafe fn wrapped(command: *const c_char) -> Option<CString> {
    if command.is_null() {
        return None;
    }
    let state = state::get()?;
    let check = Check::of(state, CArray::new(crate::sys::environ()));
    if check.complete() {
        return None;
    }
    CString::new(wrap(state, &check, CStr::from_ptr(command).to_bytes())).ok()
}

fn wrap(state: &State, check: &Check, command: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(command.len() * 2 + 256);
    s.extend_from_slice(b"export");
    if !check.has_shim() {
        s.extend_from_slice(b" LD_PRELOAD=");
        quote(&mut s, state.shim.to_bytes());
        s.extend_from_slice(b"\"${LD_PRELOAD:+:$LD_PRELOAD}\"");
    }
    for kv in check.missing(state) {
        let kv = kv.to_bytes();
        let eq = kv.iter().position(|&c| c == b'=').unwrap_or(kv.len());
        s.push(b' ');
        s.extend_from_slice(kv.get(..=eq).unwrap_or(kv));
        quote(&mut s, kv.get(eq + 1..).unwrap_or_default());
    }
    s.extend_from_slice(b"; exec /bin/sh -c ");
    quote(&mut s, command);
    s.extend_from_slice(b" sh");
    s
}

/// `'text'`, with each `'` written as `'\''`.
fn quote(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'\'');
    for &c in text {
        if c == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(c);
        }
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let mut v = Vec::new();
        quote(&mut v, b"echo 'a b'");
        assert_eq!(v, b"'echo '\\''a b'\\'''");
    }

    #[test]
    fn the_wrapped_command_runs_the_same_under_sh() {
        let state = State {
            shim: CString::new("/x/libspinguard_shim.so").unwrap(),
            carried: vec![CString::new("SPINGUARD_SIGNALS=PROF").unwrap()],
            bins: vec![],
        };
        let empty = [core::ptr::null()];
        // SAFETY: a NULL-terminated empty array.
        let check = Check::of(&state, unsafe { CArray::new(empty.as_ptr()) });
        let cmd =
            b"printf '%s|%s|%s' \"$0\" \"$LD_PRELOAD\" \"$SPINGUARD_SIGNALS\"; echo \" it's\"";
        let w = wrap(&state, &check, cmd);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&w))
            .env_clear()
            .env("LD_PRELOAD", "/p.so")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "sh|/x/libspinguard_shim.so:/p.so|PROF it's\n"
        );
    }
}
