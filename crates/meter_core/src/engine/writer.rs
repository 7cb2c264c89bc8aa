//! The single writer: dedup and the commit, serialized on one thread.
//!
//! Callers parse and prepare on their own threads (`prepare`) and queue a `Command`; the writer takes the
//! first command and then everything already waiting (up to `max_commit_events`), decides each event
//! against the dedup index (`dedup`: the recent identities, then one batched read of `seen`), stages the results into one `WriteSet` and writes it once, synced per the
//! durability setting: a group commit. Only then are the callers answered, so a 2xx always means
//! durable. One writer also makes dedup's check-then-insert race-free.
//!
//! A commit writes the retained events, one `seen` key per accepted identity and a commit record, nothing per meter, so its cost does not
//! grow with the number of meters or dimensions. The accepted events then go to the fold threads
//! (`folder`), which keep the aggregates; the retained events are their redo log after a crash (see
//! `engine::recover`). RocksDB's WAL stays the only log. They go there, and into `Shared::unfolded`, before the
//! callers are answered, so that a query made after an answer finds them (`Engine::query`).
//!
//! The writer also enforces the cardinality limits (`cardinality`): an event that would take a meter past one is
//! refused with `cardinality_limit`, and the meter-minute counts it changed go into the same commit.
//!
//! Fail-stop: if a write fails, the writer records why, answers the callers of that write with
//! `OutcomeUnknown` (the write may have reached the WAL, so it may be applied after a restart) and every later
//! caller with `StoreFailed` (refused before any write), and rolls the recent identities back to what is
//! durable; nothing is flushed again. A read the limits need that fails stops the engine the same way, before anything
//! of the group is written: its callers get `StoreFailed`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use hashbrown::HashMap;

use super::cardinality::Cardinality;
use super::folder::{flushed, Accepted, FoldWork};
use super::log::{self, Prepped, PreppedEntry};
use super::prepare::{cardinality_limit, conflict, prepare, Prepared};
use super::report::IngestReport;
use super::{CreatedMeter, Shared};
use crate::aggregate::fold::first_ordinal;
use crate::aggregate::meter::{Meter, MeterSpec, StoredMeter};
use crate::dedup::{self, Horizon, Mark, Recent, Seen};
use crate::engine::config::{Config, Durability};
use crate::error::{Error, EventIssue, Result};
use crate::storage::events;
use crate::storage::{keys, Cf, OpKind, Store, WriteSet};

