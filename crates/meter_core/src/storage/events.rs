//! The retained-events record: every event a commit accepted for one tenant, as one zstd-compressed
//! value, so that keeping raw events costs one RocksDB key per request rather than one per event.
//!
//! The compressed frame is built and compressed on the caller's thread, before dedup, from every event
//! that could be accepted (the candidates). The writer then only prefixes which candidates it kept and the
//! ordinal of the first one, so compression stays off the single writer thread.
//!
//! Format: `version u8 = 2`, `first ordinal` (varint), `kept` (varint length + bitmap, bit `i` set when
//! candidate `i` was accepted), then a zstd frame of: `count varint`, and per candidate: `source`, `id`,
//! `type`, `subject` (length-prefixed), `time_us` (zigzag varint), `data` (varint length + raw JSON,
//! empty when the event had none). The `k`-th kept event has ordinal `first + k`.
//!
//! A correction (`engine::correct`) voids events it cancels or replaces by rewriting the record's head as version 3:
//! the same fields plus a `void` bitmap (as long as `kept`, bit `i` set when candidate `i` no longer counts) before
//! the same zstd frame, which is neither decompressed nor rewritten. A voided event keeps its ordinal (the others
//! keep theirs) and is skipped by every reader of the record: replay, backfill, the export, lookups.

use super::codec::{put_str, put_varint, put_zigzag, Reader};
use crate::error::{Error, Result};

const VERSION: u8 = 2;
/// A record with voided events (`void`).
const VERSION_VOID: u8 = 3;
/// Fast levels keep compression cheap; retained events are written far more than read.
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedEvent<S> {
    pub source: S,
    pub id: S,
    pub event_type: S,
    pub subject: S,
    pub time_us: i64,
    /// Orders events that share a timestamp (for `latest` and `first`), the same at replay as at ingest.
    pub ordinal: u64,
    pub data: S,
}

/// The candidates of one request, compressed.
pub struct Frame {
    pub count: usize,
    compressed: Vec<u8>,
}

#[derive(Default)]
pub struct FrameBuilder {
    raw: Vec<u8>,
    count: usize,
}

impl FrameBuilder {
    /// Adds one candidate; its ordinal is given when the writer keeps it, so it is ignored here.
    pub fn push(&mut self, e: &RetainedEvent<&str>) {
        for s in [e.source, e.id, e.event_type, e.subject] {
            put_str(&mut self.raw, s.as_bytes());
        }
        put_zigzag(&mut self.raw, e.time_us as i128);
        put_varint(&mut self.raw, e.data.len() as u128);
        self.raw.extend_from_slice(e.data.as_bytes());
        self.count += 1;
    }

    pub fn finish(self) -> Result<Frame> {
        let mut plain = Vec::with_capacity(self.raw.len() + 10);
        put_varint(&mut plain, self.count as u128);
        plain.extend_from_slice(&self.raw);
        let compressed = zstd::bulk::compress(&plain, ZSTD_LEVEL).map_err(|e| Error::Storage(e.to_string()))?;
        Ok(Frame { count: self.count, compressed })
    }
}

/// The stored value: which of the frame's candidates were kept, numbered from `first_ordinal`.
pub fn record(first_ordinal: u64, kept: &[bool], frame: &Frame) -> Vec<u8> {
    debug_assert_eq!(kept.len(), frame.count);
    let mut bitmap = vec![0u8; kept.len().div_ceil(8)];
    for (i, _) in kept.iter().enumerate().filter(|(_, k)| **k) {
        bitmap[i / 8] |= 1 << (i % 8);
    }
    let mut out = Vec::with_capacity(frame.compressed.len() + bitmap.len() + 16);
    out.push(VERSION);
    put_varint(&mut out, first_ordinal as u128);
    put_varint(&mut out, bitmap.len() as u128);
    out.extend_from_slice(&bitmap);
    out.extend_from_slice(&frame.compressed);
    out
}

/// A record's head: its ordinals and which candidates count, and the compressed frame after it.
struct Head<'a> {
    first_ordinal: u64,
    kept: &'a [u8],
    /// Empty, or as long as `kept`.
    void: &'a [u8],
    frame: &'a [u8],
}

