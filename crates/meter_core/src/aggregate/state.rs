//! Aggregate states and their merge: one `AggState` per customer, minute and dimension combination, grouped
//! per customer-minute into the `MinuteStates` value of one `agg` key, and RocksDB's merge operator.
//!
//! Ingest never reads before it writes: each commit emits one merge operand per touched bucket, and
//! RocksDB folds operands with [`merge_values`]. Merging is associative and commutative (for `latest`,
//! ties are broken by the ingest ordinal), so order and grouping of operands never change a result.
//!
//! Encoding: `[tag][count varint][fields...]`; tag = aggregation number, with bit 7 set once a sum has
//! overflowed (the bucket then reports an overflow error instead of a wrong number).

use std::collections::BTreeMap;

use super::meter::Aggregation;
use super::quantity::Quantity;
use crate::error::{Error, Result};
use crate::storage::codec::{put_varint, put_zigzag, Reader};
use crate::storage::MergeOperator;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggState {
    pub aggregation: Aggregation,
    /// Events folded into this state.
    pub count: u64,
    /// Sum for sum/avg, the extreme for min/max, the newest value for latest; unused otherwise.
    pub value: Quantity,
    /// For latest: (event time, ingest ordinal) of `value`.
    pub at: (i64, u64),
    pub overflow: bool,
}

const OVERFLOW: u8 = 0x80;

impl AggState {
    pub fn empty(aggregation: Aggregation) -> Self {
        AggState { aggregation, count: 0, value: Quantity::ZERO, at: (i64::MIN, 0), overflow: false }
    }

    /// The state of a single event.
    pub fn of_event(aggregation: Aggregation, value: Quantity, time_us: i64, ordinal: u64) -> Self {
        // Only `latest` keeps the event's position; other states stay equal whatever order built them.
        let at = if aggregation == Aggregation::Latest { (time_us, ordinal) } else { (i64::MIN, 0) };
        let value = if aggregation.numeric() { value } else { Quantity::ZERO };
        AggState { aggregation, count: 1, value, at, overflow: false }
    }

    pub fn merge(&mut self, other: &AggState) {
        debug_assert_eq!(self.aggregation, other.aggregation);
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        self.count += other.count;
        self.overflow |= other.overflow;
        match self.aggregation {
            Aggregation::Sum | Aggregation::Avg => match self.value.checked_add(other.value) {
                Some(v) => self.value = v,
                None => self.overflow = true,
            },
            Aggregation::Min => self.value = self.value.min(other.value),
            Aggregation::Max => self.value = self.value.max(other.value),
            Aggregation::Latest => {
                if other.at > self.at {
                    self.value = other.value;
                    self.at = other.at;
                }
            }
            Aggregation::Count | Aggregation::UniqueCount => {}
        }
    }

