//! A child's environment: the shim stays in LD_PRELOAD, in front of whatever
//! the program put there (`env LD_PRELOAD=$PROFILER prog` keeps both), and
//! the `SPINGUARD_*` settings travel on when a program dropped them.
//!
//! The check reads the array only; a copy is made (in an [`Arena`]) only
//! when something is missing, so the usual exec passes the caller's own
//! array through.

use core::ffi::CStr;

use libc::c_char;
use spinguard_common::SHIM_FILE_NAME;

use super::arena::{Arena, PtrArray};
use super::carray::CArray;
use super::state::State;

const LD_PRELOAD: &[u8] = b"LD_PRELOAD=";

/// What an environment lacks.
pub(crate) struct Check {
    /// Entries in the array.
    count: usize,
    /// The LD_PRELOAD entry's value, if there is one.
    preload: Option<&'static [u8]>,
    has_shim: bool,
    /// Bit i: `state.carried[i]` has no entry of its name.
    missing: u64,
}

impl Check {
    pub fn of(state: &State, env: CArray) -> Check {
        let mut c = Check {
            count: 0,
            preload: None,
            has_shim: false,
            missing: 0,
        };
        let mut present = 0u64;
        for e in env.iter() {
            c.count += 1;
            let e = e.to_bytes();
            if let Some(v) = e.strip_prefix(LD_PRELOAD) {
                // The loader takes the first LD_PRELOAD entry (getenv order).
                if c.preload.is_none() {
                    c.preload = Some(v);
                    c.has_shim = names_shim(v, state.shim.to_bytes());
                }
            }
            for (i, kv) in state.carried.iter().enumerate().take(64) {
                if same_name(e, kv.to_bytes()) {
                    present |= 1 << i;
                }
            }
        }
        let all = if state.carried.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << state.carried.len()) - 1
        };
        c.missing = all & !present;
        c
    }

    /// Nothing to add: the caller's array can be used as it is.
    pub fn complete(&self) -> bool {
        self.has_shim && self.missing == 0
    }

    /// Whether LD_PRELOAD names the shim already.
    pub fn has_shim(&self) -> bool {
        self.has_shim
    }

    /// The carried `NAME=value` settings the environment lacks.
    pub fn missing<'a>(&self, state: &'a State) -> impl Iterator<Item = &'a CStr> + 'a {
        let missing = self.missing;
        state
            .carried
            .iter()
            .enumerate()
            .take(64)
            .filter(move |(i, _)| missing & (1 << i) != 0)
            .map(|(_, kv)| kv.as_c_str())
    }

    /// (pointers, bytes) an arena needs for [`Check::write`].
    pub fn needs(&self, state: &State) -> (usize, usize) {
        let pointers = self.count + 1 + state.carried.len();
        let bytes = LD_PRELOAD.len()
            + state.shim.to_bytes().len()
            + 2
            + self.preload.map_or(0, <[u8]>::len);
        (pointers, bytes)
    }

    /// The environment with the shim first in LD_PRELOAD and the carried
    /// settings added, in `arena`; the caller's strings are shared, not copied.
    pub fn write(
        &self,
        state: &State,
        env: CArray,
        arena: &mut Arena,
    ) -> Option<*const *const c_char> {
        let mut out: PtrArray = arena.array(self.count + 1 + state.carried.len())?;
        let preload = if self.has_shim {
            None
        } else {
            let shim = state.shim.to_bytes();
            Some(match self.preload.filter(|v| !v.is_empty()) {
                Some(old) => arena.string(&[LD_PRELOAD, shim, b":", old])?,
                None => arena.string(&[LD_PRELOAD, shim])?,
            })
        };
        let mut replaced = false;
        for e in env.iter() {
            if let (Some(p), false) = (preload, replaced) {
                if e.to_bytes().starts_with(LD_PRELOAD) {
                    out.push(p)?;
                    replaced = true;
                    continue;
                }
            }
            out.push(e.as_ptr())?;
        }
        if let (Some(p), false) = (preload, replaced) {
            out.push(p)?;
        }
        for kv in self.missing(state) {
            out.push(kv.as_ptr())?;
        }
        Some(out.finish())
    }
}

/// Whether `NAME=...` entry `e` is for the same name as `kv`.
fn same_name(e: &[u8], kv: &[u8]) -> bool {
    match kv.iter().position(|&c| c == b'=') {
        Some(n) => e.len() > n && e.get(..=n) == kv.get(..=n),
        None => false,
    }
}

