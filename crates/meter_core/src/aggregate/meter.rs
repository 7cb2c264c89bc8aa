//! Meter definitions: which events a meter counts, what it adds up, and along which dimensions.
//!
//! A meter is stored as JSON in the `meta` column family under a numeric id that is never reused, so the
//! aggregates of a deleted meter can never leak into a new meter that takes the same slug.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{bail, ensure};

/// How the events of one window, customer and dimension combination become one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Sum,
    Count,
    Min,
    Max,
    UniqueCount,
    Latest,
    Avg,
}

impl Aggregation {
    pub fn needs_value(self) -> bool {
        self != Aggregation::Count
    }
    /// Whether the value must be a number (`unique_count` also counts strings).
    pub fn numeric(self) -> bool {
        !matches!(self, Aggregation::Count | Aggregation::UniqueCount)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Eq,
    Ne,
    In,
    NotIn,
    Exists,
    NotExists,
}

/// A condition on a `data` property; an event counts for the meter only if every filter holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub property: String,
    pub op: FilterOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// What a user sends to create a meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSpec {
    pub slug: String,
    pub event_type: String,
    pub aggregation: Aggregation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_property: Option<String>,
    /// Dimension name -> JSON path into `data`.
    #[serde(default)]
    pub group_by: BTreeMap<String, String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Overrides of the engine's cardinality limits for this meter (`engine::cardinality`); absent: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<MeterLimits>,
}

/// Per-meter cardinality limits: what one minute of the meter may hold. A field left out takes the engine's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterLimits {
    /// Distinct dimension combinations of one customer in one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_combinations_per_minute: Option<u32>,
    /// Distinct customers in one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_customers_per_minute: Option<u32>,
}

/// The largest `max_combinations_per_minute` a meter may ask for: every combination of a customer-minute lives in one
/// `agg` value, which each flush and query of that minute reads whole.
pub const MAX_COMBINATIONS_LIMIT: u32 = 100_000;
/// The largest `max_customers_per_minute` a meter may ask for.
pub const MAX_CUSTOMERS_LIMIT: u32 = 10_000_000;

impl MeterLimits {
    /// Checks that each given limit lies in its allowed range; `field` prefixes the names in the message ("limits." for
    /// a meter's, "" for the engine's settings) and `code` is the error code.
    pub fn validate(&self, code: &'static str, field: &str) -> Result<()> {
        for (name, value, max) in [
            ("max_combinations_per_minute", self.max_combinations_per_minute, MAX_COMBINATIONS_LIMIT),
            ("max_customers_per_minute", self.max_customers_per_minute, MAX_CUSTOMERS_LIMIT),
        ] {
            if let Some(v) = value.filter(|v| !(1..=max).contains(v)) {
                return Err(Error::invalid(code, format!("{field}{name} must be between 1 and {max}; got {v}")));
            }
        }
        Ok(())
    }

    /// These limits, each absent one taken from `defaults`.
    pub fn or(self, defaults: MeterLimits) -> MeterLimits {
        MeterLimits {
            max_combinations_per_minute: self.max_combinations_per_minute.or(defaults.max_combinations_per_minute),
            max_customers_per_minute: self.max_customers_per_minute.or(defaults.max_customers_per_minute),
        }
    }
}

/// A meter as stored: the spec plus the identity the engine gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredMeter {
    pub id: u32,
    pub created_us: i64,
    #[serde(flatten)]
    pub spec: MeterSpec,
}

/// A `$.a.b` path, split into its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(pub Vec<String>);

impl JsonPath {
    pub fn parse(field: &str, text: &str) -> Result<JsonPath> {
        let Some(rest) = text.strip_prefix("$.") else {
            bail!(
                "invalid_meter",
                "{field} must be a JSON path such as \"$.tokens\" or \"$.usage.input\"; got \"{text}\""
            );
        };
        let keys: Vec<String> = rest.split('.').map(str::to_owned).collect();
        ensure!(
            keys.iter().all(|k| !k.is_empty()) && keys.len() <= 8,
            "invalid_meter",
            "{field} \"{text}\" has an empty key or more than 8 levels; write keys separated by single dots"
        );
        Ok(JsonPath(keys))
    }
}

/// A meter ready for the hot path: paths parsed, dimensions in a fixed (name) order.
#[derive(Debug, Clone)]
pub struct Meter {
    pub stored: StoredMeter,
    pub value: Option<JsonPath>,
    /// Sorted by name; this order is the order of dimension values in aggregate keys.
    pub dims: Vec<(String, JsonPath)>,
    pub filters: Vec<(JsonPath, Filter)>,
}

pub const MAX_DIMENSIONS: usize = 10;
/// Names a dimension may not take, because query results already use them as columns.
const RESERVED: [&str; 5] = ["subject", "window_start", "window_end", "value", "events"];

