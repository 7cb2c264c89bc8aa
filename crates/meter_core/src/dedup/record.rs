//! The record each commit writes in the `dedup` column family, keyed by its sequence number (u64 BE):
//! `received_us i64 BE`, `n u16 BE` and `n` length-prefixed tenants (part `i` of the commit's retained events
//! belongs to tenant `i`). Replay after a crash reads it to find the retained events of commits whose
//! aggregates were not written yet; it is deleted once they are.
//!
//! Records written before identities moved to the `seen` column family also carry, after the tenants,
//! `(fingerprint u128 LE, payload_hash u64 LE)` per accepted event; [`Record::legacy_entries`] reads them so
//! that opening such a data directory moves them to `seen`.

use crate::error::{Error, Result};
use crate::storage::codec::{put_str, Reader};

pub struct Record<'a> {
    pub received_us: i64,
    /// Tenant of each retained-events part of the commit, in part order.
    pub tenants: Vec<&'a str>,
    legacy: &'a [u8],
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
        Ok(Record { received_us, tenants, legacy: r.bytes })
    }

    /// The identities a record of the old format lists (none in a current one).
    pub fn legacy_entries(&self) -> impl Iterator<Item = (u128, u64)> + 'a {
        self.legacy.chunks_exact(24).map(|c| {
            (u128::from_le_bytes(c[..16].try_into().unwrap()), u64::from_le_bytes(c[16..].try_into().unwrap()))
        })
    }
}

/// The record of one commit.
pub fn build(received_us: i64, tenants: &[String]) -> Vec<u8> {
    let mut out = received_us.to_be_bytes().to_vec();
    out.extend_from_slice(&(tenants.len() as u16).to_be_bytes());
    for t in tenants {
        put_str(&mut out, t.as_bytes());
    }
    out
}

/// Builds a record of the old format, for the test that opens an old data directory.
#[cfg(test)]
pub fn build_legacy(received_us: i64, tenants: &[String], entries: &[(u128, u64)]) -> Vec<u8> {
    let mut out = build(received_us, tenants);
    for (fp, ph) in entries {
        out.extend_from_slice(&fp.to_le_bytes());
        out.extend_from_slice(&ph.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_both_formats() {
        let tenants = ["acme".to_string(), "b".to_string()];
        let current = build(1_000, &tenants);
        let r = Record::parse(&current).unwrap();
        assert_eq!((r.received_us, r.tenants.as_slice()), (1_000, &["acme", "b"][..]));
        assert_eq!(r.legacy_entries().count(), 0);
        let old = build_legacy(7, &tenants, &[(u128::MAX - 3, 42), (5, 43)]);
        let r = Record::parse(&old).unwrap();
        assert_eq!(r.legacy_entries().collect::<Vec<_>>(), vec![(u128::MAX - 3, 42), (5, 43)]);
        assert!(Record::parse(&[0; 9]).is_err());
        assert!(Record::parse(&[0; 10]).is_ok());
    }
}
