//! tracefs: where it is (mounted if it is not), a tracepoint's id, and the
//! offsets of its fields from its `format` file. Reading the layout from the
//! running kernel is what lets the programs do without BTF.

use crate::error::ProbeError;
use crate::sys;
use std::path::{Path, PathBuf};

/// Where tracefs lives since Linux 4.1; debugfs exposes it under
/// `tracing/` too (the only place on older kernels).
const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

pub struct Tracefs {
    root: PathBuf,
}

/// One field of a tracepoint's record (`field:TYPE NAME; offset:N; size:N; signed:N;`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
}

/// A tracepoint: its perf id and record layout.
#[derive(Clone, Debug)]
pub struct Tracepoint {
    pub group: String,
    pub name: String,
    pub id: u64,
    pub fields: Vec<Field>,
}

impl Tracepoint {
    /// The field `name`, at least `min_size` bytes wide. The first 8 bytes
    /// (the common header) are out of a tracepoint program's reach.
    pub fn field(&self, name: &str, min_size: usize) -> Result<&Field, ProbeError> {
        self.fields
            .iter()
            .find(|f| f.name == name && f.size >= min_size && f.offset >= 8)
            .ok_or_else(|| ProbeError::BadField {
                group: self.group.clone(),
                name: self.name.clone(),
                field: name.to_string(),
            })
    }
}

impl Tracefs {
    /// The mounted tracefs: /sys/kernel/tracing, else debugfs's view of it,
    /// else tracefs mounted at /sys/kernel/tracing now (it stays mounted,
    /// as bpftrace and perf leave it).
    pub fn open() -> Result<Tracefs, ProbeError> {
        let sys = Path::new(TRACEFS);
        if sys::is_tracefs(sys).unwrap_or(false) {
            return Ok(Tracefs { root: sys.into() });
        }
        let debug = Path::new(DEBUGFS_TRACING);
        if debug.join("events").is_dir() {
            return Ok(Tracefs { root: debug.into() });
        }
        match sys::mount_tracefs(sys) {
            Ok(()) => {
                log::info!("mounted tracefs at {TRACEFS}");
                Ok(Tracefs { root: sys.into() })
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && !crate::procfs::privileged() => {
                Err(ProbeError::NotPermitted)
            }
            Err(source) => Err(ProbeError::NoTracefs { source }),
        }
    }

    /// A tracefs at `root` (for tests of the format parser).
    pub fn at(root: &Path) -> Tracefs {
        Tracefs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The tracepoint `group:name`, with its id and fields.
    pub fn tracepoint(&self, group: &str, name: &str) -> Result<Tracepoint, ProbeError> {
        let dir = self.root.join("events").join(group).join(name);
        let missing = || ProbeError::MissingTracepoint {
            group: group.into(),
            name: name.into(),
            path: dir.display().to_string(),
            hint: hint(group),
        };
        let read = |file: &str| std::fs::read_to_string(dir.join(file));
        let id = match read("id") {
            Ok(s) => s.trim().parse().map_err(|_| missing())?,
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                return Err(ProbeError::NotPermitted)
            }
            Err(_) => return Err(missing()),
        };
        let format = read("format").map_err(|_| missing())?;
        Ok(Tracepoint {
            group: group.into(),
            name: name.into(),
            id,
            fields: parse_format(&format),
        })
    }
}

/// Which kernel option provides a tracepoint group.
fn hint(group: &str) -> &'static str {
    match group {
        "syscalls" => "the kernel needs CONFIG_FTRACE_SYSCALLS=y (syscall tracepoints)",
        "raw_syscalls" => "the kernel needs CONFIG_HAVE_SYSCALL_TRACEPOINTS and CONFIG_FTRACE=y",
        "signal" => "the kernel needs CONFIG_TRACEPOINTS and CONFIG_FTRACE=y (signal tracepoints)",
        _ => "the kernel needs CONFIG_TRACEPOINTS and CONFIG_FTRACE=y",
    }
}

/// The `field:` lines of a format file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines().filter_map(parse_field).collect()
}

/// `field:unsigned long args[6]; offset:16; size:48; signed:0;` (tab-separated)
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            decl = Some(d);
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.trim().parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    // The name is the declaration's last word, less any array suffix.
    let name = decl?.split_whitespace().last()?;
    let name = name.split('[').next()?.trim_start_matches('*');
    Some(Field {
        name: name.to_string(),
        offset: offset?,
        size: size?,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's (Linux 6.18) raw_syscalls:sys_enter and
    /// syscalls:sys_enter_bpf formats, verbatim.
    const RAW_ENTER: &str = "name: sys_enter
ID: 22
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:long id;\toffset:8;\tsize:8;\tsigned:1;
\tfield:unsigned long args[6];\toffset:16;\tsize:48;\tsigned:0;

print fmt: \"NR %ld (%lx, %lx, %lx, %lx, %lx, %lx)\", REC->id, REC->args[0]
";
    const BPF_ENTER: &str = "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int cmd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:union bpf_attr * uattr;\toffset:24;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_fields() {
        let f = parse_format(RAW_ENTER);
        assert_eq!(f.len(), 6);
        assert_eq!(
            f[5],
            Field {
                name: "args".into(),
                offset: 16,
                size: 48,
                signed: false
            }
        );
        assert!(f[4].signed && f[4].name == "id");
        let f = parse_format(BPF_ENTER);
        assert_eq!(f[1].name, "cmd");
        assert_eq!((f[1].offset, f[1].size), (16, 8));
        assert_eq!(f[2].name, "uattr");
    }

    #[test]
    fn field_lookup_refuses_the_header_and_short_fields() {
        let tp = Tracepoint {
            group: "raw_syscalls".into(),
            name: "sys_enter".into(),
            id: 22,
            fields: parse_format(RAW_ENTER),
        };
        assert_eq!(tp.field("id", 8).unwrap().offset, 8);
        assert!(tp.field("common_pid", 4).is_err());
        assert!(tp.field("id", 16).is_err());
        assert!(tp.field("nope", 1).is_err());
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_format("field:\nfield:int x; offset:z; size:4;\n\u{0}").is_empty());
    }
}
