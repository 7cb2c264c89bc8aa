//! A usage query's answer before its values are taken: per group, the aggregate state and, for `unique_count`, the
//! distinct values themselves. In cluster mode each partition answers with one (`Engine::query_partial`), and the
//! node that asked merges them and takes the values once (`Partial::merge`, `finish`): the same exact arithmetic as
//! one engine's query, since a state merges like the minutes it was made of and distinct values are unioned, never
//! added.

use std::collections::{BTreeMap, HashSet};

use super::{GroupKey, UsageResult, UsageRow, MAX_ROWS};
use crate::aggregate::quantity::Quantity;
use crate::aggregate::state::AggState;
use crate::ensure;
use crate::error::{Error, Result};
use crate::storage::codec::{put_i64_sortable, put_str, put_varint, Reader};

pub struct Partial {
    /// The meter counts distinct values (`unique_count`): a value is the size of its group's set.
    pub unique: bool,
    pub by_subject: bool,
    pub dimensions: Vec<String>,
    pub states: BTreeMap<GroupKey, AggState>,
    pub uniques: BTreeMap<GroupKey, HashSet<Vec<u8>>>,
}

impl Partial {
    /// Adds `other`'s groups (an answer to the same query from another partition).
    pub fn merge(&mut self, other: Partial) -> Result<()> {
        ensure!(
            self.unique == other.unique && self.by_subject == other.by_subject && self.dimensions == other.dimensions,
            "invalid_query",
            "the partitions answered different queries (was the meter changed meanwhile?); ask again"
        );
        for (key, state) in other.states {
            self.states.entry(key).or_insert_with(|| AggState::empty(state.aggregation)).merge(&state);
        }
        for (key, values) in other.uniques {
            self.uniques.entry(key).or_default().extend(values);
        }
        ensure!(
            self.states.len() <= MAX_ROWS,
            "result_too_large",
            "the result has more than {MAX_ROWS} rows; use a coarser window_size, fewer group_by dimensions or a shorter range"
        );
        Ok(())
    }

    /// The rows: each group's value taken once.
    pub fn finish(self) -> Result<UsageResult> {
        let mut rows = Vec::with_capacity(self.states.len());
        for (key, state) in self.states {
            let value = match self.uniques.get(&key) {
                Some(set) => Quantity::from_int(set.len() as i64),
                None if self.unique => Quantity::ZERO,
                None => state.result()?,
            };
            let (window_start_us, window_end_us, subject, dims) = key;
            rows.push(UsageRow { window_start_us, window_end_us, subject, dims, value, events: state.count });
        }
        Ok(UsageResult { by_subject: self.by_subject, dimensions: self.dimensions, rows })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT, u8::from(self.unique), u8::from(self.by_subject)];
        put_varint(&mut out, self.dimensions.len() as u128);
        self.dimensions.iter().for_each(|d| put_str(&mut out, d.as_bytes()));
        put_varint(&mut out, self.states.len() as u128);
        for (key, state) in &self.states {
            put_key(&mut out, key);
            let mut bytes = Vec::new();
            state.encode(&mut bytes);
            put_str(&mut out, &bytes);
        }
        put_varint(&mut out, self.uniques.len() as u128);
        for (key, values) in &self.uniques {
            put_key(&mut out, key);
            put_varint(&mut out, values.len() as u128);
            values.iter().for_each(|v| put_str(&mut out, v));
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Partial> {
        let bad = || Error::invalid("invalid_partial", "not a partial usage answer of this version");
        let mut r = Reader::new(bytes);
        if r.u8().map_err(|_| bad())? != FORMAT {
            return Err(bad());
        }
        let read = |r: &mut Reader| -> Result<Partial> {
            let (unique, by_subject) = (r.u8()? != 0, r.u8()? != 0);
            let dimensions = (0..r.varint()?).map(|_| Ok(r.str()?.to_owned())).collect::<Result<Vec<_>>>()?;
            let mut states = BTreeMap::new();
            for _ in 0..r.varint()? {
                let key = read_key(r)?;
                states.insert(key, AggState::decode(r.str_bytes()?)?);
            }
            let mut uniques = BTreeMap::new();
            for _ in 0..r.varint()? {
                let key = read_key(r)?;
                let values = (0..r.varint()?).map(|_| Ok(r.str_bytes()?.to_vec())).collect::<Result<HashSet<_>>>()?;
                uniques.insert(key, values);
            }
            Ok(Partial { unique, by_subject, dimensions, states, uniques })
        };
        read(&mut r).map_err(|_| bad())
    }
}

/// The encoding's version: partitions and the node merging them must agree on it.
const FORMAT: u8 = 1;

fn put_opt(out: &mut Vec<u8>, value: &Option<String>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put_str(out, v.as_bytes());
        }
    }
}

fn read_opt(r: &mut Reader) -> Result<Option<String>> {
    Ok(match r.u8()? {
        0 => None,
        _ => Some(r.str()?.to_owned()),
    })
}

fn put_key(out: &mut Vec<u8>, (start, end, subject, dims): &GroupKey) {
    put_i64_sortable(out, *start);
    put_i64_sortable(out, *end);
    put_opt(out, subject);
    put_varint(out, dims.len() as u128);
    dims.iter().for_each(|d| put_opt(out, d));
}

fn read_key(r: &mut Reader) -> Result<GroupKey> {
    let (start, end, subject) = (r.i64_sortable()?, r.i64_sortable()?, read_opt(r)?);
    let dims = (0..r.varint()?).map(|_| read_opt(r)).collect::<Result<Vec<_>>>()?;
    Ok((start, end, subject, dims))
}
