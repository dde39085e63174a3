//! The maps the programs count into, their key and value layouts (one
//! definition for both sides: [`crate::programs`] writes these offsets, the
//! reader decodes them), and a typed reader.

use crate::error::ProbeError;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// LRU hashes evict their oldest entries when full instead of refusing new
/// ones (Linux 4.10+): right for per-thread state that can be left behind
/// by a thread we stopped watching mid-call.
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// A fixed-size record a map holds, as native-endian bytes.
pub trait Record: Sized {
    const SIZE: usize;
    fn write(&self, out: &mut [u8]);
    fn read(b: &[u8]) -> Self;

    fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; Self::SIZE];
        self.write(&mut v);
        v
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl Record for u32 {
    const SIZE: usize = 4;
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_ne_bytes());
    }
    fn read(b: &[u8]) -> u32 {
        u32_at(b, 0)
    }
}

impl Record for u64 {
    const SIZE: usize = 8;
    fn write(&self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_ne_bytes());
    }
    fn read(b: &[u8]) -> u64 {
        u64_at(b, 0)
    }
}

/// `inflight` value: a thread inside a bpf call (key: its tid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub tgid: u32,
    pub cmd: u32,
    pub start_ns: u64,
}

impl InFlight {
    pub const TGID: i16 = 0;
    pub const CMD: i16 = 4;
    pub const START: i16 = 8;
}

impl Record for InFlight {
    const SIZE: usize = 16;
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.tgid.to_ne_bytes());
        out[4..8].copy_from_slice(&self.cmd.to_ne_bytes());
        out[8..16].copy_from_slice(&self.start_ns.to_ne_bytes());
    }
    fn read(b: &[u8]) -> InFlight {
        InFlight {
            tgid: u32_at(b, 0),
            cmd: u32_at(b, 4),
            start_ns: u64_at(b, 8),
        }
    }
}

/// `calls` key: one thread's calls of one command with one result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    pub tgid: u32,
    pub tid: u32,
    pub cmd: u32,
    /// 0 for success, else the errno (positive).
    pub errno: u32,
}

impl CallKey {
    pub const TGID: i16 = 0;
    pub const TID: i16 = 4;
    pub const CMD: i16 = 8;
    pub const ERRNO: i16 = 12;
}

impl Record for CallKey {
    const SIZE: usize = 16;
    fn write(&self, out: &mut [u8]) {
        for (i, v) in [self.tgid, self.tid, self.cmd, self.errno]
            .iter()
            .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
    }
    fn read(b: &[u8]) -> CallKey {
        CallKey {
            tgid: u32_at(b, 0),
            tid: u32_at(b, 4),
            cmd: u32_at(b, 8),
            errno: u32_at(b, 12),
        }
    }
}

/// `calls` value: how many, and nanoseconds inside them, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallVal {
    pub count: u64,
    pub ns: u64,
}

impl CallVal {
    pub const COUNT: i16 = 0;
    pub const NS: i16 = 8;
}

impl Record for CallVal {
    const SIZE: usize = 16;
    fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.count.to_ne_bytes());
        out[8..16].copy_from_slice(&self.ns.to_ne_bytes());
    }
    fn read(b: &[u8]) -> CallVal {
        CallVal {
            count: u64_at(b, 0),
            ns: u64_at(b, 8),
        }
    }
}

/// `sigs` flags: the signal was queued while its target thread (or, for a
/// process-directed one, a thread of its process) was inside a guarded call.
pub const SIG_DURING: u32 = 1;
/// `sigs` flags: process-directed (kill, ITIMER_REAL) rather than sent to one thread.
pub const SIG_GROUP: u32 = 2;
/// `sigs` flags: the sender runs in another PID namespace than the one the
/// probe names tasks in (sender ids 0).
pub const SIG_SENDER_OUTSIDE: u32 = 4;
/// `sigs` flags: the tracepoint's `result` (`enum trace_signal_result`) sits
/// in bits 8..16.
pub const SIG_RESULT_SHIFT: u32 = 8;

