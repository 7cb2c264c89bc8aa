//! Which customers' usage changed: a feed of every (tenant, meter, customer) that received accepted events since the
//! last time someone asked (`Engine::changes`), so that a live view of balances and entitlements re-queries those
//! customers alone instead of every billing cycle on every refresh.
//!
//! The fold threads record it (`folder`): each folds every durable commit for the customers of its shard, and notes, in
//! its shard's pending set (one lock per commit, which no other fold thread takes), per (tenant, customer) and meter
//! that counted the event: the earliest event time and how many events. A drain (`Pending::drain`) takes every shard's
//! lock, in shard order, and swaps the sets out, so that it sees each commit of a shard either whole or not at all.
//!
//! The guarantee a caller builds on: an event whose ingest returned (was acknowledged) before `Engine::changes` was
//! called is in that drain or an earlier one (the call first waits for the fold threads to have folded every commit
//! acknowledged before it: `Engine::await_folds`); and once it is in a drain, a usage query started after that drain
//! returned counts it.
//! Why: the writer puts each durable commit in `Shared::unfolded` and hands it to the fold threads before it answers
//! its callers, and a fold thread records a commit while it folds it, so by the time an event is recorded its commit is
//! already one that every later query reads (folded, in flight, written, or in `unfolded`; see `folder`). Recording
//! lags the acknowledgement by the fold queue only (commits wait there while the fold threads are behind), so a caller
//! that drains every few hundred milliseconds names a changed customer well within a second.
//!
//! What is not reported: the events a new meter was backfilled from when it was created (`Engine::create_meter`; its
//! creator knows), and the events replayed at open, which were acknowledged before the engine opened (a caller loads
//! its view with queries after opening, then drains). Events counted by a meter deleted since are dropped at the drain:
//! its usage cannot be queried any more.
//!
//! Memory is bounded: at most `limit` distinct (tenant, meter, customer) keys are pending across all shards. Past it,
//! nothing more is recorded and the next drain clears everything and says `overflowed`: its caller then refreshes every
//! customer, which covers whatever was dropped, by the same argument as above.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, TimeUnit};
use hashbrown::HashMap;

use crate::aggregate::fold::PairRef;
use crate::aggregate::registry::Registry;
use crate::ingest::time::MICROS_PER_MINUTE;

/// One (tenant, meter, customer) with accepted events since the previous drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub tenant: String,
    /// The meter's slug.
    pub meter: String,
    pub customer: String,
    /// The start of the earliest event-time minute among those events (µs since the epoch, UTC).
    pub earliest_us: i64,
    /// How many events the meter counted.
    pub events: u64,
}

/// What one drain returns: the changes, in no particular order, and whether some were dropped (refresh everything).
#[derive(Debug, Default)]
pub struct Drained {
    pub changes: Vec<Change>,
    pub overflowed: bool,
}

impl Drained {
    /// The changes as Arrow: `tenant`, `meter`, `customer` (utf8), `earliest` (timestamp[us, UTC]), `events` (uint64).
    pub fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        let n = self.changes.len();
        let strings = || StringBuilder::with_capacity(n, n * 16);
        let (mut tenants, mut meters, mut customers) = (strings(), strings(), strings());
        let mut earliest = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut events = UInt64Builder::with_capacity(n);
        for c in &self.changes {
            tenants.append_value(&c.tenant);
            meters.append_value(&c.meter);
            customers.append_value(&c.customer);
            earliest.append_value(c.earliest_us);
            events.append_value(c.events);
        }
        let schema = Schema::new(vec![
            Field::new("tenant", DataType::Utf8, false),
            Field::new("meter", DataType::Utf8, false),
            Field::new("customer", DataType::Utf8, false),
            Field::new("earliest", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("events", DataType::UInt64, false),
        ]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(tenants.finish()),
            Arc::new(meters.finish()),
            Arc::new(customers.finish()),
            Arc::new(earliest.finish()),
            Arc::new(events.finish()),
        ];
        RecordBatch::try_new(Arc::new(schema), columns)
    }
}

/// What one meter counted of one customer since the last drain.
#[derive(Debug, Clone, Copy)]
struct MeterChange {
    meter_id: u32,
    /// The earliest event time (µs); rounded down to its minute at the drain.
    earliest_us: i64,
    events: u64,
}

