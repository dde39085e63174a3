//! errno names, for reports that say `EAGAIN` rather than `-11`.

/// The symbolic name of an errno value, or `E<n>` for one we do not name.
pub fn errno_name(errno: i32) -> String {
    match static_errno_name(errno) {
        Some(n) => n.to_string(),
        None => format!("E{errno}"),
    }
}

/// Kernel-internal codes a tracer sees in a syscall's return register at
/// syscall exit, never a program (include/linux/errno.h: "These should never
/// be seen by user programs"): the restart family and ENOTSUPP, which bpf(2)
/// does return to user space for some unsupported requests.
pub const ERESTARTSYS: i32 = 512;
pub const ERESTARTNOINTR: i32 = 513;
pub const ERESTARTNOHAND: i32 = 514;
pub const ENOIOCTLCMD: i32 = 515;
pub const ERESTART_RESTARTBLOCK: i32 = 516;
pub const ENOTSUPP: i32 = 524;

/// The names of what spinguard's paths produce: bpf(2) and the verifier,
/// ptrace and waitpid, exec, sending events (a datagram socket: ECONNREFUSED
/// when no listener is bound, EAGAIN when its queue is full), writing metrics
/// and output. Static so the shim can use them without allocating.
pub fn static_errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ERESTART => "ERESTART",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTOTYPE => "EPROTOTYPE",
        // The same number as EOPNOTSUPP on Linux.
        libc::ENOTSUP => "ENOTSUP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENOBUFS => "ENOBUFS",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EDQUOT => "EDQUOT",
        ERESTARTSYS => "ERESTARTSYS",
        ERESTARTNOINTR => "ERESTARTNOINTR",
        ERESTARTNOHAND => "ERESTARTNOHAND",
        ENOIOCTLCMD => "ENOIOCTLCMD",
        ERESTART_RESTARTBLOCK => "ERESTART_RESTARTBLOCK",
        ENOTSUPP => "ENOTSUPP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(libc::EAGAIN), "EAGAIN");
        assert_eq!(errno_name(4000), "E4000");
        // What a send to a path nobody listens on gives (was "E111").
        assert_eq!(errno_name(libc::ECONNREFUSED), "ECONNREFUSED");
        assert_eq!(errno_name(512), "ERESTARTSYS");
        assert_eq!(errno_name(libc::EOPNOTSUPP), "ENOTSUP");
    }

    /// No made-up numbers among the user-visible codes (the kernel-internal
    /// ones, 512 and up, are named from include/linux/errno.h above).
    #[test]
    fn every_name_below_200_is_an_errno_glibc_knows() {
        for n in 1..200 {
            let Some(name) = static_errno_name(n) else {
                continue;
            };
            assert!(name.starts_with('E') && name.len() > 2, "{n}: {name}");
            // SAFETY: strerror returns a valid C string for any number.
            let text = unsafe { std::ffi::CStr::from_ptr(libc::strerror(n)) };
            assert!(
                !text.to_string_lossy().starts_with("Unknown error"),
                "{name} ({n}) is not an errno glibc knows"
            );
        }
    }
}
