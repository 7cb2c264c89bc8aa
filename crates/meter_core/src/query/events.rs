//! The retained events of one tenant as Arrow, commit by commit, for the Parquet export.
//!
//! Columns: `seq` (uint64, the commit), `ordinal` (uint64), `source`, `id`, `type`, `subject` (utf8), `time`
//! (timestamp µs, UTC) and `data` (utf8, the event's raw JSON `data`, empty when it had none).

use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::engine::correct::{self, Current};
use crate::error::{Error, Result};
use crate::storage::codec::Reader;
use crate::storage::events::RetainedEvent;
use crate::storage::{events, keys, Cf, Store};

/// The events of the commits after `after_seq`, whole commits only, stopping once `max_events` is reached;
/// returns them and the last commit read (`after_seq` when there is none).
pub fn retained_after(
    store: &dyn Store,
    tenant: &str,
    after_seq: u64,
    max_events: usize,
) -> Result<(RecordBatch, u64)> {
    let prefix = keys::events_prefix(tenant);
    let mut cursor = store.cursor(Cf::Events);
    cursor.seek(&keys::events_key(tenant, after_seq + 1, 0));
    let mut rows = Rows::default();
    let mut last_seq = after_seq;
    while let Some((key, value)) = cursor.entry() {
        if !key.starts_with(&prefix) {
            break;
        }
        let seq = seq_of(key, prefix.len())?;
        if seq != last_seq && rows.count >= max_events {
            break;
        }
        for e in events::decode(value)? {
            rows.push(seq, &e);
        }
        last_seq = seq;
        cursor.next();
    }
    cursor.status()?;
    Ok((rows.finish()?, last_seq))
}

/// How many minutes after an event's receive minute the commit that accepted it may have been received: a group
/// commit takes the latest receive time of its requests, which staging delays by milliseconds to seconds.
pub(crate) const COMMIT_SLACK_MINUTES: i64 = 10;

/// The retained event of identity `(source, id)` that counts now (zero or one row, columns as
/// [`retained_after`]'s), and when it was received (an amended event: when it was amended). Found through its history
/// when it was corrected (`engine::correct`), else its dedup mark, else a scan of the tenant's retained events; nothing
/// for a cancelled event or one not retained (the caller then looks in the export).
pub fn find(store: &dyn Store, tenant: &str, source: &str, id: &str) -> Result<(RecordBatch, Option<i64>)> {
    let mut rows = Rows::default();
    let mut received = None;
    if let Current::Counted(found) = correct::current(store, tenant, source, id)? {
        rows.push(found.seq, &found.event);
        received = found.received_us;
    }
    Ok((rows.finish()?, received))
}

/// A retained event and where it is: its record's key, its commit, and when it was received if known.
pub(crate) struct Located {
    pub key: Vec<u8>,
    pub seq: u64,
    pub event: RetainedEvent<String>,
    pub received_us: Option<i64>,
}

/// The commits received from minute `from` (inclusive: the first commit of the first marked minute at or after it)
/// to minute `to` (exclusive: the first commit of the first marked minute at or after it; `None`: to the last).
pub(crate) fn commits_received(store: &dyn Store, from: i64, to: i64) -> Result<(u64, Option<u64>)> {
    let mut cursor = store.cursor(Cf::Meta);
    cursor.seek(&keys::received_minute(from));
    let mut first = None;
    while let Some((key, value)) = cursor.entry() {
        if !key.starts_with(keys::META_RECEIVED) {
            break;
        }
        let minute = Reader::new(&key[keys::META_RECEIVED.len()..]).i64_sortable()?;
        let seq = u64::from_be_bytes(value.try_into().map_err(|_| Error::Corrupt("commit number".into()))?);
        if minute >= to {
            return Ok((first.unwrap_or(seq), Some(seq)));
        }
        first.get_or_insert(seq);
        cursor.next();
    }
    cursor.status()?;
    Ok((first.unwrap_or(u64::MAX), None))
}

pub(crate) fn seq_of(key: &[u8], prefix: usize) -> Result<u64> {
    let bytes = key.get(prefix..prefix + 8).ok_or_else(|| Error::Corrupt("events key".into()))?;
    Ok(u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
}

/// Retained events as Arrow columns, one row per event.
#[derive(Default)]
struct Rows {
    seqs: UInt64Builder,
    ordinals: UInt64Builder,
    /// source, id, type, subject, data
    texts: [StringBuilder; 5],
    times: TimestampMicrosecondBuilder,
    count: usize,
}

impl Rows {
    fn push(&mut self, seq: u64, e: &RetainedEvent<String>) {
        self.seqs.append_value(seq);
        self.ordinals.append_value(e.ordinal);
        for (builder, text) in self.texts.iter_mut().zip([&e.source, &e.id, &e.event_type, &e.subject, &e.data]) {
            builder.append_value(text);
        }
        self.times.append_value(e.time_us);
        self.count += 1;
    }

    fn finish(self) -> Result<RecordBatch> {
        let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
        let schema = Schema::new(vec![
            Field::new("seq", DataType::UInt64, false),
            Field::new("ordinal", DataType::UInt64, false),
            utf8("source"),
            utf8("id"),
            utf8("type"),
            utf8("subject"),
            Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            utf8("data"),
        ]);
        let Rows { mut seqs, mut ordinals, texts, times, .. } = self;
        let [mut source, mut id, mut kind, mut subject, mut data] = texts;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(seqs.finish()),
            Arc::new(ordinals.finish()),
            Arc::new(source.finish()),
            Arc::new(id.finish()),
            Arc::new(kind.finish()),
            Arc::new(subject.finish()),
            Arc::new(times.with_timezone("UTC").finish()),
            Arc::new(data.finish()),
        ];
        RecordBatch::try_new(Arc::new(schema), columns)
            .map_err(|e| Error::Storage(format!("building the Arrow events: {e}")))
    }
}