/// One fold shard's pending changes.
#[derive(Default)]
struct Shard {
    /// Per (tenant, customer): each meter that counted its events. A customer has few meters, so a short list beats a
    /// map, and the customer is looked up once per event whatever the number of meters.
    customers: HashMap<(String, String), Vec<MeterChange>>,
}

/// The pending changes of every fold shard, shared by the fold threads (which record) and `Engine::changes` (which
/// drains).
pub(crate) struct Pending {
    shards: Vec<Mutex<Shard>>,
    /// Distinct (tenant, meter, customer) keys pending across all shards.
    keys: AtomicUsize,
    /// Set when a key was not recorded because `keys` reached `limit`: the next drain says so.
    overflowed: AtomicBool,
    limit: usize,
}

impl Pending {
    pub fn new(shards: u32, limit: usize) -> Pending {
        Pending {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            keys: AtomicUsize::new(0),
            overflowed: AtomicBool::new(false),
            limit,
        }
    }

    /// Where a fold thread records one commit's events of its `shard`: holds the shard's lock until dropped.
    pub fn recorder(&self, shard: u32) -> Recorder<'_> {
        let shard = self.shards[shard as usize].lock().unwrap();
        // Once keys were dropped the next drain refreshes everything anyway: recording more would only use memory.
        let off = self.overflowed.load(Ordering::Acquire);
        Recorder { shard, pending: self, off }
    }

    /// Takes every pending change, naming each meter by its slug in `registry` (the meters of now: a deleted meter's
    /// changes are dropped).
    pub fn drain(&self, registry: &Registry) -> Drained {
        // Every shard at once, always in shard order (a fold thread holds only its own): the sets, the key count and
        // the overflow flag change together, and a commit is in this drain whole or not at all.
        let mut shards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(|s| s.lock().unwrap()).collect();
        let overflowed = self.overflowed.swap(false, Ordering::AcqRel);
        self.keys.store(0, Ordering::Release);
        let taken: Vec<Shard> = shards.iter_mut().map(|s| std::mem::take(&mut **s)).collect();
        drop(shards);
        if overflowed {
            return Drained { changes: Vec::new(), overflowed };
        }
        let slugs: std::collections::HashMap<(&str, u32), &str> =
            registry.all().map(|(tenant, m)| ((tenant, m.id()), m.slug())).collect();
        let mut changes = Vec::new();
        for ((tenant, customer), meters) in taken.into_iter().flat_map(|s| s.customers) {
            for m in meters {
                let Some(slug) = slugs.get(&(tenant.as_str(), m.meter_id)) else { continue };
                changes.push(Change {
                    tenant: tenant.clone(),
                    meter: (*slug).to_owned(),
                    customer: customer.clone(),
                    earliest_us: m.earliest_us.div_euclid(MICROS_PER_MINUTE) * MICROS_PER_MINUTE,
                    events: m.events,
                });
            }
        }
        Drained { changes, overflowed }
    }

    /// Counts one more pending key; `false` (and the overflow flagged) when the limit is reached.
    fn admit(&self) -> bool {
        if self.keys.fetch_add(1, Ordering::AcqRel) < self.limit {
            return true;
        }
        self.keys.fetch_sub(1, Ordering::AcqRel);
        self.overflowed.store(true, Ordering::Release);
        false
    }
}

/// A fold shard's pending changes, locked for one commit.
pub(crate) struct Recorder<'a> {
    shard: MutexGuard<'a, Shard>,
    pending: &'a Pending,
    /// Keys were dropped: record nothing until the next drain.
    off: bool,
}

