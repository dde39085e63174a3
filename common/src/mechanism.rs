//! Which mechanism reaches a program: the one place this is decided, for
//! `spinguard run`, the shim's exec hooks and `spinguard diagnose`'s advice.
//!
//! - **preload** (the LD_PRELOAD shim, no tracer): a dynamically linked
//!   program on glibc that is not Go. Its bpf calls go through libc's
//!   `syscall()`, where the shim sits. The cheapest: nothing else changes.
//! - **ptrace** (`spinguard run --mode ptrace`): everything else that runs on
//!   this machine. Go makes raw syscalls even with cgo; a static program has no
//!   dynamic loader; a program on another C library or of another word size
//!   cannot load the shim.
//!
//! A script is decided by the interpreter that will run it: its `#!` line's
//! (followed as the kernel does, a few levels deep), or `/bin/sh` for a script
//! without one (what execvp and `spinguard run` do on ENOEXEC).
//!
//! Allocation-free and panic-free, on [`crate::sys`] and [`crate::elf`]: the
//! shim's exec hooks call [`choose`], also in a vfork child.

use core::ffi::CStr;
use core::fmt;

use crate::elf::{self, Binary, Elf};
use crate::sys::{self, Errno, File};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// LD_PRELOAD of the shim; no tracer.
    Preload,
    /// The ptrace supervisor, `spinguard run --mode ptrace`.
    Ptrace,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Preload => "preload",
            Mechanism::Ptrace => "ptrace",
        }
    }
}

/// What the program that will actually run turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Dynamically linked on glibc, not Go.
    Dynamic,
    /// A Go program, static or dynamic.
    Go,
    /// Statically linked, not Go.
    Static,
    /// Dynamically linked on another C library (musl, say).
    OtherLibc,
    /// An ELF file of another word size, byte order or machine.
    OtherElf,
    /// Set-user-ID or set-group-ID to someone else: the dynamic loader ignores
    /// LD_PRELOAD there (secure execution), and only a tracer with root's
    /// capabilities lets it keep its privileges under ptrace.
    SetId { root: bool },
    /// Exists but cannot be read (an execute-only file, say).
    Unreadable(Errno),
    /// Cannot be opened, or is not a file we may execute: the exec itself
    /// will fail.
    Missing(Errno),
    /// More `#!` interpreters in a chain than the kernel follows.
    TooDeep,
}

/// Up to 255 bytes of a path, NUL-terminated (a `#!` line is at most 255
/// bytes long: BINPRM_BUF_SIZE is 256).
#[derive(Clone, Copy)]
pub struct ShortPath {
    buf: [u8; 256],
    len: usize,
}

impl ShortPath {
    /// None when `bytes` is empty, too long or holds a NUL.
    pub fn new(bytes: &[u8]) -> Option<ShortPath> {
        if bytes.is_empty() || bytes.len() >= 256 || bytes.contains(&0) {
            return None;
        }
        let mut buf = [0u8; 256];
        buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(ShortPath {
            buf,
            len: bytes.len(),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    pub fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_with_nul(self.buf.get(..=self.len).unwrap_or(b"\0")).unwrap_or_default()
    }
}

impl fmt::Debug for ShortPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_cstr())
    }
}

impl PartialEq for ShortPath {
    fn eq(&self, other: &ShortPath) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ShortPath {}

/// The interpreter a script runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Script {
    /// The interpreter the decision was made on (the last of a `#!` chain).
    pub interpreter: ShortPath,
    /// False for a script without `#!`, which execvp hands to /bin/sh.
    pub shebang: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub kind: Kind,
    pub script: Option<Script>,
}

impl Choice {
    /// The cheapest mechanism that reaches the program; None when there is
    /// nothing to guard ([`Kind::Missing`]: the exec fails) or nothing can
    /// guard it without changing what it does ([`Kind::SetId`] without root).
    pub fn mechanism(&self) -> Option<Mechanism> {
        match self.kind {
            Kind::Dynamic => Some(Mechanism::Preload),
            Kind::Go
            | Kind::Static
            | Kind::OtherLibc
            | Kind::OtherElf
            | Kind::Unreadable(_)
            | Kind::TooDeep
            | Kind::SetId { root: true } => Some(Mechanism::Ptrace),
            Kind::SetId { root: false } | Kind::Missing(_) => None,
        }
    }

