//! One stream's `seq`: events put back in the order their sender numbered
//! them, and what a number out of turn means.
//!
//! A sender numbers its events from 1 and then sends them, and the two steps
//! are not one: the shim's threads each take a number
//! (`SeqCounter::next`) and then call `sendto`, so two threads whose guarded
//! loads end together can send 2 before 1 (the second thread gets the CPU
//! first). A Unix datagram socket keeps the order of the datagrams it queues,
//! so nothing else reorders them: a number out of turn is either such a race,
//! a loss (the listener's queue was full: the sender's `sendto` failed), or a
//! new sequence (an exec runs the shim's constructor again, numbering from 1
//! in the same pid; a recycled pid whose old stream sent no summary).
//!
//! The rule, per stream. Every number below `next` is *settled*: delivered,
//! or given up as lost. An event numbered `next` is delivered at once, with
//! whatever held events follow it without a hole. One numbered above `next`
//! is *held*: the numbers between are awaited, and when one of them arrives
//! it fills its hole silently. A number already settled (below `next`), or
//! one already held, cannot be part of this sequence: the sequence started
//! over, and what it still held is delivered with its holes reported.
//! So seq 1 after seq 2 is a reorder when 1 was never seen (it is still
//! awaited), and seq 1 after seq 40 is a new sequence (1 was delivered long
//! ago), whatever the distance.
//!
//! Holes are awaited for a bounded grace (the caller's clock and limits, see
//! `streams`): when it runs out, or too many events are held, the first hole
//! is given up: reported as a gap (a late start at the sequence's beginning,
//! where nothing says whether the listener started late or the events were
//! lost) and the held events after it are delivered.
//!
//! The limits of the rule:
//! - a reordered event that arrives after its hole was given up (later than
//!   the grace) finds its number settled: it is taken for a new sequence
//!   (a restart), and its hole was counted lost;
//! - a new sequence whose first datagram to arrive carries a number the old
//!   one never reached (the old one sent 3 events, the new one's seq 5
//!   overtook its 1 to 4) is taken for the old one's continuation until a
//!   settled number arrives; its events before that are reported under the
//!   old sequence (with a bogus gap);
//! - in a stream whose summary never comes (a killed program), what it sent
//!   last and what is missing after that cannot be told apart: only a later
//!   event shows a hole.

use std::collections::BTreeMap;
use std::time::Instant;

/// What a `seq` said beyond "the next one, as expected", told with the event
/// that revealed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNote {
    /// Events `after+1 ..= seq-1` never arrived (the sender's sendto failed:
    /// our queue was full, or the listener was stopped), or arrived later than
    /// the grace allowed.
    Gap { lost: u64, after: u64, seq: u64 },
    /// The stream started over (a number it had already seen): a new program
    /// image in the same process (exec re-runs the shim's constructor), or a
    /// recycled pid. `after` is the previous sequence's last delivered `seq`.
    Restart { after: u64, seq: u64 },
    /// The first event we saw from this stream is not its first: we started
    /// listening late, or its first events were lost.
    LateStart { seq: u64 },
}

/// An event waiting for the ones numbered before it.
#[derive(Debug)]
pub struct Held<T> {
    /// When it arrived: its holes are awaited for the grace from then.
    pub at: Instant,
    /// It is the stream's last event (its `summary`).
    pub last: bool,
    /// What holding it costs (for the listener's bound on memory).
    pub bytes: usize,
    pub item: T,
}

/// An event leaving the sequence, in order, with what its `seq` said.
#[derive(Debug, PartialEq)]
pub struct Released<T> {
    pub note: Option<SeqNote>,
    pub item: T,
}

/// One stream's sequence state.
#[derive(Debug)]
pub struct Sequence<T> {
    /// Every number below this is settled. 1 before the sequence begins.
    next: u64,
    /// Something of this sequence has been delivered.
    begun: bool,
    /// The sequence this one replaced ended at this `seq`: the first delivery
    /// says so ([`SeqNote::Restart`]).
    after: Option<u64>,
    /// Events ahead of a hole, by `seq`.
    held: BTreeMap<u64, Held<T>>,
    held_bytes: usize,
    /// The last delivery was the stream's last event (its `summary`).
    ended: bool,
}