/// Whether an LD_PRELOAD value (entries separated by colons or spaces, as
/// ld.so splits it) names this shim, or any copy of it by file name (two
/// shims in one process would both interpose the same symbols).
fn names_shim(value: &[u8], shim: &[u8]) -> bool {
    value.split(|&c| c == b':' || c == b' ').any(|entry| {
        entry == shim || entry.rsplit(|&c| c == b'/').next() == Some(SHIM_FILE_NAME.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn state() -> State {
        State {
            shim: CString::new("/opt/sg/lib/spinguard/libspinguard_shim.so").unwrap(),
            carried: vec![
                CString::new("SPINGUARD_SIGNALS=PROF").unwrap(),
                CString::new("SPINGUARD_BIN=/opt/sg/bin/spinguard").unwrap(),
            ],
            bins: vec![],
        }
    }

    fn strings(p: *const *const c_char) -> Vec<String> {
        // SAFETY: arrays built by the test or by `write`.
        unsafe { CArray::new(p) }
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    fn with_env(entries: &[&str], f: impl FnOnce(CArray)) {
        let owned: Vec<CString> = entries.iter().map(|e| CString::new(*e).unwrap()).collect();
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // SAFETY: `ptrs` and `owned` outlive `f`.
        f(unsafe { CArray::new(ptrs.as_ptr()) })
    }

    fn fix(entries: &[&str]) -> Option<Vec<String>> {
        let s = state();
        let mut out = None;
        with_env(entries, |env| {
            let c = Check::of(&s, env);
            if c.complete() {
                return;
            }
            let (p, b) = c.needs(&s);
            let mut arena = Arena::new(p, b).unwrap();
            out = Some(strings(c.write(&s, env, &mut arena).unwrap()));
        });
        out
    }

    #[test]
    fn a_complete_environment_is_left_alone() {
        assert_eq!(
            fix(&[
                "A=1",
                "LD_PRELOAD=/x.so:/opt/sg/lib/spinguard/libspinguard_shim.so",
                "SPINGUARD_SIGNALS=ALRM",
                "SPINGUARD_BIN=/b"
            ]),
            None
        );
        // Another copy of the shim counts (by file name).
        assert_eq!(
            fix(&[
                "LD_PRELOAD=/elsewhere/libspinguard_shim.so",
                "SPINGUARD_SIGNALS=PROF",
                "SPINGUARD_BIN=/b"
            ]),
            None
        );
    }

    #[test]
    fn the_shim_goes_in_front_of_a_replaced_ld_preload() {
        assert_eq!(
            fix(&["A=1", "LD_PRELOAD=/usr/lib/libprofiler.so", "B=2"]).unwrap(),
            vec![
                "A=1",
                "LD_PRELOAD=/opt/sg/lib/spinguard/libspinguard_shim.so:/usr/lib/libprofiler.so",
                "B=2",
                "SPINGUARD_SIGNALS=PROF",
                "SPINGUARD_BIN=/opt/sg/bin/spinguard"
            ]
        );
    }

    #[test]
    fn an_emptied_environment_gets_the_shim_and_the_settings_back() {
        assert_eq!(
            fix(&[]).unwrap(),
            vec![
                "LD_PRELOAD=/opt/sg/lib/spinguard/libspinguard_shim.so",
                "SPINGUARD_SIGNALS=PROF",
                "SPINGUARD_BIN=/opt/sg/bin/spinguard"
            ]
        );
        // A program's own setting is kept, only the missing one is added.
        assert_eq!(
            fix(&["SPINGUARD_SIGNALS=ALRM", "LD_PRELOAD="]).unwrap(),
            vec![
                "SPINGUARD_SIGNALS=ALRM",
                "LD_PRELOAD=/opt/sg/lib/spinguard/libspinguard_shim.so",
                "SPINGUARD_BIN=/opt/sg/bin/spinguard"
            ]
        );
    }

    #[test]
    fn names() {
        assert!(same_name(b"SPINGUARD_BIN=/x", b"SPINGUARD_BIN=/y"));
        assert!(!same_name(b"SPINGUARD_BINX=/x", b"SPINGUARD_BIN=/y"));
        assert!(!same_name(b"SPINGUARD_BIN", b"SPINGUARD_BIN=/y"));
        assert!(names_shim(b"/a.so /opt/libspinguard_shim.so", b"/x"));
        assert!(!names_shim(b"/a.so:/opt/libspinguard_shim.so.bak", b"/x"));
    }
}
