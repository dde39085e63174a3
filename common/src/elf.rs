//! Just enough ELF to choose a mechanism: which dynamic loader the program
//! names (PT_INTERP: LD_PRELOAD reaches it when that is glibc's), and whether
//! it is Go (which never calls libc's `syscall`, even with cgo, so only ptrace
//! reaches its bpf calls).
//!
//! Allocation-free and panic-free, reading with [`crate::sys`] into small
//! stack buffers (about 4 KiB at a time): the shim runs this in its exec hooks,
//! also in a vfork child. Every offset and size comes from the file, so all
//! arithmetic is checked and every slice is taken with `get`.

use crate::sys::{Errno, File};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// Not an ELF file (a script, say).
    NotElf,
    /// An ELF file for another class, byte order or machine than ours (an
    /// i386 program on x86_64, say): nothing of ours can be preloaded there.
    OtherElf,
    Elf(Elf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elf {
    /// Has a PT_INTERP program header (the kernel starts a dynamic loader).
    pub dynamic: bool,
    /// That loader is glibc's for this machine, so a glibc LD_PRELOAD library
    /// can be loaded into it (musl's loader, say, could not load the shim).
    pub glibc: bool,
    /// Has a Go build-id note, or a `.go.buildinfo` / `.note.go.buildid` section.
    pub go: bool,
}

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const NT_GO_BUILD_ID: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;

#[cfg(target_arch = "x86_64")]
const MACHINE: u16 = 62; // EM_X86_64
#[cfg(target_arch = "aarch64")]
const MACHINE: u16 = 183; // EM_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MACHINE: u16 = 0;

/// The file name of glibc's dynamic loader on this machine (its directory
/// differs between distributions: /lib64, /lib, /usr/lib/<triplet>).
#[cfg(target_arch = "x86_64")]
const GLIBC_LOADER: &[u8] = b"ld-linux-x86-64.so.2";
#[cfg(target_arch = "aarch64")]
const GLIBC_LOADER: &[u8] = b"ld-linux-aarch64.so.1";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const GLIBC_LOADER: &[u8] = b"";

fn u16_at(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(&[x, y]) => u16::from_le_bytes([x, y]),
        _ => 0,
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
        _ => 0,
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    match b.get(off..off + 8) {
        Some(s) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        }
        None => 0,
    }
}

/// The file, and its first [`HEAD`] bytes read once: an ELF header, its
/// program headers, the interpreter's name and the notes usually sit there,
/// so deciding for a common program costs one read, not one per table.
struct Source<'a> {
    f: &'a File,
    head: &'a [u8],
}

/// How much of the file is read up front.
const HEAD: usize = 2048;

impl Source<'_> {
    /// `len` bytes at `offset` (fewer at the end of the file): from the head
    /// when they are in it, else read into `buf` (up to its size).
    fn bytes<'b>(&'b self, offset: u64, len: usize, buf: &'b mut [u8]) -> Result<&'b [u8], Errno> {
        let end = offset.checked_add(len as u64);
        if let Some(end) = end.filter(|&e| e <= self.head.len() as u64) {
            return Ok(self
                .head
                .get(offset as usize..end as usize)
                .unwrap_or_default());
        }
        let len = len.min(buf.len());
        let b = buf.get_mut(..len).unwrap_or_default();
        let n = self.f.read_at(b, offset)?;
        Ok(b.get(..n).unwrap_or_default())
    }
}

/// Inspects an open file. `Ok(NotElf)` for anything that does not start with
/// the ELF magic (including an empty file).
pub fn inspect(f: &File) -> Result<Binary, Errno> {
    let mut head = [0u8; HEAD];
    let n = f.read_at(&mut head, 0)?;
    let h = head.get(..n).unwrap_or_default();
    if h.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Ok(Binary::NotElf);
    }
    // 64-bit little-endian for this machine only: x86_64 and aarch64.
    if h.len() < EHDR_SIZE || h[4] != 2 || h[5] != 1 || u16_at(h, 0x12) != MACHINE {
        return Ok(Binary::OtherElf);
    }
    let src = Source { f, head: h };
    let mut elf = Elf {
        dynamic: false,
        glibc: false,
        go: false,
    };
    program_headers(&src, &mut elf)?;
    if elf.dynamic && elf.glibc && !elf.go {
        // The answer turns on Go only here: a static program is out of
        // LD_PRELOAD's reach either way. Go's linker puts its build id in a
        // PT_NOTE; the sections are the fallback for a binary without it.
        elf.go = go_sections(&src)?;
    }
    Ok(Binary::Elf(elf))
}