pub(crate) enum Command {
    Ingest {
        prepared: Prepared,
        atomic: bool,
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
    Correct {
        tenant: String,
        request: super::correct::CorrectionRequest,
        now_us: i64,
        reply: Sender<Result<super::correct::CorrectionReport>>,
    },
    /// Log entries in log order, each applied with its position and outcome (`log`).
    Apply {
        log: String,
        entries: Vec<PreppedEntry>,
        forget_before: u64,
        reply: Sender<Result<Vec<Vec<u8>>>>,
    },
    /// The fold threads write what they hold of every commit so far: answers with where they will answer.
    Flush {
        reply: Sender<Result<Vec<Receiver<Result<()>>>>>,
    },
}

pub(crate) struct Writer {
    pub store: Arc<dyn Store>,
    pub shared: Arc<Shared>,
    pub config: Config,
    /// Identities of the commit being staged and the last ones committed (`dedup::recent`).
    pub recent: Recent,
    /// Identities received before it are forgotten (`dedup::Horizon`), here and by the store's compaction.
    pub horizon: Arc<Horizon>,
    /// Sequence number of the last commit.
    pub seq: u64,
    pub next_meter_id: u32,
    /// Commit records (`dedup::record`) up to this commit are deleted: their aggregates are written.
    pub records_released: u64,
    /// The last receive minute marked for retention (`retention::mark_received`).
    pub received_minute: i64,
    /// Where durable commits go to be aggregated (one fold thread per shard), and those threads, then the
    /// flush thread.
    pub folds: Vec<Sender<FoldWork>>,
    pub folders: Vec<JoinHandle<()>>,
    /// The cardinality limits' counts.
    pub card: Cardinality,
}

/// A group commit being staged.
#[derive(Default)]
struct Pending {
    set: WriteSet,
    /// Tenant of each retained-events part, in part order.
    tenants: Vec<String>,
    received_us: i64,
    /// Each request's caller, its answer once durable, and its tenant (for the skip counters).
    replies: Vec<(Sender<Result<IngestReport>>, IngestReport, String)>,
    events: usize,
    /// The accepted events of each part, for the fold threads once the commit is durable.
    parts: Vec<Accepted>,
    accepted: u64,
    /// Written even if it accepts no event: it carries a log position (`log`).
    positioned: bool,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Command>) {
        let mut pending = Pending::default();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Ingest { prepared, atomic, reply } => self.stage(&mut pending, prepared, atomic, reply),
                    Command::CreateMeter { tenant, spec, now_us, reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.create_meter(&tenant, spec, now_us, None)));
                    }
                    Command::DeleteMeter { tenant, slug, reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.delete_meter(&tenant, &slug, None)));
                    }
                    Command::Correct { tenant, request, now_us, reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.correct(&tenant, request, now_us)));
                    }
                    Command::Apply { log, entries, forget_before, reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.apply(&mut pending, &log, entries, forget_before)));
                    }
                    Command::Flush { reply } => {
                        self.commit(&mut pending);
                        let _ = reply.send(self.guarded(|w| w.flush_folds()));
                    }
                }
                if pending.events < self.config.max_commit_events {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(&mut pending);
        }
        // Closing: the fold threads flush what they hold, so the next open has nothing to replay.
        self.folds.clear();
        self.folders.drain(..).for_each(|f| {
            let _ = f.join();
        });
    }

    /// Asks every fold thread to flush once it has folded every commit so far; returns where they answer.
    fn flush_folds(&self) -> Result<Vec<Receiver<Result<()>>>> {
        self.ask_folds(|reply| FoldWork::Flush { reply })
    }

    /// Sends one request to every fold thread, after every commit so far; returns where they answer.
    fn ask_folds<T>(&self, request: impl Fn(Sender<Result<T>>) -> FoldWork) -> Result<Vec<Receiver<Result<T>>>> {
        let mut answers = Vec::with_capacity(self.folds.len());
        for folds in &self.folds {
            let (reply, answer) = bounded(1);
            folds.send(request(reply)).map_err(|_| Error::Closed)?;
            answers.push(answer);
        }
        Ok(answers)
    }

    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        f(self)
    }

    fn ordinal(&self, pending: &Pending) -> u64 {
        first_ordinal(self.seq + 1) + pending.accepted
    }

    /// Decides every event of one request and stages what it accepts; answers later, after the commit.
    fn stage(&mut self, p: &mut Pending, prepared: Prepared, atomic: bool, reply: Sender<Result<IngestReport>>) {
        if let Some(e) = self.shared.failure() {
            let _ = reply.send(Err(e));
            return;
        }
        let registry = self.shared.registry.read().unwrap().clone();
        let prepared = if Arc::ptr_eq(&prepared.registry, &registry) {
            prepared
        } else {
            // A meter changed after the caller prepared: judge the events by the meters of now.
            match prepare(prepared.batch, registry, prepared.now_us, &self.config) {
                Ok(again) => again,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        };
        let batch = &prepared.batch;
        let mut report = IngestReport { issues: batch.issues.clone(), ..Default::default() };
        self.horizon.advance(prepared.now_us.saturating_sub(self.config.dedup_retention_us()));
        let on_disk = match self.marks_on_disk(&prepared) {
            Ok(marks) => marks,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };

        if atomic {
            // The limits' additions of a batch that is refused whole are taken back.
            self.card.begin_trial();
            let problems = match self.atomic_problems(&prepared, &on_disk) {
                Ok(problems) => problems,
                Err(e) => {
                    self.card.end_trial(false);
                    return self.abandon(p, reply, e);
                }
            };
            let refused = !problems.is_empty() || !report.issues.is_empty();
            self.card.end_trial(!refused);
            if refused {
                report.issues.extend(problems);
                report.issues.sort_by_key(|i| i.index);
                let _ = reply.send(Err(Error::BatchRejected { issues: report.issues }));
                return;
            }
        }

        let first_ordinal = self.ordinal(p);
        let mut kept = Vec::with_capacity(prepared.frame.count);
        let mut accepted = Vec::new();
        let mut warnings = prepared.warnings.iter().peekable();
        for (position, (ev, verdict)) in batch.events.iter().zip(&prepared.verdicts).enumerate() {
            // This event's warnings (they are in position order), reported only if it is accepted now.
            let mut own = Vec::new();
            while let Some((_, w)) = warnings.next_if(|(at, _)| *at as usize == position) {
                own.push(w);
            }
            let seen = self.seen(ev.fingerprint, ev.payload_hash, on_disk[position]);
            let refused = match (seen, verdict) {
                (Seen::New, None) => {
                    let (subject, (scopes, signature)) = (batch.text(ev.subject), prepared.scopes_of(position));
                    match self.card.admit(&*self.store, &batch.tenant, subject, scopes, signature, self.seq + 1) {
                        Ok(refused) => refused,
                        Err(e) => return self.abandon(p, reply, e),
                    }
                }
                _ => None,
            };
            if verdict.is_none() {
                kept.push(seen == Seen::New && refused.is_none());
            }
            match (seen, verdict) {
                (Seen::Duplicate, _) => report.duplicates += 1,
                (Seen::Conflict, _) => report.issues.push(conflict(batch, ev)),
                (Seen::New, Some(issue)) => report.issues.push(issue.clone()),
                (Seen::New, None) if refused.is_some() => {
                    let refusal = refused.expect("checked");
                    report.issues.push(cardinality_limit(batch, &prepared.registry, ev, refusal));
                }
                (Seen::New, None) => {
                    let mark = Mark { received_us: prepared.now_us, payload_hash: ev.payload_hash };
                    self.recent.stage(ev.fingerprint, mark);
                    p.set.put(Cf::Seen, &dedup::seen_key(ev.fingerprint), &mark.encode());
                    p.accepted += 1;
                    report.accepted += 1;
                    accepted.push(position as u32);
                    report.warnings.extend(own.into_iter().cloned());
                }
            }
        }
        report.issues.sort_by_key(|i| i.index);
        let batch_tenant = batch.tenant.clone();
        p.received_us = p.received_us.max(prepared.now_us);
        p.events += batch.total;
        if !accepted.is_empty() {
            let key = keys::events_key(&batch.tenant, self.seq + 1, p.parts.len() as u32);
            p.set.put(Cf::Events, &key, &events::record(first_ordinal, &kept, &prepared.frame));
            p.tenants.push(batch.tenant.clone());
            p.parts.push(Accepted { prepared, events: accepted, first_ordinal });
        }
        p.replies.push((reply, report, batch_tenant));
    }

    /// What the disk knows of each event of the request that the recent identities do not decide: read in one
    /// batch before deciding, since nothing the request stages can be on disk yet.
    fn marks_on_disk(&self, prepared: &Prepared) -> Result<Vec<Option<Mark>>> {
        let events = &prepared.batch.events;
        let unknown: Vec<usize> = (0..events.len())
            .filter(|&i| self.recent.check(events[i].fingerprint, events[i].payload_hash, &self.horizon).is_none())
            .collect();
        let fingerprints: Vec<u128> = unknown.iter().map(|&i| events[i].fingerprint).collect();
        let mut marks = vec![None; events.len()];
        for (i, mark) in unknown.into_iter().zip(dedup::lookup(&*self.store, &self.horizon, &fingerprints)?) {
            marks[i] = mark;
        }
        Ok(marks)
    }

    /// Whether an identity was seen: by the recent identities (which include what this group commit
    /// staged so far), else by what the disk said before the request was staged.
    fn seen(&self, fingerprint: u128, payload_hash: u64, on_disk: Option<Mark>) -> Seen {
        self.recent
            .check(fingerprint, payload_hash, &self.horizon)
            .unwrap_or_else(|| on_disk.map_or(Seen::New, |m| m.judge(payload_hash)))
    }

    /// For an atomic request: every reason it cannot be applied in full. Changes nothing but the cardinality counts,
    /// which the caller keeps or takes back (a trial).
    fn atomic_problems(&mut self, prepared: &Prepared, on_disk: &[Option<Mark>]) -> Result<Vec<EventIssue>> {
        let batch = &prepared.batch;
        let mut problems = Vec::new();
        let mut in_batch: HashMap<u128, u64> = HashMap::new();
        for (i, (ev, verdict)) in batch.events.iter().zip(&prepared.verdicts).enumerate() {
            let seen = match (self.seen(ev.fingerprint, ev.payload_hash, on_disk[i]), in_batch.get(&ev.fingerprint)) {
                (Seen::New, Some(&h)) if h != ev.payload_hash => Seen::Conflict,
                (Seen::New, Some(_)) => Seen::Duplicate,
                (s, _) => s,
            };
            match seen {
                Seen::Duplicate => {}
                Seen::Conflict => problems.push(conflict(batch, ev)),
                Seen::New => {
                    in_batch.insert(ev.fingerprint, ev.payload_hash);
                    problems.extend(verdict.clone());
                    if verdict.is_none() {
                        let (subject, (scopes, signature)) = (batch.text(ev.subject), prepared.scopes_of(i));
                        if let Some(refusal) =
                            self.card.admit(&*self.store, &batch.tenant, subject, scopes, signature, self.seq + 1)?
                        {
                            problems.push(cardinality_limit(batch, &prepared.registry, ev, refusal));
                        }
                    }
                }
            }
        }
        Ok(problems)
    }

    /// A read the cardinality limits needed failed while staging: fail-stop before anything of the group is written.
    /// Every caller of the group, and this one, is refused: `StoreFailed` (not applied).
    fn abandon(&mut self, p: &mut Pending, reply: Sender<Result<IngestReport>>, e: Error) {
        let reason = e.failure_reason();
        self.fail(reason.clone());
        for (waiting, _, _) in std::mem::take(p).replies {
            let _ = waiting.send(Err(Error::StoreFailed { reason: reason.clone() }));
        }
        let _ = reply.send(Err(Error::StoreFailed { reason }));
    }

    /// Writes the staged group, answers its callers, then hands the accepted events to the fold thread.
    fn commit(&mut self, p: &mut Pending) {
        if p.replies.is_empty() && !p.positioned {
            return;
        }
        let mut pending = std::mem::take(p);
        let started = Instant::now();
        if pending.accepted > 0 || pending.positioned {
            let seq = self.seq + u64::from(pending.accepted > 0);
            let mut marked = None;
            if pending.accepted > 0 {
                pending.set.put(
                    Cf::Dedup,
                    &seq.to_be_bytes(),
                    &dedup::record::build(pending.received_us, &pending.tenants),
                );
                pending.set.put(Cf::Meta, keys::META_SEQ, &seq.to_be_bytes());
                self.card.stage(&mut pending.set, pending.received_us - self.config.backdate_window_us);
                marked =
                    super::retention::mark_received(self.received_minute, &mut pending.set, seq, pending.received_us);
                self.release_records(&mut pending.set);
            }
            if let Err(e) = self.store.write(&pending.set, self.config.durability == Durability::Fsync) {
                // The write may have reached the WAL before it failed (its fsync, say): these callers cannot be
                // told "not applied". Every later caller is refused before any write: `StoreFailed`.
                let reason = e.failure_reason();
                self.fail(reason.clone());
                for (reply, _, _) in pending.replies {
                    let _ = reply.send(Err(Error::OutcomeUnknown { reason: reason.clone() }));
                }
                return;
            }
            self.seq = seq;
            self.recent.committed();
            self.recent.evict(pending.received_us);
            self.received_minute = marked.unwrap_or(self.received_minute);
            self.card.trim(self.shared.agg_seq());
        }
        let stats = &self.shared.stats;
        stats.record_commit(started.elapsed().as_secs_f64());
        if !pending.parts.is_empty() {
            // Before the answers: a query made after an answer finds the commit, folded or in `unfolded`
            // (`Engine::query`). Blocks while a fold thread is behind: the queue in front of the writer then fills,
            // and callers get `Overloaded` rather than memory growing.
            let parts = Arc::new(pending.parts);
            {
                let folded = self.shared.folded_seqs.iter().map(|f| f.load(Ordering::Acquire)).min().unwrap_or(0);
                let mut unfolded = self.shared.unfolded.lock().unwrap();
                while unfolded.front().is_some_and(|(seq, _)| *seq <= folded) {
                    unfolded.pop_front();
                }
                unfolded.push_back((self.seq, parts.clone()));
            }
            for folds in &self.folds {
                let _ = folds.send(FoldWork::Commit { seq: self.seq, parts: parts.clone() });
            }
        }
        for (reply, report, tenant) in pending.replies {
            stats.accepted.fetch_add(report.accepted as u64, Ordering::Relaxed);
            stats.duplicates.fetch_add(report.duplicates as u64, Ordering::Relaxed);
            stats.rejected.fetch_add(report.issues.len() as u64, Ordering::Relaxed);
            if !report.warnings.is_empty() {
                let mut skipped = self.shared.skipped.lock().unwrap();
                for w in &report.warnings {
                    *skipped.entry((tenant.clone(), w.meter.clone())).or_default() += 1;
                }
            }
            let _ = reply.send(Ok(report));
        }
    }

    /// Fail-stop: remember why, and forget the identities that were never made durable.
    fn fail(&mut self, reason: String) {
        self.recent.rolled_back();
        self.shared.fail(reason);
    }

    /// Deletes, in the commit's own batch, the commit records whose aggregates are written: only replay
    /// after a crash reads them, and it starts after the aggregate watermark.
    fn release_records(&mut self, set: &mut WriteSet) {
        let agg_seq = self.shared.agg_seq();
        if agg_seq > self.records_released {
            set.delete_range(Cf::Dedup, &0u64.to_be_bytes(), &(agg_seq + 1).to_be_bytes());
            self.records_released = agg_seq;
        }
    }

    /// With `entry` (a log's name and position), the write that creates the meter also records the position and the
    /// outcome (`log`).
    fn create_meter(
        &mut self,
        tenant: &str,
        spec: MeterSpec,
        now_us: i64,
        entry: Option<(&str, u64)>,
    ) -> Result<CreatedMeter> {
        let registry = self.shared.registry.read().unwrap().clone();
        if registry.get(tenant, &spec.slug).is_some() {
            return Err(Error::AlreadyExists { what: "meter", name: spec.slug });
        }
        let meter = Arc::new(Meter::compile(StoredMeter { id: self.next_meter_id, created_us: now_us, spec })?);
        // Every earlier commit's aggregates go out first: replay after a crash then never has to know
        // which meters existed when an event arrived.
        flushed(self.flush_folds()?)?;

        // Backfill from the retained events, in the same atomic write as the definition: after a crash
        // the meter either does not exist or is complete.
        let (mut fold, backfill) = super::recover::backfill(&*self.store, tenant, &meter)?;

        let mut set = WriteSet::default();
        let stored_json = serde_json::to_vec(&meter.stored).expect("meters serialize");
        set.put(Cf::Meta, &keys::meter_def(tenant, meter.slug()), &stored_json);
        set.put(Cf::Meta, keys::META_METER_ID, &(self.next_meter_id + 1).to_be_bytes());
        // The cardinality counts of what the backfill filled (`cardinality`: the customers of each meter-minute).
        for ((meter_id, minute), customers) in fold.customers_per_minute() {
            set.put(Cf::Meta, &keys::card_key(minute, meter_id), &customers.to_be_bytes());
        }
        fold.drain_into(&mut set);
        let created = CreatedMeter { meter: meter.stored.clone(), backfill };
        if let Some((name, seq)) = entry {
            log::stage_entry(&mut set, name, seq, &log::outcome(tenant, &Ok(&created)));
        }
        self.write_admin(&set, true)?;
        self.next_meter_id += 1;
        if created.backfill.unreadable > 0 {
            let key = (tenant.to_owned(), meter.slug().to_owned());
            *self.shared.skipped.lock().unwrap().entry(key).or_default() += created.backfill.unreadable;
        }
        *self.shared.registry.write().unwrap() = Arc::new(registry.with(tenant, meter.clone()));
        Ok(created)
    }

    /// A correction, as a commit of its own (`correct`): after every fold is written, under the roll-ups' lock (a
    /// roll-up must not move the buckets it restates), synced like a commit.
    fn correct(
        &mut self,
        tenant: &str,
        request: super::correct::CorrectionRequest,
        now_us: i64,
    ) -> Result<super::correct::CorrectionReport> {
        flushed(self.flush_folds()?)?;
        let registry = self.shared.registry.read().unwrap().clone();
        let seq = self.seq + 1;
        let rollup = self.shared.rollup.clone();
        let _no_rollup = rollup.write().unwrap();
        let horizon = self.horizon.clone();
        let mut staged =
            super::correct::stage(&*self.store, &registry, &self.config, tenant, &horizon, request, seq, now_us)?;
        if staged.report.seq.is_none() {
            return Ok(staged.report);
        }
        staged.set.put(Cf::Meta, keys::META_SEQ, &seq.to_be_bytes());
        let marked = super::retention::mark_received(self.received_minute, &mut staged.set, seq, now_us);
        self.shared.write(&*self.store, &staged.set, self.config.durability == Durability::Fsync)?;
        self.seq = seq;
        self.received_minute = marked.unwrap_or(self.received_minute);
        // Live balances follow through the change feed, as after a commit.
        for (subject, earliest_us, meters) in staged.changed {
            let shard = super::folder::shard_of(tenant, &subject, super::folder::SHARDS);
            self.shared.changes.recorder(shard).record(tenant, &subject, earliest_us, meters.into_iter());
        }
        Ok(staged.report)
    }

    /// With `entry`, as `create_meter`.
    fn delete_meter(&mut self, tenant: &str, slug: &str, entry: Option<(&str, u64)>) -> Result<()> {
        let registry = self.shared.registry.read().unwrap().clone();
        let meter =
            registry.get(tenant, slug).ok_or_else(|| Error::NotFound { what: "meter", name: slug.to_owned() })?;
        flushed(self.flush_folds()?)?;
        let mut set = WriteSet::default();
        set.push(OpKind::Delete, Cf::Meta, &keys::meter_def(tenant, slug), &[]);
        let mut prefix = Vec::new();
        keys::meter_prefix(&mut prefix, tenant, meter.id());
        for cf in [Cf::Agg, Cf::Uniq, Cf::Days] {
            set.delete_range(cf, &prefix, &keys::prefix_end(&prefix));
        }
        set.push(OpKind::Delete, Cf::Meta, &keys::resolution(tenant, meter.id()), &[]);
        if let Some((name, seq)) = entry {
            log::stage_entry(&mut set, name, seq, &log::outcome(tenant, &Ok(())));
        }
        // Not while a roll-up step writes into this meter (`rollup`).
        let no_rollup = self.shared.rollup.clone();
        let _no_rollup = no_rollup.read().unwrap();
        self.write_admin(&set, true)?;
        self.shared.skipped.lock().unwrap().remove(&(tenant.to_owned(), slug.to_owned()));
        *self.shared.registry.write().unwrap() = Arc::new(registry.without(tenant, slug));
        Ok(())
    }

    /// Applies log entries in order (`log`): ingests are staged into group commits that also carry the position and
    /// the outcome of each; a meter entry is a write of its own, after the commit of the ingests before it. Answers
    /// each entry's outcome once every write is durable.
    fn apply(
        &mut self,
        p: &mut Pending,
        name: &str,
        entries: Vec<PreppedEntry>,
        forget_before: u64,
    ) -> Result<Vec<Vec<u8>>> {
        let mut outcomes = Vec::with_capacity(entries.len());
        for entry in entries {
            let outcome = match entry.op {
                Prepped::Ingest { prepared, atomic, indexes } => {
                    let mut report = match *prepared {
                        Err(refused) => Err(refused),
                        Ok(prepared) => self.stage_entry(p, prepared, atomic)?,
                    };
                    log::renumber(&mut report, &indexes);
                    log::outcome(&entry.tenant, &report)
                }
                Prepped::CreateMeter(spec) => {
                    self.commit(p);
                    let created = self.create_meter(&entry.tenant, spec, entry.received_us, Some((name, entry.seq)));
                    self.admin_outcome(&entry.tenant, created)?
                }
                Prepped::DeleteMeter(slug) => {
                    self.commit(p);
                    let deleted = self.delete_meter(&entry.tenant, &slug, Some((name, entry.seq)));
                    self.admin_outcome(&entry.tenant, deleted)?
                }
            };
            log::stage_entry(&mut p.set, name, entry.seq, &outcome);
            p.positioned = true;
            outcomes.push(outcome);
        }
        if p.positioned {
            log::stage_forget(&mut p.set, name, forget_before);
        }
        self.commit(p);
        match self.shared.failure() {
            Some(e) => Err(Error::OutcomeUnknown { reason: e.failure_reason() }),
            None => Ok(outcomes),
        }
    }

    /// Stages one ingest entry into the group commit: its report, or its refusal as a whole. Errs only when the store
    /// failed.
    fn stage_entry(&mut self, p: &mut Pending, prepared: Prepared, atomic: bool) -> Result<Result<IngestReport>> {
        let (reply, refused) = bounded(1);
        let staged = p.replies.len();
        self.stage(p, prepared, atomic, reply);
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        Ok(match refused.try_recv() {
            // Refused whole (an atomic batch): nothing of it was staged.
            Ok(answer) => answer,
            Err(_) => {
                debug_assert_eq!(p.replies.len(), staged + 1);
                Ok(p.replies.last().expect("just staged").1.clone())
            }
        })
    }

    /// The outcome of a meter entry. A refusal wrote nothing: its position and outcome go with the next write. A
    /// failed write stops the apply.
    fn admin_outcome<T: serde::Serialize>(&self, tenant: &str, result: Result<T>) -> Result<Vec<u8>> {
        match result {
            Err(e) if self.shared.failure().is_some() => Err(e),
            result => Ok(log::outcome(tenant, &result)),
        }
    }

    /// Writes outside a group commit; any failure stops the engine like a failed commit does.
    fn write_admin(&mut self, set: &WriteSet, sync: bool) -> Result<()> {
        self.shared.write(&*self.store, set, sync && self.config.durability == Durability::Fsync)
    }
}
