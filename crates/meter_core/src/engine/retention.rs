//! Retention of retained events: a tenant's events are dropped, by commit range, once all three hold:
//!
//! 1. they were received more than `retention_s` ago. Commits are numbered in receive order, and each commit that
//!    opens a new receive minute (UTC) writes `meta: received-minute/<minute>` = its seq in its own write batch
//!    (`mark_received`): the commits before the mark of minute `m` were all received before `m` began, so "received
//!    before the cutoff" is "before the mark of the last minute that began before the cutoff" (at most a minute
//!    late: one small key per minute with commits, and only the window's are kept). A commit whose receive time
//!    goes back (a clock set back) makes no mark and counts as received in the last marked minute: kept longer,
//!    never shorter. Once the last marked minute is over before the cutoff, every commit is;

//! 2. the export has written them to Parquet, the long-term record: `Engine::events_exported` keeps the last
//!    commit the export wrote per tenant (`meta: exported/<tenant>`, only ever raised). A tenant whose events were
//!    never exported keeps them all; `Engine::stats` counts them as held back for export;
//! 3. their aggregates are written (`Shared::agg_seq`): replay after a crash needs the events of the commits past
//!    the watermark. The drop is written after the watermark it read, to the same WAL, so no crash can keep the
//!    drop and lose the watermark.
//!
//! A drop is one `DeleteRange` over the tenant's keys `[tenant/0, tenant/<seq + 1>)` with `meta: dropped/<tenant>`
//! in the same batch, with the corrections those commits made and the event histories they end
//! (`correct::drop_through`); then the files wholly inside the range are deleted (`Store::reclaim`), and RocksDB's
//! compactions drop the rest as the tombstone moves down. What reads retained events (a new meter's backfill,
//! `skipped`, the export's `retained_events`) reads what remains; its iterator keeps the files it was opened on.

use std::collections::HashMap;

use serde::Serialize;

use super::maintenance::{MaintenanceReport, Steps};
use super::Shared;
use crate::ensure;
use crate::error::{Error, Result};
use crate::storage::codec::Reader;
use crate::storage::{events, keys, scan_prefix, Cf, Store, WriteSet};

/// How finely receive times are marked: retention is exact to this. (It was an hour: a soak with a window of
/// minutes then kept up to an hour of events, and a 66-day retention does not need it coarser.)
const MARK_US: i64 = 60_000_000;

/// For the writer, while it stages commit `seq`: marks the commit's receive minute when it is later than the last
/// marked one (`last_minute`), and returns that minute, to be adopted once the commit is durable.
pub(crate) fn mark_received(last_minute: i64, set: &mut WriteSet, seq: u64, received_us: i64) -> Option<i64> {
    let minute = received_us.div_euclid(MARK_US);
    (minute > last_minute).then(|| {
        set.put(Cf::Meta, &keys::received_minute(minute), &seq.to_be_bytes());
        minute
    })
}

/// The last receive minute marked (`i64::MIN` for none): at open, for the writer.
pub(crate) fn last_received_minute(store: &dyn Store) -> Result<i64> {
    let mut last = i64::MIN;
    scan_prefix(store, Cf::Meta, keys::META_RECEIVED, |key, _| {
        last = Reader::new(&key[keys::META_RECEIVED.len()..]).i64_sortable()?;
        Ok(true)
    })?;
    Ok(last)
}

/// Directories written before receive minutes have `received/<hour>` marks: each becomes the mark of the hour's
/// first minute, which says the same (the commits before it were received before the hour began). The commits of
/// the last hour may have been received in any of its minutes, up to now: one more mark, the minute after `now_us`
/// with the next commit, says only that they were received before it. At open, once.
pub(crate) fn migrate_hour_marks(store: &dyn Store, now_us: i64) -> Result<()> {
    let mut set = WriteSet::default();
    scan_prefix(store, Cf::Meta, keys::META_RECEIVED_HOUR, |key, value| {
        let hour = Reader::new(&key[keys::META_RECEIVED_HOUR.len()..]).i64_sortable()?;
        set.put(Cf::Meta, &keys::received_minute(hour.saturating_mul(60)), value);
        Ok(true)
    })?;
    if !set.is_empty() {
        let next = read_seq(store, keys::META_SEQ)? + 1;
        set.put(Cf::Meta, &keys::received_minute(now_us.div_euclid(MARK_US) + 1), &next.to_be_bytes());
        let old = keys::META_RECEIVED_HOUR;
        set.delete_range(Cf::Meta, old, &keys::prefix_end(old));
        store.write(&set, true)?;
    }
    Ok(())
}

