//! What a meter reads from each event, for pricing that charges every event on its own (a percentage with a fee
//! floor per event): the same extraction ingest applies, so pricing and the aggregates never disagree on which
//! events count or on their values.

use arrow_array::builder::Decimal128Builder;
use arrow_array::{Array, Decimal128Array, StringArray};
use arrow_schema::DataType;

use crate::aggregate::extract::extract_retained;
use crate::aggregate::meter::{Meter, MeterSpec, StoredMeter};
use crate::aggregate::quantity::SCALE;
use crate::error::Result;

/// Per event `data` (the raw JSON of the events export): the meter's value, or null when the meter does not count
/// the event (its filters exclude it, or it cannot be metered, as ingest and backfill would skip it).
pub fn event_values(spec: MeterSpec, data: &StringArray) -> Result<Decimal128Array> {
    let meter = Meter::compile(StoredMeter { id: 0, created_us: 0, spec })?;
    let mut values = Decimal128Builder::with_capacity(data.len()).with_data_type(DataType::Decimal128(38, SCALE as i8));
    for i in 0..data.len() {
        let counted = if data.is_null(i) { None } else { extract_retained(&meter, data.value(i)).ok().flatten() };
        values.append_option(counted.map(|c| c.value.0));
    }
    Ok(values.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_meters_filters_and_path() {
        let spec: MeterSpec = serde_json::from_str(
            r#"{"slug":"fees","event_type":"payment","aggregation":"sum","value_property":"$.amount.total",
                "filters":[{"property":"$.status","op":"eq","value":"ok"}]}"#,
        )
        .unwrap();
        let data = StringArray::from(vec![
            Some(r#"{"status":"ok","amount":{"total":"12.5"}}"#),
            Some(r#"{"status":"failed","amount":{"total":3}}"#),
            Some(r#"{"status":"ok","amount":{"total":"not a number"}}"#),
            None,
            Some(r#"{"status":"ok","amount":{"total":7}}"#),
        ]);
        let values = event_values(spec, &data).unwrap();
        let got: Vec<Option<i128>> = (0..values.len()).map(|i| values.is_valid(i).then(|| values.value(i))).collect();
        assert_eq!(got, vec![Some(12_500_000_000), None, None, None, Some(7_000_000_000)]);
    }
}
