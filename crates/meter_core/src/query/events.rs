//! The retained events of one tenant as Arrow, commit by commit, for the Parquet export.
//!
//! Columns: `seq` (uint64, the commit), `ordinal` (uint64), `source`, `id`, `type`, `subject` (utf8), `time`
//! (timestamp µs, UTC) and `data` (utf8, the event's raw JSON `data`, empty when it had none).

use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::error::{Error, Result};
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
    let (mut seqs, mut ordinals) = (UInt64Builder::new(), UInt64Builder::new());
    let mut texts: [StringBuilder; 5] = std::array::from_fn(|_| StringBuilder::new());
    let mut times = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut last_seq, mut rows) = (after_seq, 0);
    while let Some((key, value)) = cursor.entry() {
        if !key.starts_with(&prefix) {
            break;
        }
        let seq_bytes = key.get(prefix.len()..prefix.len() + 8).ok_or_else(|| Error::Corrupt("events key".into()))?;
        let seq = u64::from_be_bytes(seq_bytes.try_into().expect("8 bytes"));
        if seq != last_seq && rows >= max_events {
            break;
        }
        for e in events::decode(value)? {
            seqs.append_value(seq);
            ordinals.append_value(e.ordinal);
            for (builder, text) in texts.iter_mut().zip([&e.source, &e.id, &e.event_type, &e.subject, &e.data]) {
                builder.append_value(text);
            }
            times.append_value(e.time_us);
            rows += 1;
        }
        last_seq = seq;
        cursor.next();
    }
    cursor.status()?;

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
    let [mut source, mut id, mut kind, mut subject, mut data] = texts;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(seqs.finish()),
        Arc::new(ordinals.finish()),
        Arc::new(source.finish()),
        Arc::new(id.finish()),
        Arc::new(kind.finish()),
        Arc::new(subject.finish()),
        Arc::new(times.finish()),
        Arc::new(data.finish()),
    ];
    let batch = RecordBatch::try_new(Arc::new(schema), columns)
        .map_err(|e| Error::Storage(format!("building the Arrow events: {e}")))?;
    Ok((batch, last_seq))
}