impl Meter {
    pub fn id(&self) -> u32 {
        self.stored.id
    }
    pub fn slug(&self) -> &str {
        &self.stored.spec.slug
    }
    pub fn aggregation(&self) -> Aggregation {
        self.stored.spec.aggregation
    }
    pub fn dim_index(&self, name: &str) -> Option<usize> {
        self.dims.iter().position(|(n, _)| n == name)
    }

    /// Validates a spec and compiles it; every message names the field and what to send instead.
    pub fn compile(stored: StoredMeter) -> Result<Meter> {
        let spec = &stored.spec;
        ensure!(
            valid_name(&spec.slug, 64),
            "invalid_meter",
            "slug must be 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter or digit; got \"{}\"",
            spec.slug
        );
        ensure!(
            !spec.event_type.is_empty() && spec.event_type.len() <= 255,
            "invalid_meter",
            "event_type must be 1-255 bytes (the CloudEvents \"type\" the meter counts)"
        );
        let value = match (&spec.value_property, spec.aggregation.needs_value()) {
            (Some(p), true) => Some(JsonPath::parse("value_property", p)?),
            (None, true) => {
                bail!("invalid_meter", "aggregation {:?} needs a value_property such as \"$.tokens\"", spec.aggregation)
            }
            (Some(_), false) => {
                bail!("invalid_meter", "aggregation \"count\" counts events and takes no value_property")
            }
            (None, false) => None,
        };
        ensure!(
            spec.group_by.len() <= MAX_DIMENSIONS,
            "invalid_meter",
            "group_by has {} dimensions; the limit is {MAX_DIMENSIONS}",
            spec.group_by.len()
        );
        let mut dims = Vec::with_capacity(spec.group_by.len());
        for (name, path) in &spec.group_by {
            ensure!(
                valid_name(name, 64) && !RESERVED.contains(&name.as_str()),
                "invalid_meter",
                "group_by dimension \"{name}\" must be 1-64 characters of a-z, 0-9, '_' or '-' and not one of {RESERVED:?}"
            );
            dims.push((name.clone(), JsonPath::parse(&format!("group_by.{name}"), path)?));
        }
        let mut filters = Vec::with_capacity(spec.filters.len());
        for (i, f) in spec.filters.iter().enumerate() {
            let path = JsonPath::parse(&format!("filters[{i}].property"), &f.property)?;
            let ok = match f.op {
                FilterOp::Eq | FilterOp::Ne => f.value.is_some() && f.values.is_empty(),
                FilterOp::In | FilterOp::NotIn => f.value.is_none() && !f.values.is_empty(),
                FilterOp::Exists | FilterOp::NotExists => f.value.is_none() && f.values.is_empty(),
            };
            ensure!(
                ok,
                "invalid_meter",
                "filters[{i}]: op {:?} takes {}",
                f.op,
                match f.op {
                    FilterOp::Eq | FilterOp::Ne => "one \"value\"",
                    FilterOp::In | FilterOp::NotIn => "a non-empty \"values\" list",
                    _ => "neither \"value\" nor \"values\"",
                }
            );
            filters.push((path, f.clone()));
        }
        if let Some(limits) = &spec.limits {
            limits.validate("invalid_meter", "limits.")?;
        }
        Ok(Meter { value, dims, filters, stored })
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Result<Meter> {
        let spec: MeterSpec = serde_json::from_str(json).unwrap();
        Meter::compile(StoredMeter { id: 1, created_us: 0, spec })
    }

    #[test]
    fn compiles_dimensions_in_name_order() {
        let m = spec(
            r#"{"slug":"tokens","event_type":"llm","aggregation":"sum","value_property":"$.usage.total",
                        "group_by":{"region":"$.region","model":"$.model"}}"#,
        )
        .unwrap();
        assert_eq!(m.dims.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["model", "region"]);
        assert_eq!(m.value, Some(JsonPath(vec!["usage".into(), "total".into()])));
    }

    #[test]
    fn explains_bad_specs() {
        let cases = [
            (r#"{"slug":"Bad Slug","event_type":"t","aggregation":"count"}"#, "slug must be"),
            (r#"{"slug":"s","event_type":"t","aggregation":"sum"}"#, "needs a value_property"),
            (
                r#"{"slug":"s","event_type":"t","aggregation":"count","value_property":"$.x"}"#,
                "takes no value_property",
            ),
            (r#"{"slug":"s","event_type":"t","aggregation":"max","value_property":"x"}"#, "must be a JSON path"),
            (r#"{"slug":"s","event_type":"t","aggregation":"count","group_by":{"subject":"$.s"}}"#, "not one of"),
            (
                r#"{"slug":"s","event_type":"t","aggregation":"count","filters":[{"property":"$.a","op":"in"}]}"#,
                "non-empty",
            ),
            (r#"{"slug":"s","event_type":"","aggregation":"count"}"#, "event_type must be"),
        ];
        for (json, needle) in cases {
            let err = spec(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<MeterSpec>(
            r#"{"slug":"s","event_type":"t","aggregation":"count","groupby":{}}"#
        )
        .is_err());
    }
}
