//! Folding events into aggregate deltas in memory. The writer keeps one fold across many commits and
//! flushes it as one merge operand per touched customer-minute, so the cost of aggregation in RocksDB
//! grows with the number of active customers, not with the number of events.
//!
//! Customers are interned once per event (`customer`), so that each of the event's meters then finds
//! its bucket by a small integer key rather than by hashing and comparing strings again.

use hashbrown::{HashMap, HashSet};

use super::extract::{Contribution, Counted};
use super::meter::{Aggregation, Meter};
use super::quantity::Quantity;
use super::state::{AggState, MinuteStates};
use crate::ingest::time::{minute_of, MINUTES_PER_DAY};
use crate::storage::keys::{day_key, minute_key, put_dims, uniq_key};
use crate::storage::{Cf, WriteSet};

/// What folds hold in memory for one meter: the part of a query's answer not yet in RocksDB.
#[derive(Debug, Default)]
pub struct Peeked {
    /// (subject, minute, dims as `keys::put_dims` bytes, state).
    pub states: Vec<(String, i64, Vec<u8>, AggState)>,
    /// (subject, minute, dims, distinct value) of a `unique_count` meter.
    pub uniques: Vec<(String, i64, Vec<u8>, String)>,
}

impl Peeked {
    pub fn append(&mut self, mut other: Peeked) {
        self.states.append(&mut other.states);
        self.uniques.append(&mut other.uniques);
    }
}

/// What a query wants from a fold: one tenant's meter, its minutes in `minutes`, of some customers (all if `None`).
#[derive(Debug, Clone)]
pub struct PeekFilter {
    pub tenant: String,
    pub meter_id: u32,
    pub subjects: Option<Vec<String>>,
    pub minutes: std::ops::Range<i64>,
}

/// A (tenant, customer) pair interned in one fold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomerId(u32);

#[derive(Default)]
pub struct Fold {
    /// Interned (tenant, subject) pairs, by id.
    customers: Vec<(String, String)>,
    customer_ids: HashMap<(String, String), CustomerId>,
    /// Interned dimension combinations (`keys::put_dims` bytes), by id.
    combos: Vec<Vec<u8>>,
    combo_ids: HashMap<Vec<u8>, u32>,
    /// One flat map keyed by small integers: (customer, meter id, minute, dims) -> state.
    states: HashMap<(CustomerId, u32, i64, u32), AggState>,
    /// (customer, meter id, minute, dims, distinct value) of `unique_count` meters.
    uniques: HashSet<(CustomerId, u32, i64, u32, String)>,
    /// Scratch for `add`'s dimension bytes.
    dims: Vec<u8>,
    /// The first and last commit of the events folded (an ordinal's high bits, `ordinal_commit`): the days' marks
    /// keep them, so that a correction reads only the commits that can hold a day's events (`engine::correct`).
    commits: Option<(u64, u64)>,
}

/// Events are numbered by commit: the `n`-th event a commit accepts has the ordinal `first_ordinal(commit) + n`, so
/// ordinals order events as they were accepted, and an ordinal names its commit (`ordinal_commit`).
pub fn first_ordinal(commit: u64) -> u64 {
    commit << ORDINAL_BITS
}

/// The commit an event's ordinal was given by (`first_ordinal`).
pub fn ordinal_commit(ordinal: u64) -> u64 {
    ordinal >> ORDINAL_BITS
}

/// Room for 16 M events per commit (a commit holds at most `Config::max_commit_events`, 20,000 by default).
const ORDINAL_BITS: u32 = 24;

/// Keys, in a day's mark, of the first and last commit folded into the day (min and max states); the count state of
/// the day's events has the empty key.
pub const DAY_FIRST_COMMIT: &[u8] = b"\xfffirst";
pub const DAY_LAST_COMMIT: &[u8] = b"\xfflast";

impl Fold {
    pub fn customer(&mut self, tenant: &str, subject: &str) -> CustomerId {
        // Lookup by borrowed pair without allocating: hashbrown's `Equivalent` over (&str, &str).
        if let Some(&id) = self.customer_ids.get(&PairRef(tenant, subject)) {
            return id;
        }
        let id = CustomerId(self.customers.len() as u32);
        self.customers.push((tenant.to_owned(), subject.to_owned()));
        self.customer_ids.insert((tenant.to_owned(), subject.to_owned()), id);
        id
    }

