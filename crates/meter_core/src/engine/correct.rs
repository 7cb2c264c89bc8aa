//! Corrections: cancel accepted events, amend them (same identity, new type, customer, time or data), or replace a
//! range of them (a backfill), restating every aggregate they touched, durably and exactly once, with each event's
//! history kept.
//!
//! A correction is a commit of its own, made by the writer between two group commits (`Writer::correct`):
//! 1. every fold thread first writes what it holds (as before a new meter), so `agg` holds every commit so far;
//! 2. each named event's current version is found ([`current`]): through its history if it was corrected before,
//!    else its dedup mark, else a scan of the tenant's retained events. Amendments are parsed and checked like ingest
//!    (the same parser, the same time window);
//! 3. every bucket the old or the new version counts in is restated whole from the retained events ([`restate`]): a
//!    bucket is the customer's minute of one meter, or the hour or day it was rolled up into (`Resolution::span`),
//!    so that min, max, latest and unique counts are as exact as sums. A day's mark names the first and last commit
//!    folded into the day (`fold::DAY_FIRST_COMMIT`), so only those commits are read; a mark written before it had
//!    them falls back to the commits received from the day's start to the back-dating window after its end;
//! 4. one synced write holds everything: the old versions voided in their records (`storage::events::void`), the
//!    new versions as this commit's retained events (the export writes them like any other), the restated buckets
//!    (range deletes, then the recomputed states), the day marks (so the usage export rewrites those days), each
//!    event's history (`meta: corrected/`) and this commit's corrections (`meta: corrections/`, the export's
//!    corrections file). A crash keeps all of it or none.
//!
//! A backfill (`meter.backfills`, in Python) closes with the same commit: `Put` amends or adds each of its events
//! (an added event's dedup mark is written too, so its id is taken as by ingest) and `Replace` cancels the range's
//! other events; its revert `Restore`s the versions the close voided (their void bits cleared) and cancels what it
//! added. An event's versions are never rewritten, only voided or brought back.
//!
//! Idempotent by state: cancelling a cancelled event, or amending an event to the payload it has, changes nothing
//! (`unchanged`), so a retried correction applies once. A request is all or nothing: any issue refuses it whole,
//! each issue named by the item's index. Restating a bucket needs all of its events: a correction whose buckets
//! reach commits that retention dropped is refused (`past_retention`).
//!
//! The commit writes no dedup record: its aggregates are in its own write, so replay after a crash has nothing of
//! it to fold again. It is not handed to the fold threads either; their watermarks move past it with the next
//! commit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::config::Config;
use super::prepare::time_issue;
use super::retention::read_seq;
use crate::aggregate::extract::extract_retained;
use crate::aggregate::fold::{first_ordinal, ordinal_commit, Fold, PairRef, DAY_FIRST_COMMIT, DAY_LAST_COMMIT};
use crate::aggregate::meter::{Aggregation, Meter};
use crate::aggregate::registry::Registry;
use crate::aggregate::resolution::{floor_to, Resolution, DAY, HOUR};
use crate::aggregate::state::{AggState, MinuteStates};
use crate::dedup::{self, Horizon};
use crate::error::{Error, EventIssue, IssueCode, Result};
use crate::ingest::parse::identity_hash;
use crate::ingest::parse_batch;
use crate::ingest::time::{minute_of, MICROS_PER_MINUTE, MINUTES_PER_DAY};
use crate::query::events::{commits_received, seq_of, Located, COMMIT_SLACK_MINUTES};
use crate::storage::events::{self, FrameBuilder, RetainedEvent};
use crate::storage::{keys, Cf, OpKind, Store, WriteSet};

/// At most this many items in one correction (a backfill's close: its events, and the range they replace).
pub const MAX_ITEMS: usize = 100_001;

/// What a caller asks: who and why, and the events to cancel or amend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionRequest {
    pub reason: String,
    pub actor: String,
    pub items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Item {
    /// Cancels the event of this identity: it no longer counts anywhere.
    Cancel { source: String, id: String },
    /// Replaces the event of the CloudEvent's `(source, id)` with this one. Without a `time`, the event keeps its own.
    Amend(Box<RawValue>),
    /// Counts this CloudEvent: amends the event of its identity if one counts, else adds it as a new event (a
    /// backfill's events, `Replace` clearing the range they replace).
    Put(Box<RawValue>),
    /// Brings back a version an earlier correction voided, voiding the one that counts now (a backfill's revert).
    Restore { source: String, id: String, seq: u64, ordinal: u64 },
    /// Cancels every event that counts with a time in `[from_us, to_us)`, of `subject` and `event_type` when given,
    /// except those the request's other items name (the range a backfill replaces).
    Replace { subject: Option<String>, event_type: Option<String>, from_us: i64, to_us: i64 },
}

