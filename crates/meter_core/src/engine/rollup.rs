//! Roll-ups of a meter's aggregates: minutes older than `minute_aggregates_s` into hours, hours older than
//! `hour_aggregates_s` into UTC days (`aggregate::resolution` says what is stored where, and why queries stay exact).
//!
//! One step is bounded work on one meter, under the write side of `Shared::rollup` (the fold flushes, the queries
//! opening their cursors and meter deletions take the read side): either it declares a new boundary
//! (`hours_before`, `days_before`) in the meter's resolution record, or it rolls up the next chunk of customers
//! below the declared boundary, about `step_keys` keys read, and writes the merged buckets, the deletions and the
//! record with its new cursor in one batch. Rolling up is idempotent (a rolled-up hour is one key, merged with
//! nothing and written again unchanged), so a chunk cut short by a crash is simply rolled up again.
//!
//! Late events: new events cannot land in a rolled-up range (`minute_aggregates_s` is at least the back-dating
//! window). If one does anyway (a clock set back), it is merged into its own minute's key, which every hour or day
//! window counts with the rest: totals stay exact.

use super::Shared;
use crate::aggregate::meter::{Aggregation, Meter, StoredMeter};
use crate::aggregate::resolution::{floor_to, Resolution, DAY, HOUR};
use crate::aggregate::state::merge_values;
use crate::error::{Error, Result};
use crate::ingest::time::minute_of;
use crate::storage::codec::put_i64_sortable;
use crate::storage::keys::{self, decode_bucket};
use crate::storage::{Cf, Cursor, OpKind, Store, WriteSet};

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing left to do for this meter now.
    Idle,
    /// A boundary was declared, or a chunk rolled up: `merged` keys were merged into their hour's or day's first.
    Worked { merged: u64 },
}

pub(crate) struct Targets {
    /// Minutes before this one go to hours, and before `days` to days (minutes since the epoch).
    pub hours: i64,
    pub days: i64,
}

impl Targets {
    pub fn at(now_us: i64, minute_aggregates_us: i64, hour_aggregates_us: i64) -> Targets {
        Targets {
            hours: floor_to(minute_of(now_us.saturating_sub(minute_aggregates_us)), HOUR),
            days: floor_to(minute_of(now_us.saturating_sub(hour_aggregates_us)), DAY),
        }
    }
}

/// One bounded step of the meter's roll-ups. `known` is the meter's resolution record as this thread last wrote it
/// (`None`: read it from the store): the maintenance thread goes on from what it wrote, never from a stale read.
pub(crate) fn step(
    store: &dyn Store,
    shared: &Shared,
    tenant: &str,
    meter: &Meter,
    targets: &Targets,
    step_keys: usize,
    known: &mut Option<Resolution>,
) -> Result<Step> {
    let _exclusive = shared.rollup.write().unwrap();
    // The meter may have been deleted since the registry was read; its definition tells, under this lock.
    let def = store.get(Cf::Meta, &keys::meter_def(tenant, meter.slug()))?;
    let current = match def {
        Some(json) => serde_json::from_slice::<StoredMeter>(&json).map(|m| m.id == meter.id()).unwrap_or(false),
        None => false,
    };
    if !current {
        return Ok(Step::Idle);
    }
    let mut record = match known {
        Some(record) => record.clone(),
        None => Resolution::load(store, tenant, meter.id())?,
    };
    let mut set = WriteSet::default();
    let mut merged = 0;
    if let Some((unit, from, to)) = record.rolling() {
        let cursor = roll_chunk(store, tenant, meter, unit, from, to, record.cursor.as_deref(), step_keys, &mut set)?;
        merged = cursor.merged;
        match cursor.next {
            Some(next) => record.cursor = Some(next),
            None => {
                record.cursor = None;
                if unit == HOUR {
                    record.hours_done = to;
                } else {
                    record.days_done = to;
                }
            }
        }
    } else if targets.hours > record.hours_before {
        record.hours_before = targets.hours;
    } else if targets.days.min(floor_to(record.hours_done, DAY)) > record.days_before {
        record.days_before = targets.days.min(floor_to(record.hours_done, DAY));
    } else {
        return Ok(Step::Idle);
    }
    set.put(Cf::Meta, &keys::resolution(tenant, meter.id()), &record.encode());
    // Not synced: lost in a crash, the chunk is lost with its record and rolled up again.
    shared.write(store, &set, false)?;
    *known = Some(record);
    Ok(Step::Worked { merged })
}

struct Chunk {
    /// Where the next chunk starts; `None` once every customer is done.
    next: Option<Vec<u8>>,
    merged: u64,
}

