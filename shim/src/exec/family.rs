//! The exec family: execve, execv, execvp, execvpe, fexecve, execveat, and
//! (through `list.c`, which gathers their variadic arguments) execl, execle,
//! execlp.
//!
//! Each needs its own hook: glibc's execv, execvp, execl... call an internal
//! `__execve` that LD_PRELOAD cannot interpose. Each hook decides
//! ([`plan::decide`]) and makes the kernel call itself: glibc's execve is that
//! one syscall, and its execvp is the PATH search in [`search`] around it.
//!
//! A vfork child runs these: no allocation (stack and mmap only), no lock, no
//! panic; errno is left as the kernel's exec failure set it.

use core::ffi::CStr;
use core::fmt::Write as _;

use libc::{c_char, c_int};

use super::carray::CArray;
use super::plan::{self, Decision, Plan, Target};
use super::search::{self, Candidate};
use crate::line::Line;
use crate::sys;

/// # Safety
/// Same contract as libc's `execve`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    if path.is_null() {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    exec_path(CStr::from_ptr(path), CArray::new(argv), CArray::new(envp))
}

/// # Safety
/// Same contract as libc's `execv`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    execve(path, argv, sys::environ())
}

/// # Safety
/// Same contract as libc's `execvp`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    execvpe(file, argv, sys::environ())
}

/// # Safety
/// Same contract as glibc's `execvpe`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    if file.is_null() {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    search_and_exec(CStr::from_ptr(file), CArray::new(argv), CArray::new(envp))
}

/// The end of `list.c`'s execl, execle and execlp: their arguments gathered
/// into an array on the caller's stack. Not an interposed name.
///
/// # Safety
/// `path` a C string; `argv` and `envp` as for execve.
#[no_mangle]
pub unsafe extern "C" fn spinguard_shim_exec_list(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    search: c_int,
) -> c_int {
    if search != 0 {
        execvpe(path, argv, envp)
    } else {
        execve(path, argv, envp)
    }
}

extern "C" {
    fn spinguard_shim_execl();
    fn spinguard_shim_execle();
    fn spinguard_shim_execlp();
}

/// Exports `$name` as a jump to the C function `$target` in list.c, with
/// every argument register and the stack untouched (what a C variadic call
/// needs, and what stable Rust cannot write as a function).
macro_rules! jump_to {
    ($name:ident, $target:ident) => {
        /// An exported trampoline into list.c (see there).
        #[cfg_attr(not(test), no_mangle)]
        #[unsafe(naked)]
        pub extern "C" fn $name() {
            #[cfg(target_arch = "x86_64")]
            core::arch::naked_asm!("jmp {}", sym $target);
            #[cfg(target_arch = "aarch64")]
            core::arch::naked_asm!("b {}", sym $target);
        }
    };
}

jump_to!(execl, spinguard_shim_execl);
jump_to!(execle, spinguard_shim_execle);
jump_to!(execlp, spinguard_shim_execlp);

/// # Safety
/// Same contract as libc's `fexecve`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    execveat(fd, c"".as_ptr(), argv, envp, libc::AT_EMPTY_PATH)
}

/// # Safety
/// Same contract as glibc's `execveat`.
#[cfg_attr(not(test), no_mangle)]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> c_int {
    if path.is_null() {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    let p = CStr::from_ptr(path);
    let (argv, envp) = (CArray::new(argv), CArray::new(envp));
    let rel = p.to_bytes();
    if dirfd == libc::AT_FDCWD || rel.starts_with(b"/") {
        let d = plan::decide(target(p), argv, envp);
        return run(d, |envp| {
            sys::execveat(dirfd, path, argv.as_ptr(), envp, flags)
        });
    }
    // Relative to an open directory, or the fd itself (AT_EMPTY_PATH):
    // inspected through /proc; handed off under the name /proc's link gives.
    let mut inspect = Line::raw();
    let _ = if rel.is_empty() {
        write!(inspect, "/proc/self/fd/{dirfd}\0")
    } else {
        write!(
            inspect,
            "/proc/self/fd/{dirfd}/{}\0",
            crate::line::Lossy(rel)
        )
    };
    let Ok(inspect) = CStr::from_bytes_until_nul(inspect.as_bytes()) else {
        return sys::execveat(dirfd, path, argv.as_ptr(), envp.as_ptr(), flags);
    };
    let mut name_buf = Candidate::new();
    let name = name_of(dirfd, rel, inspect, &mut name_buf);
    let d = plan::decide(Target { inspect, name }, argv, envp);
    run(d, |envp| {
        sys::execveat(dirfd, path, argv.as_ptr(), envp, flags)
    })
}

