//! The streams: one `seq` sequence per sender, the events each holds while
//! a missing one is awaited, and when the wait is given up.
//!
//! A stream is what one sender numbers from 1: the shim in one process, or
//! the supervisor for one traced process. Senders name processes by their own
//! pids, which repeat across PID namespaces (every container has a pid 1), so
//! a stream is keyed by the sending process as the kernel names it in ours
//! (`sender`) as well as by the pid in the event. What a `seq` out of turn
//! means (a reorder, a loss, a new sequence) is `sequence`'s rule; this file
//! keeps the streams, their deadlines and the bounds on what they hold.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use spinguard_common::events::Source;

use super::origin::Origin;
pub use super::sequence::SeqNote;
use super::sequence::{Held, Released, Sequence};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub source: Source,
    /// The sending process in our pid namespace; 0 when the kernel could not
    /// say (then streams of equal `pid` from unseen senders merge, as before).
    pub sender: i32,
    /// The pid the event carries, in the sender's namespace.
    pub pid: i32,
}

/// How long and how much the listener waits for an event that is missing
/// while later ones have arrived (see `sequence` for the rule).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A hole is awaited this long from the arrival of the first event past
    /// it. Two threads' race between numbering an event and sending it lasts
    /// microseconds, or a scheduling delay on a busy machine: a second covers
    /// both and keeps the listener at most a second behind a stream that has
    /// really lost something.
    pub grace: Duration,
    /// Events one stream may hold; one more gives up its first hole (a stream
    /// that keeps sending past a hole is not waiting for a race).
    pub per_stream: usize,
    /// Bytes all streams together may hold (datagrams as received); past it,
    /// the stream that has waited longest gives up its first hole.
    pub total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            grace: Duration::from_secs(1),
            per_stream: 256,
            total_bytes: 8 << 20,
        }
    }
}

/// An event arriving: what the streams need to know of it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub key: StreamKey,
    pub seq: u64,
    /// When it arrived (the grace is counted from here).
    pub at: Instant,
    /// It is the stream's last event (its `summary`).
    pub last: bool,
    /// What holding it costs, in bytes.
    pub bytes: usize,
}

/// An event leaving its stream, in `seq` order, with what its `seq` said.
#[derive(Debug, PartialEq)]
pub struct Delivery<T> {
    pub key: StreamKey,
    pub note: Option<SeqNote>,
    pub item: T,
}

/// One stream's state.
#[derive(Debug)]
pub struct Stream<T> {
    seq: Sequence<T>,
    /// When it was last seen, in events observed (for eviction).
    seen: u64,
    /// When its oldest hole is given up (its key in `Streams::waiting`).
    deadline: Option<Instant>,
    /// Who sends it; None until looked up, and again after a restart (a new
    /// program: a new name, maybe a new container).
    pub origin: Option<Origin>,
}

/// Streams kept at most: a stream is forgotten at its `summary` (its last
/// event), but one whose summary never comes (a killed program) would stay
/// for ever. Past this many, the eighth least recently seen are forgotten
/// (what they held delivered first); a forgotten stream that speaks again is
/// a late start, not a loss.
pub const MAX_STREAMS: usize = 65_536;

/// Every stream, keyed by (source, sending process, pid), with the events
/// they hold. `T` is what the listener keeps of an event until it is
/// delivered.
pub struct Streams<T> {
    map: HashMap<StreamKey, Stream<T>>,
    clock: u64,
    limits: Limits,
    /// Streams holding events, by when their oldest hole is given up.
    waiting: BTreeSet<(Instant, StreamKey)>,
    held_bytes: usize,
}

impl<T> Default for Streams<T> {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl<T> Streams<T> {
    pub fn new(limits: Limits) -> Self {
        Streams {
            map: HashMap::new(),
            clock: 0,
            limits,
            waiting: BTreeSet::new(),
            held_bytes: 0,
        }
    }