/// Rolls up the buckets of `[from, to)` (minutes) into `unit`s, customer by customer from `cursor`, until about
/// `step_keys` keys were read; stages the writes into `set`.
#[allow(clippy::too_many_arguments)] // one chunk's coordinates
fn roll_chunk(
    store: &dyn Store,
    tenant: &str,
    meter: &Meter,
    unit: i64,
    from: i64,
    to: i64,
    cursor: Option<&[u8]>,
    step_keys: usize,
    set: &mut WriteSet,
) -> Result<Chunk> {
    let mut prefix = Vec::new();
    keys::meter_prefix(&mut prefix, tenant, meter.id());
    let mut agg = store.cursor(Cf::Agg);
    let mut uniq = (meter.aggregation() == Aggregation::UniqueCount).then(|| store.cursor(Cf::Uniq));
    agg.seek(&[prefix.as_slice(), cursor.unwrap_or_default()].concat());
    let mut group = Group::default();
    let (mut read, mut merged) = (0, 0);
    while let Some((key, value)) = agg.entry() {
        if !key.starts_with(&prefix) {
            break;
        }
        let bucket = decode_bucket(key, prefix.len(), 0)?;
        let in_range = (from..to).contains(&bucket.minute);
        let start = floor_to(bucket.minute, unit);
        // Keys come in order: a group is complete at the first key that is not of its customer and unit.
        if group.subject.is_some() && !(in_range && group.is(bucket.subject, start)) {
            read += group.keys.len();
            merged += group.roll(tenant, meter, unit, uniq.as_deref_mut(), set, &mut read)?;
            group = Group::default();
        }
        // Where this key's customer goes on: its unit, or the start of its range, or past it.
        let mut next = Vec::new();
        keys::subject_prefix(&mut next, tenant, meter.id(), bucket.subject);
        if in_range {
            put_i64_sortable(&mut next, start);
        } else if bucket.minute < from {
            put_i64_sortable(&mut next, from);
        } else {
            next = keys::prefix_end(&next);
        }
        if group.subject.is_none() && read >= step_keys {
            return Ok(Chunk { next: Some(next[prefix.len()..].to_vec()), merged });
        }
        if !in_range {
            read += 1; // a seek is work too: a range where no customer has usage still costs one per customer
            agg.seek(&next);
            continue;
        }
        if group.subject.is_none() {
            group = Group { subject: Some(bucket.subject.to_owned()), start, keys: Vec::new() };
        }
        group.keys.push((bucket.minute, key.to_vec(), value.to_vec()));
        agg.next();
    }
    agg.status()?;
    if group.subject.is_some() {
        merged += group.roll(tenant, meter, unit, uniq.as_deref_mut(), set, &mut read)?;
    }
    Ok(Chunk { next: None, merged })
}

/// The stored buckets of one customer's hour (or day): (minute, key, merged value).
#[derive(Default)]
struct Group {
    subject: Option<String>,
    start: i64,
    keys: Vec<(i64, Vec<u8>, Vec<u8>)>,
}

impl Group {
    fn is(&self, subject: &str, start: i64) -> bool {
        self.subject.as_deref() == Some(subject) && self.start == start
    }

    /// Merges the group into the key of its first minute and deletes the others (and moves a `unique_count` meter's
    /// distinct values along); returns how many keys were merged away.
    fn roll(
        &self,
        tenant: &str,
        meter: &Meter,
        unit: i64,
        uniq: Option<&mut (dyn Cursor + '_)>,
        set: &mut WriteSet,
        read: &mut usize,
    ) -> Result<u64> {
        if let [(minute, _, _)] = self.keys.as_slice() {
            if *minute == self.start {
                return Ok(0);
            }
        }
        let subject = self.subject.as_deref().unwrap_or_default();
        let mut first = Vec::new();
        keys::minute_key(&mut first, tenant, meter.id(), subject, self.start);
        let value = merge_values(None, self.keys.iter().map(|(_, _, v)| v.as_slice()))
            .ok_or_else(|| Error::Corrupt(format!("aggregates of meter {} that do not merge", meter.slug())))?;
        set.put(Cf::Agg, &first, &value);
        let mut merged = 0;
        for (minute, key, _) in &self.keys {
            if *minute != self.start {
                set.push(OpKind::Delete, Cf::Agg, key, &[]);
                merged += 1;
            }
        }
        if let Some(cursor) = uniq {
            // A distinct value's key is its minute's key and then the value: keyed under the first minute, values
            // seen in several minutes become one.
            let mut end = Vec::new();
            keys::minute_key(&mut end, tenant, meter.id(), subject, self.start.saturating_add(unit));
            cursor.seek(&first);
            while let Some((key, _)) = cursor.entry() {
                if key >= end.as_slice() {
                    break;
                }
                *read += 1;
                if !key.starts_with(&first) {
                    set.put(Cf::Uniq, &[first.as_slice(), &key[first.len()..]].concat(), &[]);
                    set.push(OpKind::Delete, Cf::Uniq, key, &[]);
                }
                cursor.next();
            }
            cursor.status()?;
        }
        Ok(merged)
    }
}
