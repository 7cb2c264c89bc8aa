//! Reading what a meter needs out of an event's `data`: its filters, its value, its dimensions.
//!
//! Works on raw JSON text: the top level is looked up through a closure (the parser already split it
//! into properties), deeper path levels are read on demand.

use std::borrow::Cow;

use super::meter::{Aggregation, FilterOp, JsonPath, Meter};
use super::quantity::Quantity;
use crate::ingest::json::{self, clip, Kind};

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

/// `Ok(None)`: the meter's filters exclude the event. `Err`: the event matches but cannot be metered,
/// with a message that names the property and what to send.
pub fn extract<'a>(meter: &Meter, top: &impl Fn(&str) -> Option<&'a str>) -> Result<Option<Contribution<'a>>, String> {
    for (path, filter) in &meter.filters {
        let found = scalar(lookup(top, path), path, "filter")?;
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
        let raw = lookup(top, path).filter(|r| json::kind(r) != Kind::Null).ok_or_else(|| {
            format!(
                "data.{} is missing; meter '{}' ({:?}) needs it",
                path.0.join("."),
                meter.slug(),
                meter.aggregation()
            )
        })?;
        if meter.aggregation() == Aggregation::UniqueCount {
            unique = scalar(Some(raw), path, "unique value")?;
        } else {
            let text = match json::kind(raw) {
                Kind::Number => Cow::Borrowed(raw),
                Kind::String => json::string(raw).unwrap_or_default(),
                _ => {
                    return Err(format!(
                        "data.{} must be a number or a decimal string; got {}",
                        path.0.join("."),
                        clip(raw)
                    ))
                }
            };
            value = Quantity::parse(&text).map_err(|e| {
                format!(
                    "data.{} {} (got {}); meter '{}' needs an exact decimal",
                    path.0.join("."),
                    e.describe(),
                    clip(raw),
                    meter.slug()
                )
            })?;
        }
    }

    let mut dims = Vec::with_capacity(meter.dims.len());
    for (_, path) in &meter.dims {
        dims.push(scalar(lookup(top, path), path, "dimension")?);
    }
    Ok(Some(Contribution { value, unique, dims }))
}

/// `extract` for a retained event, whose `data` is raw JSON text (empty when it had none).
pub fn extract_retained<'a>(meter: &Meter, data: &'a str) -> Result<Option<Contribution<'a>>, String> {
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
fn scalar<'a>(raw: Option<&'a str>, path: &JsonPath, what: &str) -> Result<Option<Cow<'a, str>>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let text = match json::kind(raw) {
        Kind::Null => return Ok(None),
        Kind::String => json::string(raw).unwrap_or_default(),
        Kind::Number | Kind::Bool => Cow::Borrowed(raw),
        Kind::Object | Kind::Array => {
            return Err(format!(
                "data.{} is used as a {what} and must be a string, number or boolean; got {}",
                path.0.join("."),
                clip(raw)
            ))
        }
    };
    if text.len() > MAX_DIMENSION_BYTES {
        return Err(format!(
            "data.{} is {} bytes long; a {what} may have at most {MAX_DIMENSION_BYTES}",
            path.0.join("."),
            text.len()
        ));
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

    fn run<'a>(m: &Meter, data: &'a str) -> Result<Option<Contribution<'a>>, String> {
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
        for (data, needle) in [
            (r#"{}"#, "data.tokens is missing"),
            (r#"{"tokens":"ten"}"#, "is not a decimal number"),
            (r#"{"tokens":[1]}"#, "must be a number"),
            (r#"{"tokens":1e-12}"#, "more than 9 decimal places"),
        ] {
            let err = run(&m, data).unwrap_err();
            assert!(err.contains(needle), "{data}: {err}");
        }
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