/// At most this many events replaced by one `Replace`: a larger range is split into several corrections.
pub const MAX_REPLACED: usize = 1_000_000;

/// One version of an event: the commit that holds it and its ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    pub seq: u64,
    pub ordinal: u64,
}

/// One correction of one event, as kept in its history and in the commit's corrections record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correction {
    pub source: String,
    pub id: String,
    /// `cancel`, `amend`, `add` (a new event: a backfill's) or `restore` (a voided version brought back).
    pub action: String,
    /// The correction's commit.
    pub seq: u64,
    /// When it was made (µs since the epoch, UTC).
    pub at_us: i64,
    pub reason: String,
    pub actor: String,
    /// The version it voided (none for an add, or for a restore of a cancelled event).
    pub replaced: Option<Version>,
    /// The version that counts instead (amend, add, restore).
    pub replacement: Option<Version>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub index: usize,
    pub source: String,
    pub id: String,
    /// `cancelled`, `amended`, `added`, `restored`, `replaced` (a range: `events` cancelled), or `unchanged` (it
    /// already was).
    pub status: &'static str,
    /// Events the item changed: 0 or 1, or those of a replaced range.
    pub events: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CorrectionReport {
    /// The correction's commit; `None` when nothing changed.
    pub seq: Option<u64>,
    pub corrections: Vec<Outcome>,
    /// How many retained events were read to restate the buckets.
    pub events_read: u64,
    /// Buckets restated (customer, meter and minute, hour or day).
    pub buckets: usize,
}

/// Where an event stands now.
pub(crate) enum Current {
    /// Its version that counts: the record that holds it and the event.
    Counted(Located),
    Cancelled,
    /// Not retained: never accepted, or dropped by retention.
    Missing,
}

/// The event's corrections, oldest first (none if it was never corrected).
pub(crate) fn history(store: &dyn Store, tenant: &str, source: &str, id: &str) -> Result<Vec<Correction>> {
    match store.get(Cf::Meta, &keys::corrected(tenant, source, id))? {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_slice(&json).map_err(|e| Error::Corrupt(format!("event history: {e}"))),
    }
}

/// The tenant's corrections made by commits `(after_seq, through_seq]`, in commit order.
pub(crate) fn corrections_between(
    store: &dyn Store,
    tenant: &str,
    after_seq: u64,
    through_seq: u64,
) -> Result<Vec<Correction>> {
    let prefix = keys::tenant_meta(keys::META_CORRECTIONS, tenant);
    let mut out = Vec::new();
    let mut cursor = store.cursor(Cf::Meta);
    cursor.seek(&keys::corrections(tenant, after_seq.saturating_add(1)));
    while let Some((key, value)) = cursor.entry() {
        if !key.starts_with(&prefix) || seq_of(key, prefix.len())? > through_seq {
            break;
        }
        let made: Vec<Correction> =
            serde_json::from_slice(value).map_err(|e| Error::Corrupt(format!("corrections record: {e}")))?;
        out.extend(made);
        cursor.next();
    }
    cursor.status()?;
    Ok(out)
}

/// Stages, for retention dropping the tenant's commits through `seq`: their corrections records, and the history of
/// each event they corrected whose last correction is among them (its versions are all dropped too).
pub(crate) fn drop_through(store: &dyn Store, tenant: &str, seq: u64, set: &mut WriteSet) -> Result<()> {
    for c in corrections_between(store, tenant, 0, seq)? {
        if history(store, tenant, &c.source, &c.id)?.last().is_some_and(|last| last.seq <= seq) {
            set.push(OpKind::Delete, Cf::Meta, &keys::corrected(tenant, &c.source, &c.id), &[]);
        }
    }
    set.delete_range(Cf::Meta, &keys::corrections(tenant, 0), &keys::corrections(tenant, seq.saturating_add(1)));
    Ok(())
}

/// The current version of the event `(source, id)` (`current_all`).
pub(crate) fn current(store: &dyn Store, tenant: &str, source: &str, id: &str) -> Result<Current> {
    let mut found = current_all(store, tenant, &[(source.to_owned(), id.to_owned())])?;
    Ok(found.pop().expect("one identity, one answer"))
}