    /// The number a query reports for this state (`unique_count` is computed from its value set instead).
    pub fn result(&self) -> Result<Quantity> {
        if self.overflow {
            return Err(Error::Overflow("a sum in this range exceeds 1.7e29; narrow the range or window".into()));
        }
        Ok(match self.aggregation {
            Aggregation::Count | Aggregation::UniqueCount => Quantity::from_int(self.count as i64),
            Aggregation::Avg => self.value.div_round_half_even(self.count),
            _ => self.value,
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(tag(self.aggregation) | if self.overflow { OVERFLOW } else { 0 });
        put_varint(out, self.count as u128);
        match self.aggregation {
            Aggregation::Count | Aggregation::UniqueCount => {}
            Aggregation::Latest => {
                put_zigzag(out, self.value.0);
                put_zigzag(out, self.at.0 as i128);
                put_varint(out, self.at.1 as u128);
            }
            _ => put_zigzag(out, self.value.0),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<AggState> {
        let mut r = Reader::new(bytes);
        let t = r.u8()?;
        let aggregation = from_tag(t & !OVERFLOW)?;
        let mut s = AggState::empty(aggregation);
        s.overflow = t & OVERFLOW != 0;
        s.count = u64::try_from(r.varint()?).map_err(|_| Error::Corrupt("count".into()))?;
        match aggregation {
            Aggregation::Count | Aggregation::UniqueCount => {}
            Aggregation::Latest => {
                s.value = Quantity(r.zigzag()?);
                s.at = (r.zigzag()? as i64, r.varint()? as u64);
            }
            _ => s.value = Quantity(r.zigzag()?),
        }
        if !r.is_empty() {
            return Err(Error::Corrupt("trailing bytes after an aggregate state".into()));
        }
        Ok(s)
    }
}

fn tag(a: Aggregation) -> u8 {
    match a {
        Aggregation::Sum => 1,
        Aggregation::Count => 2,
        Aggregation::Min => 3,
        Aggregation::Max => 4,
        Aggregation::UniqueCount => 5,
        Aggregation::Latest => 6,
        Aggregation::Avg => 7,
    }
}

fn from_tag(t: u8) -> Result<Aggregation> {
    Ok(match t {
        1 => Aggregation::Sum,
        2 => Aggregation::Count,
        3 => Aggregation::Min,
        4 => Aggregation::Max,
        5 => Aggregation::UniqueCount,
        6 => Aggregation::Latest,
        7 => Aggregation::Avg,
        _ => return Err(Error::Corrupt(format!("unknown aggregation tag {t}"))),
    })
}

/// The value of one `agg` key: the states of one customer-minute, one per dimension combination
/// (keyed by `keys::put_dims` bytes). Encoding: `n varint`, then per entry `dims` and `state`, each as
/// varint length + bytes, in dims order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinuteStates(pub BTreeMap<Vec<u8>, AggState>);

impl MinuteStates {
    /// Merges `other` in; `false` if the two disagree on an aggregation (bytes we did not write).
    pub fn merge(&mut self, dims: &[u8], state: &AggState) -> bool {
        match self.0.get_mut(dims) {
            Some(s) if s.aggregation != state.aggregation => return false,
            Some(s) => s.merge(state),
            None => {
                self.0.insert(dims.to_vec(), *state);
            }
        }
        true
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        Self::encode_entries(out, self.0.len(), self.0.iter().map(|(dims, s)| (dims.as_slice(), s)));
    }

    /// Encodes `n` (dims, state) entries with distinct dims, in any order, as one value.
    pub fn encode_entries<'a>(out: &mut Vec<u8>, n: usize, entries: impl Iterator<Item = (&'a [u8], &'a AggState)>) {
        put_varint(out, n as u128);
        let mut state = Vec::with_capacity(24);
        for (dims, s) in entries {
            put_varint(out, dims.len() as u128);
            out.extend_from_slice(dims);
            state.clear();
            s.encode(&mut state);
            put_varint(out, state.len() as u128);
            out.extend_from_slice(&state);
        }
    }

    /// Calls `f(dims, state)` for every entry of an encoded value.
    pub fn visit(bytes: &[u8], mut f: impl FnMut(&[u8], AggState) -> Result<()>) -> Result<()> {
        let mut r = Reader::new(bytes);
        let n = r.varint()?;
        for _ in 0..n {
            let len = r.varint()? as usize;
            let dims = r.take(len)?;
            let len = r.varint()? as usize;
            f(dims, AggState::decode(r.take(len)?)?)?;
        }
        if !r.is_empty() {
            return Err(Error::Corrupt("trailing bytes after minute states".into()));
        }
        Ok(())
    }

    pub fn decode(bytes: &[u8]) -> Result<MinuteStates> {
        let mut out = MinuteStates::default();
        Self::visit(bytes, |dims, s| {
            if out.merge(dims, &s) {
                Ok(())
            } else {
                Err(Error::Corrupt("mixed aggregations in one bucket".into()))
            }
        })?;
        Ok(out)
    }
}

/// The merge operator of `agg` and `days` (minute states, and the days' marks: count states), which the engine gives
/// the store at open (`Config::store_options`). RocksDB records its name with the store's options.
pub const MERGE_OPERATOR: MergeOperator = MergeOperator { name: "meter_agg_v1", merge: merge_operands };

fn merge_operands(existing: Option<&[u8]>, operands: &mut dyn Iterator<Item = &[u8]>) -> Option<Vec<u8>> {
    merge_values(existing, operands)
}

/// RocksDB's merge: folds an existing value and operands into one encoded `MinuteStates`.
/// `None` (reported by RocksDB as corruption) only for bytes this module did not write.
pub fn merge_values<'a>(existing: Option<&[u8]>, operands: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut operands = operands.into_iter();
    let first = operands.next();
    let mut rest = operands.peekable();
    if let (None, Some(only), None) = (existing, first, rest.peek()) {
        // A lone operand is a value already (the same encoding): the common case of a key written once, which
        // every read of it would otherwise rebuild. It is still checked, as merging would.
        MinuteStates::visit(only, |_, _| Ok(())).ok()?;
        return Some(only.to_vec());
    }
    let mut acc = match existing {
        Some(b) => MinuteStates::decode(b).ok()?,
        None => MinuteStates::default(),
    };
    for op in first.into_iter().chain(rest) {
        let mut consistent = true;
        MinuteStates::visit(op, |dims, s| {
            consistent &= acc.merge(dims, &s);
            Ok(())
        })
        .ok()?;
        if !consistent {
            return None;
        }
    }
    let mut out = Vec::with_capacity(64);
    acc.encode(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Aggregation; 7] = [
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::UniqueCount,
        Aggregation::Latest,
        Aggregation::Avg,
    ];

    fn events() -> impl Strategy<Value = Vec<(i128, i64)>> {
        proptest::collection::vec((-1_000_000_000_000i128..1_000_000_000_000, -5i64..5), 1..30)
    }

    fn fold(a: Aggregation, evs: &[(i128, i64)], offset: u64) -> AggState {
        let mut s = AggState::empty(a);
        for (i, &(v, t)) in evs.iter().enumerate() {
            s.merge(&AggState::of_event(a, Quantity(v), t, offset + i as u64));
        }
        s
    }

    proptest! {
        #[test]
        fn merging_partial_states_equals_folding_all_events(evs in events(), split in 0usize..30, agg in 0usize..7) {
            let a = ALL[agg];
            let split = split.min(evs.len());
            let whole = fold(a, &evs, 0);
            let mut left = fold(a, &evs[..split], 0);
            let right = fold(a, &evs[split..], split as u64);
            // Merge in the opposite order too: operands may reach RocksDB's merge in any grouping.
            let mut right_first = right;
            right_first.merge(&left);
            left.merge(&right);
            prop_assert_eq!(left, whole);
            prop_assert_eq!(right_first, whole);
        }

        #[test]
        fn results_match_a_direct_computation(evs in events(), agg in 0usize..7) {
            let a = ALL[agg];
            let s = fold(a, &evs, 0);
            let vals: Vec<i128> = evs.iter().map(|e| e.0).collect();
            let expect = match a {
                Aggregation::Sum => vals.iter().sum(),
                Aggregation::Count | Aggregation::UniqueCount => evs.len() as i128 * 1_000_000_000,
                Aggregation::Min => *vals.iter().min().unwrap(),
                Aggregation::Max => *vals.iter().max().unwrap(),
                Aggregation::Avg => Quantity(vals.iter().sum()).div_round_half_even(vals.len() as u64).0,
                Aggregation::Latest => {
                    // Latest time wins; among equal times, the one ingested last.
                    let best = evs.iter().enumerate().max_by_key(|(i, e)| (e.1, *i)).unwrap();
                    best.1 .0
                }
            };
            prop_assert_eq!(s.result().unwrap().0, expect);
        }

        #[test]
        fn encoding_round_trips(evs in events(), agg in 0usize..7) {
            let s = fold(ALL[agg], &evs, 7);
            let mut out = Vec::new();
            s.encode(&mut out);
            prop_assert_eq!(AggState::decode(&out).unwrap(), s);
        }

        #[test]
        fn decoding_garbage_is_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..30)) {
            let _ = AggState::decode(&bytes);
            let _ = MinuteStates::decode(&bytes);
        }
    }

