//! The single writer: dedup, aggregation and the commit, serialized on one thread.
//!
//! Callers parse on their own threads and queue a `Command`; the writer takes the first command and
//! then everything already waiting (up to `max_commit_events`), stages them into one `WriteSet` and
//! writes it once, synced per the durability setting: a group commit. Only then are the callers
//! answered, so a 2xx always means durable. One writer also makes dedup's check-then-insert race-free.
//!
//! Aggregates are folded in memory across commits and flushed (one merge operand per customer-minute,
//! with the `agg_seq` watermark in the same write batch) every `FLUSH_INTERVAL`, when the fold grows past
//! `FLUSH_STATES`, before meters change, and before a query reads. A commit itself only writes the
//! retained events and dedup markers, so its cost does not grow with the number of meters or dimensions.
//! The retained events are the redo log: after a crash, commits past the watermark are re-aggregated
//! from them at open (see `engine::replay`). RocksDB's WAL stays the only log.
//!
//! Fail-stop: if a write fails, the writer records why, answers every waiting and later caller with
//! `StoreFailed`, rolls the in-memory dedup index back to what is durable, and never flushes again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hashbrown::HashMap;

use super::report::IngestReport;
use super::{Backfill, CreatedMeter, Shared};
use crate::aggregate::extract::{extract, extract_retained, Contribution};
use crate::aggregate::fold::Fold;
use crate::aggregate::meter::{Meter, MeterSpec, StoredMeter};
use crate::dedup::{self, DedupIndex, Seen};
use crate::engine::config::{Config, Durability};
use crate::error::{Error, EventIssue, IssueCode, Result};
use crate::ingest::{ParsedBatch, ParsedEvent};
use crate::storage::events::{self, RetainedEvent};
use crate::storage::{keys, scan_prefix, Cf, OpKind, Store, WriteSet};

pub(crate) enum Command {
    Ingest {
        batch: ParsedBatch,
        atomic: bool,
        now_us: i64,
        reply: Sender<Result<IngestReport>>,
    },
    CreateMeter {
        tenant: String,
        spec: MeterSpec,
        now_us: i64,
        reply: Sender<Result<CreatedMeter>>,
    },
    DeleteMeter {
        tenant: String,
        slug: String,
        reply: Sender<Result<()>>,
    },
    /// Makes every acknowledged event visible to queries.
    Flush {
        reply: Sender<Result<()>>,
    },
}

/// How long aggregates may wait in memory; bounds the replay after a crash too.
const FLUSH_INTERVAL: Duration = Duration::from_millis(1000);
/// Distinct states held in memory before a flush, bounding the fold's memory.
const FLUSH_STATES: usize = 500_000;

pub(crate) struct Writer {
    pub store: Arc<dyn Store>,
    pub shared: Arc<Shared>,
    pub config: Config,
    pub index: DedupIndex,
    /// Sequence number of the last commit.
    pub seq: u64,
    pub next_meter_id: u32,
    /// Live dedup records, oldest first: (commit seq, receive time), for expiry.
    pub dedup_records: VecDeque<(u64, i64)>,
    /// Aggregates of commits after `agg_seq`, not yet in `agg`.
    pub fold: Fold,
    pub agg_seq: u64,
    pub last_flush: Instant,
}

