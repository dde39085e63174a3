//! Sequence tracking per stream: gaps are lost events.
//!
//! A stream is what one sender numbers from 1: the shim in one process, or
//! the supervisor for one traced process. Senders name processes by their own
//! pids, which repeat across PID namespaces (every container has a pid 1), so
//! a stream is keyed by the sending process as the kernel names it in ours
//! (`sender`) as well as by the pid in the event.

use std::collections::HashMap;

use spinguard_common::events::Source;

use super::origin::Origin;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub source: Source,
    /// The sending process in our pid namespace; 0 when the kernel could not
    /// say (then streams of equal `pid` from unseen senders merge, as before).
    pub sender: i32,
    /// The pid the event carries, in the sender's namespace.
    pub pid: i32,
}

/// What a `seq` said beyond "the next one, as expected".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNote {
    /// Events `after+1 ..= seq-1` never arrived (the sender's sendto failed:
    /// our queue was full, or the listener was stopped).
    Gap { lost: u64, after: u64, seq: u64 },
    /// The stream started over (`seq` not above the last one): a new program
    /// image in the same process (exec re-runs the shim's constructor), or a
    /// recycled pid.
    Restart { after: u64, seq: u64 },
    /// The first event we saw from this stream is not its first: we started
    /// listening late, or its first events were lost.
    LateStart { seq: u64 },
}

/// One stream's state.
#[derive(Debug, Default)]
pub struct Stream {
    last: u64,
    /// When it was last seen, in events observed (for eviction).
    seen: u64,
    /// Who sends it; None until looked up, and again after a restart (a new
    /// program: a new name, maybe a new container).
    pub origin: Option<Origin>,
}

/// Streams kept at most: a stream is forgotten at its `summary` (its last
/// event), but one whose summary never comes (a killed program) would stay
/// for ever. Past this many, the eighth least recently seen are forgotten;
/// a forgotten stream that speaks again is a late start, not a loss.
pub const MAX_STREAMS: usize = 65_536;

#[derive(Default)]
pub struct Streams {
    map: HashMap<StreamKey, Stream>,
    clock: u64,
}

impl Streams {
    /// Records `seq` for `key`: what it says, and the stream.
    pub fn observe(&mut self, key: StreamKey, seq: u64) -> (Option<SeqNote>, &mut Stream) {
        self.clock += 1;
        if !self.map.contains_key(&key) && self.map.len() >= MAX_STREAMS {
            self.evict();
        }
        let clock = self.clock;
        let s = self.map.entry(key).or_default();
        let note = match std::mem::replace(&mut s.last, seq) {
            0 if seq > 1 => Some(SeqNote::LateStart { seq }),
            0 => None,
            after if seq == after.wrapping_add(1) => None,
            after if seq > after => Some(SeqNote::Gap {
                lost: seq - after - 1,
                after,
                seq,
            }),
            after => Some(SeqNote::Restart { after, seq }),
        };
        if matches!(note, Some(SeqNote::Restart { .. })) {
            s.origin = None;
        }
        s.seen = clock;
        (note, s)
    }

    /// The stream's last event arrived (its `summary`): forget it, so a
    /// recycled pid starts a new stream rather than "restarting" this one.
    pub fn end(&mut self, key: &StreamKey) {
        self.map.remove(key);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn evict(&mut self) {
        let mut seen: Vec<u64> = self.map.values().map(|s| s.seen).collect();
        let cut = seen.len() / 8;
        let (_, &mut oldest_kept, _) = seen.select_nth_unstable(cut);
        self.map.retain(|_, s| s.seen >= oldest_kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(source: Source, sender: i32, pid: i32) -> StreamKey {
        StreamKey {
            source,
            sender,
            pid,
        }
    }

    #[test]
    fn gaps_restarts_and_late_starts() {
        let mut s = Streams::default();
        let shim = |pid| k(Source::Shim, pid, pid);
        let mut note = |key, seq| s.observe(key, seq).0;
        assert_eq!(note(shim(1), 1), None);
        assert_eq!(note(shim(1), 2), None);
        assert_eq!(
            note(shim(1), 6),
            Some(SeqNote::Gap {
                lost: 3,
                after: 2,
                seq: 6
            })
        );
        // Another pid, and the same pid from the other source, are other streams.
        assert_eq!(note(shim(2), 1), None);
        assert_eq!(note(k(Source::Supervisor, 1, 1), 1), None);
        assert_eq!(note(shim(1), 7), None);
        assert_eq!(
            note(shim(1), 1),
            Some(SeqNote::Restart { after: 7, seq: 1 })
        );
        assert_eq!(note(shim(3), 5), Some(SeqNote::LateStart { seq: 5 }));
        assert_eq!(note(shim(3), 6), None);
    }

    /// Two containers' pid 1, interleaved: two streams, no gap, no restart.
    #[test]
    fn the_same_pid_from_two_senders_is_two_streams() {
        let mut s = Streams::default();
        let (a, b) = (k(Source::Shim, 23456, 1), k(Source::Shim, 23999, 1));
        for seq in 1..=5 {
            assert_eq!(s.observe(a, seq).0, None);
            assert_eq!(s.observe(b, seq).0, None);
        }
        // Two supervisors, each tracing its own pid 2.
        let (c, d) = (k(Source::Supervisor, 500, 2), k(Source::Supervisor, 600, 2));
        assert_eq!(s.observe(c, 1).0, None);
        assert_eq!(s.observe(d, 1).0, None);
        assert_eq!(s.observe(c, 2).0, None);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_restart_forgets_the_origin_and_an_end_the_stream() {
        let mut s = Streams::default();
        let key = k(Source::Shim, 9, 9);
        s.observe(key, 1).1.origin = Some(Origin::default());
        assert!(s.observe(key, 2).1.origin.is_some());
        assert!(s.observe(key, 1).1.origin.is_none(), "exec: look again");
        s.end(&key);
        assert_eq!(s.observe(key, 1).0, None, "a recycled pid is a new stream");
    }

    #[test]
    fn the_least_recently_seen_are_forgotten_past_the_cap() {
        let mut s = Streams::default();
        for pid in 0..MAX_STREAMS as i32 {
            s.observe(k(Source::Shim, pid, pid), 1);
        }
        assert_eq!(s.len(), MAX_STREAMS);
        // Stream 0 speaks again: now among the most recent.
        s.observe(k(Source::Shim, 0, 0), 2);
        s.observe(k(Source::Shim, -1, -1), 1);
        assert!(s.len() <= MAX_STREAMS - MAX_STREAMS / 8 + 1, "{}", s.len());
        assert_eq!(s.observe(k(Source::Shim, 0, 0), 3).0, None, "kept");
        assert_eq!(
            s.observe(k(Source::Shim, 1, 1), 2).0,
            Some(SeqNote::LateStart { seq: 2 }),
            "forgotten: its next event is a late start"
        );
    }
}
