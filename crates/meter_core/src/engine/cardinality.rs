//! Cardinality limits: per meter, at most `max_combinations_per_minute` distinct dimension combinations for one
//! customer in one minute, and at most `max_customers_per_minute` distinct customers in one minute (engine defaults
//! in `Config`, overridden per meter by its spec's `limits`). An event that would take one of its meters past a
//! limit is refused whole with `cardinality_limit` (never counted by some of its meters and not others); everything
//! else of its batch goes on as usual. So one bad dimension (a request id used as a `group_by`) or one bad subject
//! cannot grow a customer-minute's `agg` value, a fold, or a query's working set without bound.
//!
//! Where the counting lives: the writer decides acceptance, so the writer counts, on its own thread, against a
//! cache of what each customer-minute and each meter-minute holds. Callers do the per-event work beforehand in
//! `prepare` (a [`Scope`] per event and meter: hashes of the customer-minute and of the dimension combination, and
//! the meter's limits; and the event's signature, a hash of all its scopes). Most events repeat a customer-minute and
//! combination already admitted: the writer then finds the signature in one set and is done (what was admitted stays
//! so: combinations are never taken out of a minute). Otherwise it probes two hash tables per meter.
//!
//! Exact for every minute of the back-dating window, with bounded memory, by reading what is durable for a minute
//! that is not in memory:
//! - **Combinations of a customer-minute** are exactly the dimension combinations of its `agg` value (one state per
//!   combination): on a miss the writer reads that one key. What RocksDB does not have yet is what the fold threads
//!   hold or are writing: a cached customer-minute that gained anything in a commit is therefore kept in memory (not
//!   evicted) until every fold shard's watermark (`Shared::agg_seq`) has passed that commit. Anything not in memory
//!   is then complete in `agg`, and the customer is new to the minute exactly when that key does not exist.
//! - **Customers of a meter-minute** cannot be counted from `agg` (its keys sort by customer first), so the writer
//!   keeps the count itself, durably: `meta` key `card/<minute><meter id>` (`keys::card_key`), written in the same
//!   atomic commit as the events it counts, so it is never ahead of or behind what was acknowledged, crash or not.
//!   A new meter's backfill writes the counts of what it filled. Minutes that left the back-dating window (one minute
//!   of slack) are dropped by one range delete a minute: no event can reach them any more.
//!
//! Memory: the cache holds at most about `CACHE_BYTES` of customer-minutes, evicted least recently used after a
//! commit, plus the customer-minutes pinned because their last additions are not in `agg` yet, which the fold threads'
//! own bound on unflushed state bounds (a flush at least every `flush_interval`, or at `FLUSH_STATES`). Meter-minute
//! counts are a few bytes each and dropped wholesale past `MAX_MINUTES` (they are on disk). A refused customer or
//! combination is never cached, so a flood of new request ids costs a probe (or a `get`) per event, and no memory.
//!
//! Combinations are held as 64-bit hashes of their `keys::put_dims` bytes. Two combinations of one customer-minute
//! that share a hash (odds about 1 in 3·10^13 at 1,000 combinations) count as one, and an event whose 64-bit
//! signature equals an admitted one's (about 1 in 10^13 per event with the set full) is taken as admitted: a collision
//! can let an event past a limit, never refuse one wrongly. Customers are compared by their full subject.
//!
//! Cost on the writer (`cost::cardinality_cost`, W1's mix of 10k customers and 5 meters, on a loaded 2-core machine):
//! about 115 ns per event once its signature is known, 565 ns while every customer-minute is new.

use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::{HashMap, HashSet, HashTable};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::aggregate::meter::MeterLimits;
use crate::aggregate::state::MinuteStates;
use crate::error::{Error, Result};
use crate::ingest::time::{minute_of, MICROS_PER_MINUTE};
use crate::storage::{keys, Cf, Store, WriteSet};

/// About how much memory the cache of customer-minutes may hold beyond what is pinned.
pub(crate) const CACHE_BYTES: usize = 64 << 20;
/// Estimated bytes of one cached customer-minute (entry, subject, set header) and of one combination in its set.
const CUSTOMER_BYTES: usize = 160;
const COMBINATION_BYTES: usize = 16;
/// Meter-minute counts held before the clean ones are dropped (they are on disk).
const MAX_MINUTES: usize = 1 << 16;
/// Signatures of admitted events held per generation (two generations: about 12 MiB).
const SIGNATURES: usize = 1 << 19;