fn program_headers(src: &Source<'_>, elf: &mut Elf) -> Result<(), Errno> {
    let h = src.head;
    let mut buf = [0u8; 16 * PHDR_SIZE];
    let table = Table {
        offset: u64_at(h, 0x20),
        entry_size: u16_at(h, 0x36) as usize,
        count: u16_at(h, 0x38) as usize,
    };
    table.each(src, PHDR_SIZE, &mut buf, |e| {
        let (p_offset, p_filesz) = (u64_at(e, 0x08), u64_at(e, 0x20));
        match u32_at(e, 0) {
            PT_INTERP => {
                elf.dynamic = true;
                elf.glibc = interp_is_glibc(src, p_offset, p_filesz)?;
            }
            PT_NOTE if !elf.go => elf.go = has_go_note(src, p_offset, p_filesz)?,
            _ => {}
        }
        Ok(false)
    })
}

/// A table of fixed-size entries (program or section headers).
struct Table {
    offset: u64,
    entry_size: usize,
    count: usize,
}

impl Table {
    /// The byte size of the table, if it makes sense.
    fn size(&self) -> Option<usize> {
        self.count.checked_mul(self.entry_size)
    }

    /// Calls `visit` with each entry (its first `min_size` bytes at least),
    /// as many entries as fit in `buf` at a time (or all of them, from the
    /// head), until `visit` returns true. A table with entries smaller than
    /// `min_size` is empty.
    fn each(
        &self,
        src: &Source<'_>,
        min_size: usize,
        buf: &mut [u8],
        mut visit: impl FnMut(&[u8]) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        if self.entry_size < min_size || self.entry_size > buf.len() {
            return Ok(());
        }
        let per_read = buf.len() / self.entry_size;
        let mut i = 0;
        while i < self.count {
            let n = per_read.min(self.count - i);
            let Some(off) = (i as u64)
                .checked_mul(self.entry_size as u64)
                .and_then(|o| o.checked_add(self.offset))
            else {
                return Ok(());
            };
            let chunk = src.bytes(off, n * self.entry_size, buf)?;
            if chunk.len() < n * self.entry_size {
                return Err(Errno(libc::EIO));
            }
            for e in chunk.chunks_exact(self.entry_size) {
                if visit(e)? {
                    return Ok(());
                }
            }
            i += n;
        }
        Ok(())
    }
}

/// Whether the PT_INTERP path's file name is glibc's loader for this machine.
fn interp_is_glibc(src: &Source<'_>, offset: u64, size: u64) -> Result<bool, Errno> {
    let mut buf = [0u8; 256];
    let path = src.bytes(offset, (size as usize).min(256), &mut buf)?;
    let path = path.split(|&c| c == 0).next().unwrap_or_default();
    let name = path.rsplit(|&c| c == b'/').next().unwrap_or_default();
    Ok(GLIBC_LOADER.is_empty() || name == GLIBC_LOADER)
}

/// Looks for an ELF note named "Go" of type NT_GO_BUILD_ID in the first
/// 1 KiB of a PT_NOTE segment (Go's is its own short segment, or one of a
/// few notes when an external linker merged them).
fn has_go_note(src: &Source<'_>, offset: u64, size: u64) -> Result<bool, Errno> {
    let mut buf = [0u8; 1024];
    let notes = src.bytes(offset, (size as usize).min(1024), &mut buf)?;
    Ok(notes_have_go(notes))
}

fn notes_have_go(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0) as usize;
        let descsz = u32_at(notes, 4) as usize;
        let kind = u32_at(notes, 8);
        if kind == NT_GO_BUILD_ID && notes.get(12..12 + namesz.min(4)) == Some(b"Go\0\0") {
            return true;
        }
        let next = align4(namesz)
            .zip(align4(descsz))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|n| n.checked_add(12));
        match next.and_then(|n| notes.get(n..)) {
            Some(rest) => notes = rest,
            None => return false,
        }
    }
    false
}

