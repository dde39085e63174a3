//! Memory for a rewritten argv or environment, without malloc: the exec
//! hooks may run in a vfork child, which shares the parent's heap (and its
//! allocator's locks, possibly held by a thread that is not there).
//!
//! One anonymous mapping, sized up front for everything one exec needs,
//! filled from the start, unmapped on drop (when the exec failed or returned
//! to a posix_spawn caller; a successful execve discards it with the rest of
//! the address space).

use libc::c_char;

use crate::sys;

pub(crate) struct Arena {
    base: *mut u8,
    len: usize,
    used: usize,
}

/// Pointer-sized alignment for the arrays placed in the arena.
const ALIGN: usize = core::mem::size_of::<*const c_char>();

impl Arena {
    /// Room for `pointers` pointers and `bytes` bytes of strings.
    pub fn new(pointers: usize, bytes: usize) -> Option<Arena> {
        let len = pointers
            .checked_mul(ALIGN)?
            .checked_add(bytes)?
            .checked_add(4 * ALIGN)?;
        let page = 4096;
        let len = len.checked_add(page - 1)? & !(page - 1);
        let base = sys::map(len)?;
        Some(Arena { base, len, used: 0 })
    }

    fn take(&mut self, size: usize, align: usize) -> Option<*mut u8> {
        let start = self.used.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > self.len {
            return None;
        }
        self.used = end;
        // SAFETY: start < len, inside our mapping.
        Some(unsafe { self.base.add(start) })
    }

    /// A NULL-terminated array of `items` pointers, filled by the caller
    /// through the returned builder.
    pub fn array(&mut self, items: usize) -> Option<PtrArray> {
        let p = self.take(items.checked_add(1)?.checked_mul(ALIGN)?, ALIGN)?;
        Some(PtrArray {
            base: p.cast(),
            cap: items,
            len: 0,
        })
    }

    /// A NUL-terminated copy of the concatenation of `parts`.
    pub fn string(&mut self, parts: &[&[u8]]) -> Option<*const c_char> {
        let total = parts
            .iter()
            .try_fold(1usize, |n, p| n.checked_add(p.len()))?;
        let p = self.take(total, 1)?;
        let mut at = 0;
        for part in parts {
            // SAFETY: `total` bytes were reserved at `p`; the parts fill
            // total - 1 of them, the NUL the last.
            unsafe { core::ptr::copy_nonoverlapping(part.as_ptr(), p.add(at), part.len()) };
            at += part.len();
        }
        // SAFETY: as above (the mapping is zeroed; written for clarity).
        unsafe { *p.add(at) = 0 };
        Some(p.cast_const().cast())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every pointer into it came from this
        // arena and the caller is done with them when it drops the arena.
        unsafe { sys::unmap(self.base, self.len) };
    }
}

/// A NULL-terminated `char *[]` in an [`Arena`]; pushes past its capacity
/// are refused (the arena was sized for exactly what is pushed).
pub(crate) struct PtrArray {
    base: *mut *const c_char,
    cap: usize,
    len: usize,
}

impl PtrArray {
    pub fn push(&mut self, p: *const c_char) -> Option<()> {
        if self.len >= self.cap {
            return None;
        }
        // SAFETY: len < cap, and cap + 1 slots were reserved.
        unsafe { *self.base.add(self.len) = p };
        self.len += 1;
        Some(())
    }

    /// The array, NULL-terminated (the mapping is zeroed, and the terminator
    /// slot is never pushed to).
    pub fn finish(self) -> *const *const c_char {
        // SAFETY: slot `len` <= cap was reserved; write the NULL explicitly.
        unsafe { *self.base.add(self.len) = core::ptr::null() };
        self.base.cast_const()
    }
}