/// What the limits check for one event and one meter that counts it; made by `prepare` on the caller's thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope {
    pub meter_id: u32,
    pub minute: i64,
    /// Hash of (meter id, minute, subject): where the customer-minute sits in the writer's table.
    pub customer_hash: u64,
    /// Hash of the dimension combination's `keys::put_dims` bytes.
    pub combination: u64,
    pub max_combinations: u32,
    pub max_customers: u32,
}

impl Scope {
    pub fn new(meter_id: u32, subject: &str, time_us: i64, dims: &[u8], limits: MeterLimits) -> Scope {
        let minute = minute_of(time_us);
        Scope {
            meter_id,
            minute,
            customer_hash: customer_hash(meter_id, minute, subject),
            combination: xxh3_64(dims),
            max_combinations: limits.max_combinations_per_minute.unwrap_or(u32::MAX),
            max_customers: limits.max_customers_per_minute.unwrap_or(u32::MAX),
        }
    }
}

/// The signature of an event's scopes: equal signatures, equal customer-minutes and combinations for every meter.
pub(crate) fn signature(scopes: &[Scope]) -> u64 {
    let mut bytes = [0u8; 16 * 8];
    let mut h = 0;
    for chunk in scopes.chunks(8) {
        for (i, s) in chunk.iter().enumerate() {
            bytes[16 * i..16 * i + 8].copy_from_slice(&s.customer_hash.to_le_bytes());
            bytes[16 * i + 8..16 * i + 16].copy_from_slice(&s.combination.to_le_bytes());
        }
        h = xxh3_64_with_seed(&bytes[..16 * chunk.len()], h);
    }
    h
}

fn customer_hash(meter_id: u32, minute: i64, subject: &str) -> u64 {
    xxh3_64_with_seed(subject.as_bytes(), (minute as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ meter_id as u64)
}

/// Why an event was refused: which meter's limit, which one, and in which minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The customer already has `limit` combinations in the minute.
    Combinations { meter_id: u32, minute: i64, limit: u32 },
    /// The minute already has `limit` customers.
    Customers { meter_id: u32, minute: i64, limit: u32 },
}

impl Refusal {
    pub fn meter_id(self) -> u32 {
        match self {
            Refusal::Combinations { meter_id, .. } | Refusal::Customers { meter_id, .. } => meter_id,
        }
    }

    /// The message of the event's `cardinality_limit` issue: the meter, the limit, and how to raise it.
    pub fn message(self, slug: &str, subject: &str) -> String {
        let at = |minute: i64| {
            chrono::DateTime::from_timestamp_micros(minute * MICROS_PER_MINUTE)
                .map_or_else(|| minute.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        };
        match self {
            Refusal::Combinations { minute, limit, .. } => format!(
                "meter '{slug}' allows at most {limit} distinct dimension combinations per customer and minute \
                 (max_combinations_per_minute), and customer '{subject}' already has {limit} in the minute starting {}; \
                 a group_by property that differs on every event (a request id, a timestamp) is the usual cause. To \
                 raise the limit, start the engine with a higher max_combinations_per_minute (meter serve \
                 --max-combinations-per-minute) or create the meter again with a higher \
                 limits.max_combinations_per_minute, then send the event again",
                at(minute)
            ),
            Refusal::Customers { minute, limit, .. } => format!(
                "meter '{slug}' allows at most {limit} distinct customers per minute (max_customers_per_minute), and \
                 the minute starting {} already has {limit}; a subject that differs on every event is the usual cause. \
                 To raise the limit, start the engine with a higher max_customers_per_minute (meter serve \
                 --max-customers-per-minute) or create the meter again with a higher limits.max_customers_per_minute, \
                 then send the event again",
                at(minute)
            ),
        }
    }
}

/// Combination hashes are xxh3 already: the set uses them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys are hashed")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Combinations = HashSet<u64, BuildHasherDefault<Identity>>;

/// One customer-minute of one meter: every combination it holds (complete: loaded from `agg`, then kept up to date).
struct Customer {
    hash: u64,
    meter_id: u32,
    minute: i64,
    subject: Box<str>,
    combinations: Combinations,
    /// The last commit that added to it: it stays in memory until the folds' watermark has passed that commit.
    last_seq: u64,
    /// When it was last used (`Cardinality::tick`), for eviction.
    used: u64,
}

impl Customer {
    fn is(&self, meter_id: u32, minute: i64, subject: &str) -> bool {
        self.meter_id == meter_id && self.minute == minute && &*self.subject == subject
    }
}

/// One meter-minute: how many distinct customers it holds (exact: loaded from `meta`, then kept up to date).
struct Minute {
    customers: u32,
    /// Changed since the last commit staged it.
    dirty: bool,
}

/// What admitting one scope added, to take it back if a later scope of the event (or of an atomic batch) refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Added {
    Nothing,
    Combination,
    Customer,
}

