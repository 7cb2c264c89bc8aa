//! The retained-events record: every event a commit accepted for one tenant, as one zstd-compressed
//! value, so that keeping raw events costs one RocksDB key per request rather than one per event.
//!
//! Format: `version u8 = 1`, then a zstd frame of: `count varint`, and per event: `source`, `id`,
//! `type`, `subject` (length-prefixed), `time_us` (zigzag varint), `ordinal` (varint), `data` (varint
//! length + raw JSON, empty when the event had none).

use super::codec::{put_str, put_varint, put_zigzag, Reader};
use crate::error::{Error, Result};

const VERSION: u8 = 1;
/// Fast levels keep compression off the critical path; retained events are written far more than read.
const ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedEvent<S> {
    pub source: S,
    pub id: S,
    pub event_type: S,
    pub subject: S,
    pub time_us: i64,
    pub ordinal: u64,
    pub data: S,
}

#[derive(Default)]
pub struct RecordBuilder {
    raw: Vec<u8>,
    count: u64,
}

impl RecordBuilder {
    pub fn push(&mut self, e: RetainedEvent<&str>) {
        for s in [e.source, e.id, e.event_type, e.subject] {
            put_str(&mut self.raw, s.as_bytes());
        }
        put_zigzag(&mut self.raw, e.time_us as i128);
        put_varint(&mut self.raw, e.ordinal as u128);
        put_varint(&mut self.raw, e.data.len() as u128);
        self.raw.extend_from_slice(e.data.as_bytes());
        self.count += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(self) -> Result<Vec<u8>> {
        let mut plain = Vec::with_capacity(self.raw.len() + 10);
        put_varint(&mut plain, self.count as u128);
        plain.extend_from_slice(&self.raw);
        let mut out = vec![VERSION];
        out.extend(zstd::bulk::compress(&plain, ZSTD_LEVEL).map_err(|e| Error::Storage(e.to_string()))?);
        Ok(out)
    }
}

pub fn decode(value: &[u8]) -> Result<Vec<RetainedEvent<String>>> {
    match value.first() {
        Some(&VERSION) => {}
        other => return Err(Error::Corrupt(format!("events record version {other:?}"))),
    }
    let plain = zstd::stream::decode_all(&value[1..]).map_err(|e| Error::Corrupt(format!("events record: {e}")))?;
    let mut r = Reader::new(&plain);
    let count = r.varint()? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let mut text = || r.str().map(str::to_owned);
        let (source, id, event_type, subject) = (text()?, text()?, text()?, text()?);
        let time_us = r.zigzag()? as i64;
        let ordinal = r.varint()? as u64;
        let len = r.varint()? as usize;
        let data = std::str::from_utf8(r.take(len)?).map_err(|e| Error::Corrupt(e.to_string()))?.to_owned();
        out.push(RetainedEvent { source, id, event_type, subject, time_us, ordinal, data });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn records_round_trip(events in proptest::collection::vec(
            (".{1,10}", ".{1,10}", ".{1,10}", ".{1,10}", any::<i64>(), any::<u64>(), ".{0,40}"), 0..20)) {
            let mut b = RecordBuilder::default();
            for e in &events {
                b.push(RetainedEvent { source: &e.0, id: &e.1, event_type: &e.2, subject: &e.3, time_us: e.4, ordinal: e.5, data: &e.6 });
            }
            let decoded = decode(&b.finish().unwrap()).unwrap();
            let expect: Vec<_> = events.into_iter().map(|e| RetainedEvent {
                source: e.0, id: e.1, event_type: e.2, subject: e.3, time_us: e.4, ordinal: e.5, data: e.6 }).collect();
            prop_assert_eq!(decoded, expect);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
