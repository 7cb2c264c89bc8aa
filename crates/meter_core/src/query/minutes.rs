//! A meter's stored minutes as Arrow, for the Parquet export: one row per customer, minute and dimension
//! combination, in key order (customer, then minute). Unlike a usage query nothing is grouped: each stored
//! state becomes a row as it is read, so rows stream out at the speed of RocksDB's iterator.
//!
//! Columns: `customer` (utf8), one utf8 column per dimension of the meter (null when absent), `window_start`,
//! `window_end` (timestamp µs, UTC; one minute, or the hour or UTC day of a bucket already rolled up, see
//! `aggregate::resolution`), `value` (decimal128(38, 9)) and `events` (uint64). The export writes a day's rows
//! while new events can still change it, long before its minutes are rolled up.
//!
//! Only RocksDB is read: the engine flushes the fold threads first (`Engine::minutes`). Which days have
//! usage comes from the `days` marks, which the folds write in the same batch as the minutes they count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;

use arrow_array::builder::{
    ArrayBuilder, Decimal128Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use crossbeam_channel::{bounded, Receiver};

use super::{plan, scan_keys, UsageQuery, View};
use crate::aggregate::meter::{Aggregation, Meter};
use crate::aggregate::quantity::{Quantity, SCALE};
use crate::aggregate::state::MinuteStates;
use crate::error::{Error, Result};
use crate::ingest::time::{MICROS_PER_MINUTE, MINUTES_PER_DAY};
use crate::storage::codec::Reader;
use crate::storage::keys::{self, BucketKey};
use crate::storage::{scan_prefix, Cf, Cursor, Store};
use std::sync::RwLock;

pub fn schema(meter: &Meter) -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![Field::new("customer", DataType::Utf8, false)];
    fields.extend(meter.dims.iter().map(|(name, _)| Field::new(name, DataType::Utf8, true)));
    fields.extend([
        Field::new("window_start", utc(), false),
        Field::new("window_end", utc(), false),
        Field::new("value", DataType::Decimal128(38, SCALE as i8), false),
        Field::new("events", DataType::UInt64, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Per UTC day (its start, µs) with usage: a count that grows whenever the day's usage changes, read from the meter's
/// day marks: the events folded into the day, plus those a correction folded again when it restated the day
/// (`engine::correct`). It never goes back, so an export that remembers it knows which days changed.
pub fn day_counts(store: &dyn Store, tenant: &str, meter: &Meter) -> Result<Vec<(i64, u64)>> {
    let mut prefix = Vec::new();
    keys::meter_prefix(&mut prefix, tenant, meter.id());
    let mut days = Vec::new();
    scan_prefix(store, Cf::Days, &prefix, |key, value| {
        let day = Reader::new(&key[prefix.len()..]).i64_sortable()?;
        let mut events = 0;
        MinuteStates::visit(value, |_, state| {
            if state.aggregation == Aggregation::Count {
                events += state.count;
            }
            Ok(())
        })?;
        days.push((day * MINUTES_PER_DAY * MICROS_PER_MINUTE, events));
        Ok(true)
    })?;
    Ok(days)
}

/// Streams the rows of the buckets that start in `[from_us, to_us)` to `emit`, `batch_rows` at a time; stops early
/// (with `Error::Closed`) when `emit` returns `false`.
pub fn scan(
    view: View,
    tenant: &str,
    meter: &Meter,
    from_us: i64,
    to_us: i64,
    batch_rows: usize,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> Result<()> {
    let q = UsageQuery { meter: meter.slug().to_owned(), from_us, to_us, ..UsageQuery::default() };
    let plan = plan(meter, &q)?;
    let mut rows = Rows::new(meter, batch_rows);
    let View { mut agg, uniq: mut uniques, resolution } = view;
    scan_keys(agg.as_mut(), tenant, &plan, &[], 0, |bucket, value| {
        let distinct = match uniques.as_mut() {
            Some(cursor) => distinct_values(cursor.as_mut(), tenant, meter, &bucket)?,
            None => BTreeMap::new(),
        };
        let span = resolution.span(bucket.subject, bucket.minute);
        MinuteStates::visit(value, |dims, state| {
            let value = match &uniques {
                Some(_) => Quantity::from_int(distinct.get(dims).copied().unwrap_or(0)),
                None => state.result()?,
            };
            rows.push(bucket.subject, bucket.minute, span, dims, value, state.count)
        })?;
        if rows.len() >= batch_rows && !emit(rows.finish()?) {
            return Err(Error::Closed);
        }
        Ok(())
    })?;
    if rows.len() > 0 {
        emit(rows.finish()?);
    }
    Ok(())
}

/// The rows of `scan` as an Arrow stream, produced on a thread of their own: the consumer (writing
/// Parquet) and the scan then run on two cores at once.
pub struct MinuteStream {
    schema: SchemaRef,
    batches: Receiver<Result<RecordBatch>>,
}

impl MinuteStream {
    /// `rollup` is the engine's roll-up lock (`Shared::rollup`), held while the stream opens its cursors.
    pub fn spawn(
        store: Arc<dyn Store>,
        rollup: Arc<RwLock<()>>,
        tenant: String,
        meter: Arc<Meter>,
        from_us: i64,
        to_us: i64,
        batch_rows: usize,
    ) -> Result<MinuteStream> {
        // Two batches in flight: enough to overlap, little enough to bound memory.
        let (tx, batches) = bounded(2);
        let schema = schema(&meter);
        thread::Builder::new()
            .name("meter-export".into())
            .spawn(move || {
                let view = {
                    let _no_rollup = rollup.read().unwrap();
                    View::open(&*store, &tenant, &meter)
                };
                let result = view.and_then(|view| {
                    scan(view, &tenant, &meter, from_us, to_us, batch_rows, |b| tx.send(Ok(b)).is_ok())
                });
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Storage(format!("starting the export thread: {e}")))?;
        Ok(MinuteStream { schema, batches })
    }
}

impl Iterator for MinuteStream {
    type Item = std::result::Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.batches.recv().ok()?;
        Some(batch.map_err(|e| ArrowError::ExternalError(Box::new(e))))
    }
}

impl RecordBatchReader for MinuteStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// Per dimension combination (`put_dims` bytes): the distinct values of one customer-minute of a
/// `unique_count` meter, counted from its `uniq` keys (which sort right after the minute's key).
fn distinct_values(
    cursor: &mut dyn Cursor,
    tenant: &str,
    meter: &Meter,
    at: &BucketKey,
) -> Result<BTreeMap<Vec<u8>, i64>> {
    let mut minute_key = Vec::new();
    keys::minute_key(&mut minute_key, tenant, meter.id(), at.subject, at.minute);
    let mut counts: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    cursor.seek(&minute_key);
    while let Some((key, _)) = cursor.entry() {
        let Some(rest) = key.strip_prefix(minute_key.as_slice()) else { break };
        let mut r = Reader::new(rest);
        keys::decode_dims(&mut r, meter.dims.len())?;
        *counts.entry(rest[..rest.len() - r.bytes.len()].to_vec()).or_default() += 1;
        cursor.next();
    }
    cursor.status()?;
    Ok(counts)
}

/// The Arrow builders of one batch.
struct Rows {
    schema: SchemaRef,
    customers: StringBuilder,
    dims: Vec<StringBuilder>,
    starts: TimestampMicrosecondBuilder,
    ends: TimestampMicrosecondBuilder,
    values: Decimal128Builder,
    events: UInt64Builder,
}

impl Rows {
    fn new(meter: &Meter, capacity: usize) -> Rows {
        let timestamps = || TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC");
        Rows {
            schema: schema(meter),
            customers: StringBuilder::with_capacity(capacity, capacity * 16),
            dims: meter.dims.iter().map(|_| StringBuilder::with_capacity(capacity, capacity * 16)).collect(),
            starts: timestamps(),
            ends: timestamps(),
            values: Decimal128Builder::with_capacity(capacity).with_data_type(DataType::Decimal128(38, SCALE as i8)),
            events: UInt64Builder::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    /// One row of the bucket of `span` minutes that starts at `minute`.
    #[allow(clippy::too_many_arguments)] // one row's columns
    fn push(
        &mut self,
        customer: &str,
        minute: i64,
        span: i64,
        dims: &[u8],
        value: Quantity,
        events: u64,
    ) -> Result<()> {
        self.customers.append_value(customer);
        let mut r = Reader::new(dims);
        for builder in &mut self.dims {
            match r.u8()? {
                0 => builder.append_null(),
                _ => builder.append_value(r.str()?),
            }
        }
        self.starts.append_value(minute * MICROS_PER_MINUTE);
        self.ends.append_value((minute + span) * MICROS_PER_MINUTE);
        self.values.append_value(value.0);
        self.events.append_value(events);
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.customers.finish())];
        columns.extend(self.dims.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(self.starts.finish()));
        columns.push(Arc::new(self.ends.finish()));
        columns.push(Arc::new(self.values.finish()));
        columns.push(Arc::new(self.events.finish()));
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::Storage(format!("building the export's Arrow batch: {e}")))
    }
}