/// The writer's view of the limits; see the module doc.
pub(crate) struct Cardinality {
    /// About how many bytes of customer-minutes to hold beyond the pinned ones (`CACHE_BYTES`).
    budget: usize,
    customers: HashTable<Customer>,
    minutes: HashMap<(u32, i64), Minute>,
    /// Meter-minutes whose count changed since the last commit, for `stage`.
    dirty: Vec<(u32, i64)>,
    combinations: usize,
    tick: u64,
    /// This event's additions so far, per scope.
    added: Vec<Added>,
    /// While an atomic batch is tried: every addition, to take all back if the batch is refused.
    journal: Option<Vec<(Scope, Box<str>, Added)>>,
    /// Signatures of events admitted whole (outside trials), newest generation first: an event with one of them
    /// needs nothing else. Only a cache: forgetting one costs the slow path once.
    signatures: [Combinations; 2],
    /// Minutes before this one have no counts on disk any more.
    expired_before: Option<i64>,
    /// After an eviction that could not free enough, the next waits until the cache holds more than this or the folds'
    /// watermark has moved past `trim_flushed`, so that a cache full of pinned customer-minutes is not walked again
    /// after every commit.
    trim_above: usize,
    trim_flushed: u64,
}

impl Cardinality {
    pub fn new(budget: usize) -> Cardinality {
        Cardinality {
            budget,
            customers: HashTable::new(),
            minutes: HashMap::new(),
            dirty: Vec::new(),
            combinations: 0,
            tick: 0,
            added: Vec::new(),
            journal: None,
            signatures: Default::default(),
            expired_before: None,
            trim_above: 0,
            trim_flushed: 0,
        }
    }

    /// Admits one event (its subject, the scopes of its meters and their `signature`) into commit `seq`, or says
    /// which limit refuses it; a refused event changes nothing. Reads `agg` and `meta` for what is not in memory.
    pub fn admit(
        &mut self,
        store: &dyn Store,
        tenant: &str,
        subject: &str,
        scopes: &[Scope],
        signature: u64,
        seq: u64,
    ) -> Result<Option<Refusal>> {
        if scopes.is_empty() || self.signatures.iter().any(|known| known.contains(&signature)) {
            return Ok(None);
        }
        self.tick += 1;
        self.added.clear();
        for scope in scopes {
            match self.add(store, tenant, subject, scope, seq)? {
                Ok(added) => self.added.push(added),
                Err(refusal) => {
                    let added = std::mem::take(&mut self.added);
                    for (scope, &added) in scopes.iter().zip(&added).rev() {
                        self.take_back(scope, subject, added);
                    }
                    self.added = added;
                    return Ok(Some(refusal));
                }
            }
        }
        match &mut self.journal {
            Some(journal) => {
                for (scope, &added) in scopes.iter().zip(&self.added) {
                    if added != Added::Nothing {
                        journal.push((*scope, subject.into(), added));
                    }
                }
            }
            None => {
                if self.signatures[0].len() >= SIGNATURES {
                    self.signatures[1] = std::mem::take(&mut self.signatures[0]);
                }
                self.signatures[0].insert(signature);
            }
        }
        Ok(None)
    }