impl Recorder<'_> {
    /// Notes that each meter of `meters` counted an event of `customer` at `time_us`.
    pub fn record(&mut self, tenant: &str, customer: &str, time_us: i64, meters: impl Iterator<Item = u32>) {
        let mut meters = meters.peekable();
        if self.off || meters.peek().is_none() {
            return;
        }
        let pending = self.pending;
        // Looked up by the borrowed pair: no allocation but for a customer new since the last drain.
        let list = self.shard.customers.entry_ref(&PairRef(tenant, customer)).or_default();
        for meter_id in meters {
            match list.iter_mut().find(|m| m.meter_id == meter_id) {
                Some(m) => {
                    m.earliest_us = m.earliest_us.min(time_us);
                    m.events += 1;
                }
                None if pending.admit() => list.push(MeterChange { meter_id, earliest_us: time_us, events: 1 }),
                None => {
                    self.off = true;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::meter::{Meter, MeterSpec, StoredMeter};

    fn registry(meters: &[(&str, u32, &str)]) -> Registry {
        meters.iter().fold(Registry::default(), |r, &(tenant, id, slug)| {
            let spec: MeterSpec =
                serde_json::from_str(&format!(r#"{{"slug":"{slug}","event_type":"x","aggregation":"count"}}"#))
                    .unwrap();
            r.with(tenant, Arc::new(Meter::compile(StoredMeter { id, created_us: 0, spec }).unwrap()))
        })
    }

    /// (tenant, meter, customer, earliest, events).
    type Row = (String, String, String, i64, u64);

    fn sorted(mut d: Drained) -> (Vec<Row>, bool) {
        let mut rows: Vec<_> =
            d.changes.drain(..).map(|c| (c.tenant, c.meter, c.customer, c.earliest_us, c.events)).collect();
        rows.sort();
        (rows, d.overflowed)
    }

    fn row(t: &str, m: &str, c: &str, earliest_us: i64, events: u64) -> Row {
        (t.into(), m.into(), c.into(), earliest_us, events)
    }

    const MIN: i64 = MICROS_PER_MINUTE;

    #[test]
    fn a_drain_takes_the_earliest_minute_and_the_count_per_meter_and_customer() {
        let pending = Pending::new(2, 100);
        let reg = registry(&[("t", 1, "tokens"), ("t", 2, "calls"), ("u", 3, "tokens")]);
        {
            let mut r = pending.recorder(0);
            r.record("t", "c1", 10 * MIN + 5, [1, 2].into_iter());
            r.record("t", "c1", 3 * MIN + 59_999_999, [1].into_iter());
            r.record("u", "c1", 7 * MIN, [3].into_iter());
            r.record("t", "c2", 1, std::iter::empty());
        }
        pending.recorder(1).record("t", "c3", -1, [2].into_iter());
        let (rows, overflowed) = sorted(pending.drain(&reg));
        assert!(!overflowed);
        assert_eq!(
            rows,
            vec![
                row("t", "calls", "c1", 10 * MIN, 1),
                row("t", "calls", "c3", -MIN, 1),
                row("t", "tokens", "c1", 3 * MIN, 2),
                row("u", "tokens", "c1", 7 * MIN, 1),
            ]
        );
        assert_eq!(sorted(pending.drain(&reg)), (vec![], false), "a drain takes what it returns");
    }

    #[test]
    fn a_deleted_meters_changes_are_dropped() {
        let pending = Pending::new(1, 100);
        pending.recorder(0).record("t", "c", 0, [1, 9].into_iter());
        let (rows, _) = sorted(pending.drain(&registry(&[("t", 1, "kept")])));
        assert_eq!(rows, vec![row("t", "kept", "c", 0, 1)]);
    }

    #[test]
    fn past_the_limit_the_next_drain_says_overflowed_and_recording_starts_again() {
        let pending = Pending::new(2, 3);
        let reg = registry(&[("t", 1, "a"), ("t", 2, "b")]);
        pending.recorder(0).record("t", "c1", 0, [1, 2].into_iter());
        pending.recorder(1).record("t", "c2", 0, [1].into_iter());
        // A known key still counts; a fourth is refused.
        pending.recorder(1).record("t", "c2", 0, [1].into_iter());
        pending.recorder(1).record("t", "c3", 0, [1].into_iter());
        assert_eq!(pending.keys.load(Ordering::Acquire), 3);
        assert_eq!(sorted(pending.drain(&reg)), (vec![], true));
        pending.recorder(0).record("t", "c4", 0, [2].into_iter());
        assert_eq!(sorted(pending.drain(&reg)), (vec![row("t", "b", "c4", 0, 1)], false));
    }

    #[test]
    fn an_empty_drain_has_the_schema() {
        let batch = Drained::default().to_record_batch().unwrap();
        assert_eq!(batch.num_rows(), 0);
        let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["tenant", "meter", "customer", "earliest", "events"]);
    }
}