/// `sigs` key: signals generated for a watched process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SigKey {
    pub tgid: u32,
    pub sig: u32,
    /// The sending process and thread (0 for timers and the kernel).
    pub sender_tgid: u32,
    pub sender_tid: u32,
    /// `si_code`.
    pub code: i32,
    pub flags: u32,
}

impl SigKey {
    pub const TGID: i16 = 0;
    pub const SIG: i16 = 4;
    pub const SENDER_TGID: i16 = 8;
    pub const SENDER_TID: i16 = 12;
    pub const CODE: i16 = 16;
    pub const FLAGS: i16 = 20;

    pub fn during(&self) -> bool {
        self.flags & SIG_DURING != 0
    }
    pub fn group(&self) -> bool {
        self.flags & SIG_GROUP != 0
    }
    pub fn sender_outside(&self) -> bool {
        self.flags & SIG_SENDER_OUTSIDE != 0
    }
    /// `enum trace_signal_result`: 0 delivered (queued), 1 ignored, 2
    /// already pending, 3 queue overflow, 4 queued without info.
    pub fn result(&self) -> u32 {
        (self.flags >> SIG_RESULT_SHIFT) & 0xff
    }
}

impl Record for SigKey {
    const SIZE: usize = 24;
    fn write(&self, out: &mut [u8]) {
        let words = [
            self.tgid,
            self.sig,
            self.sender_tgid,
            self.sender_tid,
            self.code as u32,
            self.flags,
        ];
        for (i, v) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
    }
    fn read(b: &[u8]) -> SigKey {
        SigKey {
            tgid: u32_at(b, 0),
            sig: u32_at(b, 4),
            sender_tgid: u32_at(b, 8),
            sender_tid: u32_at(b, 12),
            code: u32_at(b, 16) as i32,
            flags: u32_at(b, 20),
        }
    }
}

/// `delivered` key: signals a watched process took (handler run, default
/// action, or stop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveredKey {
    pub tgid: u32,
    pub sig: u32,
}

impl DeliveredKey {
    pub const TGID: i16 = 0;
    pub const SIG: i16 = 4;
}

impl Record for DeliveredKey {
    const SIZE: usize = 8;
    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.tgid.to_ne_bytes());
        out[4..8].copy_from_slice(&self.sig.to_ne_bytes());
    }
    fn read(b: &[u8]) -> DeliveredKey {
        DeliveredKey {
            tgid: u32_at(b, 0),
            sig: u32_at(b, 4),
        }
    }
}

/// `health` indexes: what the programs could not count...
pub const HEALTH_MAP_FULL: u32 = 0;
/// ...and every signal delivery on the host, to check the trigger's perf
/// samples against (see `trigger`).
pub const HEALTH_DELIVERIES: u32 = 1;
pub const HEALTH_SLOTS: u32 = 2;

/// A map and its record types.
pub struct Map<K, V> {
    fd: OwnedFd,
    name: &'static str,
    _types: std::marker::PhantomData<(K, V)>,
}