/// The last commit received before `cutoff_us` by the marks (see the module doc), the minute of the mark that says
/// so, and whether older marks are left; `None` when no mark is that old.
///
/// Once the last marked minute has ended before the cutoff, every commit so far was received before it: a commit
/// received later would have marked its minute. So the bound is then the last commit, read before the marks.
fn received_before(store: &dyn Store, cutoff_us: i64) -> Result<Option<(u64, i64, bool)>> {
    let last_seq = read_seq(store, keys::META_SEQ)?;
    let mut found: Option<(u64, i64, bool)> = None;
    let mut last_mark = None;
    scan_prefix(store, Cf::Meta, keys::META_RECEIVED, |key, value| {
        let minute = Reader::new(&key[keys::META_RECEIVED.len()..]).i64_sortable()?;
        let seq = seq_value(value)?;
        last_mark = Some((minute, seq));
        if minute.saturating_mul(MARK_US) <= cutoff_us {
            found = Some((seq.saturating_sub(1), minute, found.is_some()));
        }
        Ok(true)
    })?;
    if let (Some((minute, seq)), Some(found)) = (last_mark, &mut found) {
        if seq <= last_seq && minute.saturating_add(1).saturating_mul(MARK_US) <= cutoff_us {
            found.0 = last_seq;
        }
    }
    Ok(found)
}

fn seq_value(value: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(value.try_into().map_err(|_| Error::Corrupt("commit number".into()))?))
}

/// A commit number kept in `meta` under `key` (0 when none is).
pub(crate) fn read_seq(store: &dyn Store, key: &[u8]) -> Result<u64> {
    store.get(Cf::Meta, key)?.map_or(Ok(0), |v| seq_value(&v))
}

/// Records that the export has written the tenant's retained events through commit `seq`. Only ever raises the
/// mark (another export, behind, cannot lower it); the caller serializes calls.
pub(crate) fn events_exported(store: &dyn Store, shared: &Shared, tenant: &str, seq: u64) -> Result<()> {
    let last = read_seq(store, keys::META_SEQ)?;
    ensure!(seq <= last, "invalid_request", "the export cannot have written commit {seq}: the last commit is {last}");
    let key = keys::tenant_meta(keys::META_EXPORTED, tenant);
    if read_seq(store, &key)? >= seq {
        return Ok(());
    }
    // Not synced: lost in a crash, it only keeps events longer, and the export says it again on its next run.
    let mut set = WriteSet::default();
    set.put(Cf::Meta, &key, &seq.to_be_bytes());
    shared.write(store, &set, false)
}

/// A tenant's retained events past retention that are kept because the export has not written them yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldBack {
    pub tenant: String,
    /// Events counted so far (after a restart the count starts again, a step at a time).
    pub events: u64,
    /// The last commit the export wrote for this tenant (0: never).
    pub exported_seq: u64,
}

/// What one tenant's held-back count covers: the events of commits `(from, through]`.
struct Held {
    from: u64,
    through: u64,
    events: u64,
}

#[derive(Default)]
pub(crate) struct Retention {
    held: HashMap<String, Held>,
}

impl Retention {
    /// Drops what retention allows, tenant by tenant, and counts what is held back for export. `Ok(false)` when
    /// `steps` ran out first.
    pub fn run(
        &mut self,
        store: &dyn Store,
        shared: &Shared,
        cutoff_us: i64,
        step_keys: usize,
        steps: &mut Steps,
        report: &mut MaintenanceReport,
    ) -> Result<bool> {
        let Some((received_before, mark_minute, older_marks)) = received_before(store, cutoff_us)? else {
            self.held.clear();
            return Ok(true);
        };
        let limit = received_before.min(shared.agg_seq());
        let tenants = tenants_with_events(store)?;
        self.held.retain(|tenant, _| tenants.binary_search(tenant).is_ok());
        for tenant in tenants {
            let exported = read_seq(store, &keys::tenant_meta(keys::META_EXPORTED, &tenant))?;
            let dropped_key = keys::tenant_meta(keys::META_DROPPED, &tenant);
            let target = limit.min(exported);
            if target > read_seq(store, &dropped_key)? {
                if !steps.take() {
                    return Ok(false);
                }
                let (from, to) = (keys::events_key(&tenant, 0, 0), keys::events_key(&tenant, target + 1, 0));
                let mut set = WriteSet::default();
                set.delete_range(Cf::Events, &from, &to);
                // The corrections of those commits go with them, and the histories they were the last of.
                super::correct::drop_through(store, &tenant, target, &mut set)?;
                set.put(Cf::Meta, &dropped_key, &target.to_be_bytes());
                // Not synced: a drop lost in a crash is made again; one kept is behind its watermark in the WAL.
                shared.write(store, &set, false)?;
                store.reclaim(Cf::Events, &from, &to)?;
                report.dropped.push(Dropped { tenant: tenant.clone(), through_seq: target });
            }
            if exported >= limit {
                self.held.remove(&tenant);
                continue;
            }
            let held = self.held.entry(tenant.clone()).or_insert(Held { from: exported, through: exported, events: 0 });
            if held.from != exported {
                *held = Held { from: exported, through: exported, events: 0 };
            }
            while held.through < limit {
                if !steps.take() {
                    return Ok(false);
                }
                count_events(store, &tenant, held, limit, step_keys)?;
            }
        }
        if older_marks {
            // Marks older than the one the cutoff needs are of no more use.
            let mut set = WriteSet::default();
            set.delete_range(Cf::Meta, &keys::received_minute(i64::MIN), &keys::received_minute(mark_minute));
            shared.write(store, &set, false)?;
        }
        Ok(true)
    }

