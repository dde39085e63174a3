//! The probe's unsafe edge: every raw bpf(2), perf_event_open(2), ioctl(2),
//! mmap(2), statfs(2) and mount(2) call, behind typed, safe wrappers. Nothing
//! else in the crate touches a raw pointer or a raw fd.

use spinguard_common::bpf::{
    ProgLoadAttr, BPF_MAP_CREATE, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_MAP_LOOKUP_ELEM,
    BPF_MAP_UPDATE_ELEM, BPF_OBJ_NAME_LEN as OBJ_NAME_LEN, BPF_PROG_LOAD,
};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{fence, AtomicU64, Ordering};

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor and is
    // owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
}

/// bpf(2) with `attr`, a correctly laid out prefix of `union bpf_attr` (the
/// kernel zero-fills what a shorter attr leaves out).
fn bpf<T>(cmd: u32, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, repr(C) bpf_attr prefix of the size we pass;
    // the pointers inside it point at live buffers of the sizes they claim.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_long,
        )
    })
}

fn obj_name(name: &str) -> [u8; OBJ_NAME_LEN] {
    let mut out = [0u8; OBJ_NAME_LEN];
    for (o, b) in out.iter_mut().zip(name.bytes().take(OBJ_NAME_LEN - 1)) {
        *o = b;
    }
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; OBJ_NAME_LEN],
}

/// BPF_MAP_CREATE. `name` (at most 15 bytes of `[A-Za-z0-9_.]`) shows in
/// `bpftool map`.
pub fn map_create(
    map_type: u32,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        map_name: obj_name(name),
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn elem_attr(map: &OwnedFd, key: *const u8, value: u64, flags: u64) -> MapElemAttr {
    MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as u64,
        value_or_next_key: value,
        flags,
        ..Default::default()
    }
}