/// The current version of each event of `identities`, in order: the last correction says where it is, or that it was
/// cancelled; an event never corrected is found through its dedup mark (the commits received around its receipt),
/// else (past the dedup window) by one scan of the retained events. Each record is decoded once however many of the
/// events it holds: the commits the marks name are merged into ranges and read once.
pub(crate) fn current_all(store: &dyn Store, tenant: &str, identities: &[(String, String)]) -> Result<Vec<Current>> {
    let mut out: Vec<Current> = identities.iter().map(|_| Current::Missing).collect();
    let mut unresolved: hashbrown::HashMap<(String, String), usize> = hashbrown::HashMap::new();
    let mut corrected = Vec::new();
    for (at, (source, id)) in identities.iter().enumerate() {
        match history(store, tenant, source, id)?.pop() {
            Some(Correction { replacement: None, .. }) => out[at] = Current::Cancelled,
            Some(Correction { replacement: Some(version), at_us, .. }) => corrected.push((at, version, at_us)),
            None => {
                unresolved.insert((source.clone(), id.clone()), at);
            }
        }
    }
    let mut found = versions(store, tenant, &corrected.iter().map(|c| c.1).collect::<Vec<_>>())?;
    for (at, version, at_us) in corrected {
        if let Some((key, event, false)) = found.remove(&version) {
            out[at] = Current::Counted(Located { key, seq: version.seq, event, received_us: Some(at_us) });
        }
    }
    if unresolved.is_empty() {
        return Ok(out);
    }

    let asked: Vec<usize> = unresolved.values().copied().collect();
    let fingerprints: Vec<u128> =
        asked.iter().map(|&at| identity_hash(tenant, &identities[at].0, &identities[at].1)).collect();
    let horizon = store.dedup_horizon().unwrap_or_else(|| Arc::new(Horizon::new(i64::MIN)));
    let mut received = HashMap::new();
    let mut spans = Vec::new();
    for (&at, mark) in asked.iter().zip(dedup::lookup(store, &horizon, &fingerprints)?) {
        let Some(mark) = mark else { continue };
        received.insert(at, mark.received_us);
        let minute = mark.received_us.div_euclid(MICROS_PER_MINUTE);
        let (from, until) = commits_received(store, minute, minute + COMMIT_SLACK_MINUTES)?;
        spans.push((from, until.unwrap_or(u64::MAX)));
    }
    spans.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (from, until) in spans {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(until),
            _ => merged.push((from, until)),
        }
    }
    // Past the dedup window (no mark), or not where its mark said (a clock set back): one scan of everything.
    merged.push((0, u64::MAX));
    for (from, until) in merged {
        scan_commits(store, tenant, from, until, |key, seq, value| {
            for e in events::decode(value)? {
                if let Some(at) = unresolved.remove(&PairRef(&e.source, &e.id)) {
                    let received_us = received.get(&at).copied();
                    out[at] = Current::Counted(Located { key: key.to_vec(), seq, event: e, received_us });
                }
            }
            Ok(!unresolved.is_empty())
        })?;
        if unresolved.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// Calls `f(key, seq, record)` for the tenant's records of the commits `[from, until)`, until it returns `false`.
fn scan_commits(
    store: &dyn Store,
    tenant: &str,
    from: u64,
    until: u64,
    mut f: impl FnMut(&[u8], u64, &[u8]) -> Result<bool>,
) -> Result<()> {
    let prefix = keys::events_prefix(tenant);
    let mut cursor = store.cursor(Cf::Events);
    cursor.seek(&keys::events_key(tenant, from, 0));
    while let Some((key, value)) = cursor.entry() {
        let seq = if key.starts_with(&prefix) { seq_of(key, prefix.len())? } else { break };
        if seq >= until || !f(key, seq, value)? {
            break;
        }
        cursor.next();
    }
    cursor.status()
}

/// A version of an event found in its record: the record's key, the event, and whether it is voided.
type FoundVersion = (Vec<u8>, RetainedEvent<String>, bool);

/// The versions asked for that are retained, voided ones too: each commit's records decoded once.
fn versions(store: &dyn Store, tenant: &str, wanted: &[Version]) -> Result<HashMap<Version, FoundVersion>> {
    let mut by_commit: BTreeMap<u64, HashSet<u64>> = BTreeMap::new();
    for v in wanted {
        by_commit.entry(v.seq).or_default().insert(v.ordinal);
    }
    let mut found = HashMap::new();
    for (seq, ordinals) in by_commit {
        scan_commits(store, tenant, seq, seq.saturating_add(1), |key, _, value| {
            for (e, voided) in events::decode_all(value)? {
                if ordinals.contains(&e.ordinal) {
                    found.insert(Version { seq, ordinal: e.ordinal }, (key.to_vec(), e, voided));
                }
            }
            Ok(true)
        })?;
    }
    Ok(found)
}

/// What one item asks once read: the version it voids and the one that counts instead.
struct Planned {
    index: usize,
    action: &'static str,
    /// The version voided: none for an add, or a restore of a cancelled event.
    old: Option<Located>,
    /// The version that counts instead: none for a cancel.
    new: Option<RetainedEvent<String>>,
    /// A restore's version is retained already (voided): the record to bring it back in, rather than a new event.
    restored_in: Option<Vec<u8>>,
    /// An add's identity: its dedup mark (fingerprint, payload hash).
    mark: Option<(u128, u64)>,
}

/// An amendment or a put, parsed: the event, and its dedup fingerprint and payload hash.
struct Parsed {
    event: RetainedEvent<String>,
    fingerprint: u128,
    payload_hash: u64,
}

/// A bucket to restate: (meter id, customer, first minute) and how many minutes it covers.
type BucketKey = (u32, String, i64);

/// Everything a correction writes, and what it reports; `seq` is the commit it will be.
pub(crate) struct Staged {
    pub set: WriteSet,
    pub report: CorrectionReport,
    /// (customer, earliest µs, meter ids) per restated customer, for the change feed once durable.
    pub changed: Vec<(String, i64, Vec<u32>)>,
}

/// Reads the request and stages the correction as commit `seq`, received at `now_us`. `Ok(None)`-like: a report
/// without `seq` and an empty set when every item is unchanged.
#[allow(clippy::too_many_arguments)] // the writer's state a correction reads, and the correction
pub(crate) fn stage(
    store: &dyn Store,
    registry: &Registry,
    config: &Config,
    tenant: &str,
    horizon: &Horizon,
    request: CorrectionRequest,
    seq: u64,
    now_us: i64,
) -> Result<Staged> {
    crate::ensure!(!request.items.is_empty(), "empty_batch", "the correction names no event; give at least one item");
    crate::ensure!(
        request.items.len() <= MAX_ITEMS,
        "batch_too_large",
        "a correction names at most {MAX_ITEMS} events; got {}: split it",
        request.items.len()
    );
    crate::ensure!(!request.reason.trim().is_empty(), "missing_reason", "say why the events are corrected: \"reason\"");
    let mut issues = Vec::new();
    let mut parsed = parse_events(tenant, &request.items, now_us, config, &mut issues)?;

    // Each item's identity; a range is read after them, leaving out what they name.
    let mut named = HashSet::new();
    let mut wanted = Vec::new();
    let mut ranges = Vec::new();
    for (index, item) in request.items.iter().enumerate() {
        let (source, id) = match item {
            Item::Cancel { source, id } | Item::Restore { source, id, .. } => (source.clone(), id.clone()),
            Item::Amend(_) | Item::Put(_) => match parsed.get(&index) {
                Some(p) => (p.event.source.clone(), p.event.id.clone()),
                None => continue, // the parser refused it: its issue is in `issues`
            },
            Item::Replace { .. } => {
                ranges.push(index);
                continue;
            }
        };
        if !named.insert((source.clone(), id.clone())) {
            issues.push(issue(index, &id, IssueCode::DuplicateItem, "this event is named twice; name it once"));
            continue;
        }
        wanted.push((index, source, id));
    }
    let identities: Vec<(String, String)> = wanted.iter().map(|(_, s, i)| (s.clone(), i.clone())).collect();
    let currents = current_all(store, tenant, &identities)?;

    let restores: Vec<Version> = request
        .items
        .iter()
        .filter_map(|item| match *item {
            Item::Restore { seq, ordinal, .. } => Some(Version { seq, ordinal }),
            _ => None,
        })
        .collect();
    let mut restorable = versions(store, tenant, &restores)?;

    let mut outcomes = Vec::with_capacity(request.items.len());
    let mut planned = Vec::new();
    for ((index, source, id), now) in wanted.into_iter().zip(currents) {
        let plan = |action, old, new| Planned { index, action, old, new, restored_in: None, mark: None };
        let status = match (&request.items[index], now) {
            (Item::Cancel { .. }, Current::Counted(old)) => {
                planned.push(plan("cancel", Some(old), None));
                "cancelled"
            }
            (Item::Cancel { .. }, Current::Cancelled) => "unchanged",
            (Item::Amend(_) | Item::Put(_), Current::Counted(old)) => {
                let mut new = parsed.remove(&index).expect("parsed").event;
                if new.time_us == i64::MIN {
                    new.time_us = old.event.time_us;
                }
                // A new time is held to ingest's window; an event's own time, however old, may keep its place.
                let moved = new.time_us != old.event.time_us;
                if let Some((code, message)) = moved.then(|| time_issue(new.time_us, now_us, config)).flatten() {
                    issues.push(issue(index, &id, code, &message));
                    continue;
                }
                let same = (&new.event_type, &new.subject, new.time_us, &new.data)
                    == (&old.event.event_type, &old.event.subject, old.event.time_us, &old.event.data);
                if same {
                    "unchanged"
                } else {
                    planned.push(plan("amend", Some(old), Some(new)));
                    "amended"
                }
            }
            (Item::Amend(_) | Item::Put(_), Current::Cancelled) => {
                let message = "this event was cancelled; send it as a new event with a new id instead";
                issues.push(issue(index, &id, IssueCode::Cancelled, message));
                continue;
            }
            (Item::Put(_), Current::Missing) => {
                let Parsed { mut event, fingerprint, payload_hash } = parsed.remove(&index).expect("parsed");
                if event.time_us == i64::MIN {
                    event.time_us = now_us;
                }
                if let Some((code, message)) = time_issue(event.time_us, now_us, config) {
                    issues.push(issue(index, &id, code, &message));
                    continue;
                }
                if dedup::lookup(store, horizon, &[fingerprint])?[0].is_some() {
                    let message = "an event with this source and id was accepted and is no longer retained; send \
                                   it with a new id";
                    issues.push(issue(index, &id, IssueCode::Conflict, message));
                    continue;
                }
                planned.push(Planned { mark: Some((fingerprint, payload_hash)), ..plan("add", None, Some(event)) });
                "added"
            }
            (&Item::Restore { seq: version_seq, ordinal, .. }, now) => {
                match restorable.remove(&Version { seq: version_seq, ordinal }) {
                    Some((key, event, true)) if event.source == source && event.id == id => {
                        let old = match now {
                            Current::Counted(old) => Some(old),
                            _ => None,
                        };
                        planned.push(Planned { restored_in: Some(key), ..plan("restore", old, Some(event)) });
                        "restored"
                    }
                    Some((_, event, false)) if event.source == source && event.id == id => "unchanged",
                    _ => {
                        let message = "no retained version of this event has that seq and ordinal";
                        issues.push(issue(index, &id, IssueCode::NotFound, message));
                        continue;
                    }
                }
            }
            (_, Current::Missing) => {
                let message = "no retained event has this source and id: it was never accepted, or retention \
                               dropped it (corrections reach back as far as events are retained)";
                issues.push(issue(index, &id, IssueCode::NotFound, message));
                continue;
            }
            (Item::Replace { .. }, _) => unreachable!("ranges are not named"),
        };
        let events = usize::from(status != "unchanged");
        outcomes.push(Outcome { index, source, id, status, events });
    }
    for index in ranges {
        let Item::Replace { subject, event_type, from_us, to_us } = &request.items[index] else { unreachable!() };
        let found = in_range(store, config, tenant, subject.as_deref(), event_type.as_deref(), *from_us, *to_us)?;
        let found: Vec<Located> =
            found.into_iter().filter(|l| !named.contains(&(l.event.source.clone(), l.event.id.clone()))).collect();
        if found.len() > MAX_REPLACED {
            let message = format!("the range holds {} events, more than {MAX_REPLACED}: split it", found.len());
            issues.push(EventIssue { index, id: None, code: IssueCode::InvalidField, message });
            continue;
        }
        for l in &found {
            named.insert((l.event.source.clone(), l.event.id.clone()));
        }
        outcomes.push(Outcome {
            index,
            source: String::new(),
            id: String::new(),
            status: "replaced",
            events: found.len(),
        });
        for old in found {
            planned.push(Planned { index, action: "cancel", old: Some(old), new: None, restored_in: None, mark: None });
        }
    }
    outcomes.sort_by_key(|o| o.index);
    if !issues.is_empty() {
        issues.sort_by_key(|i| i.index);
        return Err(Error::BatchRejected { issues });
    }
    let mut report = CorrectionReport { seq: None, corrections: outcomes, events_read: 0, buckets: 0 };
    if planned.is_empty() {
        return Ok(Staged { set: WriteSet::default(), report, changed: Vec::new() });
    }

    // The new versions (amends and adds): this commit's retained events, numbered like ingest's.
    let first_ordinal = first_ordinal(seq);
    let mut frame = FrameBuilder::default();
    for (n, p) in planned.iter_mut().filter(|p| p.new.is_some() && p.restored_in.is_none()).enumerate() {
        let new = p.new.as_mut().expect("filtered");
        new.ordinal = first_ordinal + n as u64;
        frame.push(&RetainedEvent {
            source: &new.source,
            id: &new.id,
            event_type: &new.event_type,
            subject: &new.subject,
            time_us: new.time_us,
            ordinal: 0,
            data: &new.data,
        });
    }
    // Written even empty (a cancel's): the export reads commits through their records, and writes this commit's
    // corrections with them.
    let frame = frame.finish()?;
    let mut set = WriteSet::default();
    let kept = vec![true; frame.count];
    set.put(Cf::Events, &keys::events_key(tenant, seq, 0), &events::record(first_ordinal, &kept, &frame));

    // Restate every bucket touched, then void the old versions in their records and bring the restored ones back.
    let restated = restate(store, registry, config, tenant, &planned, &mut set, &mut issues)?;
    if !issues.is_empty() {
        return Err(Error::BatchRejected { issues });
    }
    let mut heads: BTreeMap<Vec<u8>, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for p in &planned {
        if let Some(old) = &p.old {
            heads.entry(old.key.clone()).or_default().0.push(old.event.ordinal);
        }
        if let (Some(key), Some(new)) = (&p.restored_in, &p.new) {
            heads.entry(key.clone()).or_default().1.push(new.ordinal);
        }
    }
    for (key, (void, unvoid)) in heads {
        let record = store.get(Cf::Events, &key)?.ok_or_else(|| Error::Corrupt("a located record is gone".into()))?;
        set.put(Cf::Events, &key, &events::void(&record, &void, &unvoid)?);
    }
    // An added event's identity is taken, as by ingest: the same id sent again is a duplicate.
    for (fingerprint, payload_hash) in planned.iter().filter_map(|p| p.mark) {
        let mark = dedup::Mark { received_us: now_us, payload_hash };
        set.put(Cf::Seen, &dedup::seen_key(fingerprint), &mark.encode());
    }

    // The history of each event and the commit's record of what it did.
    let mut made = Vec::with_capacity(planned.len());
    for p in &planned {
        let event = p.old.as_ref().map(|o| &o.event).or(p.new.as_ref()).expect("a version");
        let correction = Correction {
            source: event.source.clone(),
            id: event.id.clone(),
            action: p.action.to_owned(),
            seq,
            at_us: now_us,
            reason: request.reason.clone(),
            actor: request.actor.clone(),
            replaced: p.old.as_ref().map(|o| Version { seq: o.seq, ordinal: o.event.ordinal }),
            replacement: p.new.as_ref().map(|e| Version {
                seq: if p.restored_in.is_some() { ordinal_commit(e.ordinal) } else { seq },
                ordinal: e.ordinal,
            }),
        };
        let mut events_history = history(store, tenant, &correction.source, &correction.id)?;
        events_history.push(correction.clone());
        let key = keys::corrected(tenant, &correction.source, &correction.id);
        set.put(Cf::Meta, &key, &serde_json::to_vec(&events_history).expect("corrections serialize"));
        made.push(correction);
    }
    set.put(Cf::Meta, &keys::corrections(tenant, seq), &serde_json::to_vec(&made).expect("corrections serialize"));
    report.seq = Some(seq);
    report.events_read = restated.events_read;
    report.buckets = restated.buckets;
    Ok(Staged { set, report, changed: restated.changed })
}

/// The events that count with a time in `[from_us, to_us)`, of `subject` and `event_type` when given: read from the
/// commits received from the range's start (less the future allowance) to the back-dating window after its end.
fn in_range(
    store: &dyn Store,
    config: &Config,
    tenant: &str,
    subject: Option<&str>,
    event_type: Option<&str>,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<Located>> {
    let from = (from_us - config.max_future_us).div_euclid(MICROS_PER_MINUTE) - 1;
    let to = to_us.saturating_add(config.backdate_window_us).div_euclid(MICROS_PER_MINUTE) + 1;
    let (first, until) = commits_received(store, from, to)?;
    let mut found = Vec::new();
    scan_commits(store, tenant, first, until.unwrap_or(u64::MAX), |key, seq, value| {
        for e in events::decode(value)? {
            let wanted = (from_us..to_us).contains(&e.time_us)
                && subject.is_none_or(|s| s == e.subject)
                && event_type.is_none_or(|t| t == e.event_type);
            if wanted {
                found.push(Located { key: key.to_vec(), seq, event: e, received_us: None });
            }
        }
        Ok(true)
    })?;
    Ok(found)
}

/// The amendments and puts of the request, parsed as ingest parses events (by item index); the parser's issues go to
/// `issues`, by item index. An event without `time` gets `i64::MIN`: an amendment keeps its event's own, an added
/// event takes the correction's time. Times are checked later (`stage`), against the event's own.
fn parse_events(
    tenant: &str,
    items: &[Item],
    now_us: i64,
    config: &Config,
    issues: &mut Vec<EventIssue>,
) -> Result<HashMap<usize, Parsed>> {
    let mut at = Vec::new();
    let mut raw: Vec<&RawValue> = Vec::new();
    for (n, item) in items.iter().enumerate() {
        if let Item::Amend(e) | Item::Put(e) = item {
            at.push(n);
            raw.push(e);
        }
    }
    if at.is_empty() {
        return Ok(HashMap::new());
    }
    let body = serde_json::to_vec(&raw).expect("raw values serialize");
    let mut limits = config.limits.clone();
    limits.max_events = MAX_ITEMS;
    let batch = parse_batch(tenant, body, now_us, &limits)?;
    for i in &batch.issues {
        issues.push(EventIssue { index: at[i.index], ..i.clone() });
    }
    let mut out = HashMap::new();
    for ev in &batch.events {
        let event = RetainedEvent {
            source: batch.text(ev.source).to_owned(),
            id: batch.text(ev.id).to_owned(),
            event_type: batch.text(ev.event_type).to_owned(),
            subject: batch.text(ev.subject).to_owned(),
            time_us: if ev.time_given { ev.time_us } else { i64::MIN },
            ordinal: 0,
            data: batch.text(ev.data).to_owned(),
        };
        out.insert(at[ev.index as usize], Parsed { event, fingerprint: ev.fingerprint, payload_hash: ev.payload_hash });
    }
    Ok(out)
}

struct Restated {
    events_read: u64,
    buckets: usize,
    changed: Vec<(String, i64, Vec<u32>)>,
}

/// Stages the restated buckets of every meter that counts an old or a new version: each bucket's keys deleted, then
/// its state folded again from the retained events that count (the old versions left out, the new ones in), and a
/// mark on each day touched. Items whose buckets need commits retention dropped get `past_retention`.
fn restate(
    store: &dyn Store,
    registry: &Registry,
    config: &Config,
    tenant: &str,
    planned: &[Planned],
    set: &mut WriteSet,
    issues: &mut Vec<EventIssue>,
) -> Result<Restated> {
    let mut resolutions: HashMap<u32, Resolution> = HashMap::new();
    let mut bucket_of = |meter: &Meter, subject: &str, minute: i64| -> Result<(i64, i64)> {
        let res = match resolutions.get(&meter.id()) {
            Some(r) => r,
            None => resolutions.entry(meter.id()).or_insert(Resolution::load(store, tenant, meter.id())?),
        };
        for unit in [DAY, HOUR] {
            let start = floor_to(minute, unit);
            if res.span(subject, start) == unit {
                return Ok((start, unit));
            }
        }
        Ok((minute, 1))
    };

    // The buckets, and per item the commits they need.
    let mut buckets: BTreeMap<BucketKey, i64> = BTreeMap::new();
    let mut days: BTreeSet<(u32, i64)> = BTreeSet::new();
    let mut meters: HashMap<u32, Arc<Meter>> = HashMap::new();
    let mut needs: Vec<(usize, u64)> = Vec::new();
    let mut range: Option<(u64, u64)> = None;
    let dropped = read_seq(store, &keys::tenant_meta(keys::META_DROPPED, tenant))?;
    for p in planned {
        let mut first_needed = u64::MAX;
        for e in p.old.as_ref().map(|o| &o.event).into_iter().chain(p.new.as_ref()) {
            for meter in registry.for_event(tenant, &e.event_type) {
                if !matches!(extract_retained(meter, &e.data), Ok(Some(_))) {
                    continue;
                }
                let (start, unit) = bucket_of(meter, &e.subject, minute_of(e.time_us))?;
                buckets.insert((meter.id(), e.subject.clone(), start), unit);
                meters.insert(meter.id(), meter.clone());
                let mut day = floor_to(start, DAY);
                while day < start + unit {
                    days.insert((meter.id(), day));
                    let (from, through) = day_commits(store, config, tenant, meter.id(), day)?;
                    first_needed = first_needed.min(from);
                    range = Some(range.map_or((from, through), |(a, b)| (a.min(from), b.max(through))));
                    day += DAY;
                }
            }
        }
        needs.push((p.index, first_needed));
    }
    for (index, first) in needs {
        if dropped > 0 && first <= dropped {
            let message = "this correction restates usage whose other events retention already dropped; \
                           corrections reach back as far as every event of the restated minutes, hours or days is \
                           retained";
            let p = planned.iter().find(|p| p.index == index).expect("planned");
            let id = p.old.as_ref().map(|o| &o.event).or(p.new.as_ref()).map_or("", |e| e.id.as_str());
            issues.push(issue(index, id, IssueCode::PastRetention, message));
        }
    }
    if !issues.is_empty() {
        return Ok(Restated { events_read: 0, buckets: 0, changed: Vec::new() });
    }

    // Fold every event that counts in a restated bucket: retained ones but the old versions, then the new versions.
    // The old versions are left out; restored versions, voided in the store, are added with the new ones.
    let voided: HashSet<u64> = planned.iter().filter_map(|p| p.old.as_ref()).map(|o| o.event.ordinal).collect();
    let mut fold = Fold::default();
    let mut events_read = 0u64;
    let add = |fold: &mut Fold, e: &RetainedEvent<String>| -> Result<()> {
        for meter in registry.for_event(tenant, &e.event_type) {
            let minute = minute_of(e.time_us);
            // Only a customer and meter with a bucket to restate: most events are not.
            let mut candidates =
                buckets.range((meter.id(), e.subject.clone(), i64::MIN)..=(meter.id(), e.subject.clone(), minute));
            let Some((&(_, _, start), &unit)) = candidates.next_back() else { continue };
            if minute >= start + unit {
                continue;
            }
            if let Ok(Some(c)) = extract_retained(meter, &e.data) {
                let customer = fold.customer(tenant, &e.subject);
                fold.add_in(customer, meter, start, e.time_us, e.ordinal, &c);
            }
        }
        Ok(())
    };
    if let Some((from, through)) = range {
        scan_commits(store, tenant, from, through.saturating_add(1), |_, _, value| {
            for e in events::decode(value)? {
                events_read += 1;
                if !voided.contains(&e.ordinal) {
                    add(&mut fold, &e)?;
                }
            }
            Ok(true)
        })?;
    }
    for new in planned.iter().filter_map(|p| p.new.as_ref()) {
        add(&mut fold, new)?;
    }

    let mut changed: BTreeMap<String, (i64, BTreeSet<u32>)> = BTreeMap::new();
    for ((meter_id, subject, start), unit) in &buckets {
        let (mut from, mut to) = (Vec::new(), Vec::new());
        keys::minute_key(&mut from, tenant, *meter_id, subject, *start);
        keys::minute_key(&mut to, tenant, *meter_id, subject, start + unit);
        set.delete_range(Cf::Agg, &from, &to);
        if meters[meter_id].aggregation() == Aggregation::UniqueCount {
            set.delete_range(Cf::Uniq, &from, &to);
        }
        let entry = changed.entry(subject.clone()).or_insert((i64::MAX, BTreeSet::new()));
        entry.0 = entry.0.min(start * MICROS_PER_MINUTE);
        entry.1.insert(*meter_id);
    }
    // After the deletes in the same batch: the merges land on nothing.
    fold.encode_into(set);
    for (meter_id, day) in days {
        // The day changed even when no event is left in it: the mark grows, so the export rewrites the day.
        let mut key = Vec::new();
        keys::day_key(&mut key, tenant, meter_id, day / MINUTES_PER_DAY);
        let mark = AggState { count: 1, ..AggState::empty(Aggregation::Count) };
        let mut value = Vec::new();
        MinuteStates::encode_entries(&mut value, 1, [(&b"\xffcorrections"[..], &mark)].into_iter());
        set.merge(Cf::Days, &key, &value);
    }
    Ok(Restated {
        events_read,
        buckets: buckets.len(),
        changed: changed.into_iter().map(|(s, (at, m))| (s, at, m.into_iter().collect())).collect(),
    })
}

/// The commits that can hold the events of a meter's UTC day (`day`: its first minute): those its mark names, else
/// (a mark written before marks named them) those received from the day's start, less the future allowance, to the
/// back-dating window after its end. No mark: no event, nothing to read (`(u64::MAX, 0)`).
fn day_commits(store: &dyn Store, config: &Config, tenant: &str, meter_id: u32, day: i64) -> Result<(u64, u64)> {
    let mut key = Vec::new();
    keys::day_key(&mut key, tenant, meter_id, day / MINUTES_PER_DAY);
    let Some(mark) = store.get(Cf::Days, &key)? else { return Ok((u64::MAX, 0)) };
    let (mut first, mut last) = (None, None);
    MinuteStates::visit(&mark, |dims, state| {
        if dims == DAY_FIRST_COMMIT {
            first = Some(state.value.0 as u64);
        } else if dims == DAY_LAST_COMMIT {
            last = Some(state.value.0 as u64);
        }
        Ok(())
    })?;
    if let (Some(first), Some(last)) = (first, last) {
        return Ok((first, last));
    }
    let from = day - config.max_future_us / MICROS_PER_MINUTE - 1;
    let to = day + MINUTES_PER_DAY + config.backdate_window_us / MICROS_PER_MINUTE + 1;
    let (first, until) = commits_received(store, from, to)?;
    Ok((first, until.map_or(u64::MAX, |u| u.saturating_sub(1))))
}

fn issue(index: usize, id: &str, code: IssueCode, message: &str) -> EventIssue {
    EventIssue { index, id: Some(id.to_owned()), code, message: message.to_owned() }
}
