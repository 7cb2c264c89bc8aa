//! Where a meter's aggregates are no longer kept per minute. Minute aggregates older than `minute_aggregates_s`
//! are rolled up to hours, and hours older than `hour_aggregates_s` to days (`engine::rollup`): the states of an
//! hour (a UTC day) are merged into the `agg` key of its first minute, and the other minutes' keys are deleted. A
//! bucket's key therefore says where it starts, and this record says how long it lasts.
//!
//! Invariants:
//! - `hours_before` is written before any hour of `[hours_done, hours_before)` is rolled up, so a query that reads
//!   the record knows the finest resolution it may meet; only then do the customers' hours roll up, in key order,
//!   each chunk in one write with the `cursor` that says how far it got. `hours_done` reaches `hours_before`
//!   when every customer is done. Days likewise, over ranges already rolled up to hours (`days_before <=
//!   hours_done`). At most one of the two is in progress.
//! - The record and the chunks it describes are read under the same lock (`Shared::rollup`): a query or an export
//!   sees a record and `agg` keys of the same moment.
//! - Merging states is exact (`state::merge_values`), so every window made of whole stored buckets has the same
//!   total before and after a roll-up.
//!
//! Value of `meta: resolution/<tenant, meter id>`: `version u8 = 1`, `hours_before`, `hours_done`, `days_before`,
//! `days_done` (i64, minutes since the epoch, sortable encoding), then the cursor (varint length + bytes; empty when
//! none). A meter without a record has every minute.

use crate::error::{Error, Result};
use crate::storage::codec::{put_i64_sortable, put_str, put_varint, Reader};
use crate::storage::{keys, Cf, ReadStore};

pub const HOUR: i64 = 60;
pub const DAY: i64 = 1440;
const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Minutes before this one (minutes since the epoch) are kept per hour or per day.
    pub hours_before: i64,
    /// Minutes before this one are rolled up to hours, and those in `[hours_done, hours_before)` of the customers
    /// before `cursor` while hours roll up.
    pub hours_done: i64,
    /// Minutes before this one are kept per day.
    pub days_before: i64,
    pub days_done: i64,
    /// While a roll-up is in progress: the `agg` key (after the meter prefix) of the first (customer, hour or day)
    /// not rolled up yet; `None` before the first chunk.
    pub cursor: Option<Vec<u8>>,
}

impl Default for Resolution {
    fn default() -> Self {
        Resolution {
            hours_before: i64::MIN,
            hours_done: i64::MIN,
            days_before: i64::MIN,
            days_done: i64::MIN,
            cursor: None,
        }
    }
}

/// `minute` rounded down to a multiple of `unit` (minutes); `i64::MIN` stays the "nothing yet" mark.
pub fn floor_to(minute: i64, unit: i64) -> i64 {
    minute.checked_sub(minute.rem_euclid(unit)).unwrap_or(i64::MIN)
}

impl Resolution {
    pub fn load(store: &dyn ReadStore, tenant: &str, meter_id: u32) -> Result<Resolution> {
        match store.get(Cf::Meta, &keys::resolution(tenant, meter_id))? {
            None => Ok(Resolution::default()),
            Some(bytes) => Resolution::decode(&bytes),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        for v in [self.hours_before, self.hours_done, self.days_before, self.days_done] {
            put_i64_sortable(&mut out, v);
        }
        let cursor = self.cursor.as_deref().unwrap_or_default();
        put_varint(&mut out, cursor.len() as u128);
        out.extend_from_slice(cursor);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Resolution> {
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return Err(Error::Corrupt("resolution record version".into()));
        }
        let (hours_before, hours_done, days_before, days_done) =
            (r.i64_sortable()?, r.i64_sortable()?, r.i64_sortable()?, r.i64_sortable()?);
        let len = r.varint()? as usize;
        let cursor = r.take(len)?;
        if !r.is_empty() {
            return Err(Error::Corrupt("trailing bytes after a resolution record".into()));
        }
        let cursor = (!cursor.is_empty()).then(|| cursor.to_vec());
        Ok(Resolution { hours_before, hours_done, days_before, days_done, cursor })
    }

    /// The roll-up in progress: (unit in minutes, `[from, to)` minutes).
    pub fn rolling(&self) -> Option<(i64, i64, i64)> {
        if self.hours_done < self.hours_before {
            Some((HOUR, self.hours_done, self.hours_before))
        } else if self.days_done < self.days_before {
            Some((DAY, self.days_done, self.days_before))
        } else {
            None
        }
    }

    /// How many minutes the stored bucket of `subject` at `minute` covers: 1, `HOUR` or `DAY`. A minute inside a
    /// rolled-up hour that is not its first is a late event's minute (the roll-up left none): it covers one minute.
    pub fn span(&self, subject: &str, minute: i64) -> i64 {
        let in_progress = |unit: i64, before: i64| {
            let Some((rolling, from, _)) = self.rolling() else { return false };
            let Some(cursor) = &self.cursor else { return false };
            if rolling != unit || minute < from || minute >= before {
                return false;
            }
            let mut key = Vec::with_capacity(subject.len() + 12);
            put_str(&mut key, subject.as_bytes());
            put_i64_sortable(&mut key, minute);
            key < *cursor
        };
        let rolled = |unit: i64, done: i64, before: i64| {
            minute.rem_euclid(unit) == 0 && (minute < done || in_progress(unit, before))
        };
        if rolled(DAY, self.days_done, self.days_before) {
            DAY
        } else if rolled(HOUR, self.hours_done, self.hours_before) {
            HOUR
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [
            Resolution::default(),
            Resolution {
                hours_before: 600,
                hours_done: 540,
                days_before: -1440,
                days_done: -2880,
                cursor: Some(vec![1, 2]),
            },
        ] {
            assert_eq!(Resolution::decode(&r.encode()).unwrap(), r);
        }
        assert!(Resolution::decode(&[2]).is_err());
    }

    #[test]
    fn spans_follow_the_cursor_while_rolling() {
        let mut key = Vec::new();
        put_str(&mut key, b"c2");
        put_i64_sortable(&mut key, 120);
        let r = Resolution { hours_before: 240, hours_done: 60, days_before: 0, days_done: 0, cursor: Some(key) };
        assert_eq!(r.span("c1", 0), HOUR, "before hours_done");
        assert_eq!(r.span("c1", -DAY), DAY, "before days_done");
        assert_eq!(r.span("c1", 61), 1, "not the first minute of its hour");
        assert_eq!(r.span("c1", 180), HOUR, "a customer before the cursor is done");
        assert_eq!(r.span("c2", 60), HOUR, "an hour before the cursor's");
        assert_eq!(r.span("c2", 120), 1, "the cursor's own hour is not done yet");
        assert_eq!(r.span("c3", 60), 1);
        assert_eq!(r.span("c1", 240), 1, "minutes from hours_before on");
    }

    #[test]
    fn floor_keeps_the_nothing_yet_mark() {
        assert_eq!(floor_to(i64::MIN, DAY), i64::MIN);
        assert_eq!(floor_to(-1, HOUR), -60);
        assert_eq!(floor_to(61, HOUR), 60);
    }
}