/// A group commit being staged.
#[derive(Default)]
struct Pending {
    set: WriteSet,
    /// Tenant of each retained-events part, in part order.
    tenants: Vec<String>,
    fingerprints: Vec<(u128, u64)>,
    received_us: i64,
    replies: Vec<(Sender<Result<IngestReport>>, IngestReport)>,
    events: usize,
    parts: u32,
    accepted: u64,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Command>) {
        let mut pending = Pending::default();
        loop {
            let first = match rx.recv_timeout(FLUSH_INTERVAL) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.flush();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Ingest { batch, atomic, now_us, reply } => {
                        self.stage(&mut pending, batch, atomic, now_us, reply)
                    }
                    Command::CreateMeter { tenant, spec, now_us, reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.create_meter(&tenant, spec, now_us)));
                    }
                    Command::DeleteMeter { tenant, slug, reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.delete_meter(&tenant, &slug)));
                    }
                    Command::Flush { reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.flush()));
                    }
                }
                if pending.events < self.config.max_commit_events {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(&mut pending);
            if self.fold.states() >= FLUSH_STATES || self.last_flush.elapsed() >= FLUSH_INTERVAL {
                let _ = self.flush();
            }
        }
        // Closing: whatever is still in memory goes to `agg`, so the next open has nothing to replay.
        let _ = self.flush();
    }

    /// Writes the in-memory aggregates and the watermark in one batch. No fsync of its own: if it is lost
    /// in a crash, so is the watermark, and recovery re-aggregates those commits from their events.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        self.last_flush = Instant::now();
        // Even with nothing folded, the watermark must move: replay would otherwise revisit commits whose
        // events a meter created since has already backfilled.
        if self.fold.is_empty() && self.agg_seq == self.seq {
            return Ok(());
        }
        let mut set = WriteSet::default();
        self.fold.drain_into(&mut set);
        set.put(Cf::Meta, keys::META_AGG_SEQ, &self.seq.to_be_bytes());
        self.write_admin(&set, false)?;
        self.agg_seq = self.seq;
        Ok(())
    }

    fn failed(&self) -> Option<Error> {
        let reason = self.shared.failed.lock().unwrap().clone();
        reason.map(|reason| Error::StoreFailed { reason })
    }

    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        f(self)
    }

    fn ordinal(&self, pending: &Pending) -> u64 {
        ((self.seq + 1) << 24) | pending.accepted
    }

    /// Decides every event of one request and stages what it accepts; answers later, after the commit.
    fn stage(
        &mut self,
        p: &mut Pending,
        batch: ParsedBatch,
        atomic: bool,
        now_us: i64,
        reply: Sender<Result<IngestReport>>,
    ) {
        if let Some(e) = self.failed() {
            let _ = reply.send(Err(e));
            return;
        }
        let registry = self.shared.registry.read().unwrap().clone();
        let mut report = IngestReport { issues: batch.issues.clone(), ..Default::default() };

        if atomic {
            let problems = self.atomic_problems(&batch, &registry, now_us);
            if !problems.is_empty() || !report.issues.is_empty() {
                report.issues.extend(problems);
                report.issues.sort_by_key(|i| i.index);
                let _ = reply.send(Err(Error::BatchRejected { issues: report.issues }));
                return;
            }
        }

        let mut record = events::RecordBuilder::default();
        let mut contributions: Vec<(&Meter, Contribution)> = Vec::new();
        for ev in &batch.events {
            match self.index.check(ev.fingerprint, ev.payload_hash) {
                Seen::Duplicate => {
                    report.duplicates += 1;
                    continue;
                }
                Seen::Conflict => {
                    report.issues.push(conflict(&batch, ev));
                    continue;
                }
                Seen::New => {}
            }
            if let Err(issue) = self.check_time(&batch, ev, now_us) {
                report.issues.push(issue);
                continue;
            }
            contributions.clear();
            if let Err(issue) = contributions_of(&batch, ev, &registry, &mut contributions) {
                report.issues.push(issue);
                continue;
            }
            let ordinal = self.ordinal(p);
            let subject = batch.text(ev.subject);
            if !contributions.is_empty() {
                let customer = self.fold.customer(&batch.tenant, subject);
                for (meter, c) in &contributions {
                    self.fold.add(customer, meter, ev.time_us, ordinal, c);
                }
            }
            record.push(RetainedEvent {
                source: batch.text(ev.source),
                id: batch.text(ev.id),
                event_type: batch.text(ev.event_type),
                subject,
                time_us: ev.time_us,
                ordinal,
                data: batch.text(ev.data),
            });
            self.index.insert(ev.fingerprint, ev.payload_hash, now_us);
            p.fingerprints.push((ev.fingerprint, ev.payload_hash));
            p.accepted += 1;
            report.accepted += 1;
        }
        report.issues.sort_by_key(|i| i.index);

        if !record.is_empty() {
            match record.finish() {
                Ok(value) => p.set.put(Cf::Events, &keys::events_key(&batch.tenant, self.seq + 1, p.parts), &value),
                Err(e) => {
                    // Compression cannot fail on valid input; if it does, acknowledge nothing of this request.
                    self.fail(p, e.to_string());
                    let _ = reply.send(Err(self.failed().unwrap()));
                    return;
                }
            }
            p.parts += 1;
            p.tenants.push(batch.tenant.clone());
        }
        p.received_us = p.received_us.max(now_us);
        p.events += batch.total;
        p.replies.push((reply, report));
    }

    /// For an atomic request: every reason it cannot be applied in full, without changing anything.
    fn atomic_problems(
        &self,
        batch: &ParsedBatch,
        registry: &crate::aggregate::registry::Registry,
        now_us: i64,
    ) -> Vec<EventIssue> {
        let mut problems = Vec::new();
        let mut in_batch: HashMap<u128, u64> = HashMap::new();
        let mut scratch = Vec::new();
        for ev in &batch.events {
            let seen = match (self.index.check(ev.fingerprint, ev.payload_hash), in_batch.get(&ev.fingerprint)) {
                (Seen::New, Some(&h)) if h != ev.payload_hash => Seen::Conflict,
                (Seen::New, Some(_)) => Seen::Duplicate,
                (s, _) => s,
            };
            match seen {
                Seen::Duplicate => continue,
                Seen::Conflict => {
                    problems.push(conflict(batch, ev));
                    continue;
                }
                Seen::New => {}
            }
            in_batch.insert(ev.fingerprint, ev.payload_hash);
            scratch.clear();
            if let Err(issue) =
                self.check_time(batch, ev, now_us).and_then(|_| contributions_of(batch, ev, registry, &mut scratch))
            {
                problems.push(issue);
            }
        }
        problems
    }

    /// Dedup is checked first (so a late retry is a duplicate), then the time window.
    fn check_time(&self, batch: &ParsedBatch, ev: &ParsedEvent, now_us: i64) -> Result<(), EventIssue> {
        let issue = |code, message| EventIssue {
            index: ev.index as usize,
            id: Some(batch.text(ev.id).to_owned()),
            code,
            message,
        };
        if ev.time_us < now_us - self.config.backdate_window_us {
            return Err(issue(
                IssueCode::TooOld,
                format!(
                    "\"time\" is more than {} days in the past; events that old are not accepted",
                    self.config.backdate_window_us / 86_400_000_000
                ),
            ));
        }
        if ev.time_us > now_us + self.config.max_future_us {
            return Err(issue(
                IssueCode::TooFarInFuture,
                format!(
                    "\"time\" is more than {} seconds in the future; check the sender's clock",
                    self.config.max_future_us / 1_000_000
                ),
            ));
        }
        Ok(())
    }

    /// Writes the staged group, then answers its callers.
    fn commit(&mut self, p: &mut Pending) {
        if p.replies.is_empty() {
            return;
        }
        let mut pending = std::mem::take(p);
        let started = Instant::now();
        if !pending.fingerprints.is_empty() {
            let seq = self.seq + 1;
            let mut record = dedup::RecordBuilder::new(pending.received_us, &pending.tenants);
            for &(fp, ph) in &pending.fingerprints {
                record.push(fp, ph);
            }
            pending.set.put(Cf::Dedup, &seq.to_be_bytes(), record.bytes());
            pending.set.put(Cf::Meta, keys::META_SEQ, &seq.to_be_bytes());
            self.expire_dedup(&mut pending.set, pending.received_us);
            if let Err(e) = self.store.write(&pending.set, self.config.durability == Durability::Fsync) {
                self.fail(&mut pending, e.to_string());
                let err = self.failed().unwrap();
                for (reply, _) in pending.replies {
                    let _ = reply.send(Err(Error::StoreFailed { reason: err.to_string() }));
                }
                return;
            }
            self.seq = seq;
            self.dedup_records.push_back((seq, pending.received_us));
        }
        let stats = &self.shared.stats;
        stats.record_commit(started.elapsed().as_secs_f64());
        for (reply, report) in pending.replies {
            stats.accepted.fetch_add(report.accepted as u64, Ordering::Relaxed);
            stats.duplicates.fetch_add(report.duplicates as u64, Ordering::Relaxed);
            stats.rejected.fetch_add(report.issues.len() as u64, Ordering::Relaxed);
            let _ = reply.send(Ok(report));
        }
    }

    /// Fail-stop: remember why, and forget the fingerprints that were never made durable.
    fn fail(&mut self, p: &mut Pending, reason: String) {
        for &(fp, _) in &p.fingerprints {
            self.index.remove(fp);
        }
        p.fingerprints.clear();
        self.shared.failed.lock().unwrap().get_or_insert(reason);
    }

    /// Drops dedup records (and index entries) received before the window, in the commit's own batch.
    fn expire_dedup(&mut self, set: &mut WriteSet, now_us: i64) {
        let cutoff = now_us - self.config.dedup_retention_us();
        let mut last_expired = None;
        while let Some(&(seq, received)) = self.dedup_records.front() {
            // A record past the watermark is still needed to replay its commit after a crash.
            if received >= cutoff || seq > self.agg_seq {
                break;
            }
            last_expired = Some(seq);
            self.dedup_records.pop_front();
        }
        if let Some(seq) = last_expired {
            set.delete_range(Cf::Dedup, &0u64.to_be_bytes(), &(seq + 1).to_be_bytes());
            self.index.expire(cutoff);
        }
    }

    fn create_meter(&mut self, tenant: &str, spec: MeterSpec, now_us: i64) -> Result<CreatedMeter> {
        let registry = self.shared.registry.read().unwrap().clone();
        if registry.get(tenant, &spec.slug).is_some() {
            return Err(Error::AlreadyExists { what: "meter", name: spec.slug });
        }
        let meter = Arc::new(Meter::compile(StoredMeter { id: self.next_meter_id, created_us: now_us, spec })?);
        // Every earlier commit's aggregates go out first: replay after a crash then never has to know
        // which meters existed when an event arrived.
        self.flush()?;

        // Backfill from the retained events, in the same atomic write as the definition: after a crash
        // the meter either does not exist or is complete.
        let mut fold = Fold::default();
        let mut backfill = Backfill::default();
        scan_prefix(&*self.store, Cf::Events, &keys::events_prefix(tenant), |_, value| {
            for e in events::decode(value)? {
                if e.event_type != meter.stored.spec.event_type {
                    continue;
                }
                match extract_retained(&meter, &e.data) {
                    Ok(Some(c)) => {
                        let customer = fold.customer(tenant, &e.subject);
                        fold.add(customer, &meter, e.time_us, e.ordinal, &c);
                        backfill.events += 1;
                    }
                    Ok(None) => backfill.filtered += 1,
                    Err(_) => backfill.unreadable += 1,
                }
            }
            Ok(true)
        })?;

        let mut set = WriteSet::default();
        let stored_json = serde_json::to_vec(&meter.stored).expect("meters serialize");
        set.put(Cf::Meta, &keys::meter_def(tenant, meter.slug()), &stored_json);
        set.put(Cf::Meta, keys::META_METER_ID, &(self.next_meter_id + 1).to_be_bytes());
        fold.drain_into(&mut set);
        self.write_admin(&set, true)?;
        self.next_meter_id += 1;
        *self.shared.registry.write().unwrap() = Arc::new(registry.with(tenant, meter.clone()));
        Ok(CreatedMeter { meter: meter.stored.clone(), backfill })
    }

    fn delete_meter(&mut self, tenant: &str, slug: &str) -> Result<()> {
        let registry = self.shared.registry.read().unwrap().clone();
        let meter =
            registry.get(tenant, slug).ok_or_else(|| Error::NotFound { what: "meter", name: slug.to_owned() })?;
        self.flush()?;
        let mut set = WriteSet::default();
        set.push(OpKind::Delete, Cf::Meta, &keys::meter_def(tenant, slug), &[]);
        let mut prefix = Vec::new();
        keys::meter_prefix(&mut prefix, tenant, meter.id());
        for cf in [Cf::Agg, Cf::Uniq] {
            set.delete_range(cf, &prefix, &keys::prefix_end(&prefix));
        }
        self.write_admin(&set, true)?;
        *self.shared.registry.write().unwrap() = Arc::new(registry.without(tenant, slug));
        Ok(())
    }

    /// Writes outside a group commit; any failure stops the engine like a failed commit does.
    fn write_admin(&mut self, set: &WriteSet, sync: bool) -> Result<()> {
        self.store.write(set, sync && self.config.durability == Durability::Fsync).map_err(|e| {
            self.shared.failed.lock().unwrap().get_or_insert(e.to_string());
            self.failed().unwrap()
        })
    }
}

