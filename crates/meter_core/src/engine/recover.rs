//! Re-aggregation from the retained events, the one loop behind two callers ([`refold`]):
//! - **replay** at open ([`replay`]): the commits past a fold shard's watermark, whose aggregates a crash lost (a fold
//!   flush is not synced on its own, see `folder`), are folded again from their retained events;
//! - **backfill** of a new meter ([`backfill`]): the tenant's retained events of the meter's type, written in the same
//!   atomic write as the meter's definition.
//!
//! Both read an event with the decision ingest made (`extract_retained`, the same as `extract`): a meter that could
//! not read an event at ingest skips it here too, so neither can count what ingest did not (or the reverse). Ingest
//! itself extracts once, in `prepare`, and folds what it kept; only these two read retained events to aggregate.

use std::sync::Arc;

use super::folder::{shard_of, SHARDS};
use super::Backfill;
use crate::aggregate::extract::extract_retained;
use crate::aggregate::fold::Fold;
use crate::aggregate::meter::Meter;
use crate::aggregate::registry::Registry;
use crate::dedup::Record;
use crate::error::{Error, Result};
use crate::storage::events::{self, RetainedEvent};
use crate::storage::{keys, scan_prefix, Cf, Store, WriteSet};

/// Folds the retained events of one stored part (an `events` value) into `fold`, each for the meters `meters_of`
/// names for it, and tallies per event and meter what extraction said: counted, filtered out, or unreadable.
pub(crate) fn refold<'m>(
    fold: &mut Fold,
    tenant: &str,
    stored: &[u8],
    mut meters_of: impl FnMut(&RetainedEvent<String>) -> &'m [Arc<Meter>],
    tally: &mut Backfill,
) -> Result<()> {
    for e in events::decode(stored)? {
        for meter in meters_of(&e) {
            match extract_retained(meter, &e.data) {
                Ok(Some(c)) => {
                    let customer = fold.customer(tenant, &e.subject);
                    fold.add(customer, meter, e.time_us, e.ordinal, &c);
                    tally.events += 1;
                }
                Ok(None) => tally.filtered += 1,
                Err(_) => tally.unreadable += 1,
            }
        }
    }
    Ok(())
}

/// A new meter's aggregates of the tenant's retained events, and how many events it counted, filtered out and could
/// not read. Only retained events: what retention dropped is in the Parquet export, not in the new meter.
pub(crate) fn backfill(store: &dyn Store, tenant: &str, meter: &Arc<Meter>) -> Result<(Fold, Backfill)> {
    let mut fold = Fold::default();
    let mut tally = Backfill::default();
    let only = std::slice::from_ref(meter);
    let event_type = meter.stored.spec.event_type.as_str();
    scan_prefix(store, Cf::Events, &keys::events_prefix(tenant), |_, value| {
        refold(&mut fold, tenant, value, |e| if e.event_type == event_type { only } else { &[][..] }, &mut tally)?;
        Ok(true)
    })?;
    Ok((fold, tally))
}

/// Re-aggregates, per fold shard, the commits past the shard's watermark from their retained events,
/// and writes them with today's shards' watermarks, all at `seq`. Meters only change right after every
/// shard flushed, so the meters of today are those of those commits.
pub(crate) fn replay(store: &dyn Store, registry: &Registry, seq: u64) -> Result<()> {
    // The shards the watermarks were written by, which may not be today's; none yet: replay everything.
    let mut watermarks = Vec::new();
    scan_prefix(store, Cf::Meta, keys::META_AGG_SEQS, |_, value| {
        watermarks.push(u64::from_be_bytes(value.try_into().map_err(|_| Error::Corrupt("agg_seq".into()))?));
        Ok(true)
    })?;
    if watermarks.is_empty() {
        watermarks.push(0);
    }
    let current = watermarks.len() == SHARDS as usize && watermarks.iter().all(|&w| w == seq);
    if current {
        return Ok(());
    }
    let shards = watermarks.len() as u32;
    let mut fold = Fold::default();
    let mut cursor = store.cursor(Cf::Dedup);
    cursor.seek(&(watermarks.iter().min().unwrap() + 1).to_be_bytes());
    while let Some((key, value)) = cursor.entry() {
        let commit = u64::from_be_bytes(key.try_into().map_err(|_| Error::Corrupt("dedup key".into()))?);
        for (part, tenant) in Record::parse(value)?.tenants.iter().enumerate() {
            let stored = store
                .get(Cf::Events, &keys::events_key(tenant, commit, part as u32))?
                .ok_or_else(|| Error::Corrupt(format!("commit {commit} has no retained events for part {part}")))?;
            // An event whose shard's watermark covers the commit is in `agg` already.
            let meters_of = |e: &RetainedEvent<String>| {
                let shard = shard_of(tenant, &e.subject, shards) as usize;
                if commit <= watermarks[shard] {
                    &[][..]
                } else {
                    registry.for_event(tenant, &e.event_type)
                }
            };
            refold(&mut fold, tenant, &stored, meters_of, &mut Backfill::default())?;
        }
        cursor.next();
    }
    cursor.status()?;
    let mut set = WriteSet::default();
    fold.drain_into(&mut set);
    set.delete_range(Cf::Meta, keys::META_AGG_SEQS, &keys::prefix_end(keys::META_AGG_SEQS));
    for shard in 0..SHARDS {
        set.put(Cf::Meta, &keys::agg_seq(shard), &seq.to_be_bytes());
    }
    store.write(&set, true)
}