    /// An event arrived: appends to `out` what can be delivered now, in
    /// order (this event; or nothing, while it waits for a missing one; or it
    /// and the held ones it was the missing one for). `item` makes what is
    /// kept of the event, given the stream's origin slot (None for a new
    /// stream or a new sequence: look it up). Returns the highest `seq` that
    /// arrived before this lower one (a reorder, put right), if so.
    pub fn observe(
        &mut self,
        a: Arrival,
        item: impl FnOnce(&mut Option<Origin>) -> T,
        out: &mut Vec<Delivery<T>>,
    ) -> Option<u64> {
        let Arrival {
            key,
            seq,
            at,
            last,
            bytes,
        } = a;
        self.clock += 1;
        if !self.map.contains_key(&key) && self.map.len() >= MAX_STREAMS {
            self.evict(out);
        }
        let clock = self.clock;
        let s = self.map.entry(key).or_insert_with(|| Stream {
            seq: Sequence::default(),
            seen: 0,
            deadline: None,
            origin: None,
        });
        s.seen = clock;
        let behind = self.update(key, out, |s, rel| {
            if s.seq.starts_over(seq) {
                // What the old sequence held goes out under its own origin,
                // before the new one is looked up.
                s.seq.start_over(rel);
                s.origin = None;
            }
            let item = item(&mut s.origin);
            let held = Held {
                at,
                last,
                bytes,
                item,
            };
            s.seq.arrive(seq, held, rel)
        });
        while self.held_bytes > self.limits.total_bytes {
            let Some(&(_, k)) = self.waiting.first() else {
                break;
            };
            self.update(k, out, |s, rel| s.seq.release_first(rel));
        }
        behind.flatten()
    }

    /// Gives up the holes awaited past the grace at `now`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Delivery<T>>) {
        while let Some(&(deadline, k)) = self.waiting.first() {
            if deadline > now {
                break;
            }
            self.update(k, out, |s, rel| s.seq.release_first(rel));
        }
    }