fn conflict(batch: &ParsedBatch, ev: &ParsedEvent) -> EventIssue {
    EventIssue {
        index: ev.index as usize,
        id: Some(batch.text(ev.id).to_owned()),
        code: IssueCode::Conflict,
        message:
            "an event with this source and id was already accepted with a different payload; the first one stands. \
                  Send corrections as a new event with a new id"
                .into(),
    }
}

/// What the event adds to each meter that listens to its type; an issue if any of them cannot read it.
fn contributions_of<'b>(
    batch: &'b ParsedBatch,
    ev: &ParsedEvent,
    registry: &'b crate::aggregate::registry::Registry,
    out: &mut Vec<(&'b Meter, Contribution<'b>)>,
) -> Result<(), EventIssue> {
    let meters = registry.for_event(&batch.tenant, batch.text(ev.event_type));
    if meters.is_empty() {
        return Ok(());
    }
    let top = |k: &str| batch.props(ev).find(|(key, _)| *key == k).map(|(_, v)| v);
    for meter in meters {
        match extract(meter, &top) {
            Ok(Some(c)) => out.push((meter, c)),
            Ok(None) => {}
            Err(message) => {
                return Err(EventIssue {
                    index: ev.index as usize,
                    id: Some(batch.text(ev.id).to_owned()),
                    code: IssueCode::InvalidValue,
                    message,
                })
            }
        }
    }
    Ok(())
}
