//! Usage results as one Arrow record batch: the form bulk data takes to Python, Parquet and pricing.
//!
//! Columns: `window_start`, `window_end` (timestamp µs, UTC), `subject` (when grouped by customer), one
//! UTF-8 column per grouped dimension, `value` (decimal128(38, 9): exact), `events` (uint64).

use std::sync::Arc;

use arrow_array::builder::{Decimal128Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};

use super::UsageResult;
use crate::aggregate::quantity::SCALE;

pub fn to_record_batch(result: &UsageResult) -> Result<RecordBatch, ArrowError> {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![Field::new("window_start", utc(), false), Field::new("window_end", utc(), false)];
    if result.by_subject {
        fields.push(Field::new("subject", DataType::Utf8, false));
    }
    for d in &result.dimensions {
        fields.push(Field::new(d, DataType::Utf8, true));
    }
    fields.push(Field::new("value", DataType::Decimal128(38, SCALE as i8), false));
    fields.push(Field::new("events", DataType::UInt64, false));

    let n = result.rows.len();
    let mut starts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut ends = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut subjects = StringBuilder::new();
    let mut dims: Vec<StringBuilder> = result.dimensions.iter().map(|_| StringBuilder::new()).collect();
    let mut values = Decimal128Builder::with_capacity(n).with_precision_and_scale(38, SCALE as i8)?;
    let mut events = UInt64Builder::with_capacity(n);
    for row in &result.rows {
        starts.append_value(row.window_start_us);
        ends.append_value(row.window_end_us);
        if result.by_subject {
            subjects.append_option(row.subject.as_deref());
        }
        for (builder, v) in dims.iter_mut().zip(&row.dims) {
            builder.append_option(v.as_deref());
        }
        values.append_value(row.value.0);
        events.append_value(row.events);
    }

    let mut columns: Vec<ArrayRef> = vec![Arc::new(starts.finish()), Arc::new(ends.finish())];
    if result.by_subject {
        columns.push(Arc::new(subjects.finish()));
    }
    for mut b in dims {
        columns.push(Arc::new(b.finish()));
    }
    columns.push(Arc::new(values.finish()));
    columns.push(Arc::new(events.finish()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}
