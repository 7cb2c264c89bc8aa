//! Reading what a meter needs out of an event's `data`: its filters, its value, its dimensions.
//!
//! Works on raw JSON text: the top level is looked up through a closure (the parser already split it
//! into properties), deeper path levels are read on demand.
//!
//! [`extract`] is the one decision of what an event means to a meter: counted (with what), excluded by the
//! meter's filters, or skipped because the meter cannot read it (a [`Skip`] with its code). Ingest, replay after a
//! crash, the backfill of a new meter, the skipped-events query and per-event pricing all call it, so they can never
//! disagree about an event. A skip concerns that one meter only: the event is still accepted and counted by the
//! other meters of its type, and the skipping meter counts none of it (never half).
//!
//! Ingest extracts each event once: `engine::prepare` keeps what the event contributes ([`Contributions`]) and the
//! fold threads fold that, rather than reading the event's JSON a second time.

use std::borrow::Cow;
use std::ops::Range;

use super::meter::{Aggregation, FilterOp, JsonPath, Meter};
use super::quantity::Quantity;
use crate::error::SkipCode;
use crate::ingest::json::{self, clip, Kind};
use crate::storage::keys::put_dims;

/// Longest dimension or unique value kept; longer ones are refused rather than cut.
pub const MAX_DIMENSION_BYTES: usize = 255;

/// What one event contributes to one meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution<'a> {
    pub value: Quantity,
    /// The value counted by `unique_count`.
    pub unique: Option<Cow<'a, str>>,
    pub dims: Vec<Option<Cow<'a, str>>>,
}

/// Contributions kept once extracted, in the order kept: what `engine::prepare` hands the fold threads, so that no
/// event is extracted twice. Flat, so that a batch costs a few allocations rather than some per event: dimensions as
/// `keys::put_dims` bytes and unique values are kept back to back in two buffers.
#[derive(Debug, Default)]
pub struct Contributions {
    kept: Vec<Kept>,
    dims: Vec<u8>,
    uniques: String,
}

#[derive(Debug, Clone)]
struct Kept {
    meter_id: u32,
    aggregation: Aggregation,
    value: Quantity,
    dims: Range<usize>,
    unique: Option<Range<usize>>,
}

/// One kept contribution: all a fold needs of it (`Fold::add_counted`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted<'a> {
    pub meter_id: u32,
    pub aggregation: Aggregation,
    pub value: Quantity,
    /// The dimension values as `keys::put_dims` bytes.
    pub dims: &'a [u8],
    /// The value counted by `unique_count`.
    pub unique: Option<&'a str>,
}

impl Contributions {
    /// Keeps what an event contributes to `meter`; returns its dimensions as `keys::put_dims` bytes.
    pub fn push(&mut self, meter: &Meter, c: &Contribution) -> &[u8] {
        let start = self.dims.len();
        put_dims(&mut self.dims, c.dims.iter().map(|d| d.as_deref()));
        let unique = c.unique.as_deref().map(|u| {
            let start = self.uniques.len();
            self.uniques.push_str(u);
            start..self.uniques.len()
        });
        let dims = start..self.dims.len();
        self.kept.push(Kept {
            meter_id: meter.id(),
            aggregation: meter.aggregation(),
            value: c.value,
            dims: dims.clone(),
            unique,
        });
        &self.dims[dims]
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// The contributions kept at positions `range`.
    pub fn get(&self, range: Range<usize>) -> impl Iterator<Item = Counted<'_>> + '_ {
        self.kept[range].iter().map(move |k| Counted {
            meter_id: k.meter_id,
            aggregation: k.aggregation,
            value: k.value,
            dims: &self.dims[k.dims.clone()],
            unique: k.unique.clone().map(|u| &self.uniques[u]),
        })
    }
}

/// Why a meter cannot read an event, with a message that names the property and what to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub code: SkipCode,
    pub message: String,
}