    /// Adds what an event contributes to `meter` (replay and backfill, which extract from the retained events).
    pub fn add(&mut self, customer: CustomerId, meter: &Meter, time_us: i64, ordinal: u64, c: &Contribution) {
        self.add_in(customer, meter, minute_of(time_us), time_us, ordinal, c);
    }

    /// Adds an event to the bucket that starts at `bucket` (its own minute, or the hour or day it was rolled up into:
    /// a correction restates such buckets whole).
    pub fn add_in(
        &mut self,
        customer: CustomerId,
        meter: &Meter,
        bucket: i64,
        time_us: i64,
        ordinal: u64,
        c: &Contribution,
    ) {
        let mut dims = std::mem::take(&mut self.dims);
        dims.clear();
        put_dims(&mut dims, c.dims.iter().map(|d| d.as_deref()));
        let counted = Counted {
            meter_id: meter.id(),
            aggregation: meter.aggregation(),
            value: c.value,
            dims: &dims,
            unique: c.unique.as_deref(),
        };
        self.add_at(customer, counted, bucket, time_us, ordinal);
        self.dims = dims;
    }

    /// Adds a contribution kept when the event was extracted (ingest: `engine::prepare` keeps them).
    pub fn add_counted(&mut self, customer: CustomerId, c: Counted<'_>, time_us: i64, ordinal: u64) {
        self.add_at(customer, c, minute_of(time_us), time_us, ordinal);
    }

    fn add_at(&mut self, customer: CustomerId, c: Counted<'_>, bucket: i64, time_us: i64, ordinal: u64) {
        let commit = ordinal_commit(ordinal);
        self.commits = Some(self.commits.map_or((commit, commit), |(a, b)| (a.min(commit), b.max(commit))));
        let combo = match self.combo_ids.get(c.dims) {
            Some(&id) => id,
            None => {
                let id = self.combos.len() as u32;
                self.combos.push(c.dims.to_vec());
                self.combo_ids.insert(c.dims.to_vec(), id);
                id
            }
        };
        let key = (customer, c.meter_id, bucket, combo);
        let event = AggState::of_event(c.aggregation, c.value, time_us, ordinal);
        self.states.entry(key).and_modify(|s| s.merge(&event)).or_insert(event);
        if let Some(u) = c.unique {
            self.uniques.insert((key.0, key.1, key.2, key.3, u.to_owned()));
        }
    }

    /// Copies out what the fold holds of what `filter` asks for. With customers named, only theirs are copied: a
    /// query of one customer copies that customer's states, not the meter's.
    pub fn peek(&self, filter: &PeekFilter, into: &mut Peeked) {
        let named: Option<Vec<CustomerId>> = filter.subjects.as_ref().map(|subjects| {
            subjects.iter().filter_map(|s| self.customer_ids.get(&PairRef(&filter.tenant, s)).copied()).collect()
        });
        if named.as_ref().is_some_and(Vec::is_empty) {
            return;
        }
        let wanted = |customer: CustomerId, meter: u32, minute: i64| {
            meter == filter.meter_id
                && filter.minutes.contains(&minute)
                && match &named {
                    Some(ids) => ids.contains(&customer),
                    None => self.customers[customer.0 as usize].0 == filter.tenant,
                }
        };
        let subject = |customer: CustomerId| self.customers[customer.0 as usize].1.clone();
        for (&(customer, meter, minute, combo), state) in &self.states {
            if wanted(customer, meter, minute) {
                into.states.push((subject(customer), minute, self.combos[combo as usize].clone(), *state));
            }
        }
        for (customer, meter, minute, combo, unique) in &self.uniques {
            if wanted(*customer, *meter, *minute) {
                into.uniques.push((subject(*customer), *minute, self.combos[*combo as usize].clone(), unique.clone()));
            }
        }
    }

