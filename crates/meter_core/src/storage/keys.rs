//! Key layout of every column family. All variable parts are length-prefixed (`codec::put_str`), so
//! encodings are injective and a tenant's or customer's keys always share one contiguous prefix.
//!
//! | cf     | key                                                            | value                          |
//! |--------|----------------------------------------------------------------|--------------------------------|
//! | agg    | tenant, meter id u32, subject, minute i64                      | `MinuteStates` (merge operator): one state per dims |
//! | uniq   | agg key, dims, value                                           | empty: one key per distinct value |
//! | days   | tenant, meter id u32, UTC day i64                              | `MinuteStates`: one count state, the day's events |
//! | events | tenant, commit seq u64, part u32                               | zstd record of accepted events |
//! | dedup  | commit seq u64                                                 | commit record: receive time, tenants of its events records (until its aggregates are written) |
//! | seen   | fingerprint u128 BE                                            | `dedup::Mark`: receive time i64 BE, payload hash u64 LE |
//! | meta   | `counter/seq`, `counter/agg_seq/` shard u32, `counter/meter_id`, `meters/` tenant slug | counters / meter JSON |
//! | meta   | `card/` minute i64, meter id u32                               | distinct customers of the meter in that minute, u32 (`engine::cardinality`) |
//! | meta   | `received-minute/` minute i64                                  | u64: the first commit received in that minute (UTC) |
//! | meta   | `exported/` tenant, `dropped/` tenant                          | u64: the last commit the export wrote / retention dropped |
//! | meta   | `resolution/` tenant, meter id u32                             | `aggregate::resolution::Resolution`: where minutes were rolled up |
//! | meta   | `corrections/` tenant, commit seq u64                          | JSON: the corrections that commit made (`engine::correct`) |
//! | meta   | `corrected/` tenant, source, id                                | JSON: one event's corrections, oldest first |
//!
//! One `agg` key per customer-minute (not per dimension combination) is what keeps writes per event low:
//! a customer's events within a minute share one key however many dimensions vary.
//! Within a meter, keys sort by customer and then by minute, so one customer's range is one seek and
//! an all-customer query skips from customer to customer. A dimension value is `0` (absent) or
//! `1` + string, so a missing dimension and an empty string stay distinct.

use super::codec::{put_i64_sortable, put_str, Reader};
use crate::error::Result;

pub const META_SEQ: &[u8] = b"counter/seq";
pub const META_METER_ID: &[u8] = b"counter/meter_id";
/// Per fold shard: the last commit whose aggregates for that shard's customers are in `agg`; later
/// commits are replayed from their events at open.
pub const META_AGG_SEQS: &[u8] = b"counter/agg_seq/";
/// Prefix of meter definitions; no counter key starts with it.
pub const METER_DEFS: &[u8] = b"meters/";
/// Per UTC hour (hours since the epoch) in which a commit was received: the first such commit. Written by the
/// commit itself; retention maps a receive time to the commits before it through these marks.
pub const META_RECEIVED: &[u8] = b"received-minute/";
/// Receive marks per hour, as directories written before receive minutes have them (`retention::migrate_hour_marks`).
pub const META_RECEIVED_HOUR: &[u8] = b"received/";
/// Per tenant: the last commit whose retained events the export has written (`Engine::events_exported`).
pub const META_EXPORTED: &[u8] = b"exported/";
/// Per tenant: the last commit whose retained events retention has dropped.
pub const META_DROPPED: &[u8] = b"dropped/";
/// Per meter: through which minute its aggregates are kept per hour and per day.
pub const META_RESOLUTION: &[u8] = b"resolution/";

/// Per tenant and correction commit: what it corrected, for the export's corrections file.
pub const META_CORRECTIONS: &[u8] = b"corrections/";
/// Per tenant and event identity: the event's corrections (its history).
pub const META_CORRECTED: &[u8] = b"corrected/";

pub fn corrections(tenant: &str, seq: u64) -> Vec<u8> {
    let mut k = tenant_meta(META_CORRECTIONS, tenant);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn corrected(tenant: &str, source: &str, id: &str) -> Vec<u8> {
    let mut k = tenant_meta(META_CORRECTED, tenant);
    put_str(&mut k, source.as_bytes());
    put_str(&mut k, id.as_bytes());
    k
}

pub fn received_minute(minute: i64) -> Vec<u8> {
    let mut k = META_RECEIVED.to_vec();
    put_i64_sortable(&mut k, minute);
    k
}

/// A tenant's key under one of the per-tenant meta prefixes (`META_EXPORTED`, `META_DROPPED`).
pub fn tenant_meta(prefix: &[u8], tenant: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    put_str(&mut k, tenant.as_bytes());
    k
}

pub fn resolution(tenant: &str, meter_id: u32) -> Vec<u8> {
    let mut k = META_RESOLUTION.to_vec();
    meter_prefix(&mut k, tenant, meter_id);
    k
}

/// Prefix of the per-minute customer counts of the cardinality limits; minute first, so that the minutes that left the
/// back-dating window are one range delete.
pub const META_CARD: &[u8] = b"card/";

/// The key of a meter's distinct-customer count in one minute.
pub fn card_key(minute: i64, meter_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(META_CARD.len() + 12);
    k.extend_from_slice(META_CARD);
    put_i64_sortable(&mut k, minute);
    k.extend_from_slice(&meter_id.to_be_bytes());
    k
}

pub fn agg_seq(shard: u32) -> Vec<u8> {
    [META_AGG_SEQS, &shard.to_be_bytes()].concat()
}

pub fn meter_def(tenant: &str, slug: &str) -> Vec<u8> {
    let mut k = meter_defs_prefix(tenant);
    put_str(&mut k, slug.as_bytes());
    k
}

pub fn meter_defs_prefix(tenant: &str) -> Vec<u8> {
    let mut k = METER_DEFS.to_vec();
    put_str(&mut k, tenant.as_bytes());
    k
}

/// Everything of one meter in `agg` or `uniq`.
pub fn meter_prefix(out: &mut Vec<u8>, tenant: &str, meter_id: u32) {
    put_str(out, tenant.as_bytes());
    out.extend_from_slice(&meter_id.to_be_bytes());
}

pub fn subject_prefix(out: &mut Vec<u8>, tenant: &str, meter_id: u32, subject: &str) {
    meter_prefix(out, tenant, meter_id);
    put_str(out, subject.as_bytes());
}

/// The `agg` key of one customer-minute of a meter; its value holds one state per dimension combination.
pub fn minute_key(out: &mut Vec<u8>, tenant: &str, meter_id: u32, subject: &str, minute: i64) {
    subject_prefix(out, tenant, meter_id, subject);
    put_i64_sortable(out, minute);
}

/// The `days` key of a meter's UTC day (days since the epoch): the mark that tells an export which days
/// changed without reading their minutes.
pub fn day_key(out: &mut Vec<u8>, tenant: &str, meter_id: u32, day: i64) {
    meter_prefix(out, tenant, meter_id);
    put_i64_sortable(out, day);
}

/// Appends dimension values in the meter's order: `0` for absent, `1` + string otherwise.
pub fn put_dims<'d>(out: &mut Vec<u8>, dims: impl IntoIterator<Item = Option<&'d str>>) {
    for d in dims {
        match d {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_str(out, v.as_bytes());
            }
        }
    }
}