/// Whether a section is named `.go.buildinfo` or `.note.go.buildid`. The
/// section headers of a C or Go program (30 to 40 of them) usually fit in one
/// read, the entry of the section-name table among them; the names in a second.
fn go_sections(src: &Source<'_>) -> Result<bool, Errno> {
    let h = src.head;
    let table = Table {
        offset: u64_at(h, 0x28),
        entry_size: u16_at(h, 0x3a) as usize,
        count: u16_at(h, 0x3c) as usize,
    };
    let shstrndx = u16_at(h, 0x3e) as usize;
    if table.entry_size < SHDR_SIZE || shstrndx >= table.count {
        return Ok(false);
    }
    let mut buf = [0u8; 32 * SHDR_SIZE];
    let mut names_buf = [0u8; 1024];
    match table.size().filter(|&n| n <= buf.len()) {
        Some(n) => {
            let t = src.bytes(table.offset, n, &mut buf)?;
            let entry = t
                .get(shstrndx * table.entry_size..)
                .and_then(|e| e.get(..SHDR_SIZE))
                .ok_or(Errno(libc::EIO))?;
            let names = names_of(src, entry, &mut names_buf)?;
            Ok(t.chunks_exact(table.entry_size)
                .any(|e| is_go_section(names, e)))
        }
        None => {
            let mut entry = [0u8; SHDR_SIZE];
            let off = (shstrndx as u64)
                .checked_mul(table.entry_size as u64)
                .and_then(|o| o.checked_add(table.offset))
                .ok_or(Errno(libc::EIO))?;
            src.f.read_exact_at(&mut entry, off)?;
            let names = names_of(src, &entry, &mut names_buf)?;
            let mut go = false;
            table.each(src, SHDR_SIZE, &mut buf, |e| {
                go = is_go_section(names, e);
                Ok(go)
            })?;
            Ok(go)
        }
    }
}

/// The section-name table `entry` describes (its first 1 KiB).
fn names_of<'b>(
    src: &'b Source<'_>,
    entry: &[u8],
    buf: &'b mut [u8; 1024],
) -> Result<&'b [u8], Errno> {
    let (off, size) = (u64_at(entry, 0x18), u64_at(entry, 0x20) as usize);
    src.bytes(off, size.min(1024), buf)
}

fn is_go_section(names: &[u8], entry: &[u8]) -> bool {
    let name = names.get(u32_at(entry, 0) as usize..).unwrap_or_default();
    let name = name.split(|&c| c == 0).next().unwrap_or_default();
    name == b".go.buildinfo" || name == b".note.go.buildid"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect_path(p: &str) -> Binary {
        let c = std::ffi::CString::new(p).unwrap();
        inspect(&File::open(&c).unwrap()).unwrap()
    }

    #[test]
    fn sh_is_dynamic_on_glibc_and_not_go() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(
            inspect_path(sh.to_str().unwrap()),
            Binary::Elf(Elf {
                dynamic: true,
                glibc: true,
                go: false
            })
        );
    }

    #[test]
    fn scripts_and_empty_files_are_not_elf() {
        let dir = std::env::temp_dir().join(format!("sg-elf-{}", std::process::id()));
        std::fs::write(&dir, "#!/bin/sh\n").unwrap();
        assert_eq!(inspect_path(dir.to_str().unwrap()), Binary::NotElf);
        std::fs::write(&dir, "").unwrap();
        assert_eq!(inspect_path(dir.to_str().unwrap()), Binary::NotElf);
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn notes() {
        let mut n = Vec::new();
        // A GNU build-id note (name "GNU\0", 20-byte desc), then Go's.
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&20u32.to_le_bytes());
        n.extend_from_slice(&3u32.to_le_bytes());
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&[0; 20]);
        assert!(!notes_have_go(&n));
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&8u32.to_le_bytes());
        n.extend_from_slice(&NT_GO_BUILD_ID.to_le_bytes());
        n.extend_from_slice(b"Go\0\0");
        n.extend_from_slice(b"buildid!");
        assert!(notes_have_go(&n));
        // Truncated or absurd sizes end the scan, never panic.
        assert!(!notes_have_go(&n[..30]));
        let mut bad = n.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(!notes_have_go(&bad));
    }

    #[test]
    fn garbage_headers_never_panic() {
        let dir = std::env::temp_dir().join(format!("sg-elf-g-{}", std::process::id()));
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[0x12..0x14].copy_from_slice(&MACHINE.to_le_bytes());
        for (off, v) in [(0x20, u64::MAX - 10), (0x28, u64::MAX)] {
            h[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        h[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        std::fs::write(&dir, &h).unwrap();
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // Reads past the end fail cleanly (EIO or EINVAL), nothing else.
        let r = inspect(&File::open(&c).unwrap());
        assert!(
            r.is_err()
                || r == Ok(Binary::Elf(Elf {
                    dynamic: false,
                    glibc: false,
                    go: false
                }))
        );
        let _ = std::fs::remove_file(&dir);
    }
}