    /// Per (meter id, minute): how many distinct customers the fold holds (the cardinality counts of a backfill).
    pub fn customers_per_minute(&self) -> HashMap<(u32, i64), u32> {
        let mut seen = HashSet::new();
        let mut counts: HashMap<(u32, i64), u32> = HashMap::new();
        for &(customer, meter, minute, _) in self.states.keys() {
            if seen.insert((customer, meter, minute)) {
                *counts.entry((meter, minute)).or_default() += 1;
            }
        }
        counts
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty() && self.uniques.is_empty()
    }

    /// Distinct states held: what a flush will write.
    pub fn states(&self) -> usize {
        self.states.len() + self.uniques.len()
    }

    /// Emits the deltas (merge operands for customer-minutes and for each meter's touched days, puts for
    /// distinct values) and empties the fold.
    pub fn drain_into(&mut self, set: &mut WriteSet) {
        self.encode_into(set);
        *self = Fold::default();
    }

    /// Emits the deltas (`drain_into`), leaving the fold as it is: queries may read it meanwhile.
    pub fn encode_into(&self, set: &mut WriteSet) {
        // Sorted, each customer-minute's states are one run: one merge operand each. Sorting a vector
        // beats grouping through another map, whose every insert would miss the cache.
        let mut states: Vec<_> = self.states.iter().map(|(key, state)| (*key, state)).collect();
        states.sort_unstable_by_key(|(key, _)| *key);
        let (mut key, mut value) = (Vec::with_capacity(64), Vec::with_capacity(256));
        // Events per (tenant, meter, UTC day), written in the same batch as the minutes they count.
        let mut days: HashMap<(&str, u32, i64), u64> = HashMap::new();
        for run in states.chunk_by(|(a, _), (b, _)| (a.0, a.1, a.2) == (b.0, b.1, b.2)) {
            let (customer, meter_id, minute, _) = run[0].0;
            let (tenant, subject) = &self.customers[customer.0 as usize];
            *days.entry((tenant, meter_id, minute.div_euclid(MINUTES_PER_DAY))).or_default() +=
                run.iter().map(|(_, state)| state.count).sum::<u64>();
            key.clear();
            minute_key(&mut key, tenant, meter_id, subject, minute);
            value.clear();
            let entries = run.iter().map(|((.., combo), state)| (self.combos[*combo as usize].as_slice(), *state));
            MinuteStates::encode_entries(&mut value, run.len(), entries);
            set.merge(Cf::Agg, &key, &value);
        }
        for ((tenant, meter_id, day), events) in days {
            key.clear();
            day_key(&mut key, tenant, meter_id, day);
            value.clear();
            let mark = AggState { count: events, ..AggState::empty(Aggregation::Count) };
            let (first, last) = self.commits.unwrap_or_default();
            let first = AggState::of_event(Aggregation::Min, Quantity(first as i128), 0, 0);
            let last = AggState::of_event(Aggregation::Max, Quantity(last as i128), 0, 0);
            let entries = [(&[][..], &mark), (DAY_FIRST_COMMIT, &first), (DAY_LAST_COMMIT, &last)];
            MinuteStates::encode_entries(&mut value, entries.len(), entries.into_iter());
            set.merge(Cf::Days, &key, &value);
        }
        for (customer, meter_id, minute, combo, unique) in &self.uniques {
            let (tenant, subject) = &self.customers[customer.0 as usize];
            key.clear();
            minute_key(&mut key, tenant, *meter_id, subject, *minute);
            let mut k = Vec::new();
            uniq_key(&mut k, &key, &self.combos[*combo as usize], unique);
            set.put(Cf::Uniq, &k, &[]);
        }
    }
}

/// A borrowed (tenant, subject) that finds an owned pair in the intern table (and in `engine::changes`).
#[derive(Hash)]
pub(crate) struct PairRef<'a>(pub &'a str, pub &'a str);

/// The owned pair an `entry_ref` inserts when the borrowed one is not there yet.
impl From<&PairRef<'_>> for (String, String) {
    fn from(pair: &PairRef<'_>) -> Self {
        (pair.0.to_owned(), pair.1.to_owned())
    }
}

impl hashbrown::Equivalent<(String, String)> for PairRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}
