//! Usage queries: roll minute buckets up into windows, grouped by any subset of a meter's dimensions
//! (and optionally the customer), filtered by customers and dimension values. Exact: values are summed
//! as fixed-point integers and `unique_count` unions the distinct values themselves.

pub mod arrow;
pub mod event_values;
pub mod events;
pub mod json;
pub mod minutes;
pub mod skipped;
pub mod window;

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use chrono_tz::Tz;

use crate::aggregate::fold::Peeked;
use crate::aggregate::meter::{Aggregation, Meter};
use crate::aggregate::quantity::Quantity;
use crate::aggregate::state::{AggState, MinuteStates};
use crate::error::{Error, Result};
use crate::ingest::time::{minute_of, MICROS_PER_MINUTE};
use crate::storage::codec::{put_str, Reader};
use crate::storage::keys::{self, decode_bucket, BucketKey};
use crate::storage::{Cf, ReadStore};
use crate::{bail, ensure};
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

type GroupKey = (i64, i64, Option<String>, Vec<Option<String>>);

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

/// Answers `q` from what RocksDB holds plus `in_memory`, what the folds held that RocksDB does not yet.
pub fn run(
    store: &dyn ReadStore,
    tenant: &str,
    meter: &Meter,
    q: &UsageQuery,
    in_memory: &Peeked,
) -> Result<UsageResult> {
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
    scan_keys(store, Cf::Agg, tenant, &plan, &q.subjects, 0, |minute, value| {
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
    if meter.aggregation() == Aggregation::UniqueCount {
        scan_uniques(store, tenant, &plan, &q.subjects, &mut windows, &mut uniques)?;
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

    let mut rows = Vec::with_capacity(states.len());
    for (key, state) in states {
        let value = match uniques.get(&key) {
            Some(set) => Quantity::from_int(set.len() as i64),
            None if meter.aggregation() == Aggregation::UniqueCount => Quantity::ZERO,
            None => state.result()?,
        };
        let (window_start_us, window_end_us, subject, dims) = key;
        rows.push(UsageRow { window_start_us, window_end_us, subject, dims, value, events: state.count });
    }
    let dimensions = plan.grouped.iter().map(|&i| meter.dims[i].0.clone()).collect();
    Ok(UsageResult { by_subject: plan.by_subject, dimensions, rows })
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
    store: &dyn ReadStore,
    tenant: &str,
    plan: &Plan,
    subjects: &[String],
    windows: &mut Windower,
    out: &mut BTreeMap<GroupKey, HashSet<Vec<u8>>>,
) -> Result<()> {
    scan_keys(store, Cf::Uniq, tenant, plan, subjects, plan.meter.dims.len(), |bucket, _| {
        if let Some(group) = plan.group(&bucket, windows) {
            out.entry(group).or_default().insert(bucket.rest.to_vec());
        }
        Ok(())
    })
}

/// Visits every key of the plan's meter and range in `cf` (whose keys carry `n_dims` dimensions after the
/// minute): one seek per customer, skipping from customer to customer.
fn scan_keys(
    store: &dyn ReadStore,
    cf: Cf,
    tenant: &str,
    plan: &Plan,
    subjects: &[String],
    n_dims: usize,
    mut visit: impl FnMut(BucketKey, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut meter_prefix = Vec::new();
    keys::meter_prefix(&mut meter_prefix, tenant, plan.meter.id());
    let mut cursor = store.cursor(cf);

    let mut scan_subject = |cursor: &mut Box<dyn crate::storage::Cursor + '_>, subject: &str| -> Result<()> {
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
            scan_subject(&mut cursor, s)?;
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
        scan_subject(&mut cursor, &subject)?;
        let mut prefix = Vec::new();
        keys::subject_prefix(&mut prefix, tenant, plan.meter.id(), &subject);
        next = keys::prefix_end(&prefix);
    }
    cursor.status()
}
