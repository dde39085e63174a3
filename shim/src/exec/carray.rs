//! Reading the `char *const[]` arrays (argv, envp) that exec and posix_spawn
//! take: NULL-terminated arrays of NUL-terminated strings owned by the
//! caller. A NULL array counts as empty (Linux's execve accepts that).

use core::ffi::CStr;

use libc::c_char;

/// A caller's NULL-terminated array of C strings.
#[derive(Clone, Copy)]
pub(crate) struct CArray(*const *const c_char);

impl CArray {
    /// # Safety
    /// `p` is NULL, or a NULL-terminated array of NUL-terminated strings that
    /// stays alive and unchanged while the `CArray` is used.
    pub unsafe fn new(p: *const *const c_char) -> CArray {
        CArray(p)
    }

    pub fn as_ptr(self) -> *const *const c_char {
        self.0
    }

    /// The `i`th string, if the array has that many.
    pub fn get(self, i: usize) -> Option<&'static CStr> {
        self.iter().nth(i)
    }

    pub fn len(self) -> usize {
        self.iter().count()
    }

    /// The strings, in order. (`'static` stands for "as long as the caller
    /// keeps the array": the hooks use them only before they return.)
    pub fn iter(self) -> impl Iterator<Item = &'static CStr> {
        let mut i = 0;
        core::iter::from_fn(move || {
            if self.0.is_null() {
                return None;
            }
            // SAFETY: per `new`, every slot up to the NULL is readable.
            let p = unsafe { *self.0.add(i) };
            if p.is_null() {
                return None;
            }
            i += 1;
            // SAFETY: per `new`, a non-NULL slot is a NUL-terminated string.
            Some(unsafe { CStr::from_ptr(p) })
        })
    }
}