impl<T> Default for Sequence<T> {
    fn default() -> Self {
        Sequence {
            next: 1,
            begun: false,
            after: None,
            held: BTreeMap::new(),
            held_bytes: 0,
            ended: false,
        }
    }
}

impl<T> Sequence<T> {
    /// `seq` cannot belong to this sequence: it is settled (delivered or
    /// given up), or an event with that number is already held.
    pub fn starts_over(&self, seq: u64) -> bool {
        self.held.contains_key(&seq) || (self.begun && seq < self.next)
    }

    /// Ends this sequence (see [`starts_over`](Self::starts_over)): delivers
    /// what it held, its holes reported, and makes ready for a new one whose
    /// first delivery is noted as a restart (unless the old one ended with
    /// its summary: then the new one is simply new).
    pub fn start_over(&mut self, out: &mut Vec<Released<T>>) {
        self.release_all(out);
        self.after = self.begun.then(|| self.next - 1);
        self.begun = false;
        self.next = 1;
        self.ended = false;
    }

    /// An event numbered `seq` arrived, not one that [`starts_over`]. Returns
    /// the highest `seq` already held when it is lower than that (it arrived
    /// out of order and fills a hole), for the listener's debug note.
    ///
    /// [`starts_over`]: Self::starts_over
    pub fn arrive(&mut self, seq: u64, event: Held<T>, out: &mut Vec<Released<T>>) -> Option<u64> {
        debug_assert!(!self.starts_over(seq));
        let behind = self
            .held
            .last_key_value()
            .map(|(&k, _)| k)
            .filter(|&k| k > seq);
        // Before the sequence begins, 1 is the first (and 0, which no sender
        // uses, is taken as a first too rather than held for ever).
        let in_turn = if self.begun {
            seq == self.next
        } else {
            seq <= 1
        };
        if in_turn {
            self.deliver(seq, event, out);
            self.drain(out);
        } else {
            self.held_bytes += event.bytes;
            self.held.insert(seq, event);
        }
        behind
    }

    /// Gives up the first hole: delivers the first held event (its note says
    /// what is missing before it) and those after it without a hole.
    pub fn release_first(&mut self, out: &mut Vec<Released<T>>) {
        if let Some((seq, e)) = self.held.pop_first() {
            self.held_bytes -= e.bytes;
            self.deliver(seq, e, out);
            self.drain(out);
        }
    }

    /// Gives up every hole (the listener is leaving, or forgetting the stream).
    pub fn release_all(&mut self, out: &mut Vec<Released<T>>) {
        while !self.held.is_empty() {
            self.release_first(out);
        }
    }

    /// When the event held longest arrived: every hole is awaited from the
    /// arrival of the first event past it, so this is when the oldest hole
    /// opened.
    pub fn oldest(&self) -> Option<Instant> {
        self.held.values().map(|h| h.at).min()
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The stream's summary has been delivered and nothing is held: the
    /// stream is over (a later event under its key is a new process).
    pub fn is_over(&self) -> bool {
        self.ended && self.held.is_empty()
    }

    fn deliver(&mut self, seq: u64, e: Held<T>, out: &mut Vec<Released<T>>) {
        let note = if !self.begun {
            match self.after.take() {
                Some(after) => Some(SeqNote::Restart { after, seq }),
                None if seq > 1 => Some(SeqNote::LateStart { seq }),
                None => None,
            }
        } else if seq > self.next {
            Some(SeqNote::Gap {
                lost: seq - self.next,
                after: self.next - 1,
                seq,
            })
        } else {
            None
        };
        self.begun = true;
        self.next = seq.saturating_add(1);
        self.ended = e.last;
        if e.last {
            // The summary is the last event: what is still held came after
            // it, from a new process under the same key.
            self.begun = false;
            self.next = 1;
        }
        out.push(Released { note, item: e.item });
    }

    /// Delivers the held events that are now in turn.
    fn drain(&mut self, out: &mut Vec<Released<T>>) {
        while self.begun {
            let Some(entry) = self.held.first_entry() else {
                break;
            };
            if *entry.key() != self.next {
                break;
            }
            let (seq, e) = entry.remove_entry();
            self.held_bytes -= e.bytes;
            self.deliver(seq, e, out);
        }
    }
}