pub fn decode_dims<'a>(r: &mut Reader<'a>, n_dims: usize) -> Result<Vec<Option<&'a str>>> {
    let mut dims = Vec::with_capacity(n_dims);
    for _ in 0..n_dims {
        dims.push(match r.u8()? {
            0 => None,
            _ => Some(r.str()?),
        });
    }
    Ok(dims)
}

/// The `uniq` key: a customer-minute, a dimension combination, and one distinct value.
pub fn uniq_key(out: &mut Vec<u8>, minute_key: &[u8], dims: &[u8], value: &str) {
    out.extend_from_slice(minute_key);
    out.extend_from_slice(dims);
    put_str(out, value.as_bytes());
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

pub fn events_key(tenant: &str, seq: u64, part: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 14);
    put_str(&mut k, tenant.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&part.to_be_bytes());
    k
}

pub fn events_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::new();
    put_str(&mut k, tenant.as_bytes());
    k
}

/// A decoded `agg` or `uniq` key (after the meter prefix).
#[derive(Debug, PartialEq, Eq)]
pub struct BucketKey<'a> {
    pub subject: &'a str,
    pub minute: i64,
    pub dims: Vec<Option<&'a str>>,
    /// What follows the dimensions (the distinct value, in `uniq`).
    pub rest: &'a [u8],
}

/// Decodes a key whose meter prefix is `prefix_len` bytes long: `n_dims` is 0 for `agg` keys (their
/// dimensions live in the value) and the meter's dimension count for `uniq` keys.
pub fn decode_bucket(key: &[u8], prefix_len: usize, n_dims: usize) -> Result<BucketKey<'_>> {
    let mut r = Reader::new(&key[prefix_len..]);
    let subject = r.str()?;
    let minute = r.i64_sortable()?;
    let dims = decode_dims(&mut r, n_dims)?;
    Ok(BucketKey { subject, minute, dims, rest: r.bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bucket_keys_round_trip(tenant in ".{1,8}", meter in any::<u32>(), subject in ".{0,8}", minute in any::<i64>(),
                                  dims in proptest::collection::vec(proptest::option::of(".{0,5}"), 0..4)) {
            let mut k = Vec::new();
            minute_key(&mut k, &tenant, meter, &subject, minute);
            put_dims(&mut k, dims.iter().map(|d| d.as_deref()));
            let mut prefix = Vec::new();
            meter_prefix(&mut prefix, &tenant, meter);
            prop_assert!(k.starts_with(&prefix));
            let b = decode_bucket(&k, prefix.len(), dims.len()).unwrap();
            prop_assert_eq!(b.subject, subject.as_str());
            prop_assert_eq!(b.minute, minute);
            prop_assert_eq!(b.dims, dims.iter().map(|d| d.as_deref()).collect::<Vec<_>>());
            prop_assert!(b.rest.is_empty());
        }

        #[test]
        fn keys_of_different_tenants_never_collide(t1 in ".{1,6}", t2 in ".{1,6}", s1 in ".{0,6}", s2 in ".{0,6}") {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            minute_key(&mut a, &t1, 1, &s1, 0);
            minute_key(&mut b, &t2, 1, &s2, 0);
            prop_assert_eq!(a == b, t1 == t2 && s1 == s2);
        }

        #[test]
        fn minutes_sort_within_a_customer(m1 in any::<i64>(), m2 in any::<i64>()) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            minute_key(&mut a, "t", 1, "c", m1);
            minute_key(&mut b, "t", 1, "c", m2);
            prop_assert_eq!(a.cmp(&b), m1.cmp(&m2));
        }
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        let mut k = Vec::new();
        subject_prefix(&mut k, "t", 9, "c");
        let mut inside = k.clone();
        inside.extend_from_slice(&[0xff; 20]);
        assert!(inside < prefix_end(&k));
    }

    #[test]
    fn absent_dimension_differs_from_empty_string() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        put_dims(&mut a, [None]);
        put_dims(&mut b, [Some("")]);
        assert_ne!(a, b);
    }
}
