//! errno names, for reports that say `EAGAIN` rather than `-11`.

/// The symbolic name of an errno value, or `E<n>` for one we do not name.
pub fn errno_name(errno: i32) -> String {
    match static_errno_name(errno) {
        Some(n) => n.to_string(),
        None => format!("E{errno}"),
    }
}

/// The names bpf(2) and the signal machinery actually produce; static so the
/// shim can use them without allocating.
pub fn static_errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSUP => "ENOTSUP",
        libc::ELOOP => "ELOOP",
        libc::ENOTTY => "ENOTTY",
        libc::ESPIPE => "ESPIPE",
        libc::ENXIO => "ENXIO",
        libc::ERESTART => "ERESTART",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::errno_name(libc::EAGAIN), "EAGAIN");
        assert_eq!(super::errno_name(4000), "E4000");
    }
}
