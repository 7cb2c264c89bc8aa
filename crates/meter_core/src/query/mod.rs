//! Usage queries: roll minute buckets up into windows, grouped by any subset of a meter's dimensions
//! (and optionally the customer), filtered by customers and dimension values. Exact: values are summed
//! as fixed-point integers and `unique_count` unions the distinct values themselves.
//!
//! Old aggregates are kept per hour, then per day (`aggregate::resolution`). A query is answered only when each
//! stored bucket it reads falls whole into one of its windows: a window finer than the range's resolution, or one
//! whose bounds do not fall on whole UTC hours (days) there, is refused (`resolution_unavailable`) rather than
//! answered with a bucket's total put in the window where it starts.

pub mod arrow;
pub mod event_values;
pub mod events;
pub mod json;
pub mod minutes;
pub mod partial;
pub mod skipped;
pub mod window;

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use chrono_tz::Tz;

use crate::aggregate::fold::Peeked;
use crate::aggregate::meter::{Aggregation, Meter};
use crate::aggregate::quantity::Quantity;
use crate::aggregate::resolution::{Resolution, DAY, HOUR};
use crate::aggregate::state::{AggState, MinuteStates};
use crate::error::{Error, Result};
use crate::ingest::time::{minute_of, MICROS_PER_MINUTE};
use crate::storage::codec::{put_str, Reader};
use crate::storage::keys::{self, decode_bucket, BucketKey};
use crate::storage::{Cf, Cursor, ReadStore};
use crate::{bail, ensure};
pub use partial::Partial;
pub use window::{WindowSize, Windower};

/// Query results larger than this are refused: ask for a coarser window or a narrower range.
pub const MAX_ROWS: usize = 1_000_000;

#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub meter: String,
    pub from_us: i64,
    pub to_us: i64,
    pub window: Option<WindowSize>,
    /// IANA name; windows of a day or a month follow its midnights. Default UTC.
    pub tz: Option<String>,
    /// Only these customers (all when empty).
    pub subjects: Vec<String>,
    /// Dimension names, and `subject` to split by customer.
    pub group_by: Vec<String>,
    /// Dimension name -> accepted values.
    pub filters: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub window_start_us: i64,
    pub window_end_us: i64,
    pub subject: Option<String>,
    /// One per grouped dimension, in `UsageResult::dimensions` order.
    pub dims: Vec<Option<String>>,
    pub value: Quantity,
    /// Events behind the value.
    pub events: u64,
}

#[derive(Debug, Clone)]
pub struct UsageResult {
    pub by_subject: bool,
    pub dimensions: Vec<String>,
    pub rows: Vec<UsageRow>,
}

/// A row's window (start, end), customer (when grouped by customer) and grouped dimension values.
pub type GroupKey = (i64, i64, Option<String>, Vec<Option<String>>);

struct Plan<'m> {
    meter: &'m Meter,
    by_subject: bool,
    /// Indexes (into the meter's dims) of the grouped dimensions, in the order asked for.
    grouped: Vec<usize>,
    /// (dim index, accepted values).
    filters: Vec<(usize, HashSet<String>)>,
    /// Only these customers, when some are named.
    subjects: Option<HashSet<String>>,
    from_min: i64,
    to_min: i64,
}

/// What a query or an export reads of one meter: cursors over its aggregates and the record of where they were
/// rolled up, all of one moment.
pub struct View<'s> {
    pub agg: Box<dyn Cursor + 's>,
    /// For `unique_count` meters.
    pub uniq: Option<Box<dyn Cursor + 's>>,
    pub resolution: Resolution,
}