    /// Whether the program is Go (so `diagnose` can say why LD_PRELOAD
    /// cannot reach it).
    pub fn is_go(&self) -> bool {
        self.kind == Kind::Go
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Kind::Dynamic => f.write_str("dynamically linked, not Go"),
            Kind::Go => {
                f.write_str("a Go program (Go makes raw syscalls; LD_PRELOAD cannot reach them)")
            }
            Kind::Static => f.write_str("statically linked (LD_PRELOAD cannot reach it)"),
            Kind::OtherLibc => f.write_str(
                "dynamically linked on another C library than glibc (the shim cannot load there)",
            ),
            Kind::OtherElf => f.write_str(
                "an ELF program of another word size or machine (the shim cannot load there)",
            ),
            Kind::SetId { root } => {
                f.write_str("set-user-ID or set-group-ID (the dynamic loader ignores LD_PRELOAD")?;
                if root {
                    f.write_str(")")
                } else {
                    f.write_str("; under ptrace it would run without its privileges)")
                }
            }
            Kind::Unreadable(Errno(e)) => write!(f, "cannot be read to look inside it (errno {e})"),
            Kind::Missing(Errno(e)) => write!(f, "cannot be opened (errno {e})"),
            Kind::TooDeep => f.write_str("a chain of #! interpreters too deep to follow"),
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.script {
            let i = s.interpreter.as_cstr().to_bytes();
            let i = core::str::from_utf8(i).unwrap_or("its interpreter");
            if s.shebang {
                write!(f, "a script run by {i}, ")?;
            } else {
                write!(f, "a script without #!, run by {i}, ")?;
            }
        }
        write!(f, "{}", self.kind)
    }
}

/// How many `#!` interpreters the kernel follows (fs/exec.c, 5 levels
/// of binfmt handlers; a script's interpreter may itself be a script).
const MAX_SCRIPT_DEPTH: usize = 4;

const BIN_SH: &CStr = c"/bin/sh";

/// Decides for the program at `path` (as execve would open it: relative to
/// the working directory, no PATH search).
pub fn choose(path: &CStr) -> Choice {
    choose_at_depth(path, 0)
}

fn choose_at_depth(path: &CStr, depth: usize) -> Choice {
    let plain = |kind| Choice { kind, script: None };
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.0 == libc::EACCES && sys::executable(path) => {
            return plain(Kind::Unreadable(e))
        }
        Err(e) => return plain(Kind::Missing(e)),
    };
    // What execve itself refuses (a directory, a file without execute
    // permission) is not a program: the exec fails as it would anyway, and
    // execvp goes on to the next directory of PATH.
    let st = match f.stat() {
        Ok(st) if st.mode & libc::S_IFMT == libc::S_IFREG => st,
        _ => return plain(Kind::Missing(Errno(libc::EACCES))),
    };
    if !sys::executable(path) {
        return plain(Kind::Missing(Errno(libc::EACCES)));
    }
    let binary = match elf::inspect(&f) {
        Ok(b) => b,
        Err(e) => return plain(Kind::Unreadable(e)),
    };
    let elf = match binary {
        Binary::Elf(elf) => elf,
        Binary::OtherElf => return plain(Kind::OtherElf),
        Binary::NotElf => return script(&f, depth),
    };
    if let Some(root) = set_id(&st) {
        return plain(Kind::SetId { root });
    }
    plain(match elf {
        Elf { go: true, .. } => Kind::Go,
        Elf { dynamic: false, .. } => Kind::Static,
        Elf { glibc: false, .. } => Kind::OtherLibc,
        Elf { .. } => Kind::Dynamic,
    })
}

/// A file that is not ELF: a `#!` script (decided by its interpreter), or
/// one without, which execvp runs with /bin/sh.
fn script(f: &File, depth: usize) -> Choice {
    if depth >= MAX_SCRIPT_DEPTH {
        return Choice {
            kind: Kind::TooDeep,
            script: None,
        };
    }
    let mut head = [0u8; 256];
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    let head = head.get(..n).unwrap_or_default();
    let (interpreter, shebang) = match shebang_interpreter(head) {
        Some(p) => (p, true),
        None => match ShortPath::new(BIN_SH.to_bytes()) {
            Some(p) => (p, false),
            None => {
                return Choice {
                    kind: Kind::TooDeep,
                    script: None,
                }
            }
        },
    };
    let inner = choose_at_depth(interpreter.as_cstr(), depth + 1);
    Choice {
        kind: inner.kind,
        script: inner.script.or(Some(Script {
            interpreter,
            shebang,
        })),
    }
}