    /// When [`expire`](Self::expire) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.first().map(|&(d, _)| d)
    }

    /// Gives up every hole and delivers everything held (the listener is
    /// leaving).
    pub fn flush(&mut self, out: &mut Vec<Delivery<T>>) {
        while let Some(&(_, k)) = self.waiting.first() {
            self.update(k, out, |s, rel| s.seq.release_all(rel));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Events held, all streams together.
    pub fn held(&self) -> usize {
        self.map.values().map(|s| s.seq.held_len()).sum()
    }

    /// Runs `f` on the stream `key`, then keeps the books: what it released
    /// goes to `out`, the per-stream bound is enforced, the stream's deadline
    /// and the bytes held are updated, and a stream that is over (its summary
    /// delivered) is forgotten, so a recycled pid starts a new stream.
    fn update<R>(
        &mut self,
        key: StreamKey,
        out: &mut Vec<Delivery<T>>,
        f: impl FnOnce(&mut Stream<T>, &mut Vec<Released<T>>) -> R,
    ) -> Option<R> {
        let Some(s) = self.map.get_mut(&key) else {
            // Not a stream (cannot happen): never leave a deadline behind
            // that would be expired for ever.
            self.waiting.retain(|&(_, k)| k != key);
            return None;
        };
        let before = s.seq.held_bytes();
        let mut rel = Vec::new();
        let r = f(s, &mut rel);
        while s.seq.held_len() > self.limits.per_stream {
            s.seq.release_first(&mut rel);
        }
        self.held_bytes = self.held_bytes - before + s.seq.held_bytes();
        let deadline = s.seq.oldest().map(|t| t + self.limits.grace);
        if deadline != s.deadline {
            if let Some(d) = s.deadline {
                self.waiting.remove(&(d, key));
            }
            if let Some(d) = deadline {
                self.waiting.insert((d, key));
            }
            s.deadline = deadline;
        }
        let over = s.seq.is_over();
        out.extend(rel.into_iter().map(|r| Delivery {
            key,
            note: r.note,
            item: r.item,
        }));
        if over {
            self.map.remove(&key);
        }
        Some(r)
    }

    fn evict(&mut self, out: &mut Vec<Delivery<T>>) {
        let mut seen: Vec<u64> = self.map.values().map(|s| s.seen).collect();
        let cut = seen.len() / 8;
        let (_, &mut oldest_kept, _) = seen.select_nth_unstable(cut);
        let gone: Vec<StreamKey> = self
            .map
            .iter()
            .filter(|(_, s)| s.seen < oldest_kept)
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            self.update(k, out, |s, rel| s.seq.release_all(rel));
            self.map.remove(&k);
        }
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

    fn shim(pid: i32) -> StreamKey {
        k(Source::Shim, pid, pid)
    }

    /// 100 bytes an event.
    fn arrival(key: StreamKey, seq: u64, at: Instant, last: bool) -> Arrival {
        Arrival {
            key,
            seq,
            at,
            last,
            bytes: 100,
        }
    }

    const GRACE: Duration = Duration::from_secs(1);

    /// Streams of `seq` numbers on a clock the test moves by hand.
    struct T {
        s: Streams<u64>,
        t0: Instant,
        now: Duration,
    }

    type Out = Vec<(Option<SeqNote>, u64)>;

    impl T {
        fn new() -> T {
            Self::with(Limits::default())
        }

        fn with(limits: Limits) -> T {
            assert_eq!(limits.grace, GRACE);
            T {
                s: Streams::new(limits),
                t0: Instant::now(),
                now: Duration::ZERO,
            }
        }

        fn at(&mut self, ms: u64) -> &mut T {
            self.now = Duration::from_millis(ms);
            self
        }

        fn send_full(&mut self, key: StreamKey, seq: u64, last: bool) -> (Out, Option<u64>) {
            let mut out = Vec::new();
            let behind = self.s.observe(
                arrival(key, seq, self.t0 + self.now, last),
                |_| seq,
                &mut out,
            );
            (Self::plain(key, out), behind)
        }

        /// What `seq` arriving for `key` now delivers.
        fn send(&mut self, key: StreamKey, seq: u64) -> Out {
            self.send_full(key, seq, false).0
        }

        /// The stream's summary, numbered `seq`.
        fn summary(&mut self, key: StreamKey, seq: u64) -> Out {
            self.send_full(key, seq, true).0
        }

        /// What the clock reaching `ms` delivers.
        fn tick(&mut self, key: StreamKey, ms: u64) -> Out {
            self.at(ms);
            let mut out = Vec::new();
            self.s.expire(self.t0 + self.now, &mut out);
            Self::plain(key, out)
        }

        fn plain(key: StreamKey, out: Vec<Delivery<u64>>) -> Out {
            out.into_iter()
                .map(|d| {
                    assert_eq!(d.key, key, "only the stream at hand delivers");
                    (d.note, d.item)
                })
                .collect()
        }
    }

    fn quiet(seqs: &[u64]) -> Out {
        seqs.iter().map(|&s| (None, s)).collect()
    }

    fn gap(lost: u64, after: u64, seq: u64) -> Option<SeqNote> {
        Some(SeqNote::Gap { lost, after, seq })
    }

    #[test]
    fn in_order_events_go_straight_through() {
        let mut t = T::new();
        for seq in 1..=5 {
            assert_eq!(t.send(shim(1), seq), quiet(&[seq]));
        }
        assert_eq!(t.s.held(), 0);
        assert_eq!(t.s.next_deadline(), None);
    }

    /// The incident: two threads' loads end together; the second takes seq 2
    /// and its datagram arrives first.
    #[test]
    fn a_reorder_at_the_very_start_is_neither_a_late_start_nor_a_restart() {
        let mut t = T::new();
        assert_eq!(t.send(shim(1), 2), quiet(&[]), "held, not a late start");
        assert_eq!(t.s.next_deadline(), Some(t.t0 + GRACE));
        let (out, behind) = t.at(3).send_full(shim(1), 1, false);
        assert_eq!(out, quiet(&[1, 2]), "1 fills its hole: no restart");
        assert_eq!(behind, Some(2), "the debug note's reorder");
        assert_eq!(t.send(shim(1), 3), quiet(&[3]));
        assert_eq!(t.s.next_deadline(), None);
        assert_eq!(t.tick(shim(1), 5000), quiet(&[]), "nothing was missing");
    }

    #[test]
    fn a_reorder_mid_stream_is_put_back_in_order() {
        let mut t = T::new();
        assert_eq!(t.send(shim(1), 1), quiet(&[1]));
        assert_eq!(t.send(shim(1), 3), quiet(&[]));
        assert_eq!(t.send(shim(1), 4), quiet(&[]));
        assert_eq!(t.at(10).send(shim(1), 2), quiet(&[2, 3, 4]));
        // Three threads: 7 and 6 overtake 5.
        assert_eq!(t.send(shim(1), 7), quiet(&[]));
        assert_eq!(t.send(shim(1), 6), quiet(&[]));
        assert_eq!(t.send(shim(1), 5), quiet(&[5, 6, 7]));
        assert_eq!(t.tick(shim(1), 5000), quiet(&[]));
    }

    #[test]
    fn a_real_gap_is_reported_when_the_grace_runs_out() {
        let mut t = T::new();
        t.send(shim(1), 1);
        t.send(shim(1), 2);
        assert_eq!(t.at(100).send(shim(1), 6), quiet(&[]));
        assert_eq!(t.send(shim(1), 7), quiet(&[]));
        assert_eq!(t.tick(shim(1), 1099), quiet(&[]), "still within the grace");
        assert_eq!(
            t.tick(shim(1), 1100),
            vec![(gap(3, 2, 6), 6), (None, 7)],
            "the gap, then what waited for it"
        );
        assert_eq!(t.send(shim(1), 8), quiet(&[8]));
    }

    #[test]
    fn a_reorder_followed_by_a_real_gap() {
        let mut t = T::new();
        t.send(shim(1), 1);
        assert_eq!(t.send(shim(1), 3), quiet(&[]));
        assert_eq!(t.at(2).send(shim(1), 2), quiet(&[2, 3]), "a reorder");
        // 4 is lost for good; 6 overtakes 5.
        assert_eq!(t.at(10).send(shim(1), 6), quiet(&[]));
        assert_eq!(t.at(11).send(shim(1), 5), quiet(&[]), "5 waits for 4");
        assert_eq!(t.tick(shim(1), 1009), quiet(&[]));
        assert_eq!(t.tick(shim(1), 1010), vec![(gap(1, 3, 5), 5), (None, 6)]);
    }

    /// A hole is awaited for the grace from the arrival of the first event
    /// past it, not from when some earlier hole opened.
    #[test]
    fn each_hole_gets_its_own_grace() {
        let mut t = T::new();
        t.send(shim(1), 1);
        t.send(shim(1), 3);
        assert_eq!(t.at(900).send(shim(1), 2), quiet(&[2, 3]));
        assert_eq!(t.at(950).send(shim(1), 5), quiet(&[]));
        assert_eq!(t.tick(shim(1), 1000), quiet(&[]));
        assert_eq!(t.tick(shim(1), 1949), quiet(&[]));
        assert_eq!(t.tick(shim(1), 1950), vec![(gap(1, 3, 5), 5)]);
        // Two holes at once: the later one opened later.
        t.at(2000).send(shim(1), 7);
        t.at(2500).send(shim(1), 10);
        assert_eq!(t.tick(shim(1), 3000), vec![(gap(1, 5, 7), 7)]);
        assert_eq!(t.tick(shim(1), 3500), vec![(gap(2, 7, 10), 10)]);
    }

    #[test]
    fn a_late_start_is_reported_when_the_grace_runs_out() {
        let mut t = T::new();
        assert_eq!(t.send(shim(3), 5), quiet(&[]));
        assert_eq!(t.send(shim(3), 6), quiet(&[]));
        assert_eq!(
            t.tick(shim(3), 1000),
            vec![(Some(SeqNote::LateStart { seq: 5 }), 5), (None, 6)],
            "not a gap: nothing says the listener was there for 1 to 4"
        );
        assert_eq!(t.send(shim(3), 7), quiet(&[7]));
        // A late start with a reorder behind it: 4 arrives within the grace.
        assert_eq!(t.send(shim(4), 5), quiet(&[]));
        assert_eq!(t.at(1001).send(shim(4), 4), quiet(&[]));
        assert_eq!(
            t.tick(shim(4), 2000),
            vec![(Some(SeqNote::LateStart { seq: 4 }), 4), (None, 5)]
        );
    }

    /// The limit of the rule: a reordered event later than the grace finds
    /// its number settled, and is taken for a new sequence.
    #[test]
    fn a_reorder_later_than_the_grace_reads_as_a_restart() {
        let mut t = T::new();
        t.send(shim(1), 2);
        assert_eq!(
            t.tick(shim(1), 1000),
            vec![(Some(SeqNote::LateStart { seq: 2 }), 2)]
        );
        assert_eq!(
            t.at(1500).send(shim(1), 1),
            vec![(Some(SeqNote::Restart { after: 2, seq: 1 }), 1)]
        );
    }

    /// exec: the shim starts over at 1 in the same pid. seq 1 after seq 40 is
    /// a new sequence because 1 was delivered long ago, not because 40 is far.
    #[test]
    fn exec_after_a_reorder_is_a_restart() {
        let mut t = T::new();
        t.send(shim(1), 2);
        assert_eq!(t.send(shim(1), 1), quiet(&[1, 2]));
        assert_eq!(t.send(shim(1), 3), quiet(&[3]));
        assert_eq!(
            t.send(shim(1), 1),
            vec![(Some(SeqNote::Restart { after: 3, seq: 1 }), 1)],
            "at once: no grace for a number already seen"
        );
        assert_eq!(t.send(shim(1), 2), quiet(&[2]));
        assert_eq!(t.s.next_deadline(), None);
    }

    #[test]
    fn exec_whose_first_events_are_reordered() {
        let mut t = T::new();
        for seq in 1..=40 {
            t.send(shim(1), seq);
        }
        // The new image's 2 overtakes its 1: 2 is settled, so a new sequence,
        // whose 1 is then awaited like any first event.
        assert_eq!(t.send(shim(1), 2), quiet(&[]));
        assert_eq!(
            t.at(5).send(shim(1), 1),
            vec![(Some(SeqNote::Restart { after: 40, seq: 1 }), 1), (None, 2)]
        );
        // If its 1 never comes, the restart is told with the 2.
        for seq in 3..=9 {
            t.send(shim(1), seq);
        }
        t.at(10).send(shim(1), 3);
        assert_eq!(
            t.tick(shim(1), 1010),
            vec![(Some(SeqNote::Restart { after: 9, seq: 3 }), 3)]
        );
    }

    /// exec while a hole is open: the old sequence can send nothing more
    /// (exec ends its other threads), so its hole is a loss, reported at once.
    #[test]
    fn exec_with_a_hole_open_reports_the_loss_then_the_restart() {
        let mut t = T::new();
        t.send(shim(1), 1);
        t.send(shim(1), 2);
        assert_eq!(t.send(shim(1), 4), quiet(&[]));
        assert_eq!(
            t.send(shim(1), 1),
            vec![
                (gap(1, 2, 4), 4),
                (Some(SeqNote::Restart { after: 4, seq: 1 }), 1)
            ]
        );
        assert_eq!(t.s.next_deadline(), None);
        // A number already held cannot come twice in one sequence either:
        // the new sequence's 3 waits for its 1 and 2 like any first event.
        t.send(shim(1), 3);
        assert_eq!(t.send(shim(1), 3), vec![(gap(1, 1, 3), 3)]);
        assert_eq!(
            t.tick(shim(1), 1000),
            vec![(Some(SeqNote::Restart { after: 3, seq: 3 }), 3)]
        );
    }

    #[test]
    fn a_summary_waits_for_the_events_before_it_then_ends_the_stream() {
        let mut t = T::new();
        t.send(shim(1), 1);
        assert_eq!(t.summary(shim(1), 3), quiet(&[]), "2 is still on its way");
        assert_eq!(t.s.len(), 1);
        assert_eq!(t.at(1).send(shim(1), 2), quiet(&[2, 3]));
        assert_eq!(t.s.len(), 0, "forgotten at its summary");
        // A recycled pid: a new stream, not a restart.
        assert_eq!(t.send(shim(1), 1), quiet(&[1]));
        // Its summary after a real loss: the gap is reported with it.
        assert_eq!(t.at(100).summary(shim(1), 4), quiet(&[]));
        assert_eq!(t.tick(shim(1), 1100), vec![(gap(2, 1, 4), 4)]);
        assert_eq!(t.s.len(), 0);
        assert_eq!(t.s.next_deadline(), None);
    }

    #[test]
    fn held_events_are_bounded_per_stream_and_in_all() {
        let mut t = T::with(Limits {
            grace: GRACE,
            per_stream: 4,
            total_bytes: 1000,
        });
        t.send(shim(1), 1);
        for seq in 3..=6 {
            assert_eq!(t.send(shim(1), seq), quiet(&[]));
        }
        assert_eq!(
            t.send(shim(1), 7),
            vec![
                (gap(1, 1, 3), 3),
                (None, 4),
                (None, 5),
                (None, 6),
                (None, 7)
            ],
            "a fifth held event gives up the hole"
        );
        // 100 bytes an event, 1000 in all: the stream that waited longest
        // gives up first.
        let mut s = T::with(Limits {
            grace: GRACE,
            per_stream: 100,
            total_bytes: 1000,
        });
        let (a, b) = (shim(1), shim(2));
        s.send(a, 1);
        s.send(b, 1);
        for seq in 3..=7 {
            assert_eq!(s.send(a, seq), quiet(&[]));
        }
        for seq in 3..=7 {
            assert_eq!(s.at(1).send(b, seq), quiet(&[]));
        }
        assert_eq!(s.s.held(), 10);
        let mut out = Vec::new();
        s.s.observe(arrival(b, 8, s.t0, false), |_| 8, &mut out);
        let out: Vec<_> = out.iter().map(|d| (d.key, d.note, d.item)).collect();
        assert_eq!(
            out,
            [
                (a, gap(1, 1, 3), 3),
                (a, None, 4),
                (a, None, 5),
                (a, None, 6),
                (a, None, 7)
            ]
        );
        assert_eq!(s.s.held(), 6);
    }

    #[test]
    fn flush_delivers_everything_held() {
        let mut t = T::new();
        t.send(shim(1), 1);
        t.send(shim(1), 3);
        t.send(shim(2), 4);
        let mut out = Vec::new();
        t.s.flush(&mut out);
        let mut out: Vec<_> = out.iter().map(|d| (d.key.pid, d.note, d.item)).collect();
        out.sort_by_key(|x| x.0);
        assert_eq!(
            out,
            [
                (1, gap(1, 1, 3), 3),
                (2, Some(SeqNote::LateStart { seq: 4 }), 4)
            ]
        );
        assert_eq!((t.s.held(), t.s.next_deadline()), (0, None));
    }

    /// Two containers' pid 1, interleaved: two streams, no gap, no restart.
    #[test]
    fn the_same_pid_from_two_senders_is_two_streams() {
        let mut t = T::new();
        let (a, b) = (k(Source::Shim, 23456, 1), k(Source::Shim, 23999, 1));
        for seq in 1..=5 {
            assert_eq!(t.send(a, seq), quiet(&[seq]));
            assert_eq!(t.send(b, seq), quiet(&[seq]));
        }
        // Two supervisors, each tracing its own pid 2; and the other source.
        let (c, d) = (k(Source::Supervisor, 500, 2), k(Source::Supervisor, 600, 2));
        assert_eq!(t.send(c, 1), quiet(&[1]));
        assert_eq!(t.send(d, 1), quiet(&[1]));
        assert_eq!(t.send(c, 2), quiet(&[2]));
        assert_eq!(t.send(k(Source::Supervisor, 23456, 1), 1), quiet(&[1]));
        assert_eq!(t.s.len(), 5);
    }

    #[test]
    fn a_restart_forgets_the_origin() {
        let mut s = Streams::<u64>::default();
        let key = shim(9);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut seen = |s: &mut Streams<u64>, seq| {
            let mut had = None;
            s.observe(
                arrival(key, seq, now, false),
                |o| {
                    had = Some(o.is_some());
                    o.get_or_insert_with(Origin::default);
                    seq
                },
                &mut out,
            );
            had.unwrap()
        };
        assert!(!seen(&mut s, 1), "a new stream: look it up");
        assert!(seen(&mut s, 2));
        assert!(!seen(&mut s, 1), "exec: look again");
    }

    #[test]
    fn the_least_recently_seen_are_forgotten_past_the_cap() {
        let mut t = T::new();
        // Stream 1, the least recently seen, holds an event (its 3 waits
        // for 1 and 2): forgetting it delivers that first.
        for pid in 0..MAX_STREAMS as i32 {
            t.send(shim(pid), if pid == 1 { 3 } else { 1 });
        }
        assert_eq!(t.s.len(), MAX_STREAMS);
        // Stream 0 speaks again: now among the most recent.
        t.send(shim(0), 2);
        let mut out = Vec::new();
        t.s.observe(arrival(shim(-1), 1, t.t0, false), |_| 1, &mut out);
        let out: Vec<_> = out.iter().map(|d| (d.key, d.note, d.item)).collect();
        assert_eq!(
            out,
            [
                (shim(1), Some(SeqNote::LateStart { seq: 3 }), 3),
                (shim(-1), None, 1)
            ]
        );
        assert!(
            t.s.len() <= MAX_STREAMS - MAX_STREAMS / 8 + 1,
            "{}",
            t.s.len()
        );
        assert_eq!((t.s.held(), t.s.next_deadline()), (0, None));
        assert_eq!(t.send(shim(0), 3), quiet(&[3]), "kept");
        assert_eq!(
            t.send(shim(2), 2),
            quiet(&[]),
            "forgotten: its next event waits as a first one would"
        );
        assert_eq!(
            t.tick(shim(2), 1000),
            vec![(Some(SeqNote::LateStart { seq: 2 }), 2)]
        );
    }
}