impl<'s> View<'s> {
    /// Call with the read side of the engine's roll-up lock held (`Shared::rollup`): each cursor sees the store as it
    /// was when it was opened, and no roll-up step can then come between them and the record. Or open it from a
    /// snapshot (`Store::snapshot`), in which every read sees the same moment.
    pub fn open(store: &'s dyn ReadStore, tenant: &str, meter: &Meter) -> Result<View<'s>> {
        Ok(View {
            agg: store.cursor(Cf::Agg),
            uniq: (meter.aggregation() == Aggregation::UniqueCount).then(|| store.cursor(Cf::Uniq)),
            resolution: Resolution::load(store, tenant, meter.id())?,
        })
    }
}

/// The groups of `q`'s answer, from what RocksDB holds plus `in_memory` (what the folds held that RocksDB does not
/// yet), before their values are taken (`Partial::finish`).
pub fn gather(view: View, tenant: &str, meter: &Meter, q: &UsageQuery, in_memory: &Peeked) -> Result<Partial> {
    let View { mut agg, uniq, resolution } = view;
    let plan = plan(meter, q)?;
    let tz = match &q.tz {
        None => Tz::UTC,
        Some(name) => Tz::from_str(name).map_err(|_| {
            Error::invalid(
                "invalid_query",
                format!("tz must be an IANA time zone such as \"Europe/Paris\"; got \"{name}\""),
            )
        })?,
    };
    check_resolution(&resolution, q, tz)?;
    let mut windows = Windower::new(q.window, tz, q.from_us, q.to_us);

    let mut states: BTreeMap<GroupKey, AggState> = BTreeMap::new();
    let n_dims = meter.dims.len();
    let mut add = |bucket: &BucketKey, state: &AggState| -> Result<()> {
        if let Some(group) = plan.group(bucket, &mut windows) {
            states.entry(group).or_insert_with(|| AggState::empty(state.aggregation)).merge(state);
            ensure!(
                states.len() <= MAX_ROWS,
                "result_too_large",
                "the result has more than {MAX_ROWS} rows; use a coarser window_size, fewer group_by dimensions or a shorter range"
            );
        }
        Ok(())
    };
    scan_keys(agg.as_mut(), tenant, &plan, &q.subjects, 0, |minute, value| {
        MinuteStates::visit(value, |dims, state| {
            add(&BucketKey { dims: keys::decode_dims(&mut Reader::new(dims), n_dims)?, ..minute }, &state)
        })
    })?;
    for (subject, minute, dims, state) in &in_memory.states {
        if plan.covers(subject, *minute) {
            let dims = keys::decode_dims(&mut Reader::new(dims), n_dims)?;
            add(&BucketKey { subject, minute: *minute, dims, rest: &[] }, state)?;
        }
    }

    let mut uniques: BTreeMap<GroupKey, HashSet<Vec<u8>>> = BTreeMap::new();
    if let Some(mut uniq) = uniq {
        scan_uniques(uniq.as_mut(), tenant, &plan, &q.subjects, &mut windows, &mut uniques)?;
        for (subject, minute, dims, value) in &in_memory.uniques {
            if plan.covers(subject, *minute) {
                let dims = keys::decode_dims(&mut Reader::new(dims), n_dims)?;
                // The same bytes as the distinct value in a `uniq` key, so that both count once.
                let mut rest = Vec::new();
                put_str(&mut rest, value.as_bytes());
                if let Some(group) =
                    plan.group(&BucketKey { subject, minute: *minute, dims, rest: &rest }, &mut windows)
                {
                    uniques.entry(group).or_default().insert(rest);
                }
            }
        }
    }

    let dimensions = plan.grouped.iter().map(|&i| meter.dims[i].0.clone()).collect();
    Ok(Partial {
        unique: meter.aggregation() == Aggregation::UniqueCount,
        by_subject: plan.by_subject,
        dimensions,
        states,
        uniques,
    })
}

fn plan<'m>(meter: &'m Meter, q: &UsageQuery) -> Result<Plan<'m>> {
    ensure!(q.from_us < q.to_us, "invalid_query", "from must be before to (the range is [from, to))");
    ensure!(
        q.from_us % MICROS_PER_MINUTE == 0 && q.to_us % MICROS_PER_MINUTE == 0,
        "invalid_query",
        "from and to must fall on whole minutes: usage is kept per minute"
    );
    let known = || meter.dims.iter().map(|d| d.0.as_str()).collect::<Vec<_>>().join(", ");
    let mut by_subject = false;
    let mut grouped = Vec::new();
    for name in &q.group_by {
        if name == "subject" {
            by_subject = true;
            continue;
        }
        let Some(i) = meter.dim_index(name) else {
            bail!(
                "invalid_query",
                "group_by \"{name}\" is not a dimension of meter '{}'; use subject or one of: {}",
                meter.slug(),
                known()
            );
        };
        ensure!(!grouped.contains(&i), "invalid_query", "group_by names \"{name}\" twice");
        grouped.push(i);
    }
    let mut filters = Vec::new();
    for (name, values) in &q.filters {
        let Some(i) = meter.dim_index(name) else {
            bail!(
                "invalid_query",
                "filter on \"{name}\": not a dimension of meter '{}'; use one of: {}",
                meter.slug(),
                known()
            );
        };
        filters.push((i, values.iter().cloned().collect()));
    }
    ensure!(q.subjects.len() <= 10_000, "invalid_query", "at most 10000 subjects per query");
    let subjects = (!q.subjects.is_empty()).then(|| q.subjects.iter().cloned().collect());
    Ok(Plan {
        meter,
        by_subject,
        grouped,
        filters,
        subjects,
        from_min: minute_of(q.from_us),
        to_min: minute_of(q.to_us),
    })
}

impl Plan<'_> {
    /// Whether a customer-minute is one the query reads (what `scan_keys` does by seeking).
    fn covers(&self, subject: &str, minute: i64) -> bool {
        (self.from_min..self.to_min).contains(&minute) && self.subjects.as_ref().is_none_or(|s| s.contains(subject))
    }

    /// The group a bucket falls in, or `None` when a dimension filter excludes it.
    fn group(&self, b: &BucketKey, windows: &mut Windower) -> Option<GroupKey> {
        for (i, accepted) in &self.filters {
            if !b.dims[*i].is_some_and(|v| accepted.contains(v)) {
                return None;
            }
        }
        let (start, end) = windows.window(b.minute * MICROS_PER_MINUTE);
        let subject = self.by_subject.then(|| b.subject.to_owned());
        let dims = self.grouped.iter().map(|&i| b.dims[i].map(str::to_owned)).collect();
        Some((start, end, subject, dims))
    }
}