    fn minute(entries: &[(&[u8], AggState)]) -> Vec<u8> {
        let mut m = MinuteStates::default();
        for (dims, s) in entries {
            assert!(m.merge(dims, s));
        }
        let mut out = Vec::new();
        m.encode(&mut out);
        out
    }

    #[test]
    fn overflow_poisons_the_bucket() {
        let big = minute(&[(b"", AggState::of_event(Aggregation::Sum, Quantity(i128::MAX - 1), 0, 0))]);
        let merged = merge_values(Some(&big), [big.as_slice()]).unwrap();
        let m = MinuteStates::decode(&merged).unwrap();
        assert!(matches!(m.0[&b""[..]].result(), Err(Error::Overflow(_))));
    }

    #[test]
    fn merge_operator_merges_per_dimension_combination() {
        let a = minute(&[(b"x", AggState::of_event(Aggregation::Sum, Quantity(1), 0, 0))]);
        let b = minute(&[
            (b"x", AggState::of_event(Aggregation::Sum, Quantity(2), 0, 1)),
            (b"y", AggState::of_event(Aggregation::Sum, Quantity(5), 0, 2)),
        ]);
        let m = MinuteStates::decode(&merge_values(Some(&a), [b.as_slice(), a.as_slice()]).unwrap()).unwrap();
        assert_eq!((m.0[&b"x"[..]].value, m.0[&b"x"[..]].count), (Quantity(4), 3));
        assert_eq!(m.0[&b"y"[..]].value, Quantity(5));
    }

    #[test]
    fn merge_operator_refuses_mixed_aggregations() {
        let a = minute(&[(b"", AggState::of_event(Aggregation::Sum, Quantity(1), 0, 0))]);
        let b = minute(&[(b"", AggState::of_event(Aggregation::Max, Quantity(1), 0, 0))]);
        assert_eq!(merge_values(Some(&a), [b.as_slice()]), None);
        assert!(merge_values(None, [a.as_slice(), a.as_slice()]).is_some());
        assert_eq!(merge_values(None, [&b"\x05junk"[..]]), None);
    }
}
