//! Folding a commit's events into aggregate deltas in memory, so that a commit writes one merge operand
//! per touched bucket (and one key per new distinct value) instead of one write per event.

use hashbrown::{HashMap, HashSet};

use super::extract::Contribution;
use super::meter::Meter;
use super::state::AggState;
use crate::ingest::time::minute_of;
use crate::storage::keys::{agg_key, uniq_key};
use crate::storage::{Cf, WriteSet};

#[derive(Default)]
pub struct Fold {
    buckets: HashMap<Vec<u8>, AggState>,
    uniques: HashSet<Vec<u8>>,
    key: Vec<u8>,
}

impl Fold {
    pub fn add(&mut self, tenant: &str, meter: &Meter, subject: &str, time_us: i64, ordinal: u64, c: &Contribution) {
        self.key.clear();
        agg_key(&mut self.key, tenant, meter.id(), subject, minute_of(time_us), c.dims.iter().map(|d| d.as_deref()));
        let event = AggState::of_event(meter.aggregation(), c.value, time_us, ordinal);
        match self.buckets.get_mut(self.key.as_slice()) {
            Some(state) => state.merge(&event),
            None => {
                self.buckets.insert(self.key.clone(), event);
            }
        }
        if let Some(u) = &c.unique {
            let mut k = Vec::with_capacity(self.key.len() + u.len() + 2);
            uniq_key(&mut k, &self.key, u);
            self.uniques.insert(k);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Emits the deltas: merge operands for buckets, puts for distinct values.
    pub fn write_into(&self, set: &mut WriteSet) {
        let mut value = Vec::with_capacity(32);
        for (key, state) in &self.buckets {
            value.clear();
            state.encode(&mut value);
            set.merge(Cf::Agg, key, &value);
        }
        for key in &self.uniques {
            set.put(Cf::Uniq, key, &[]);
        }
    }

    pub fn clear(&mut self) {
        self.buckets.clear();
        self.uniques.clear();
    }
}
