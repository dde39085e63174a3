//! One `spinguard-shim: ...` line, formatted on the stack and written with
//! one write(2): no allocation and no std io, so it works at exit (std's
//! stderr may be torn down), in a signal handler and in a vfork child.

use std::fmt;

use crate::sys;

const CAPACITY: usize = 512;

/// A fixed buffer that keeps what fits and drops the rest (never fails, so a
/// `write!` into it never stops half-way through the line).
pub(crate) struct Line {
    buf: [u8; CAPACITY],
    len: usize,
}

impl Line {
    /// A line that starts with `spinguard-shim: `.
    pub fn new() -> Line {
        let mut l = Line {
            buf: [0; CAPACITY],
            len: 0,
        };
        let _ = fmt::Write::write_str(&mut l, "spinguard-shim: ");
        l
    }

    /// An empty buffer, for building a short string (a /proc path) on the stack.
    pub fn raw() -> Line {
        Line {
            buf: [0; CAPACITY],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Ends the line (keeping room for the newline) and writes it to fd 2.
    pub fn emit(mut self) {
        self.len = self.len.min(CAPACITY - 1);
        if let Some(b) = self.buf.get_mut(self.len) {
            *b = b'\n';
            self.len += 1;
        }
        sys::write_stderr(self.as_bytes());
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = CAPACITY - self.len;
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

/// Bytes that may not be UTF-8 (a path), written as text with `\xNN` for
/// what is not.
pub(crate) struct Lossy<'a>(pub &'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Writes `msg` as one line: `spinguard-shim: {msg}`.
pub(crate) fn say(msg: fmt::Arguments<'_>) {
    let mut l = Line::new();
    let _ = fmt::Write::write_fmt(&mut l, msg);
    l.emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    #[test]
    fn truncates_without_failing_and_keeps_the_newline() {
        let mut l = Line::new();
        for _ in 0..100 {
            l.write_str("0123456789").unwrap();
        }
        assert_eq!(l.as_bytes().len(), CAPACITY);
        assert!(l.as_bytes().starts_with(b"spinguard-shim: 0123"));
        l.len = l.len.min(CAPACITY - 1);
        assert_eq!(l.len, CAPACITY - 1);
    }
}