fn scan_uniques(
    cursor: &mut dyn Cursor,
    tenant: &str,
    plan: &Plan,
    subjects: &[String],
    windows: &mut Windower,
    out: &mut BTreeMap<GroupKey, HashSet<Vec<u8>>>,
) -> Result<()> {
    scan_keys(cursor, tenant, plan, subjects, plan.meter.dims.len(), |bucket, _| {
        if let Some(group) = plan.group(&bucket, windows) {
            out.entry(group).or_default().insert(bucket.rest.to_vec());
        }
        Ok(())
    })
}

/// Visits every key of the plan's meter and range under `cursor` (over `agg`, or over `uniq`, whose keys carry
/// `n_dims` dimensions after the minute): one seek per customer, skipping from customer to customer.
fn scan_keys(
    cursor: &mut dyn Cursor,
    tenant: &str,
    plan: &Plan,
    subjects: &[String],
    n_dims: usize,
    mut visit: impl FnMut(BucketKey, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut meter_prefix = Vec::new();
    keys::meter_prefix(&mut meter_prefix, tenant, plan.meter.id());
    let mut scan_subject = |cursor: &mut dyn Cursor, subject: &str| -> Result<()> {
        let mut start = Vec::new();
        keys::subject_prefix(&mut start, tenant, plan.meter.id(), subject);
        let subject_len = start.len();
        crate::storage::codec::put_i64_sortable(&mut start, plan.from_min);
        cursor.seek(&start);
        while let Some((k, v)) = cursor.entry() {
            if !k.starts_with(&start[..subject_len]) {
                break;
            }
            let bucket = decode_bucket(k, meter_prefix.len(), n_dims)?;
            if bucket.minute >= plan.to_min {
                break;
            }
            visit(bucket, v)?;
            cursor.next();
        }
        cursor.status()
    };

    if !subjects.is_empty() {
        let mut sorted: Vec<&String> = subjects.iter().collect();
        sorted.sort();
        sorted.dedup();
        for s in sorted {
            scan_subject(cursor, s)?;
        }
        return Ok(());
    }
    // All customers: find each one, scan its range, then jump past it.
    let mut next = meter_prefix.clone();
    loop {
        cursor.seek(&next);
        let Some((k, _)) = cursor.entry() else { break };
        if !k.starts_with(&meter_prefix) {
            break;
        }
        let subject = decode_bucket(k, meter_prefix.len(), 0)?.subject.to_owned();
        scan_subject(cursor, &subject)?;
        let mut prefix = Vec::new();
        keys::subject_prefix(&mut prefix, tenant, plan.meter.id(), &subject);
        next = keys::prefix_end(&prefix);
    }
    cursor.status()
}

/// Refuses a query that would put a stored hour's or day's total into a window that holds only part of it: in the
/// range kept per hour (per UTC day), the query's bounds and every window bound must fall on a whole UTC hour (day).
fn check_resolution(resolution: &Resolution, q: &UsageQuery, tz: Tz) -> Result<()> {
    for (before, unit, per) in [(resolution.days_before, DAY, "UTC day"), (resolution.hours_before, HOUR, "hour")] {
        let Some(limit_us) = before.checked_mul(MICROS_PER_MINUTE).filter(|&l| q.from_us < l) else { continue };
        let end = q.to_us.min(limit_us);
        let unit_us = unit * MICROS_PER_MINUTE;
        let mut windows = Windower::new(q.window, tz, q.from_us, q.to_us);
        let (mut at, mut misfit) = (q.from_us, None);
        if q.from_us % unit_us != 0 {
            misfit = Some(q.from_us);
        }
        while misfit.is_none() && at < end {
            let (_, window_end) = windows.window(at);
            let inside = window_end < end || (window_end == end && end == q.to_us);
            if inside && window_end % unit_us != 0 {
                misfit = Some(window_end);
            }
            at = window_end;
        }
        if let Some(t) = misfit {
            let (finest, zone) = if unit == DAY {
                ("day", "or month windows in UTC (tz unset)")
            } else {
                ("hour", "day or month windows, in UTC or a time zone whose offset is whole hours")
            };
            bail!(
                "resolution_unavailable",
                "usage before {} is kept per {per} (minute aggregates are rolled up once old): the finest windows this \
                 range can answer are {finest} {zone}, with from and to on whole {per}s there; this query has a \
                 bound at {} (window_size {}, tz {})",
                rfc3339(limit_us),
                rfc3339(t),
                q.window.map_or("none", WindowSize::name),
                q.tz.as_deref().unwrap_or("UTC")
            );
        }
    }
    Ok(())
}

fn rfc3339(t_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(t_us)
        .map_or_else(|| t_us.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}
