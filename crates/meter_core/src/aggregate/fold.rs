//! Folding events into aggregate deltas in memory. The writer keeps one fold across many commits and
//! flushes it as one merge operand per touched customer-minute, so the cost of aggregation in RocksDB
//! grows with the number of active customers, not with the number of events.

use hashbrown::{HashMap, HashSet};

use super::extract::Contribution;
use super::meter::Meter;
use super::state::{AggState, MinuteStates};
use crate::ingest::time::minute_of;
use crate::storage::keys::{minute_key, put_dims, uniq_key};
use crate::storage::{Cf, WriteSet};

#[derive(Default)]
pub struct Fold {
    /// `agg` key (customer-minute) -> dims -> state.
    minutes: HashMap<Vec<u8>, HashMap<Vec<u8>, AggState>>,
    uniques: HashSet<Vec<u8>>,
    states: usize,
    key: Vec<u8>,
    dims: Vec<u8>,
}

impl Fold {
    pub fn add(&mut self, tenant: &str, meter: &Meter, subject: &str, time_us: i64, ordinal: u64, c: &Contribution) {
        self.key.clear();
        minute_key(&mut self.key, tenant, meter.id(), subject, minute_of(time_us));
        self.dims.clear();
        put_dims(&mut self.dims, c.dims.iter().map(|d| d.as_deref()));
        let event = AggState::of_event(meter.aggregation(), c.value, time_us, ordinal);

        let minute = match self.minutes.get_mut(self.key.as_slice()) {
            Some(m) => m,
            None => self.minutes.entry(self.key.clone()).or_default(),
        };
        match minute.get_mut(self.dims.as_slice()) {
            Some(state) => state.merge(&event),
            None => {
                minute.insert(self.dims.clone(), event);
                self.states += 1;
            }
        }
        if let Some(u) = &c.unique {
            let mut k = Vec::with_capacity(self.key.len() + self.dims.len() + u.len() + 2);
            uniq_key(&mut k, &self.key, &self.dims, u);
            self.uniques.insert(k);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty() && self.uniques.is_empty()
    }

    /// Distinct (customer-minute, dims) states held: what a flush will write.
    pub fn states(&self) -> usize {
        self.states + self.uniques.len()
    }

    /// Emits the deltas (merge operands for customer-minutes, puts for distinct values) and empties the fold.
    pub fn drain_into(&mut self, set: &mut WriteSet) {
        let mut value = Vec::with_capacity(256);
        for (key, states) in self.minutes.drain() {
            value.clear();
            MinuteStates(states.into_iter().collect()).encode(&mut value);
            set.merge(Cf::Agg, &key, &value);
        }
        for key in self.uniques.drain() {
            set.put(Cf::Uniq, &key, &[]);
        }
        self.states = 0;
    }
}