    /// Starts recording additions, for an atomic batch that may yet be refused whole.
    pub fn begin_trial(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Ends the trial: keeps what it added, or takes it all back.
    pub fn end_trial(&mut self, keep: bool) {
        let journal = self.journal.take().unwrap_or_default();
        if !keep {
            for (scope, subject, added) in journal.into_iter().rev() {
                self.take_back(&scope, &subject, added);
            }
        }
    }

    fn add(
        &mut self,
        store: &dyn Store,
        tenant: &str,
        subject: &str,
        scope: &Scope,
        seq: u64,
    ) -> Result<Result<Added, Refusal>> {
        let Scope { meter_id, minute, customer_hash: hash, combination, .. } = *scope;
        let eq = |c: &Customer| c.is(meter_id, minute, subject);
        if self.customers.find(hash, eq).is_none() {
            if let Some(loaded) = load_customer(store, tenant, subject, scope)? {
                self.combinations += loaded.combinations.len();
                self.customers.insert_unique(hash, loaded, |c| c.hash);
            }
        }
        let tick = self.tick;
        if let Some(customer) = self.customers.find_mut(hash, eq) {
            customer.used = tick;
            if customer.combinations.contains(&combination) {
                return Ok(Ok(Added::Nothing));
            }
            if customer.combinations.len() >= scope.max_combinations as usize {
                let limit = scope.max_combinations;
                return Ok(Err(Refusal::Combinations { meter_id, minute, limit }));
            }
            customer.combinations.insert(combination);
            customer.last_seq = seq;
            self.combinations += 1;
            return Ok(Ok(Added::Combination));
        }
        // A customer new to the minute.
        let count = self.minute(store, meter_id, minute)?;
        if count.customers >= scope.max_customers {
            return Ok(Err(Refusal::Customers { meter_id, minute, limit: scope.max_customers }));
        }
        count.customers += 1;
        if !count.dirty {
            count.dirty = true;
            self.dirty.push((meter_id, minute));
        }
        let mut combinations = Combinations::default();
        combinations.insert(combination);
        let customer =
            Customer { hash, meter_id, minute, subject: subject.into(), combinations, last_seq: seq, used: tick };
        self.customers.insert_unique(hash, customer, |c| c.hash);
        self.combinations += 1;
        Ok(Ok(Added::Customer))
    }

    fn take_back(&mut self, scope: &Scope, subject: &str, added: Added) {
        let Scope { meter_id, minute, customer_hash: hash, combination, .. } = *scope;
        let eq = |c: &Customer| c.is(meter_id, minute, subject);
        match added {
            Added::Nothing => {}
            Added::Combination => {
                if let Some(customer) = self.customers.find_mut(hash, eq) {
                    customer.combinations.remove(&combination);
                    self.combinations -= 1;
                }
            }
            Added::Customer => {
                if let Ok(entry) = self.customers.find_entry(hash, eq) {
                    self.combinations -= entry.get().combinations.len();
                    entry.remove();
                }
                // Still marked dirty: the next commit writes the count back as it was.
                if let Some(count) = self.minutes.get_mut(&(meter_id, minute)) {
                    count.customers -= 1;
                }
            }
        }
    }

    /// The count of a meter-minute, read from `meta` if it is not in memory.
    fn minute(&mut self, store: &dyn Store, meter_id: u32, minute: i64) -> Result<&mut Minute> {
        if !self.minutes.contains_key(&(meter_id, minute)) {
            let customers = match store.get(Cf::Meta, &keys::card_key(minute, meter_id))? {
                Some(v) => {
                    u32::from_be_bytes(v.as_slice().try_into().map_err(|_| Error::Corrupt("cardinality count".into()))?)
                }
                None => 0,
            };
            self.minutes.insert((meter_id, minute), Minute { customers, dirty: false });
        }
        Ok(self.minutes.get_mut(&(meter_id, minute)).expect("inserted above"))
    }

    /// Puts the counts that changed into the commit being written, and drops the counts of the minutes that left the
    /// back-dating window (`oldest_us`: the earliest event time any later event may have).
    pub fn stage(&mut self, set: &mut WriteSet, oldest_us: i64) {
        for key in self.dirty.drain(..) {
            if let Some(count) = self.minutes.get_mut(&key) {
                count.dirty = false;
                set.put(Cf::Meta, &keys::card_key(key.1, key.0), &count.customers.to_be_bytes());
            }
        }
        // One minute of slack: the requests of one commit may have read the clock a little apart.
        let oldest = minute_of(oldest_us) - 1;
        if self.expired_before.is_none_or(|before| oldest > before) {
            set.delete_range(Cf::Meta, &keys::card_key(i64::MIN, 0), &keys::card_key(oldest, 0));
            self.expired_before = Some(oldest);
            self.minutes.retain(|&(_, minute), count| minute >= oldest || count.dirty);
        }
    }

    /// After a commit: evicts the least recently used customer-minutes whose additions are all in `agg` (commits up
    /// to `flushed_seq`), until the cache is back under three quarters of its budget; drops clean meter-minute counts
    /// when there are too many.
    pub fn trim(&mut self, flushed_seq: u64) {
        if self.minutes.len() > MAX_MINUTES {
            self.minutes.retain(|_, count| count.dirty);
        }
        if self.bytes() <= self.budget || (self.bytes() <= self.trim_above && flushed_seq == self.trim_flushed) {
            return;
        }
        let mut ages: Vec<u64> = self.customers.iter().filter(|c| c.last_seq <= flushed_seq).map(|c| c.used).collect();
        if ages.is_empty() {
            (self.trim_above, self.trim_flushed) = (self.bytes() + self.budget / 8, flushed_seq);
            return;
        }
        // Evict the older part of what may go, at the quantile that frees about a quarter of the budget: one pass
        // to choose, one to remove, however large the cache.
        let excess = self.bytes() - self.budget * 3 / 4;
        let share = (excess as f64 / self.bytes() as f64 * self.customers.len() as f64) as usize;
        let nth = share.clamp(1, ages.len()) - 1;
        let cutoff = *ages.select_nth_unstable(nth).1;
        let combinations = &mut self.combinations;
        self.customers.retain(|c| {
            let evict = c.last_seq <= flushed_seq && c.used <= cutoff;
            if evict {
                *combinations -= c.combinations.len();
            }
            !evict
        });
        (self.trim_above, self.trim_flushed) = (self.bytes() + self.budget / 8, flushed_seq);
    }

    /// About how many bytes the cached customer-minutes take.
    fn bytes(&self) -> usize {
        self.customers.len() * CUSTOMER_BYTES + self.combinations * COMBINATION_BYTES
    }
}

/// A customer-minute as `agg` holds it (every combination), or `None` if the customer has nothing in that minute.
fn load_customer(store: &dyn Store, tenant: &str, subject: &str, scope: &Scope) -> Result<Option<Customer>> {
    let mut key = Vec::with_capacity(tenant.len() + subject.len() + 24);
    keys::minute_key(&mut key, tenant, scope.meter_id, subject, scope.minute);
    let Some(value) = store.get(Cf::Agg, &key)? else { return Ok(None) };
    let mut combinations = Combinations::default();
    MinuteStates::visit(&value, |dims, _| {
        combinations.insert(xxh3_64(dims));
        Ok(())
    })?;
    Ok(Some(Customer {
        hash: scope.customer_hash,
        meter_id: scope.meter_id,
        minute: scope.minute,
        subject: subject.into(),
        combinations,
        last_seq: 0,
        used: 0,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use std::borrow::Cow;
    use std::collections::{HashMap as Map, HashSet as Set};

    use super::*;
    use crate::aggregate::extract::Contribution;
    use crate::aggregate::fold::Fold;
    use crate::aggregate::meter::{Meter, MeterSpec, StoredMeter};
    use crate::aggregate::quantity::Quantity;
    use crate::storage::keys::put_dims;
    use crate::storage::rocks::RocksStore;

    /// An event: customer, minute, and its combination for each of the two meters.
    type Event = (u8, u8, [u8; 2]);

    #[derive(Debug, Clone)]
    enum Op {
        Event(Event),
        /// An atomic batch: kept whole or taken back whole.
        Atomic(Vec<Event>),
        Commit,
        /// The folds write every commit so far to `agg`.
        Flush,
        /// Close (commit, flush) and open again: nothing in memory.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        let event = || (0u8..7, 0u8..4, [0u8..5, 0u8..5]);
        prop_oneof![
            8 => event().prop_map(Op::Event),
            1 => proptest::collection::vec(event(), 1..4).prop_map(Op::Atomic),
            3 => Just(Op::Commit),
            2 => Just(Op::Flush),
            1 => Just(Op::Restart),
        ]
    }

    const BASE_MINUTE: i64 = 29_923_800;
    /// (max combinations, max customers) of meters 1 and 2.
    const LIMITS: [(u32, u32); 2] = [(3, 3), (2, 4)];

    fn meter(id: u32) -> Meter {
        let json = r#"{"slug":"m","event_type":"x","aggregation":"count","group_by":{"d":"$.d"}}"#;
        let spec: MeterSpec = serde_json::from_str(json).unwrap();
        Meter::compile(StoredMeter { id, created_us: 0, spec }).unwrap()
    }

    fn scopes(&(customer, minute, combos): &Event) -> Vec<Scope> {
        (0..2)
            .map(|m| {
                let mut dims = Vec::new();
                put_dims(&mut dims, [Some(format!("d{}", combos[m]).as_str())]);
                let (c, k) = LIMITS[m];
                let limits = MeterLimits { max_combinations_per_minute: Some(c), max_customers_per_minute: Some(k) };
                let time = (BASE_MINUTE + minute as i64) * MICROS_PER_MINUTE + 5;
                Scope::new(m as u32 + 1, &format!("c{customer}"), time, &dims, limits)
            })
            .collect()
    }

    /// Exact sets: what every admitted event so far holds.
    #[derive(Default, Clone)]
    struct Model {
        combinations: Map<(u32, u8, u8), Set<u8>>,
        customers: Map<(u32, u8), Set<u8>>,
    }

    impl Model {
        fn admit(&mut self, &(customer, minute, combos): &Event) -> Option<Refusal> {
            for m in 0..2 {
                let id = m as u32 + 1;
                let (max_c, max_k) = LIMITS[m];
                let minute_at = BASE_MINUTE + minute as i64;
                let customers = self.customers.get(&(id, minute)).cloned().unwrap_or_default();
                if !customers.contains(&customer) {
                    if customers.len() >= max_k as usize {
                        return Some(Refusal::Customers { meter_id: id, minute: minute_at, limit: max_k });
                    }
                    continue;
                }
                let held = &self.combinations[&(id, minute, customer)];
                if !held.contains(&combos[m]) && held.len() >= max_c as usize {
                    return Some(Refusal::Combinations { meter_id: id, minute: minute_at, limit: max_c });
                }
            }
            for (id, combo) in (1..).zip(combos) {
                self.customers.entry((id, minute)).or_default().insert(customer);
                self.combinations.entry((id, minute, customer)).or_default().insert(combo);
            }
            None
        }
    }

    /// The engine's side: the limits' cache, the commits (counts in `meta`) and the folds (combinations in `agg`).
    struct Sim {
        store: RocksStore,
        card: Cardinality,
        meters: [Meter; 2],
        seq: u64,
        flushed: u64,
        staged: Vec<Event>,
        /// Committed events whose aggregates the folds have not written.
        unflushed: Vec<Event>,
    }

    impl Sim {
        fn admit(&mut self, e: &Event) -> Option<Refusal> {
            let subject = format!("c{}", e.0);
            let scopes = scopes(e);
            let refusal =
                self.card.admit(&self.store, "t", &subject, &scopes, signature(&scopes), self.seq + 1).unwrap();
            if refusal.is_none() {
                self.staged.push(*e);
            }
            refusal
        }

        fn commit(&mut self) {
            let mut set = WriteSet::default();
            self.card.stage(&mut set, (BASE_MINUTE - 10) * MICROS_PER_MINUTE);
            self.store.write(&set, false).unwrap();
            if !self.staged.is_empty() {
                self.seq += 1;
                self.unflushed.append(&mut self.staged);
            }
            self.card.trim(self.flushed);
        }

        fn flush(&mut self) {
            let mut fold = Fold::default();
            for &(customer, minute, combos) in &self.unflushed {
                let c = fold.customer("t", &format!("c{customer}"));
                for (m, meter) in self.meters.iter().enumerate() {
                    let dims = vec![Some(Cow::Owned(format!("d{}", combos[m])))];
                    let contribution = Contribution { value: Quantity::from_int(1), unique: None, dims };
                    fold.add(c, meter, (BASE_MINUTE + minute as i64) * MICROS_PER_MINUTE, 0, &contribution);
                }
            }
            self.unflushed.clear();
            let mut set = WriteSet::default();
            fold.drain_into(&mut set);
            self.store.write(&set, false).unwrap();
            self.flushed = self.seq;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever is evicted, pinned, loaded back from `agg` and `meta`, tried and taken back or lost in a restart,
        /// every decision equals the one exact sets make.
        #[test]
        fn decisions_equal_exact_sets(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            // A budget of a few customer-minutes: eviction after nearly every commit.
            let budget = 4 * CUSTOMER_BYTES;
            let mut sim = Sim {
                store: RocksStore::open(dir.path(), &crate::Config::default().store_options()).unwrap(),
                card: Cardinality::new(budget),
                meters: [meter(1), meter(2)],
                seq: 0,
                flushed: 0,
                staged: Vec::new(),
                unflushed: Vec::new(),
            };
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Event(e) => prop_assert_eq!(sim.admit(&e), model.admit(&e), "{:?}", e),
                    Op::Atomic(events) => {
                        let mut trial = model.clone();
                        sim.card.begin_trial();
                        let mut refused = false;
                        let staged = sim.staged.len();
                        for e in &events {
                            let expected = trial.admit(e);
                            prop_assert_eq!(sim.admit(e), expected, "{:?}", e);
                            refused |= expected.is_some();
                        }
                        sim.card.end_trial(!refused);
                        if refused {
                            sim.staged.truncate(staged);
                        } else {
                            model = trial;
                        }
                    }
                    Op::Commit => sim.commit(),
                    Op::Flush => sim.flush(),
                    Op::Restart => {
                        sim.commit();
                        sim.flush();
                        sim.card = Cardinality::new(budget);
                    }
                }
            }
        }
    }

    #[test]
    fn a_customer_minute_lacking_from_agg_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &crate::Config::default().store_options()).unwrap();
        let mut card = Cardinality::new(0);
        let e: Event = (1, 0, [1, 1]);
        let scopes = scopes(&e);
        assert_eq!(card.admit(&store, "t", "c1", &scopes, signature(&scopes), 1).unwrap(), None);
        card.trim(0);
        assert_eq!(card.customers.len(), 2, "pinned until the folds wrote commit 1");
        card.trim(1);
        assert_eq!(card.customers.len(), 0);
    }
}

/// The writer's cost of the limits per event, on a W1-like mix (`cargo test --release -p meter_core --lib
/// cardinality_cost -- --ignored --nocapture`): 10k customers (Zipf), 5 meters, up to 72 combinations, one minute.
#[cfg(test)]
mod cost {
    use super::*;
    use crate::storage::keys::put_dims;
    use crate::storage::rocks::RocksStore;