impl<K: Record, V: Record> Map<K, V> {
    fn create(map_type: u32, max_entries: u32, name: &'static str) -> Result<Self, ProbeError> {
        let fd = sys::map_create(map_type, K::SIZE, V::SIZE, max_entries, name)
            .map_err(|e| ProbeError::from_bpf("creating a BPF map", e))?;
        Ok(Map {
            fd,
            name,
            _types: std::marker::PhantomData,
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub fn get(&self, key: &K) -> Result<Option<V>, ProbeError> {
        let mut v = vec![0u8; V::SIZE];
        match sys::map_lookup(&self.fd, &key.bytes(), &mut v) {
            Ok(true) => Ok(Some(V::read(&v))),
            Ok(false) => Ok(None),
            Err(e) => Err(ProbeError::io(format!("reading map {}", self.name), e)),
        }
    }

    pub fn set(&self, key: &K, value: &V) -> Result<(), ProbeError> {
        sys::map_update(&self.fd, &key.bytes(), &value.bytes(), 0)
            .map_err(|e| ProbeError::io(format!("writing map {}", self.name), e))
    }

    pub fn remove(&self, key: &K) -> Result<(), ProbeError> {
        sys::map_delete(&self.fd, &key.bytes())
            .map(drop)
            .map_err(|e| ProbeError::io(format!("deleting from map {}", self.name), e))
    }

    /// Every entry. Entries added or removed while we walk may or may not
    /// be seen; a key deleted under us restarts nothing (GET_NEXT_KEY on a
    /// missing key returns the first key, so we stop at a repeat).
    pub fn entries(&self) -> Result<Vec<(K, V)>, ProbeError> {
        let err = |e| ProbeError::io(format!("walking map {}", self.name), e);
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut key: Option<Vec<u8>> = None;
        let mut next = vec![0u8; K::SIZE];
        let mut value = vec![0u8; V::SIZE];
        while sys::map_next_key(&self.fd, key.as_deref(), &mut next).map_err(err)? {
            if !seen.insert(next.clone()) {
                break;
            }
            if sys::map_lookup(&self.fd, &next, &mut value).map_err(err)? {
                out.push((K::read(&next), V::read(&value)));
            }
            key = Some(next.clone());
        }
        Ok(out)
    }
}

/// Every map the programs share.
pub struct Maps {
    /// tid → the bpf call it is in.
    pub inflight: Map<u32, InFlight>,
    /// tid → tgid, for threads of watched processes.
    pub threads: Map<u32, u32>,
    /// tgid → guarded calls in progress (a watched process: one that made a
    /// guarded call, or the diagnosed one).
    pub procs: Map<u32, u64>,
    pub calls: Map<CallKey, CallVal>,
    pub sigs: Map<SigKey, u64>,
    pub delivered: Map<DeliveredKey, u64>,
    pub health: Map<u32, u64>,
}

/// Entries per map: enough for every process of a busy host that calls
/// bpf, small enough to cost a few MiB. A full map is counted
/// ([`HEALTH_MAP_FULL`]) and reported, never silent.
const ENTRIES: u32 = 16_384;

impl Maps {
    pub fn create() -> Result<Maps, ProbeError> {
        Ok(Maps {
            inflight: Map::create(BPF_MAP_TYPE_LRU_HASH, ENTRIES, "sg_inflight")?,
            threads: Map::create(BPF_MAP_TYPE_LRU_HASH, 4 * ENTRIES, "sg_threads")?,
            procs: Map::create(BPF_MAP_TYPE_HASH, ENTRIES, "sg_procs")?,
            calls: Map::create(BPF_MAP_TYPE_HASH, ENTRIES, "sg_calls")?,
            sigs: Map::create(BPF_MAP_TYPE_HASH, ENTRIES, "sg_sigs")?,
            delivered: Map::create(BPF_MAP_TYPE_HASH, ENTRIES, "sg_delivered")?,
            health: Map::create(BPF_MAP_TYPE_ARRAY, HEALTH_SLOTS, "sg_health")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let k = SigKey {
            tgid: 1,
            sig: 27,
            sender_tgid: 3,
            sender_tid: 4,
            code: -6,
            flags: SIG_DURING | (4 << SIG_RESULT_SHIFT),
        };
        assert_eq!(SigKey::read(&k.bytes()), k);
        assert!(k.during() && !k.group());
        assert_eq!(k.result(), 4);
        let c = CallKey {
            tgid: 9,
            tid: 10,
            cmd: 5,
            errno: 11,
        };
        assert_eq!(CallKey::read(&c.bytes()), c);
        let v = CallVal {
            count: 7,
            ns: 1 << 40,
        };
        assert_eq!(CallVal::read(&v.bytes()), v);
        let f = InFlight {
            tgid: 1,
            cmd: 5,
            start_ns: 99,
        };
        assert_eq!(InFlight::read(&f.bytes()), f);
        // The offsets the programs write at are the ones the reader decodes.
        let b = c.bytes();
        assert_eq!(u32_at(&b, CallKey::ERRNO as usize), 11);
        assert_eq!(u32_at(&k.bytes(), SigKey::FLAGS as usize), k.flags);
    }
}