/// The interpreter of a `#!` line (fs/binfmt_script.c: spaces and tabs
/// after `#!`, then the path up to a space, tab, newline or the end).
fn shebang_interpreter(head: &[u8]) -> Option<ShortPath> {
    let rest = head.strip_prefix(b"#!")?;
    let line = rest.split(|&c| c == b'\n').next().unwrap_or_default();
    let start = line.iter().position(|&c| c != b' ' && c != b'\t')?;
    let line = line.get(start..)?;
    let end = line
        .iter()
        .position(|&c| c == b' ' || c == b'\t' || c == 0)
        .unwrap_or(line.len());
    ShortPath::new(line.get(..end)?)
}

/// Some(we are root) when running the file would switch user or group (so the
/// kernel marks it for secure execution); None when it would not.
fn set_id(st: &sys::Stat) -> Option<bool> {
    if st.mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
        return None;
    }
    let ids = sys::ids();
    let suid = st.mode & libc::S_ISUID != 0 && st.uid != ids.uid;
    // S_ISGID without group execute means mandatory locking, not set-gid.
    let sgid = st.mode & libc::S_ISGID != 0 && st.mode & libc::S_IXGRP != 0 && st.gid != ids.gid;
    (suid || sgid).then_some(ids.euid == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::fs::PermissionsExt;

    fn choose_str(p: &str) -> Choice {
        choose(&CString::new(p).unwrap())
    }

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("sg-mech-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn file(&self, name: &str, text: &str, mode: u32) -> String {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p.to_str().unwrap().to_string()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sh_gets_the_shim() {
        let c = choose_str("/bin/sh");
        assert_eq!(c.kind, Kind::Dynamic);
        assert_eq!(c.mechanism(), Some(Mechanism::Preload));
        assert_eq!(c.to_string(), "dynamically linked, not Go");
    }

    #[test]
    fn scripts_are_decided_by_their_interpreter() {
        let d = Dir::new("scripts");
        let s = d.file("s", "#!/bin/sh\nexit 0\n", 0o755);
        let c = choose_str(&s);
        assert_eq!(c.kind, Kind::Dynamic);
        assert_eq!(
            c.to_string(),
            "a script run by /bin/sh, dynamically linked, not Go"
        );
        let env = d.file("e", "#! \t/usr/bin/env python3 -u\n", 0o755);
        assert_eq!(
            choose_str(&env).script.unwrap().interpreter.as_bytes(),
            b"/usr/bin/env"
        );
        let bare = d.file("b", "echo hi\n", 0o755);
        let c = choose_str(&bare);
        assert!(!c.script.unwrap().shebang);
        assert!(c
            .to_string()
            .starts_with("a script without #!, run by /bin/sh"));
        // A script whose interpreter is a script: the last one decides.
        let outer = d.file("o", &format!("#!{s}\n"), 0o755);
        assert_eq!(choose_str(&outer).kind, Kind::Dynamic);
        // A loop of scripts ends.
        let a = d.0.join("a").to_str().unwrap().to_string();
        let b = d.file("bb", &format!("#!{a}\n"), 0o755);
        d.file("a", &format!("#!{b}\n"), 0o755);
        assert_eq!(choose_str(&a).kind, Kind::TooDeep);
        assert_eq!(choose_str(&a).mechanism(), Some(Mechanism::Ptrace));
    }

    #[test]
    fn missing_and_unreadable() {
        let c = choose_str("/nonexistent/spinguard-test");
        assert_eq!(c.kind, Kind::Missing(Errno(libc::ENOENT)));
        assert_eq!(c.mechanism(), None);
        let d = Dir::new("interp");
        let s = d.file("s", "#!/nonexistent/interp\n", 0o755);
        assert!(matches!(choose_str(&s).kind, Kind::Missing(_)));
        // A directory, or a file without execute permission, is no program.
        assert_eq!(choose_str("/tmp").kind, Kind::Missing(Errno(libc::EACCES)));
        let plain = d.file("plain", "#!/bin/sh\n", 0o644);
        assert_eq!(choose_str(&plain).kind, Kind::Missing(Errno(libc::EACCES)));
    }

    #[test]
    fn shebang_lines() {
        let p = |s: &[u8]| shebang_interpreter(s).map(|p| p.as_bytes().to_vec());
        assert_eq!(p(b"#!/bin/sh"), Some(b"/bin/sh".to_vec()));
        assert_eq!(p(b"#!  /bin/bash -e\nx"), Some(b"/bin/bash".to_vec()));
        assert_eq!(p(b"#!\n/bin/sh"), None);
        assert_eq!(p(b"#"), None);
        assert_eq!(
            p(&[b'#', b'!', b'/', 0xff, 0, b'x']),
            Some(vec![b'/', 0xff])
        );
    }
}
