//! posix_spawn and posix_spawnp: decided in the caller (glibc's child runs
//! an internal execve LD_PRELOAD cannot reach), then libc's own function with
//! the environment or the handoff the decision gives. File actions and
//! attributes apply unchanged (to spinguard, on a handoff, which passes the
//! signal mask and the descriptors on to the program).

use core::ffi::CStr;

use libc::{c_char, c_int, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t};

use super::carray::CArray;
use super::plan::{self, Plan, Target};
use super::search::{self, Candidate};
use crate::real::Next;

type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const posix_spawn_file_actions_t,
    *const posix_spawnattr_t,
    *const *const c_char,
    *const *const c_char,
) -> c_int;

static POSIX_SPAWN: Next = Next::new(c"posix_spawn");
static POSIX_SPAWNP: Next = Next::new(c"posix_spawnp");

fn real(next: &Next) -> Option<SpawnFn> {
    // SAFETY: the address dlsym gave for posix_spawn(p), whose C type this is.
    next.get()
        .map(|a| unsafe { core::mem::transmute::<usize, SpawnFn>(a) })
}

/// Decides for `target` and spawns: `as_asked` with the environment to use,
/// or libc's posix_spawn of spinguard on a handoff.
unsafe fn spawn_decided(
    target: &CStr,
    pid: *mut pid_t,
    actions: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
    as_asked: impl FnOnce(*const *const c_char) -> c_int,
) -> c_int {
    let d = plan::decide(
        Target {
            inspect: target,
            name: Some(target),
        },
        CArray::new(argv),
        CArray::new(envp),
    );
    match d.plan {
        Plan::AsAsked { envp } => as_asked(envp),
        Plan::Handoff { path, argv, envp } => match real(&POSIX_SPAWN) {
            Some(spawn) => spawn(pid, path, actions, attr, argv, envp),
            None => libc::ENOSYS,
        },
    }
}

/// # Safety
/// Same contract as libc's `posix_spawn`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(spawn) = real(&POSIX_SPAWN) else {
        return libc::ENOSYS;
    };
    if path.is_null() {
        return spawn(pid, path, actions, attr, argv, envp);
    }
    spawn_decided(CStr::from_ptr(path), pid, actions, attr, argv, envp, |e| {
        spawn(pid, path, actions, attr, argv, e)
    })
}

/// # Safety
/// Same contract as libc's `posix_spawnp`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    actions: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(spawnp) = real(&POSIX_SPAWNP) else {
        return libc::ENOSYS;
    };
    if file.is_null() {
        return spawnp(pid, file, actions, attr, argv, envp);
    }
    let f = CStr::from_ptr(file);
    if f.to_bytes().contains(&b'/') {
        return posix_spawn(pid, file, actions, attr, argv, envp);
    }
    // The file the search will find: the first executable non-directory in
    // $PATH (glibc's child tries each in turn the same way).
    let mut candidate = Candidate::new();
    let dir = search::path_dirs().find(|dir| {
        candidate
            .set(dir, f.to_bytes())
            .is_some_and(search::runnable)
    });
    let Some(p) = dir.and_then(|dir| candidate.set(dir, f.to_bytes())) else {
        return spawnp(pid, file, actions, attr, argv, envp);
    };
    spawn_decided(p, pid, actions, attr, argv, envp, |e| {
        spawnp(pid, file, actions, attr, argv, e)
    })
}
