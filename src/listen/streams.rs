//! Sequence tracking per (source, pid) stream: gaps are lost events.

use std::collections::HashMap;

use spinguard_common::events::Source;

/// What a `seq` said beyond "the next one, as expected".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNote {
    /// Events `after+1 ..= seq-1` never arrived (the sender's sendto failed:
    /// our queue was full, or the listener was stopped).
    Gap { lost: u64, after: u64, seq: u64 },
    /// The stream started over (`seq` not above the last one): a new program
    /// image under the same pid (exec re-runs the shim's constructor), or a
    /// recycled pid.
    Restart { after: u64, seq: u64 },
    /// The first event we saw from this stream is not its first: we started
    /// listening late, or its first events were lost.
    LateStart { seq: u64 },
}

#[derive(Default)]
pub struct Streams {
    last: HashMap<(Source, i32), u64>,
}

impl Streams {
    pub fn observe(&mut self, source: Source, pid: i32, seq: u64) -> Option<SeqNote> {
        let prev = self.last.insert((source, pid), seq);
        match prev {
            None if seq > 1 => Some(SeqNote::LateStart { seq }),
            None => None,
            Some(after) if seq == after.wrapping_add(1) => None,
            Some(after) if seq > after => Some(SeqNote::Gap {
                lost: seq - after - 1,
                after,
                seq,
            }),
            Some(after) => Some(SeqNote::Restart { after, seq }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_restarts_and_late_starts() {
        let mut s = Streams::default();
        let shim = Source::Shim;
        assert_eq!(s.observe(shim, 1, 1), None);
        assert_eq!(s.observe(shim, 1, 2), None);
        assert_eq!(
            s.observe(shim, 1, 6),
            Some(SeqNote::Gap {
                lost: 3,
                after: 2,
                seq: 6
            })
        );
        // Another pid, and the same pid from the other source, are other streams.
        assert_eq!(s.observe(shim, 2, 1), None);
        assert_eq!(s.observe(Source::Supervisor, 1, 1), None);
        assert_eq!(s.observe(shim, 1, 7), None);
        assert_eq!(
            s.observe(shim, 1, 1),
            Some(SeqNote::Restart { after: 7, seq: 1 })
        );
        assert_eq!(s.observe(shim, 3, 5), Some(SeqNote::LateStart { seq: 5 }));
        assert_eq!(s.observe(shim, 3, 6), None);
    }
}