/// `Ok(None)`: the meter's filters exclude the event. `Err`: the event matches but this meter cannot read it.
///
/// What each aggregation does with the value: `count` reads none. The others need the value property: absent or
/// null is `value_missing`; for `sum`, `min`, `max`, `avg` and `latest` it must be a JSON number or a decimal string
/// with at most 9 decimal places and a magnitude of at most 10^18 (else `value_invalid`), never taken as zero; for
/// `unique_count` a string, number or boolean, kept as text of at most 255 bytes (else `value_invalid`). A
/// dimension (`group_by`) or a filtered property that is an object or an array, or longer than 255 bytes, is
/// `dimension_invalid` or `filter_invalid`; absent or null is "no value", which every meter can read.
pub fn extract<'a>(meter: &Meter, top: &impl Fn(&str) -> Option<&'a str>) -> Result<Option<Contribution<'a>>, Skip> {
    for (path, filter) in &meter.filters {
        let found = scalar(lookup(top, path), path, "filter", SkipCode::FilterInvalid)?;
        let holds = match filter.op {
            FilterOp::Eq => found.as_deref() == filter.value.as_deref(),
            FilterOp::Ne => found.as_deref() != filter.value.as_deref(),
            FilterOp::In => found.as_ref().is_some_and(|v| filter.values.iter().any(|x| x == v)),
            FilterOp::NotIn => !found.as_ref().is_some_and(|v| filter.values.iter().any(|x| x == v)),
            FilterOp::Exists => found.is_some(),
            FilterOp::NotExists => found.is_none(),
        };
        if !holds {
            return Ok(None);
        }
    }

    let mut value = Quantity::from_int(1);
    let mut unique = None;
    if let Some(path) = &meter.value {
        let raw = lookup(top, path).filter(|r| json::kind(r) != Kind::Null).ok_or_else(|| Skip {
            code: SkipCode::ValueMissing,
            message: format!(
                "data.{} is missing or null, so meter '{}' did not count this event (the other meters did); if such \
                 events are expected, give the meter the filter {{\"property\": \"$.{}\", \"op\": \"exists\"}}",
                path.0.join("."),
                meter.slug(),
                path.0.join("."),
            ),
        })?;
        if meter.aggregation() == Aggregation::UniqueCount {
            unique = scalar(Some(raw), path, "unique value", SkipCode::ValueInvalid)?;
        } else {
            let invalid = |what: &str| Skip {
                code: SkipCode::ValueInvalid,
                message: format!(
                    "data.{} {what} (got {}), so meter '{}' did not count this event (the other meters did); send \
                     an exact decimal as a JSON number or a string such as \"12.5\"",
                    path.0.join("."),
                    clip(raw),
                    meter.slug()
                ),
            };
            let text = match json::kind(raw) {
                Kind::Number => Cow::Borrowed(raw),
                Kind::String => json::string(raw).unwrap_or_default(),
                _ => return Err(invalid("must be a number or a decimal string")),
            };
            value = Quantity::parse(&text).map_err(|e| invalid(e.describe()))?;
        }
    }

    let mut dims = Vec::with_capacity(meter.dims.len());
    for (_, path) in &meter.dims {
        dims.push(scalar(lookup(top, path), path, "dimension", SkipCode::DimensionInvalid)?);
    }
    Ok(Some(Contribution { value, unique, dims }))
}

/// `extract` for a retained event, whose `data` is raw JSON text (empty when it had none): the same top-level
/// properties the parser gave ingest (it refused `data` that is not an object or repeats a key).
pub fn extract_retained<'a>(meter: &Meter, data: &'a str) -> Result<Option<Contribution<'a>>, Skip> {
    let pairs = if data.is_empty() { Vec::new() } else { json::object(data).unwrap_or_default() };
    let top = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.get());
    extract(meter, &top)
}

/// The raw JSON at `path`, if every level exists.
pub fn lookup<'a>(top: &impl Fn(&str) -> Option<&'a str>, path: &JsonPath) -> Option<&'a str> {
    let mut raw = top(&path.0[0])?;
    for key in &path.0[1..] {
        raw = json::object(raw)?.into_iter().find(|(k, _)| k == key)?.1.get();
    }
    Some(raw)
}

