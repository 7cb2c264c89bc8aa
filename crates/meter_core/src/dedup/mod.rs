//! Exactly-once: which event identities were received within the dedup window.
//!
//! Identity is `(tenant, source, id)`, hashed to 128 bits (xxh3-128); two different identities share a
//! fingerprint with probability about n²/2¹²⁹, below 10⁻¹⁵ for a trillion events. Each identity also keeps
//! a 64-bit hash of the payload, which tells a retry (same payload: `duplicate`) from a `conflict`.
//!
//! Where identities live, so that memory, disk and open time stay bounded however many are in the window:
//! - **On disk**, in the `seen` column family: one key per identity (its fingerprint), value a [`Mark`]
//!   (receive time, payload hash), written in the same atomic batch as the commit that accepted it. So after
//!   any crash the index holds exactly the committed identities, and opening reads nothing of it.
//!   RocksDB's own filters (kept in a bounded block cache, `storage::rocks`) answer "not there" for a new
//!   identity without reading a data block: a filter may say "maybe" wrongly, never "no" wrongly, and a
//!   "maybe" is settled by reading the key. Fingerprints are uniform, so the filters cost the same for any
//!   mix of tenants; their memory is about 1.25 bytes per identity, capped by the cache size.
//! - **In memory**, [`Recent`]: every identity of the group commit being staged (not on disk yet) and the most
//!   recently committed ones, for the common quick retry.
//!
//! Expiry: an identity received before the [`Horizon`] (now minus the window) is treated as unseen by
//! every lookup, exactly at the window's edge; RocksDB's compaction filter removes such keys as it rewrites
//! files, so disk holds the window plus whatever compaction has not reached yet (bounded by a periodic
//! compaction of every file, `storage::rocks`).
//!
//! The `dedup` column family keeps one [`record::Record`] per commit (its receive time and the tenant of each
//! part of its retained events) until the commit's aggregates are written: replay after a crash reads it.

pub mod recent;
pub mod record;

use std::sync::atomic::{AtomicI64, Ordering};

pub use recent::Recent;
pub use record::Record;

use crate::error::{Error, Result};
use crate::storage::{Cf, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

/// What is remembered of one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub received_us: i64,
    pub payload_hash: u64,
}

impl Mark {
    /// The `seen` value: receive time (i64 BE, first, so the compaction filter reads it without decoding
    /// the rest), payload hash (u64 LE).
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.received_us.to_be_bytes());
        out[8..].copy_from_slice(&self.payload_hash.to_le_bytes());
        out
    }

    pub fn decode(value: &[u8]) -> Result<Mark> {
        let value: &[u8; 16] =
            value.try_into().map_err(|_| Error::Corrupt(format!("seen value of {} bytes", value.len())))?;
        Ok(Mark {
            received_us: i64::from_be_bytes(value[..8].try_into().unwrap()),
            payload_hash: u64::from_le_bytes(value[8..].try_into().unwrap()),
        })
    }

    pub fn judge(&self, payload_hash: u64) -> Seen {
        if self.payload_hash == payload_hash {
            Seen::Duplicate
        } else {
            Seen::Conflict
        }
    }
}

/// The `seen` key of an identity.
pub fn seen_key(fingerprint: u128) -> [u8; 16] {
    fingerprint.to_be_bytes()
}

/// The receive time in a `seen` value, for the compaction filter; `None` if the value is not one.
pub fn received_us(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// Identities received before this instant (µs) are forgotten. Shared by the writer, which moves it
/// forward, and the compaction filter, which drops what lies before it. Never moves back.
#[derive(Debug, Default)]
pub struct Horizon(AtomicI64);

impl Horizon {
    pub fn new(us: i64) -> Horizon {
        Horizon(AtomicI64::new(us))
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn advance(&self, us: i64) {
        self.0.fetch_max(us, Ordering::Relaxed);
    }
    /// Whether a mark received at `received_us` is still inside the window.
    pub fn keeps(&self, received_us: i64) -> bool {
        received_us >= self.get()
    }
}

/// Looks the identities up on disk, in one batched read: for each, its mark if it was received inside the
/// window. `fingerprints` need not be sorted.
pub fn lookup(store: &dyn Store, horizon: &Horizon, fingerprints: &[u128]) -> Result<Vec<Option<Mark>>> {
    let mut order: Vec<usize> = (0..fingerprints.len()).collect();
    order.sort_unstable_by_key(|&i| fingerprints[i]);
    let keys: Vec<[u8; 16]> = order.iter().map(|&i| seen_key(fingerprints[i])).collect();
    let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let mut marks = vec![None; fingerprints.len()];
    let mut failure = None;
    store.multi_get_sorted(Cf::Seen, &keys, &mut |at, value| {
        if let Some(value) = value {
            match Mark::decode(value) {
                Ok(mark) if horizon.keeps(mark.received_us) => marks[order[at]] = Some(mark),
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        }
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(marks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_judge() {
        let m = Mark { received_us: -5, payload_hash: 42 };
        assert_eq!(Mark::decode(&m.encode()).unwrap(), m);
        assert_eq!(received_us(&m.encode()), Some(-5));
        assert_eq!(m.judge(42), Seen::Duplicate);
        assert_eq!(m.judge(43), Seen::Conflict);
        assert!(Mark::decode(&[0; 15]).is_err());
        assert_eq!(received_us(&[0; 7]), None);
    }

    #[test]
    fn the_horizon_only_moves_forward_and_keeps_its_edge() {
        let h = Horizon::new(100);
        h.advance(50);
        assert_eq!(h.get(), 100);
        assert!(h.keeps(100) && !h.keeps(99));
        h.advance(200);
        assert!(!h.keeps(199));
    }
}
