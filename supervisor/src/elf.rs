//! Just enough ELF to choose a mechanism: is the program dynamically linked
//! (has a PT_INTERP, so LD_PRELOAD reaches it), and is it Go (which never calls
//! libc's `syscall`, even with cgo, so only ptrace reaches its bpf calls)?

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// Not an ELF file (a script, say).
    NotElf,
    /// An ELF file we do not parse (32-bit, big-endian on a little-endian host...).
    OtherElf,
    Elf {
        /// Has a PT_INTERP program header.
        dynamic: bool,
        /// Has a `.go.buildinfo` section or a `Go` build-id note.
        go: bool,
    },
}

const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const NT_GO_BUILD_ID: u32 = 4;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn read_at(f: &File, off: u64, len: u64) -> io::Result<Vec<u8>> {
    if len > 16 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ELF table too large",
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, off)?;
    Ok(buf)
}

/// Inspects the file at `path`.
pub fn inspect(path: &Path) -> io::Result<Binary> {
    let f = File::open(path)?;
    let mut h = [0u8; 64];
    let n = f.read_at(&mut h, 0)?;
    if n < 4 || &h[..4] != b"\x7fELF" {
        return Ok(Binary::NotElf);
    }
    // 64-bit little-endian only: x86_64 and aarch64.
    if n < 64 || h[4] != 2 || h[5] != 1 {
        return Ok(Binary::OtherElf);
    }
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(&h, 0x36), u16_at(&h, 0x38));
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&h, 0x28),
        u16_at(&h, 0x3a),
        u16_at(&h, 0x3c),
        u16_at(&h, 0x3e),
    );
    let mut dynamic = false;
    let mut go = false;
    if phentsize >= 56 {
        let ph = read_at(&f, phoff, phentsize as u64 * phnum as u64)?;
        for i in 0..phnum as usize {
            let e = &ph[i * phentsize as usize..];
            match u32_at(e, 0) {
                PT_INTERP => dynamic = true,
                PT_NOTE => {
                    let notes = read_at(&f, u64_at(e, 0x08), u64_at(e, 0x20))?;
                    go |= has_go_note(&notes);
                }
                _ => {}
            }
        }
    }
    if !go && shentsize >= 64 && shnum > 0 && shstrndx < shnum {
        let sh = read_at(&f, shoff, shentsize as u64 * shnum as u64)?;
        let entry = |i: usize| &sh[i * shentsize as usize..];
        let strtab = entry(shstrndx as usize);
        let names = read_at(&f, u64_at(strtab, 0x18), u64_at(strtab, 0x20))?;
        for i in 0..shnum as usize {
            let name_off = u32_at(entry(i), 0) as usize;
            let name = names.get(name_off..).unwrap_or_default();
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            if matches!(&name[..end], b".go.buildinfo" | b".note.go.buildid") {
                go = true;
            }
        }
    }
    Ok(Binary::Elf { dynamic, go })
}

/// Looks for an ELF note named "Go" of type NT_GO_BUILD_ID.
fn has_go_note(mut notes: &[u8]) -> bool {
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0) as usize;
        let descsz = u32_at(notes, 4) as usize;
        let kind = u32_at(notes, 8);
        let name_end = 12 + namesz;
        if name_end > notes.len() {
            return false;
        }
        if kind == NT_GO_BUILD_ID && &notes[12..name_end] == b"Go\0\0" {
            return true;
        }
        let next = 12 + align4(namesz) + align4(descsz);
        if next > notes.len() {
            return false;
        }
        notes = &notes[next..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_is_dynamic_and_not_go() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(
            inspect(&sh).unwrap(),
            Binary::Elf {
                dynamic: true,
                go: false
            }
        );
    }

    #[test]
    fn scripts_are_not_elf() {
        let dir = std::env::temp_dir().join(format!("sg-elf-{}", std::process::id()));
        std::fs::write(&dir, "#!/bin/sh\n").unwrap();
        assert_eq!(inspect(&dir).unwrap(), Binary::NotElf);
        let _ = std::fs::remove_file(&dir);
    }
}