/// The path a program opened as `dirfd` + `rel` (inspected at `fd_path`)
/// has, when it still names the same file (a memfd or a deleted file has none).
fn name_of<'a>(
    dirfd: c_int,
    rel: &[u8],
    fd_path: &CStr,
    buf: &'a mut Candidate,
) -> Option<&'a CStr> {
    let mut link = Line::raw();
    let _ = write!(link, "/proc/self/fd/{dirfd}\0");
    let link = CStr::from_bytes_until_nul(link.as_bytes()).ok()?;
    let mut dir = [0u8; 4096];
    let n = spinguard_common::sys::readlink(link, &mut dir).ok()?;
    let dir = dir.get(..n)?;
    if !dir.starts_with(b"/") {
        return None;
    }
    let named = if rel.is_empty() {
        buf.set(b"", dir)?
    } else {
        buf.set(dir, rel)?
    };
    let same = sys::file_id(named).is_some() && sys::file_id(named) == sys::file_id(fd_path);
    same.then_some(named)
}

fn target(p: &CStr) -> Target<'_> {
    Target {
        inspect: p,
        name: Some(p),
    }
}

/// Decides and execs `path` (no search).
unsafe fn exec_path(path: &CStr, argv: CArray, envp: CArray) -> c_int {
    let d = plan::decide(target(path), argv, envp);
    run(d, |envp| sys::execve(path.as_ptr(), argv.as_ptr(), envp))
}

/// Makes the exec `d` plans: `as_asked` with the environment to use, or the
/// handoff to spinguard. Returns only on failure, with the kernel's errno.
unsafe fn run(d: Decision, as_asked: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
    let r = match d.plan {
        Plan::AsAsked { envp } => as_asked(envp),
        Plan::Handoff { path, argv, envp } => sys::execve(path, argv, envp),
    };
    let e = sys::errno();
    drop(d);
    sys::set_errno(e);
    r
}

/// execvp: a name with a slash is run as it is; otherwise each `$PATH`
/// directory in turn. A file the kernel does not recognise (ENOEXEC) is run
/// by /bin/sh, as a script without `#!`.
unsafe fn search_and_exec(file: &CStr, argv: CArray, envp: CArray) -> c_int {
    let name = file.to_bytes();
    if name.is_empty() {
        sys::set_errno(libc::ENOENT);
        return -1;
    }
    if name.contains(&b'/') {
        exec_path(file, argv, envp);
        if sys::errno() == libc::ENOEXEC {
            run_with_sh(file, argv, envp);
        }
        return -1;
    }
    if name.len() > 255 {
        sys::set_errno(libc::ENAMETOOLONG);
        return -1;
    }
    let mut candidate = Candidate::new();
    let mut denied = false;
    for dir in search::path_dirs() {
        let Some(path) = candidate.set(dir, name) else {
            continue;
        };
        exec_path(path, argv, envp);
        match sys::errno() {
            libc::ENOEXEC => {
                run_with_sh(path, argv, envp);
                return -1;
            }
            libc::EACCES => denied = true,
            e if search::try_next(e) => {}
            _ => return -1,
        }
    }
    sys::set_errno(if denied { libc::EACCES } else { libc::ENOENT });
    -1
}

/// `/bin/sh PATH ARGS...` (glibc's `maybe_script_execute`); returns with
/// the error of that exec, or ENOEXEC when it could not be tried.
unsafe fn run_with_sh(path: &CStr, argv: CArray, envp: CArray) {
    let argc = argv.len();
    let Some(mut arena) = super::arena::Arena::new(argc + 2, 0) else {
        return sys::set_errno(libc::ENOEXEC);
    };
    let Some(mut a) = arena.array(argc + 2) else {
        return sys::set_errno(libc::ENOEXEC);
    };
    let ok = a.push(c"/bin/sh".as_ptr()).is_some()
        && a.push(path.as_ptr()).is_some()
        && argv.iter().skip(1).all(|s| a.push(s.as_ptr()).is_some());
    if !ok {
        return sys::set_errno(libc::ENOEXEC);
    }
    exec_path(c"/bin/sh", CArray::new(a.finish()), envp);
    let e = sys::errno();
    drop(arena);
    sys::set_errno(e);
}
