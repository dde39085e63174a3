//! Taking the socket path: create it 0600, never clobber what is not ours,
//! take over a dead listener's leftover, refuse a live one; remove it at exit.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::sys;

/// Mode of the socket file: only its owner may send events (a datagram
/// socket needs write permission to connect or sendto, unix(7)).
pub const SOCKET_MODE: u32 = 0o600;

/// Why the path cannot be ours. Each prints as one line.
#[derive(Debug)]
pub enum TakeError {
    Symlink(PathBuf),
    NotASocket(PathBuf, &'static str),
    Alive(PathBuf),
    OtherSocket(PathBuf, io::Error),
    Io(&'static str, PathBuf, io::Error),
}

impl fmt::Display for TakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TakeError::Symlink(p) => write!(
                f,
                "{} is a symbolic link; refusing to replace it (remove it, or listen elsewhere)",
                p.display()
            ),
            TakeError::NotASocket(p, kind) => write!(
                f,
                "{} exists and is a {kind}, not a socket; refusing to replace it",
                p.display()
            ),
            TakeError::Alive(p) => write!(
                f,
                "another listener is alive on {}; stop it first, or listen elsewhere",
                p.display()
            ),
            TakeError::OtherSocket(p, e) => write!(
                f,
                "{} is a socket in use by something else ({e}); refusing to replace it",
                p.display()
            ),
            TakeError::Io(what, p, e) => write!(f, "cannot {what} {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for TakeError {}

/// How the path was free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Nothing was there.
    Fresh,
    /// A socket nobody listened on (a listener that was killed): replaced.
    Stale,
}

/// The bound socket. Dropping it removes the file, if the file is still the
/// one we created (same device and inode): a listener that was replaced after
/// us must keep its socket.
pub struct BoundSocket {
    fd: OwnedFd,
    path: PathBuf,
    id: (u64, u64),
}

impl BoundSocket {
    /// Binds a datagram socket at `path` with mode [`SOCKET_MODE`].
    pub fn take(path: &Path) -> Result<(BoundSocket, Taken), TakeError> {
        let io = |what, e| TakeError::Io(what, path.to_path_buf(), e);
        let taken = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Taken::Fresh,
            Err(e) => return Err(io("inspect", e)),
            Ok(m) => {
                let t = m.file_type();
                if t.is_symlink() {
                    return Err(TakeError::Symlink(path.to_path_buf()));
                }
                if !t.is_socket() {
                    let kind = if t.is_file() {
                        "regular file"
                    } else if t.is_dir() {
                        "directory"
                    } else if t.is_fifo() {
                        "fifo"
                    } else {
                        "device"
                    };
                    return Err(TakeError::NotASocket(path.to_path_buf(), kind));
                }
                match sys::probe(path) {
                    Ok(()) => return Err(TakeError::Alive(path.to_path_buf())),
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
                    Err(e) => return Err(TakeError::OtherSocket(path.to_path_buf(), e)),
                }
                // Known race: two listeners starting at the same instant on the
                // same stale path can both get here; the second unlinks the
                // first's new socket. bind below never replaces a file, so
                // at worst one of them listens on a name nobody can reach.
                std::fs::remove_file(path).map_err(|e| io("remove the stale socket", e))?;
                Taken::Stale
            }
        };
        let fd = sys::bind_dgram(path, SOCKET_MODE as libc::mode_t).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                TakeError::Alive(path.to_path_buf())
            } else {
                io("bind", e)
            }
        })?;
        let m = std::fs::symlink_metadata(path).map_err(|e| io("inspect", e))?;
        Ok((
            BoundSocket {
                fd,
                path: path.to_path_buf(),
                id: (m.dev(), m.ino()),
            },
            taken,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for BoundSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