/// A scalar as text (strings decoded, numbers and booleans as written); `None` when missing or null.
fn scalar<'a>(raw: Option<&'a str>, path: &JsonPath, what: &str, code: SkipCode) -> Result<Option<Cow<'a, str>>, Skip> {
    let Some(raw) = raw else { return Ok(None) };
    let text = match json::kind(raw) {
        Kind::Null => return Ok(None),
        Kind::String => json::string(raw).unwrap_or_default(),
        Kind::Number | Kind::Bool => Cow::Borrowed(raw),
        Kind::Object | Kind::Array => {
            let message = format!(
                "data.{} is used as a {what} and must be a string, number or boolean; got {}",
                path.0.join("."),
                clip(raw)
            );
            return Err(Skip { code, message });
        }
    };
    if text.len() > MAX_DIMENSION_BYTES {
        let message = format!(
            "data.{} is {} bytes long; a {what} may have at most {MAX_DIMENSION_BYTES}",
            path.0.join("."),
            text.len()
        );
        return Err(Skip { code, message });
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::meter::{MeterSpec, StoredMeter};

    fn meter(json: &str) -> Meter {
        let spec: MeterSpec = serde_json::from_str(json).unwrap();
        Meter::compile(StoredMeter { id: 1, created_us: 0, spec }).unwrap()
    }

    fn run<'a>(m: &Meter, data: &'a str) -> Result<Option<Contribution<'a>>, Skip> {
        let pairs = json::object(data).unwrap();
        let top = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.get());
        extract(m, &top)
    }

    #[test]
    fn reads_values_dimensions_and_nested_paths() {
        let m = meter(
            r#"{"slug":"t","event_type":"x","aggregation":"sum","value_property":"$.usage.in",
                         "group_by":{"model":"$.model","tier":"$.tier"}}"#,
        );
        let c = run(&m, r#"{"usage":{"in":"12.5"},"model":"gpt","tier":3}"#).unwrap().unwrap();
        assert_eq!(c.value, Quantity(12_500_000_000));
        assert_eq!(c.dims, vec![Some("gpt".into()), Some("3".into())]);
        let c = run(&m, r#"{"usage":{"in":2},"model":null}"#).unwrap().unwrap();
        assert_eq!(c.dims, vec![None, None]);
    }

    #[test]
    fn explains_values_it_cannot_meter() {
        let m = meter(r#"{"slug":"t","event_type":"x","aggregation":"sum","value_property":"$.tokens"}"#);
        for (data, code, needle) in [
            (r#"{}"#, SkipCode::ValueMissing, "data.tokens is missing"),
            (r#"{"tokens":null}"#, SkipCode::ValueMissing, "data.tokens is missing or null"),
            (r#"{"tokens":"ten"}"#, SkipCode::ValueInvalid, "is not a decimal number"),
            (r#"{"tokens":[1]}"#, SkipCode::ValueInvalid, "must be a number"),
            (r#"{"tokens":1e-12}"#, SkipCode::ValueInvalid, "more than 9 decimal places"),
        ] {
            let skip = run(&m, data).unwrap_err();
            assert_eq!(skip.code, code, "{data}");
            assert!(skip.message.contains(needle) && skip.message.contains("meter 't'"), "{data}: {skip:?}");
        }
        let dims = meter(r#"{"slug":"d","event_type":"x","aggregation":"count","group_by":{"m":"$.m"}}"#);
        for data in [r#"{"m":{"a":1}}"#, r#"{"m":[1]}"#] {
            assert_eq!(run(&dims, data).unwrap_err().code, SkipCode::DimensionInvalid, "{data}");
        }
        let long = format!(r#"{{"m":"{}"}}"#, "x".repeat(MAX_DIMENSION_BYTES + 1));
        assert_eq!(run(&dims, &long).unwrap_err().code, SkipCode::DimensionInvalid);
        let filtered = meter(
            r#"{"slug":"f","event_type":"x","aggregation":"count","filters":[{"property":"$.r","op":"eq","value":"eu"}]}"#,
        );
        assert_eq!(run(&filtered, r#"{"r":{"x":1}}"#).unwrap_err().code, SkipCode::FilterInvalid);
    }

    #[test]
    fn filters_select_events() {
        let m = meter(
            r#"{"slug":"t","event_type":"x","aggregation":"count",
                         "filters":[{"property":"$.region","op":"in","values":["eu","us"]},{"property":"$.test","op":"not_exists"}]}"#,
        );
        assert!(run(&m, r#"{"region":"eu"}"#).unwrap().is_some());
        assert!(run(&m, r#"{"region":"ap"}"#).unwrap().is_none());
        assert!(run(&m, r#"{"region":"eu","test":true}"#).unwrap().is_none());
        assert!(run(&m, r#"{}"#).unwrap().is_none());
    }

    #[test]
    fn unique_count_reads_strings_and_numbers() {
        let m = meter(r#"{"slug":"t","event_type":"x","aggregation":"unique_count","value_property":"$.user"}"#);
        assert_eq!(run(&m, r#"{"user":"u1"}"#).unwrap().unwrap().unique, Some("u1".into()));
        assert_eq!(run(&m, r#"{"user":42}"#).unwrap().unwrap().unique, Some("42".into()));
    }
}
