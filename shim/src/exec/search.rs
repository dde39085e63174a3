//! execvp's PATH search, on a stack buffer (glibc's `__execvpe`: the same
//! candidates in the same order, the same errors skipped).

use core::ffi::CStr;

/// glibc's default search path when PATH is unset (`confstr(_CS_PATH)`).
const DEFAULT_PATH: &[u8] = b"/bin:/usr/bin";

/// The longest path the kernel takes (PATH_MAX, with its NUL).
const MAX: usize = 4096;

/// One candidate path, NUL-terminated, on the stack.
pub(crate) struct Candidate {
    buf: [u8; MAX],
}

impl Candidate {
    pub fn new() -> Candidate {
        Candidate { buf: [0; MAX] }
    }

    /// `dir/file` (just `file` for an empty `dir`, the current directory);
    /// None when it does not fit.
    pub fn set(&mut self, dir: &[u8], file: &[u8]) -> Option<&CStr> {
        let slash = if dir.is_empty() { 0 } else { 1 };
        let len = dir.len().checked_add(slash)?.checked_add(file.len())?;
        if len >= MAX {
            return None;
        }
        self.buf.get_mut(..dir.len())?.copy_from_slice(dir);
        if slash == 1 {
            *self.buf.get_mut(dir.len())? = b'/';
        }
        self.buf
            .get_mut(dir.len() + slash..len)?
            .copy_from_slice(file);
        *self.buf.get_mut(len)? = 0;
        CStr::from_bytes_with_nul(self.buf.get(..=len)?).ok()
    }
}

/// The directories of `$PATH` (or the default), in order.
pub(crate) fn path_dirs() -> impl Iterator<Item = &'static [u8]> {
    // SAFETY: getenv reads the environment without allocating (it is what
    // glibc's own execvp uses, also after vfork); the value lives as long as
    // nobody changes PATH, and we only read it before returning.
    let p = unsafe { libc::getenv(c"PATH".as_ptr()) };
    let path: &'static [u8] = if p.is_null() {
        DEFAULT_PATH
    } else {
        // SAFETY: getenv gives a NUL-terminated string.
        unsafe { CStr::from_ptr(p) }.to_bytes()
    };
    path.split(|&c| c == b':')
}

/// Whether a search would run `path`: an executable regular file, what
/// `mechanism::choose` takes for a program (execve refuses a directory, a
/// FIFO or a device with EACCES, and the search goes on). With another
/// rule, a spawn could be decided on a FIFO early in PATH while the child's
/// own search ran the real program further on, undecided.
pub(crate) fn runnable(path: &CStr) -> bool {
    crate::sys::is_regular(path) && spinguard_common::sys::executable(path)
}

/// Whether execvp goes on to the next directory after this errno (glibc:
/// EACCES is remembered, these are skipped, anything else ends the search).
pub(crate) fn try_next(errno: i32) -> bool {
    matches!(
        errno,
        libc::EACCES | libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        let mut c = Candidate::new();
        assert_eq!(
            c.set(b"/usr/bin", b"sh").unwrap().to_bytes(),
            b"/usr/bin/sh"
        );
        assert_eq!(c.set(b"", b"sh").unwrap().to_bytes(), b"sh");
        assert!(c.set(&[b'a'; MAX], b"sh").is_none());
    }
}
