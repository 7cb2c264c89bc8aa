//! Exactly-once: the index of event identities seen within the dedup window.
//!
//! Identity is `(tenant, source, id)`, hashed to 128 bits (xxh3-128); two different identities share a
//! fingerprint with probability about n²/2¹²⁹, below 10⁻¹⁵ for a trillion events. Each entry also keeps
//! a 64-bit hash of the payload, which tells a retry (same payload: `duplicate`) from a `conflict`.
//!
//! Durability: the index lives in memory and is rebuilt at open from the `dedup` column family, where
//! each commit writes one record of the fingerprints it accepted, in the same atomic write batch as the
//! events and aggregates. So after any crash the index holds exactly the committed events.
//!
//! Record format (value of `dedup/<seq u64 BE>`): `received_us i64 BE`, `n u16 BE` and `n` length-prefixed
//! tenants (part `i` of the commit's retained events belongs to tenant `i`: recovery replays commits whose
//! aggregates were not flushed yet from them), then per event `fingerprint u128 LE, payload_hash u64 LE`.

use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashMap;

use crate::error::{Error, Result};
use crate::storage::codec::{put_str, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
    Conflict,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    payload_hash: u64,
    received_us: i64,
}

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

#[derive(Default)]
pub struct DedupIndex {
    map: HashMap<u128, Entry, BuildHasherDefault<FingerprintHasher>>,
}

impl DedupIndex {
    pub fn check(&self, fingerprint: u128, payload_hash: u64) -> Seen {
        match self.map.get(&fingerprint) {
            None => Seen::New,
            Some(e) if e.payload_hash == payload_hash => Seen::Duplicate,
            Some(_) => Seen::Conflict,
        }
    }

    pub fn insert(&mut self, fingerprint: u128, payload_hash: u64, received_us: i64) {
        self.map.insert(fingerprint, Entry { payload_hash, received_us });
    }

    pub fn remove(&mut self, fingerprint: u128) {
        self.map.remove(&fingerprint);
    }

    /// Forgets identities first received before `cutoff_us`.
    pub fn expire(&mut self, cutoff_us: i64) {
        self.map.retain(|_, e| e.received_us >= cutoff_us);
    }

    /// Adds the entries of one stored record.
    pub fn load(&mut self, record: &Record) {
        for (fp, ph) in record.entries() {
            self.insert(fp, ph, record.received_us);
        }
    }
}

/// A parsed dedup record.
pub struct Record<'a> {
    pub received_us: i64,
    /// Tenant of each retained-events part of the commit, in part order.
    pub tenants: Vec<&'a str>,
    entries: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Record<'a>> {
        let mut r = Reader::new(bytes);
        let received_us = r.u64()? as i64;
        let n = u16::from_be_bytes(r.take(2)?.try_into().unwrap());
        let tenants = (0..n).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
        if !r.bytes.len().is_multiple_of(24) {
            return Err(Error::Corrupt(format!("dedup record with {} bytes of entries", r.bytes.len())));
        }
        Ok(Record { received_us, tenants, entries: r.bytes })
    }

    pub fn entries(&self) -> impl Iterator<Item = (u128, u64)> + 'a {
        self.entries.chunks_exact(24).map(|c| {
            (u128::from_le_bytes(c[..16].try_into().unwrap()), u64::from_le_bytes(c[16..].try_into().unwrap()))
        })
    }
}

/// Builds the record a commit writes.
pub struct RecordBuilder(Vec<u8>);

impl RecordBuilder {
    pub fn new(received_us: i64, tenants: &[String]) -> Self {
        let mut out = received_us.to_be_bytes().to_vec();
        out.extend_from_slice(&(tenants.len() as u16).to_be_bytes());
        for t in tenants {
            put_str(&mut out, t.as_bytes());
        }
        RecordBuilder(out)
    }
    pub fn push(&mut self, fingerprint: u128, payload_hash: u64) {
        self.0.extend_from_slice(&fingerprint.to_le_bytes());
        self.0.extend_from_slice(&payload_hash.to_le_bytes());
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_retries_from_conflicts() {
        let mut idx = DedupIndex::default();
        assert_eq!(idx.check(7, 1), Seen::New);
        idx.insert(7, 1, 100);
        assert_eq!(idx.check(7, 1), Seen::Duplicate);
        assert_eq!(idx.check(7, 2), Seen::Conflict);
        assert_eq!(idx.check(8, 1), Seen::New);
    }

    #[test]
    fn records_round_trip_and_expire() {
        let mut b = RecordBuilder::new(1_000, &["acme".to_string(), "b".to_string()]);
        b.push(u128::MAX - 3, 42);
        b.push(5, 43);
        let mut idx = DedupIndex::default();
        let record = Record::parse(b.bytes()).unwrap();
        assert_eq!((record.received_us, record.tenants.as_slice()), (1_000, &["acme", "b"][..]));
        idx.load(&record);
        assert_eq!(idx.check(u128::MAX - 3, 42), Seen::Duplicate);
        assert_eq!(idx.check(5, 0), Seen::Conflict);
        idx.insert(9, 9, 2_000);
        idx.expire(1_500);
        assert_eq!(idx.check(5, 43), Seen::New);
        assert_eq!(idx.check(9, 9), Seen::Duplicate);
        assert!(Record::parse(&[0; 9]).is_err());
        assert!(Record::parse(&[0; 10]).is_ok());
    }
}
