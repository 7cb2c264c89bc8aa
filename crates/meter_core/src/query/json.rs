//! Usage results as JSON rows, encoded column by column from Arrow: the HTTP API's JSON answer without a Python
//! object per row (88k rows went from 3.4 s to a few milliseconds).
//!
//! The format is the one the API always had: one object per row, keys in column order; timestamps as ISO 8601 with
//! `+00:00` (Python's `datetime.isoformat`: microseconds only when there are some); decimals as plain decimal strings
//! without exponent or trailing zeros (`"1200"`, `"2.5"`, `"0"`: Python's `format(d.normalize(), "f")`, but exact
//! at any magnitude where `normalize` rounds to 28 digits); text as JSON strings or `null`; counts as numbers.

use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int64Type, TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use chrono::DateTime;

use crate::error::{Error, Result};

/// The rows of `batches` (one schema) as a JSON array of objects.
pub fn rows_json(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut out = Vec::with_capacity(rows * 160 + 2);
    out.push(b'[');
    let mut first = true;
    for batch in batches {
        let schema = batch.schema();
        // Each column's `"name":` once, with the comma that precedes it after the first.
        let keys: Vec<Vec<u8>> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut k = if i == 0 { b"{".to_vec() } else { b",".to_vec() };
                serde_json::to_writer(&mut k, f.name()).expect("strings encode");
                k.push(b':');
                k
            })
            .collect();
        for field in schema.fields() {
            match field.data_type() {
                DataType::Timestamp(TimeUnit::Microsecond, _)
                | DataType::Utf8
                | DataType::Decimal128(_, _)
                | DataType::UInt64
                | DataType::Int64 => {}
                other => {
                    return Err(Error::Storage(format!("column {} of type {other} has no JSON form", field.name())))
                }
            }
        }
        let mut text = String::new();
        for row in 0..batch.num_rows() {
            if !first {
                out.push(b',');
            }
            first = false;
            for (column, key) in batch.columns().iter().zip(&keys) {
                out.extend_from_slice(key);
                if column.is_null(row) {
                    out.extend_from_slice(b"null");
                    continue;
                }
                text.clear();
                match column.data_type() {
                    DataType::Utf8 => {
                        serde_json::to_writer(&mut out, column.as_string::<i32>().value(row)).expect("strings encode")
                    }
                    DataType::UInt64 => {
                        let _ = write!(text, "{}", column.as_primitive::<UInt64Type>().value(row));
                        out.extend_from_slice(text.as_bytes());
                    }
                    DataType::Int64 => {
                        let _ = write!(text, "{}", column.as_primitive::<Int64Type>().value(row));
                        out.extend_from_slice(text.as_bytes());
                    }
                    DataType::Decimal128(_, scale) => {
                        plain_decimal(&mut text, column.as_primitive::<Decimal128Type>().value(row), *scale);
                        quoted(&mut out, &text);
                    }
                    _ => {
                        iso_utc(&mut text, column.as_primitive::<TimestampMicrosecondType>().value(row))?;
                        quoted(&mut out, &text);
                    }
                }
            }
            out.push(b'}');
        }
    }
    out.push(b']');
    Ok(out)
}

/// Text that needs no JSON escaping (digits, signs, separators).
fn quoted(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// `value / 10^scale` as a plain decimal: no exponent, no trailing zeros, no fraction when it is whole.
pub fn plain_decimal(out: &mut String, value: i128, scale: i8) {
    if value < 0 {
        out.push('-');
    }
    let magnitude = value.unsigned_abs();
    if scale <= 0 {
        let _ = write!(out, "{magnitude}");
        out.extend(std::iter::repeat_n('0', if magnitude == 0 { 0 } else { scale.unsigned_abs() as usize }));
        return;
    }
    let unit = 10u128.pow(scale as u32);
    let _ = write!(out, "{}", magnitude / unit);
    let fraction = magnitude % unit;
    if fraction != 0 {
        let mut digits = format!("{fraction:0width$}", width = scale as usize);
        while digits.ends_with('0') {
            digits.pop();
        }
        out.push('.');
        out.push_str(&digits);
    }
}

/// An instant as Python's `datetime.isoformat()` writes a UTC datetime: `2026-11-23T10:00:00+00:00`, with
/// `.ffffff` only when the microseconds are not zero.
fn iso_utc(out: &mut String, micros: i64) -> Result<()> {
    let t = DateTime::from_timestamp_micros(micros).ok_or_else(|| Error::Corrupt(format!("timestamp {micros}")))?;
    let format =
        if micros.rem_euclid(1_000_000) == 0 { "%Y-%m-%dT%H:%M:%S+00:00" } else { "%Y-%m-%dT%H:%M:%S%.6f+00:00" };
    let _ = write!(out, "{}", t.format(format));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Decimal128Builder, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
    use arrow_array::ArrayRef;
    use arrow_schema::{Field, Schema};

    use super::*;

    #[test]
    fn decimals_are_plain_and_exact() {
        for (value, scale, expect) in [
            (0i128, 9i8, "0"),
            (1_200_000_000_000, 9, "1200"),
            (2_500_000_000, 9, "2.5"),
            (1, 9, "0.000000001"),
            (-1_500_000_000, 9, "-1.5"),
            (i128::MAX, 9, "170141183460469231731687303715.884105727"),
            (i128::MIN, 9, "-170141183460469231731687303715.884105728"),
            (12, 0, "12"),
            (12, -2, "1200"),
        ] {
            let mut s = String::new();
            plain_decimal(&mut s, value, scale);
            assert_eq!(s, expect);
        }
    }

    #[test]
    fn rows_keep_column_order_nulls_and_escapes() {
        let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Schema::new(vec![
            Field::new("window_start", utc(), false),
            Field::new("model", DataType::Utf8, true),
            Field::new("value", DataType::Decimal128(38, 9), false),
            Field::new("events", DataType::UInt64, false),
        ]);
        let mut t = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        t.append_value(1_795_428_000_000_000);
        t.append_value(1_795_428_000_000_001);
        let mut m = StringBuilder::new();
        m.append_value("a\"b\\\n\u{1}é");
        m.append_null();
        let mut v = Decimal128Builder::new().with_precision_and_scale(38, 9).unwrap();
        v.append_value(10_000_000_000);
        v.append_value(-1);
        let mut e = UInt64Builder::new();
        e.append_value(3);
        e.append_value(0);
        let columns: Vec<ArrayRef> =
            vec![Arc::new(t.finish()), Arc::new(m.finish()), Arc::new(v.finish()), Arc::new(e.finish())];
        let batch = RecordBatch::try_new(Arc::new(schema), columns).unwrap();
        let json = String::from_utf8(rows_json(&[batch]).unwrap()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"[{"window_start":"2026-11-23T10:00:00+00:00","model":"a\"b\\\n\u0001é","value":"10","events":3},"#,
                r#"{"window_start":"2026-11-23T10:00:00.000001+00:00","model":null,"value":"-0.000000001","events":0}]"#
            )
        );
        assert_eq!(rows_json(&[]).unwrap(), b"[]");
    }
}