    #[test]
    #[ignore]
    fn cardinality_cost() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &crate::Config::default().store_options()).unwrap();
        let mut card = Cardinality::new(CACHE_BYTES);
        let limits = MeterLimits { max_combinations_per_minute: Some(1000), max_customers_per_minute: Some(100_000) };
        let mut x = 88172645463325252u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let weights: Vec<f64> = (1..=10_000).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
        let total: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut acc = 0.0;
        for w in &weights {
            acc += w / total;
            cumulative.push(acc);
        }
        let events: Vec<(String, Vec<Scope>)> = (0..1_000_000)
            .map(|_| {
                let u = (next() % 1_000_000) as f64 / 1e6;
                let subject = format!("cust-{:05}", cumulative.partition_point(|&c| c < u));
                let (model, region, tier) = (next() % 6, next() % 4, next() % 3);
                let dims = [
                    vec![model, region, tier],
                    vec![model, region, tier],
                    vec![model, region],
                    vec![model],
                    vec![model],
                ];
                let scopes = dims
                    .iter()
                    .enumerate()
                    .map(|(m, d)| {
                        let mut bytes = Vec::new();
                        put_dims(&mut bytes, d.iter().map(|v| Some(["a", "b", "c", "d", "e", "f"][*v as usize])));
                        Scope::new(m as u32 + 1, &subject, 29_923_800 * MICROS_PER_MINUTE, &bytes, limits)
                    })
                    .collect();
                (subject, scopes)
            })
            .collect();
        for pass in ["first (every customer-minute new)", "second (all known)"] {
            let started = std::time::Instant::now();
            for (seq, chunk) in events.chunks(1000).enumerate() {
                for (subject, scopes) in chunk {
                    assert!(card
                        .admit(&store, "t", subject, scopes, signature(scopes), seq as u64 + 1)
                        .unwrap()
                        .is_none());
                }
                let mut set = WriteSet::default();
                card.stage(&mut set, 0);
                card.trim(seq as u64);
            }
            let elapsed = started.elapsed();
            println!(
            "{pass}: {} events, 5 meters: {:.0} ns per event on the writer ({} customer-minutes, {} combinations held)",
            events.len(),
            elapsed.as_nanos() as f64 / events.len() as f64,
            card.customers.len(),
            card.combinations
        );
        }
    }
}
