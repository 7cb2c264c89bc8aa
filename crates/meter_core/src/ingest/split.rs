//! The cluster edge's half of an ingest (`meter serve --cluster`): a batch parsed and validated as the engine parses
//! it, then split by partition. A part is the events' own JSON text, unchanged, so that the worker applying it
//! decides exactly what one engine would have.
//!
//! Events are partitioned by (tenant, customer): all of a customer's usage is in one partition, so a query about one
//! customer asks one worker and a customer's aggregates are never split.

use xxhash_rust::xxh3::xxh3_64;

use super::parse::{parse_batch, Limits};
use crate::error::{EventIssue, Result};

pub struct Split {
    /// Events the parser refused, by their index in the request.
    pub issues: Vec<EventIssue>,
    /// How many events the request held.
    pub total: usize,
    /// One per partition that receives events, in partition order.
    pub parts: Vec<Part>,
}

pub struct Part {
    pub partition: u32,
    /// A JSON array of the part's events.
    pub body: Vec<u8>,
    /// Each event's index in the request, in the part's order: maps the worker's report back to the request.
    pub indexes: Vec<u32>,
}

/// The partition of a tenant's customer, of `partitions`. Fixed for the life of a cluster: changing the number of
/// partitions would move customers between them.
pub fn partition_of(tenant: &str, customer: &str, partitions: u32) -> u32 {
    // Length-prefixed, so that ("ab", "c") and ("a", "bc") are different inputs.
    let mut key = Vec::with_capacity(8 + tenant.len() + customer.len());
    key.extend_from_slice(&(tenant.len() as u32).to_le_bytes());
    key.extend_from_slice(tenant.as_bytes());
    key.extend_from_slice(&(customer.len() as u32).to_le_bytes());
    key.extend_from_slice(customer.as_bytes());
    (xxh3_64(&key) % u64::from(partitions.max(1))) as u32
}

pub fn split_batch(tenant: &str, body: Vec<u8>, received_us: i64, partitions: u32, limits: &Limits) -> Result<Split> {
    let batch = parse_batch(tenant, body, received_us, limits)?;
    let mut by_partition: Vec<Option<Part>> = (0..partitions).map(|_| None).collect();
    for ev in &batch.events {
        let partition = partition_of(tenant, batch.text(ev.subject), partitions);
        let part = by_partition[partition as usize].get_or_insert_with(|| Part {
            partition,
            body: b"[".to_vec(),
            indexes: Vec::new(),
        });
        if !part.indexes.is_empty() {
            part.body.push(b',');
        }
        part.body.extend_from_slice(batch.text(ev.raw).as_bytes());
        part.indexes.push(ev.index);
    }
    let parts = by_partition
        .into_iter()
        .flatten()
        .map(|mut part| {
            part.body.push(b']');
            part
        })
        .collect();
    Ok(Split { issues: batch.issues, total: batch.total, parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, subject: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"s","type":"t","subject":"{subject}","data":{{"n":"a\"b"}}}}"#
        )
    }

    #[test]
    fn parts_hold_each_valid_event_once_with_its_index() {
        let events: Vec<String> = (0..50).map(|i| event(&i.to_string(), &format!("c{}", i % 7))).collect();
        let body = format!("[{},{{\"id\":1}},{}]", events[..25].join(","), events[25..].join(","));
        let split = split_batch("t1", body.into_bytes(), 0, 4, &Limits::default()).unwrap();
        assert_eq!(split.total, 51);
        assert_eq!(split.issues.len(), 1);
        assert_eq!(split.issues[0].index, 25);
        let mut seen = Vec::new();
        for part in &split.parts {
            let parsed: Vec<serde_json::Value> = serde_json::from_slice(&part.body).unwrap();
            assert_eq!(parsed.len(), part.indexes.len());
            for (value, &index) in parsed.iter().zip(&part.indexes) {
                let subject = value["subject"].as_str().unwrap();
                assert_eq!(partition_of("t1", subject, 4), part.partition);
                let original = if index < 25 { index } else { index - 1 } as usize;
                assert_eq!(value, &serde_json::from_str::<serde_json::Value>(&events[original]).unwrap());
                seen.push(index);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..51).filter(|&i| i != 25).collect::<Vec<u32>>());
    }

    #[test]
    fn a_customer_keeps_its_partition_and_tenants_are_apart() {
        assert_eq!(partition_of("t", "c", 16), partition_of("t", "c", 16));
        let spread: std::collections::HashSet<u32> =
            (0..200).map(|i| partition_of("t", &format!("c{i}"), 16)).collect();
        assert_eq!(spread.len(), 16);
        assert_ne!(partition_of("ab", "c", 1 << 30), partition_of("a", "bc", 1 << 30));
    }
}