    pub fn held_back(&self) -> Vec<HeldBack> {
        let mut all: Vec<HeldBack> = self
            .held
            .iter()
            .filter(|(_, h)| h.events > 0)
            .map(|(tenant, h)| HeldBack { tenant: tenant.clone(), events: h.events, exported_seq: h.from })
            .collect();
        all.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        all
    }
}

/// A tenant whose retained events were dropped by a maintenance run, through which commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub tenant: String,
    pub through_seq: u64,
}

/// The tenants that have retained events, sorted: one seek per tenant.
fn tenants_with_events(store: &dyn Store) -> Result<Vec<String>> {
    let mut tenants = Vec::new();
    let mut cursor = store.cursor(Cf::Events);
    cursor.seek(&[]);
    while let Some((key, _)) = cursor.entry() {
        let tenant = Reader::new(key).str()?.to_owned();
        cursor.seek(&keys::prefix_end(&keys::events_prefix(&tenant)));
        tenants.push(tenant);
    }
    cursor.status()?;
    Ok(tenants)
}

/// Counts the events of the tenant's commits after `held.through`, through `limit`: about `step_keys` records,
/// whole commits only.
fn count_events(store: &dyn Store, tenant: &str, held: &mut Held, limit: u64, step_keys: usize) -> Result<()> {
    let prefix = keys::events_prefix(tenant);
    let mut cursor = store.cursor(Cf::Events);
    cursor.seek(&keys::events_key(tenant, held.through + 1, 0));
    let (mut records, mut last) = (0, held.through);
    while let Some((key, value)) = cursor.entry() {
        if !key.starts_with(&prefix) {
            break;
        }
        let seq = Reader::new(&key[prefix.len()..]).u64()?;
        if seq > limit {
            break;
        }
        if seq != last && records >= step_keys {
            held.through = last;
            return Ok(());
        }
        held.events += events::count(value)?;
        records += 1;
        last = seq;
        cursor.next();
    }
    cursor.status()?;
    held.through = limit;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_marks_only_a_later_minute() {
        let mut set = WriteSet::default();
        assert_eq!(mark_received(10, &mut set, 5, 11 * MARK_US + 1), Some(11));
        assert_eq!(mark_received(11, &mut set, 6, 11 * MARK_US + 2), None);
        assert_eq!(mark_received(11, &mut set, 7, 3 * MARK_US), None, "a clock set back marks nothing");
        assert_eq!(set.ops().count(), 1);
    }

    #[test]
    fn hour_marks_of_an_older_directory_become_minute_marks_that_never_drop_early() {
        use crate::storage::rocks::RocksStore;
        use crate::storage::ReadStore;
        const HOUR_US: i64 = 60 * MARK_US;
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path(), &crate::Config::default().store_options()).unwrap();
        // Commit 7 was the first received in hour 10; commits 8 and 9 came later in that hour, or after it.
        let mut set = WriteSet::default();
        let mut hour_key = keys::META_RECEIVED_HOUR.to_vec();
        crate::storage::codec::put_i64_sortable(&mut hour_key, 10);
        set.put(Cf::Meta, &hour_key, &7u64.to_be_bytes());
        set.put(Cf::Meta, keys::META_SEQ, &9u64.to_be_bytes());
        store.write(&set, true).unwrap();
        let opened_at = 11 * HOUR_US + 30 * MARK_US + 5;
        migrate_hour_marks(&store, opened_at).unwrap();
        assert!(store.get(Cf::Meta, &hour_key).unwrap().is_none());
        assert_eq!(last_received_minute(&store).unwrap(), 11 * 60 + 31);
        let before = |cutoff: i64| received_before(&store, cutoff).unwrap().map(|found| found.0);
        assert_eq!(before(10 * HOUR_US - 1), None);
        assert_eq!(before(10 * HOUR_US + 59 * MARK_US), Some(6), "8 and 9 may have come late in hour 10");
        assert_eq!(before(11 * HOUR_US + 30 * MARK_US), Some(6), "or just before the open");
        assert_eq!(before(11 * HOUR_US + 31 * MARK_US), Some(9));
        migrate_hour_marks(&store, opened_at + HOUR_US).unwrap();
        assert_eq!(last_received_minute(&store).unwrap(), 11 * 60 + 31, "once");
    }
}