impl<'a> Head<'a> {
    fn read(value: &'a [u8]) -> Result<Head<'a>> {
        let mut r = Reader::new(value);
        let version = match r.u8() {
            Ok(v @ (VERSION | VERSION_VOID)) => v,
            other => return Err(Error::Corrupt(format!("events record version {other:?}"))),
        };
        let first_ordinal = r.varint()? as u64;
        let len = r.varint()? as usize;
        let kept = r.take(len)?;
        let void = if version == VERSION_VOID { r.take(len)? } else { &[] };
        Ok(Head { first_ordinal, kept, void, frame: r.bytes })
    }

    fn is_void(&self, candidate: usize) -> bool {
        self.void.get(candidate / 8).is_some_and(|b| b & (1 << (candidate % 8)) != 0)
    }
}

/// How many events a record keeps and has not voided, read from its bitmaps alone (nothing is decompressed).
pub fn count(value: &[u8]) -> Result<u64> {
    let head = Head::read(value)?;
    let ones = |bits: &[u8]| bits.iter().map(|b| b.count_ones() as u64).sum::<u64>();
    Ok(ones(head.kept) - ones(head.void))
}

/// The record with the events of `void` voided as well and those of `unvoid` counting again (`Corrupt` for an
/// ordinal it does not keep): only the head is rewritten.
pub fn void(value: &[u8], void: &[u64], unvoid: &[u64]) -> Result<Vec<u8>> {
    let head = Head::read(value)?;
    let mut bits = if head.void.is_empty() { vec![0u8; head.kept.len()] } else { head.void.to_vec() };
    // The candidate of each kept event, in ordinal order.
    let candidates: Vec<usize> = (0..head.kept.len() * 8).filter(|&i| head.kept[i / 8] & (1 << (i % 8)) != 0).collect();
    let candidate = |ordinal: u64| {
        let k = ordinal.checked_sub(head.first_ordinal).map(|k| k as usize);
        k.and_then(|k| candidates.get(k).copied())
            .ok_or_else(|| Error::Corrupt(format!("events record has no event of ordinal {ordinal}")))
    };
    for &ordinal in void {
        let i = candidate(ordinal)?;
        bits[i / 8] |= 1 << (i % 8);
    }
    for &ordinal in unvoid {
        let i = candidate(ordinal)?;
        bits[i / 8] &= !(1 << (i % 8));
    }
    let mut out = Vec::with_capacity(value.len() + bits.len());
    out.push(VERSION_VOID);
    put_varint(&mut out, head.first_ordinal as u128);
    put_varint(&mut out, head.kept.len() as u128);
    out.extend_from_slice(head.kept);
    out.extend_from_slice(&bits);
    out.extend_from_slice(head.frame);
    Ok(out)
}

/// The kept events of a record that are not voided, in order.
pub fn decode(value: &[u8]) -> Result<Vec<RetainedEvent<String>>> {
    Ok(decode_all(value)?.into_iter().filter(|(_, voided)| !voided).map(|(e, _)| e).collect())
}

/// Every kept event of a record, in order, and whether it is voided (a correction can bring one back).
pub fn decode_all(value: &[u8]) -> Result<Vec<(RetainedEvent<String>, bool)>> {
    let head = Head::read(value)?;
    let bitmap = head.kept;
    let plain = zstd::stream::decode_all(head.frame).map_err(|e| Error::Corrupt(format!("events record: {e}")))?;
    let mut r = Reader::new(&plain);
    let count = r.varint()? as usize;
    if count.div_ceil(8) != bitmap.len() {
        return Err(Error::Corrupt(format!("events record: {count} candidates but a {}-byte bitmap", bitmap.len())));
    }
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut ordinal = head.first_ordinal;
    for i in 0..count {
        let mut text = || r.str().map(str::to_owned);
        let (source, id, event_type, subject) = (text()?, text()?, text()?, text()?);
        let time_us = r.zigzag()? as i64;
        let len = r.varint()? as usize;
        let data = std::str::from_utf8(r.take(len)?).map_err(|e| Error::Corrupt(e.to_string()))?.to_owned();
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push((RetainedEvent { source, id, event_type, subject, time_us, ordinal, data }, head.is_void(i)));
            ordinal += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_keep_exactly_the_kept_candidates(events in proptest::collection::vec(
            (".{1,10}", ".{1,10}", ".{1,10}", ".{1,10}", any::<i64>(), ".{0,40}", any::<bool>()), 0..20),
            first in 0u64..u64::MAX / 2) {
            let mut b = FrameBuilder::default();
            for e in &events {
                b.push(&RetainedEvent { source: &e.0, id: &e.1, event_type: &e.2, subject: &e.3, time_us: e.4,
                                        ordinal: 0, data: &e.5 });
            }
            let kept: Vec<bool> = events.iter().map(|e| e.6).collect();
            let stored = record(first, &kept, &b.finish().unwrap());
            let decoded = decode(&stored).unwrap();
            let expect: Vec<_> = events.into_iter().filter(|e| e.6).enumerate().map(|(k, e)| RetainedEvent {
                source: e.0, id: e.1, event_type: e.2, subject: e.3, time_us: e.4, ordinal: first + k as u64,
                data: e.5 }).collect();
            prop_assert_eq!(count(&stored).unwrap(), expect.len() as u64);
            prop_assert_eq!(decoded, expect);
        }

        #[test]
        fn voided_events_are_skipped_and_the_others_keep_their_ordinals(
            n in 1usize..20, kept_mask in any::<u32>(), void_mask in any::<u32>(), first in 0u64..1 << 40) {
            let mut b = FrameBuilder::default();
            let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            for id in &ids {
                b.push(&RetainedEvent { source: "s", id, event_type: "t", subject: "c", time_us: 1, ordinal: 0, data: "" });
            }
            let kept: Vec<bool> = (0..n).map(|i| kept_mask & (1 << i) != 0).collect();
            let stored = record(first, &kept, &b.finish().unwrap());
            let all = decode(&stored).unwrap();
            let voided: Vec<u64> =
                all.iter().enumerate().filter(|(k, _)| void_mask & (1 << k) != 0).map(|(_, e)| e.ordinal).collect();
            // Voiding twice, in two steps, is the same as once.
            let (a, b) = voided.split_at(voided.len() / 2);
            let once = void(&stored, &voided, &[]).unwrap();
            let twice = void(&void(&stored, a, &[]).unwrap(), b, &[]).unwrap();
            prop_assert_eq!(&once, &twice);
            let left = decode(&once).unwrap();
            let expect: Vec<_> = all.iter().filter(|e| !voided.contains(&e.ordinal)).cloned().collect();
            prop_assert_eq!(count(&once).unwrap(), expect.len() as u64);
            prop_assert_eq!(left, expect);
            prop_assert!(void(&stored, &[first + all.len() as u64], &[]).is_err());
            // Brought back, they count again, in their places.
            prop_assert_eq!(decode(&void(&once, &[], &voided).unwrap()).unwrap(), all);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
