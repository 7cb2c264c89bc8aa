//! The identities of the last moments, in memory: those of the group commit being staged (the only place
//! they are until it is written) and the most recently committed ones, so that a quick retry is decided
//! without a disk read. Bounded by age (`keep_us`) and by count (`capacity`); it is a cache of `seen` for
//! everything committed, so what it forgets stays on disk.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashMap;

use super::{Horizon, Mark, Seen};

/// Fingerprints are already uniform hashes; hashing them again would only cost time.
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

pub struct Recent {
    map: HashMap<u128, Mark, BuildHasherDefault<FingerprintHasher>>,
    /// Every identity in `map`, in the order it was staged; the last `pending` are not committed yet.
    order: VecDeque<(u128, i64)>,
    pending: usize,
    keep_us: i64,
    capacity: usize,
}

impl Recent {
    pub fn new(keep_us: i64, capacity: usize) -> Recent {
        Recent { map: HashMap::default(), order: VecDeque::new(), pending: 0, keep_us, capacity }
    }

    /// `Some` if the identity is known here and inside the window; `None`: ask the disk.
    pub fn check(&self, fingerprint: u128, payload_hash: u64, horizon: &Horizon) -> Option<Seen> {
        self.map.get(&fingerprint).filter(|m| horizon.keeps(m.received_us)).map(|m| m.judge(payload_hash))
    }

    /// Remembers an identity accepted into the group commit being staged.
    pub fn stage(&mut self, fingerprint: u128, mark: Mark) {
        self.map.insert(fingerprint, mark);
        self.order.push_back((fingerprint, mark.received_us));
        self.pending += 1;
    }

    /// The staged identities are on disk now.
    pub fn committed(&mut self) {
        self.pending = 0;
    }

    /// The staged identities never reached the disk: forget them.
    pub fn rolled_back(&mut self) {
        for _ in 0..self.pending {
            let (fp, received) = self.order.pop_back().expect("pending identities are in order");
            self.forget(fp, received);
        }
        self.pending = 0;
    }

    /// Forgets committed identities received before `now_us - keep_us`, and the oldest beyond `capacity`.
    pub fn evict(&mut self, now_us: i64) {
        let cutoff = now_us.saturating_sub(self.keep_us);
        while self.order.len() > self.pending {
            let &(fp, received) = self.order.front().expect("not empty");
            if received >= cutoff && self.order.len() <= self.capacity {
                break;
            }
            self.order.pop_front();
            self.forget(fp, received);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes the entry staged at `received`, unless the identity was staged again since (after it expired).
    fn forget(&mut self, fingerprint: u128, received: i64) {
        if self.map.get(&fingerprint).is_some_and(|m| m.received_us == received) {
            self.map.remove(&fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(received_us: i64, payload_hash: u64) -> Mark {
        Mark { received_us, payload_hash }
    }

    #[test]
    fn tells_retries_from_conflicts_and_respects_the_horizon() {
        let mut r = Recent::new(1_000, 10);
        let h = Horizon::new(0);
        assert_eq!(r.check(7, 1, &h), None);
        r.stage(7, mark(100, 1));
        assert_eq!(r.check(7, 1, &h), Some(Seen::Duplicate));
        assert_eq!(r.check(7, 2, &h), Some(Seen::Conflict));
        h.advance(101);
        assert_eq!(r.check(7, 1, &h), None, "received before the horizon: unseen");
    }

    #[test]
    fn rollback_forgets_only_what_was_staged() {
        let mut r = Recent::new(1_000, 10);
        let h = Horizon::new(0);
        r.stage(1, mark(10, 1));
        r.committed();
        r.stage(2, mark(20, 2));
        r.rolled_back();
        assert_eq!(r.check(1, 1, &h), Some(Seen::Duplicate));
        assert_eq!(r.check(2, 2, &h), None);
    }

    #[test]
    fn evicts_by_age_and_count_but_never_what_is_staged() {
        let mut r = Recent::new(100, 3);
        let h = Horizon::new(0);
        for fp in 0..3 {
            r.stage(fp, mark(fp as i64, 0));
        }
        r.committed();
        r.stage(9, mark(5, 0));
        r.stage(10, mark(5, 0));
        r.evict(50);
        // Over capacity: the oldest committed go until three are left; staged ones never go.
        assert_eq!((r.check(1, 0, &h), r.check(2, 0, &h)), (None, Some(Seen::Duplicate)));
        assert_eq!((r.check(9, 0, &h), r.check(10, 0, &h)), (Some(Seen::Duplicate), Some(Seen::Duplicate)));
        r.committed();
        r.evict(105);
        assert_eq!(r.check(2, 0, &h), None, "2 is older than 105 - 100");
        assert_eq!(r.check(9, 0, &h), Some(Seen::Duplicate), "5 is not");
        r.evict(106);
        assert!(r.is_empty());
    }

    #[test]
    fn an_identity_staged_again_after_expiry_survives_the_eviction_of_its_old_entry() {
        let mut r = Recent::new(100, 10);
        let h = Horizon::new(0);
        r.stage(1, mark(0, 1));
        r.committed();
        r.stage(1, mark(1_000, 2));
        r.committed();
        r.evict(1_050);
        assert_eq!(r.check(1, 2, &h), Some(Seen::Duplicate));
    }
}