/// BPF_MAP_LOOKUP_ELEM into `value` (the map's value size): false when the
/// key is absent.
pub fn map_lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    let mut attr = elem_attr(map, key.as_ptr(), value.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_UPDATE_ELEM with `flags` (BPF_ANY 0, BPF_NOEXIST 1, BPF_EXIST 2).
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = elem_attr(map, key.as_ptr(), value.as_ptr() as u64, flags);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// BPF_MAP_DELETE_ELEM: false when the key was absent.
pub fn map_delete(map: &OwnedFd, key: &[u8]) -> io::Result<bool> {
    let mut attr = elem_attr(map, key.as_ptr(), 0, 0);
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_GET_NEXT_KEY: the key after `key` (the first with `None`) into
/// `next`; false after the last.
pub fn map_next_key(map: &OwnedFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), <[u8]>::as_ptr);
    let mut attr = elem_attr(map, key, next.as_mut_ptr() as u64, 0);
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// BPF_PROG_LOAD of `insns`. On failure, `log` (if given, and big enough)
/// holds the verifier's explanation.
pub fn prog_load(
    prog_type: u32,
    insns: &[u64],
    license: &CStr,
    name: &str,
    log: Option<&mut [u8]>,
) -> io::Result<OwnedFd> {
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: obj_name(name),
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map(owned)
}

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5` (Linux 4.1+), which
/// every field used here fits in.
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub struct PerfEventAttr {
    pub type_: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    /// The bit field (disabled, inherit, …, exclude_callchain_user, …).
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    pub config1: u64,
    pub config2: u64,
    pub branch_sample_type: u64,
    pub sample_regs_user: u64,
    pub sample_stack_user: u32,
    pub clockid: i32,
    pub sample_regs_intr: u64,
    pub aux_watermark: u32,
    pub sample_max_stack: u16,
    pub reserved_2: u16,
}

pub const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// perf_event_open(2) for every task (`pid` -1) on `cpu`.
pub fn perf_event_open_cpu(attr: &PerfEventAttr, cpu: i32) -> io::Result<OwnedFd> {
    let mut attr = *attr;
    attr.size = std::mem::size_of::<PerfEventAttr>() as u32;
    // SAFETY: attr is a valid perf_event_attr of the size it states.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    })
    .map(owned)
}

const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: libc::c_long) -> io::Result<()> {
    // SAFETY: the perf ioctls used here take an integer argument, no pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg) };
    cvt(r as libc::c_long).map(drop)
}

/// PERF_EVENT_IOC_SET_BPF: runs `prog` whenever the event's tracepoint fires
/// (on any CPU: the program hangs off the tracepoint, not off this event).
pub fn perf_set_bpf(event: &OwnedFd, prog: &OwnedFd) -> io::Result<()> {
    ioctl(
        event,
        PERF_EVENT_IOC_SET_BPF,
        prog.as_raw_fd() as libc::c_long,
    )
}

pub fn perf_enable(event: &OwnedFd) -> io::Result<()> {
    ioctl(event, PERF_EVENT_IOC_ENABLE, 0)
}

/// A perf event's mmap'd ring buffer: the control page, then `2^n` data
/// pages (include/uapi/linux/perf_event.h, `struct perf_event_mmap_page`).
pub struct Ring {
    base: *mut u8,
    len: usize,
    data_off: usize,
    data_size: usize,
}

// SAFETY: the mapping is owned by this value; the kernel writes the data
// pages and data_head, we read them and write data_tail, with the barriers
// the uapi header asks for.
unsafe impl Send for Ring {}

/// Offsets in `struct perf_event_mmap_page`.
const DATA_HEAD: usize = 1024;
const DATA_TAIL: usize = 1032;
const DATA_OFFSET: usize = 1040;
const DATA_SIZE: usize = 1048;

impl Ring {
    /// Maps 1 + `data_pages` pages (a power of two) of `event`.
    pub fn map(event: &OwnedFd, data_pages: usize) -> io::Result<Ring> {
        // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let len = page * (1 + data_pages);
        // SAFETY: a fresh shared mapping of the event's buffer; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                event.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring = Ring {
            base: base.cast(),
            len,
            data_off: page,
            data_size: page * data_pages,
        };
        // Since 4.1 the page says where the data is; older kernels leave 0.
        let (off, size) = (ring.read_u64(DATA_OFFSET), ring.read_u64(DATA_SIZE));
        if off != 0 && size != 0 && (off + size) as usize <= len {
            ring.data_off = off as usize;
            ring.data_size = size as usize;
        }
        Ok(ring)
    }

    fn read_u64(&self, off: usize) -> u64 {
        // SAFETY: off is within the control page, 8-aligned.
        unsafe { std::ptr::read_volatile(self.base.add(off).cast::<u64>()) }
    }

    fn atomic(&self, off: usize) -> &AtomicU64 {
        // SAFETY: off is within the control page, 8-aligned, and lives as
        // long as self; the kernel accesses it atomically too.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    /// Copies out everything between data_tail and data_head and frees it
    /// for the kernel. The bytes are records (`struct perf_event_header` +
    /// body), in order; a record may wrap the buffer's end, the copy does not.
    pub fn drain(&mut self, out: &mut Vec<u8>) {
        // "User-space should issue an rmb() after reading data_head" (perf_event.h).
        let head = self.atomic(DATA_HEAD).load(Ordering::Acquire);
        let tail = self.atomic(DATA_TAIL).load(Ordering::Relaxed);
        let avail = head.wrapping_sub(tail) as usize;
        let avail = avail.min(self.data_size);
        let start = (tail as usize) % self.data_size;
        let first = avail.min(self.data_size - start);
        // SAFETY: both ranges lie inside the data area of our mapping.
        unsafe {
            let data = self.base.add(self.data_off);
            out.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
            out.extend_from_slice(std::slice::from_raw_parts(data, avail - first));
        }
        // "…and an mb() before writing data_tail": our reads happen before the
        // kernel may overwrite the space.
        fence(Ordering::SeqCst);
        self.atomic(DATA_TAIL)
            .store(tail.wrapping_add(avail as u64), Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// `TRACEFS_MAGIC` (include/uapi/linux/magic.h).
const TRACEFS_MAGIC: i64 = 0x7472_6163;

fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// True when a tracefs is mounted at `path`.
pub fn is_tracefs(path: &Path) -> io::Result<bool> {
    let p = c_path(path)?;
    // SAFETY: statfs fills a local struct from a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(p.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == TRACEFS_MAGIC)
}

/// `mount -t tracefs nodev PATH`.
pub fn mount_tracefs(path: &Path) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: valid C strings; no data argument.
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            p.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    cvt(r as libc::c_long).map(drop)
}

/// The calling process's thread-group id.
pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// RLIMIT_MEMLOCK to infinity, as far as we may (needs CAP_SYS_RESOURCE to
/// raise the hard limit); a failure is left for map creation to report.
pub fn raise_memlock() {
    let inf = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &inf) } != 0 {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills a local struct; then raise the soft limit
        // to the hard one, which needs no privilege.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) == 0 {
                cur.rlim_cur = cur.rlim_max;
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &cur);
            }
        }
    }
}
