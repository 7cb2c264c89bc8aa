//! The engine: opens the store, recovers state, runs the writer, fold and flush threads, and answers the
//! public calls. An ingest flows: parse and `prepare` on the caller's thread, dedup, the cardinality limits
//! (`cardinality`) and the commit on the `writer`, then aggregation on the `folder` threads. A usage query reads a
//! RocksDB snapshot plus what the fold threads hold, on the caller's thread, and waits for no write (`Engine::query`).
//!
//! Recovery at open: the commit sequence and meter-id counter from `meta`, the meters, and for each fold shard the
//! aggregates of commits past its `agg_seq` watermark, re-folded from their retained events (`recover::replay`, the
//! same loop as a new meter's backfill). Everything acknowledged was in one synced write batch, so what is recovered
//! is exactly what was acknowledged. The dedup index is on disk (`dedup`):
//! opening reads none of it, so open time does not grow with the identities in the window.
//!
//! The fold threads also note which customers received accepted events (`changes`), drained by `Engine::changes`.
//!
//! Beside them, the `maintenance` thread drops retained events past retention once exported (`retention`) and
//! rolls old minute aggregates up to hours and days (`rollup`).

mod cardinality;
pub mod changes;
pub mod config;
pub mod correct;
mod folder;
pub mod log;
mod maintenance;
mod prepare;
mod recover;
pub mod report;
mod retention;
mod rollup;
mod writer;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender, TrySendError};
use serde::Serialize;

use cardinality::Cardinality;
use changes::Pending;
pub use changes::{Change, Drained};
pub use config::{Config, Durability};
pub use correct::{Correction, CorrectionReport, CorrectionRequest};
use folder::{flush_queue, peek_unfolded, shard_of, write_flushes, Accepted, Folder, InFlight, PeekRequest, SHARDS};
pub use log::{LogEntry, LogOp};
use maintenance::{Maintenance, Run};
pub use maintenance::{MaintenanceReport, MaintenanceStats};
pub use report::IngestReport;
pub use retention::{Dropped, HeldBack};
use writer::{Command, Writer};

use crate::aggregate::fold::{Fold, PeekFilter, Peeked};
use crate::aggregate::meter::{Meter, MeterSpec, StoredMeter};
use crate::aggregate::registry::Registry;
use crate::dedup::{self, Horizon, Recent, Record};
use crate::error::{Error, Result};
use crate::ingest::parse_batch;
use crate::ingest::time::{minute_of, now_micros, MICROS_PER_MINUTE};
use crate::query::{self, UsageQuery, UsageResult};
use crate::storage::rocks::RocksStore;
use crate::storage::{keys, scan_prefix, Cf, ReadStore, Store, WriteSet};
use prepare::prepare;

/// State the writer, the fold thread and the callers share.
pub(crate) struct Shared {
    /// Why the store failed, once it has: the engine then acknowledges nothing (fail-stop).
    failed: Mutex<Option<String>>,
    pub registry: RwLock<Arc<Registry>>,
    /// Per fold shard: the last commit whose aggregates are written (`counter/agg_seq/<shard>`).
    pub agg_seqs: Vec<AtomicU64>,
    /// Folds handed over to the flush thread and not yet written, which queries read meanwhile (see `folder`).
    pub inflight: Mutex<Vec<InFlight>>,
    /// Per fold shard: the last commit folded.
    pub folded_seqs: Vec<AtomicU64>,
    /// The commits handed to the fold threads that some shard has not folded yet, oldest first: the writer adds each
    /// before it answers, and drops those every shard has folded. Queries fold what they need of them (see `folder`).
    pub unfolded: Mutex<VecDeque<(u64, Arc<Vec<Accepted>>)>>,
    pub stats: Stats,
    /// Per (tenant, meter slug): accepted events the meter could not read and skipped, since the engine opened
    /// (at ingest and in its backfill). Forgotten when the meter is deleted.
    pub skipped: Mutex<std::collections::HashMap<(String, String), u64>>,
    /// Roll-ups take it to write (`rollup`); fold flushes, meter deletions and readers opening their cursors over
    /// aggregates take it to read, so that none meets a roll-up half-way (`aggregate::resolution`).
    pub rollup: Arc<RwLock<()>>,
    pub maintenance: Mutex<MaintenanceStats>,
    /// Which customers received accepted events since the last `Engine::changes` (recorded by the fold threads).
    pub changes: Pending,
}

impl Shared {
    /// The last commit whose aggregates are written for every shard.
    pub fn agg_seq(&self) -> u64 {
        self.agg_seqs.iter().map(|a| a.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    pub fn failure(&self) -> Option<Error> {
        self.failed.lock().unwrap().clone().map(|reason| Error::StoreFailed { reason })
    }

    /// Stops the engine for good; the first reason given is the one reported. `reason` is a root cause
    /// (`Error::failure_reason`), never an error that already says the store failed.
    pub fn fail(&self, reason: String) {
        self.failed.lock().unwrap().get_or_insert(reason);
    }

    /// Writes outside a group commit; any failure stops the engine like a failed commit does, and the caller of the
    /// failed write learns that it may have been applied (`OutcomeUnknown`).
    pub fn write(&self, store: &dyn Store, set: &WriteSet, sync: bool) -> Result<()> {
        store.write(set, sync).map_err(|e| {
            let reason = e.failure_reason();
            self.fail(reason.clone());
            Error::OutcomeUnknown { reason }
        })
    }
}

/// Upper bounds (seconds) of the commit latency histogram's buckets; the last bucket is +Inf.
pub const COMMIT_BUCKETS: [f64; 11] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub commits: AtomicU64,
    pub commit_us: AtomicU64,
    /// Commits per latency bucket (not cumulative); index `COMMIT_BUCKETS.len()` is +Inf.
    pub commit_buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
}

impl Stats {
    pub fn record_commit(&self, seconds: f64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        let bucket = COMMIT_BUCKETS.iter().position(|&b| seconds <= b).unwrap_or(COMMIT_BUCKETS.len());
        self.commit_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub commits: u64,
    pub commit_seconds_total: f64,
    /// Cumulative (upper bound in seconds, commits at or under it), Prometheus-style; the last bound is +Inf.
    pub commit_seconds_buckets: Vec<(f64, u64)>,
    pub queue_depth: usize,
    /// Per meter: accepted events it could not read and skipped since the engine opened, sorted by tenant and meter.
    pub skipped: Vec<SkippedCount>,
    /// Retention and roll-ups (`Engine::maintain`).
    pub maintenance: MaintenanceStats,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkippedCount {
    pub tenant: String,
    pub meter: String,
    pub events: u64,
}

/// How many retained events a new meter was filled from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backfill {
    pub events: u64,
    /// Events of the meter's type that its filters exclude.
    pub filtered: u64,
    /// Events of the meter's type whose value or dimensions it cannot read (not counted).
    pub unreadable: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CreatedMeter {
    pub meter: StoredMeter,
    pub backfill: Backfill,
}

pub struct Engine {
    store: RwLock<Option<Arc<dyn Store>>>,
    shared: Arc<Shared>,
    tx: RwLock<Option<Sender<Command>>>,
    /// Where queries ask the fold threads for what they hold.
    peeks: RwLock<Option<Vec<Sender<PeekRequest>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    maintenance_tx: RwLock<Option<Sender<Run>>>,
    maintenance: Mutex<Option<JoinHandle<()>>>,
    /// Tells a maintenance run to stop between steps.
    closing: Arc<AtomicBool>,
    /// Serializes `events_exported` (read, compare, write).
    exported: Mutex<()>,
    config: Config,
}

impl Engine {
    pub fn open(path: &Path, config: Config) -> Result<Engine> {
        Engine::open_store(Arc::new(RocksStore::open(path, &config.store_options())?), config)
    }

    /// Opens the engine over any `Store` (tests use this to inject storage failures).
    pub fn open_store(store: Arc<dyn Store>, config: Config) -> Result<Engine> {
        let read_u64 = |key: &[u8]| -> Result<Option<u64>> {
            store
                .get(Cf::Meta, key)?
                .map(|v| v.try_into().map(u64::from_be_bytes))
                .transpose()
                .map_err(|_| Error::Corrupt("counter".into()))
        };
        let seq = read_u64(keys::META_SEQ)?.unwrap_or(0);
        let next_meter_id = store
            .get(Cf::Meta, keys::META_METER_ID)?
            .map(|v| v.try_into().map(u32::from_be_bytes).map_err(|_| Error::Corrupt("meter id counter".into())))
            .transpose()?
            .unwrap_or(1);

        let mut registry = Registry::default();
        scan_prefix(&*store, Cf::Meta, keys::METER_DEFS, |key, value| {
            let stored: StoredMeter =
                serde_json::from_slice(value).map_err(|e| Error::Corrupt(format!("meter definition: {e}")))?;
            let tenant = storage_tenant(key)?;
            registry = registry.with(&tenant, Arc::new(Meter::compile(stored)?));
            Ok(true)
        })?;

        config.check_maintenance()?;
        if config.dedup_window_us < config.backdate_window_us {
            return Err(Error::invalid(
                "invalid_config",
                "the dedup window must be at least as long as the back-dating window, or a late retry would count twice",
            ));
        }
        config.default_limits().validate("invalid_config", "")?;
        migrate_legacy_dedup(&*store)?;
        recover::replay(&*store, &registry, seq)?;
        retention::migrate_hour_marks(&*store, crate::ingest::time::now_micros())?;
        let received_minute = retention::last_received_minute(&*store)?;

        let shared = Arc::new(Shared {
            failed: Mutex::new(None),
            registry: RwLock::new(Arc::new(registry)),
            agg_seqs: (0..SHARDS).map(|_| AtomicU64::new(seq)).collect(),
            inflight: Mutex::default(),
            folded_seqs: (0..SHARDS).map(|_| AtomicU64::new(seq)).collect(),
            unfolded: Mutex::default(),
            stats: Stats::default(),
            skipped: Mutex::default(),
            rollup: Arc::default(),
            maintenance: Mutex::default(),
            changes: Pending::new(SHARDS, config.max_pending_changes),
        });
        let (flushes, flush_rx) = flush_queue();
        let (mut folds, mut folders, mut peeks) = (Vec::new(), Vec::new(), Vec::new());
        for shard in 0..SHARDS {
            let folder = Folder {
                shard,
                shared: shared.clone(),
                fold: Fold::default(),
                folded_seq: seq,
                handed_seq: seq,
                last_flush: Instant::now(),
                flush_interval: config.flush_interval,
                flushes: flushes.clone(),
            };
            let (tx, rx) = bounded(FOLD_QUEUE);
            let (peek_tx, peek_rx) = crossbeam_channel::unbounded();
            folders.push(spawn(&format!("meter-fold-{shard}"), move || folder.run(rx, peek_rx))?);
            folds.push(tx);
            peeks.push(peek_tx);
        }
        drop(flushes);
        // Joined last: it ends once every fold thread has handed over its last fold.
        let (flush_store, flush_shared) = (store.clone(), shared.clone());
        folders.push(spawn("meter-flush", move || write_flushes(flush_store, flush_shared, flush_rx))?);
        let (tx, rx) = bounded(config.queue_capacity);
        let writer = Writer {
            store: store.clone(),
            shared: shared.clone(),
            config: config.clone(),
            recent: Recent::new(config.recent_dedup_us, config.recent_dedup_capacity),
            horizon: store.dedup_horizon().unwrap_or_else(|| Arc::new(Horizon::new(i64::MIN))),
            seq,
            next_meter_id,
            records_released: 0,
            received_minute,
            folds,
            folders,
            card: Cardinality::new(cardinality::CACHE_BYTES),
        };
        let handle = spawn("meter-writer", move || writer.run(rx))?;
        let closing = Arc::new(AtomicBool::new(false));
        let maintenance = Maintenance {
            store: store.clone(),
            shared: shared.clone(),
            config: config.clone(),
            closing: closing.clone(),
            retention: Default::default(),
            records: Default::default(),
        };
        let (maintenance_tx, maintenance_rx) = bounded(1);
        let maintenance = spawn("meter-maintenance", move || maintenance.run(maintenance_rx))?;
        Ok(Engine {
            store: RwLock::new(Some(store)),
            shared,
            tx: RwLock::new(Some(tx)),
            peeks: RwLock::new(Some(peeks)),
            writer: Mutex::new(Some(handle)),
            maintenance_tx: RwLock::new(Some(maintenance_tx)),
            maintenance: Mutex::new(Some(maintenance)),
            closing,
            exported: Mutex::new(()),
            config,
        })
    }

    /// Parses, deduplicates, aggregates and durably commits one batch. `now_us` overrides the clock
    /// (receive time, time-window checks), for tests and replays.
    pub fn ingest(&self, tenant: &str, body: Vec<u8>, atomic: bool, now_us: Option<i64>) -> Result<IngestReport> {
        check_tenant(tenant)?;
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        let prepared = self.prepare_ingest(tenant, body, now_us.unwrap_or_else(now_micros))?;
        self.ask(false, |reply| Command::Ingest { prepared, atomic, reply })
    }

    /// Parses and prepares a batch on the caller's thread, by the clock `now_us`.
    fn prepare_ingest(&self, tenant: &str, body: Vec<u8>, now_us: i64) -> Result<prepare::Prepared> {
        check_tenant(tenant)?;
        let batch = parse_batch(tenant, body, now_us, &self.config.limits)?;
        let registry = self.shared.registry.read().unwrap().clone();
        prepare(batch, registry, now_us, &self.config)
    }

    /// Applies a log's entries in order, each with its position, in synced writes that also hold the last position
    /// and each entry's outcome (`log`). Answers the outcomes, in order. `forget_before`: outcomes of entries before
    /// that position are dropped in the same write. Refusals of an entry are its outcome, not an error; an error is a
    /// failed store (nothing acknowledged: replay from the stored position).
    pub fn apply(&self, log: &str, entries: Vec<LogEntry>, forget_before: u64) -> Result<Vec<Vec<u8>>> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        let prepped = entries
            .into_iter()
            .map(|LogEntry { seq, tenant, received_us, op }| {
                let op = match op {
                    LogOp::Ingest { body, atomic, indexes } => log::Prepped::Ingest {
                        prepared: Box::new(self.prepare_ingest(&tenant, body, received_us)),
                        atomic,
                        indexes,
                    },
                    LogOp::CreateMeter(spec) => log::Prepped::CreateMeter(spec),
                    LogOp::DeleteMeter(slug) => log::Prepped::DeleteMeter(slug),
                };
                log::PreppedEntry { seq, tenant, received_us, op }
            })
            .collect();
        self.ask(true, |reply| Command::Apply { log: log.to_owned(), entries: prepped, forget_before, reply })
    }

    /// The position of the last entry of `log` applied (0 when none).
    pub fn log_position(&self, log: &str) -> Result<u64> {
        log::decode_position(self.store()?.get(Cf::Meta, &log::position_key(log))?)
    }

    /// The stored outcome of the entry of `log` at `seq` (`apply`), if it was applied and is still kept.
    pub fn log_outcome(&self, log: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        self.store()?.get(Cf::Meta, &log::outcome_key(log, seq))
    }

    /// Writes a consistent copy of the store to `dir` (a RocksDB checkpoint: hard links where it can), from which an
    /// engine opens as after a crash at this moment: with every acknowledged write and its log positions.
    pub fn checkpoint(&self, dir: &Path) -> Result<()> {
        self.store()?.checkpoint(dir)
    }

    /// Creates a meter and backfills it from the tenant's retained events, in the same write. Only retained events:
    /// those received within `retention_s` plus older ones not exported yet; what retention dropped is in the Parquet
    /// export, not in the new meter.
    pub fn create_meter(&self, tenant: &str, spec: MeterSpec, now_us: Option<i64>) -> Result<CreatedMeter> {
        check_tenant(tenant)?;
        let now_us = now_us.unwrap_or_else(now_micros);
        let created =
            self.ask(true, |reply| Command::CreateMeter { tenant: tenant.to_owned(), spec, now_us, reply })?;
        Ok(CreatedMeter { meter: self.shown(&created.meter), ..created })
    }

    pub fn delete_meter(&self, tenant: &str, slug: &str) -> Result<()> {
        check_tenant(tenant)?;
        self.ask(true, |reply| Command::DeleteMeter { tenant: tenant.to_owned(), slug: slug.to_owned(), reply })
    }

    pub fn get_meter(&self, tenant: &str, slug: &str) -> Result<StoredMeter> {
        let registry = self.shared.registry.read().unwrap().clone();
        let meter =
            registry.get(tenant, slug).ok_or_else(|| Error::NotFound { what: "meter", name: slug.to_owned() })?;
        Ok(self.shown(&meter.stored))
    }

    pub fn list_meters(&self, tenant: &str) -> Vec<StoredMeter> {
        let registry = self.shared.registry.read().unwrap().clone();
        registry.list(tenant).iter().map(|m| self.shown(&m.stored)).collect()
    }

    /// A meter as the API shows it: with the cardinality limits that apply to it, its own or the engine's.
    fn shown(&self, stored: &StoredMeter) -> StoredMeter {
        let mut shown = stored.clone();
        shown.spec.limits = Some(self.config.limits_of(&stored.spec));
        shown
    }

    /// Answers from every acknowledged event: what RocksDB holds plus what the fold threads hold in memory, without
    /// waiting for the writer, for the commits queued for folding, or for any write (see `folder`).
    pub fn query(&self, tenant: &str, q: &UsageQuery) -> Result<UsageResult> {
        self.query_partial(tenant, q)?.finish()
    }

    /// `query`'s groups before their values are taken: what a partition answers in cluster mode, for the asking node
    /// to merge with the others' (`query::Partial`).
    pub fn query_partial(&self, tenant: &str, q: &UsageQuery) -> Result<query::Partial> {
        let registry = self.shared.registry.read().unwrap().clone();
        let meter =
            registry.get(tenant, &q.meter).ok_or_else(|| Error::NotFound { what: "meter", name: q.meter.clone() })?;
        // Only the shards that own a named customer hold anything of the query; all of them when none is named.
        let mut shards: Vec<u32> = match q.subjects.is_empty() {
            true => (0..SHARDS).collect(),
            false => q.subjects.iter().map(|s| shard_of(tenant, s, SHARDS)).collect(),
        };
        shards.sort_unstable();
        shards.dedup();
        let filter = PeekFilter {
            tenant: tenant.to_owned(),
            meter_id: meter.id(),
            subjects: (!q.subjects.is_empty()).then(|| q.subjects.clone()),
            // Whole minutes; a range that is not is refused by the query's plan.
            minutes: minute_of(q.from_us)..minute_of(q.to_us.saturating_add(MICROS_PER_MINUTE - 1)),
        };
        let filter = Arc::new(filter);
        let store = self.store()?;
        for _ in 0..QUERY_ATTEMPTS {
            if let Some((snapshot, in_memory)) = self.in_memory(&*store, &shards, &filter)? {
                let view = query::View::open(&*snapshot, tenant, meter)?;
                let result = query::gather(view, tenant, meter, q, &in_memory);
                // A fold whose write failed left the in-flight list unwritten: the engine has failed, and answers
                // nothing.
                return match self.shared.failure() {
                    Some(e) => Err(e),
                    None => result,
                };
            }
        }
        // Folds kept being written under the query: read them all from RocksDB instead.
        let (store, _) = self.flushed(tenant, &q.meter)?;
        let snapshot = {
            let _no_rollup = self.shared.rollup.read().unwrap();
            store.snapshot()
        };
        let view = query::View::open(&*snapshot, tenant, meter)?;
        query::gather(view, tenant, meter, q, &Peeked::default())
    }

    /// A snapshot of RocksDB and, for the queried `shards`, exactly what it lacks of every acknowledged event that
    /// `filter` asks for; `None` when a fold handed over after the peek was written before the snapshot (try again).
    ///
    /// Every event acknowledged before the call was put in `Shared::unfolded` and handed to the fold threads before
    /// its acknowledgement. Each fold thread answers with its live fold's part (commits `(handed, folded]`), and the
    /// query folds its part of the commits after `folded` from `unfolded` (taken before asking, so it holds all of
    /// them). The folds of commits up to `handed` are in RocksDB or in `Shared::inflight` (copied after the answers):
    /// the shard's watermark at the snapshot, taken last, says which. If it is past `handed`, a fold with the live
    /// copy's states is in the snapshot too.
    #[allow(clippy::type_complexity)] // a snapshot that borrows the store, and what it lacks
    fn in_memory<'s>(
        &self,
        store: &'s dyn Store,
        shards: &[u32],
        filter: &Arc<PeekFilter>,
    ) -> Result<Option<(Box<dyn ReadStore + 's>, Peeked)>> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        let unfolded: Vec<(u64, Arc<Vec<Accepted>>)> = self.shared.unfolded.lock().unwrap().iter().cloned().collect();
        let answers = {
            let peeks = self.peeks.read().unwrap();
            let peeks = peeks.as_ref().ok_or(Error::Closed)?;
            let mut answers = Vec::with_capacity(shards.len());
            for &shard in shards {
                let (reply, answer) = bounded(1);
                peeks[shard as usize].send(PeekRequest { filter: filter.clone(), reply }).map_err(|_| Error::Closed)?;
                answers.push(answer);
            }
            answers
        };
        let mut in_memory = Peeked::default();
        let mut handed = Vec::with_capacity(shards.len());
        for (&shard, answer) in shards.iter().zip(answers) {
            let peek = answer.recv().map_err(|_| Error::Closed)??;
            in_memory.append(peek.peeked);
            peek_unfolded(shard, &unfolded, peek.folded, filter, &mut in_memory);
            handed.push(peek.handed);
        }
        let mut inflight = Vec::new();
        for f in self.shared.inflight.lock().unwrap().iter() {
            if let Some(at) = shards.iter().position(|&s| s == f.shard).filter(|&at| f.seq <= handed[at]) {
                let mut peeked = Peeked::default();
                f.fold.peek(filter, &mut peeked);
                inflight.push((at, f.seq, peeked));
            }
        }
        let snapshot = {
            // The view a roll-up step leaves is whole in any snapshot (one write each); taken as `View::open` is.
            let _no_rollup = self.shared.rollup.read().unwrap();
            store.snapshot()
        };
        let mut written = Vec::with_capacity(shards.len());
        for (&shard, &handed) in shards.iter().zip(&handed) {
            let watermark = snapshot
                .get(Cf::Meta, &keys::agg_seq(shard))?
                .map(|v| v.try_into().map(u64::from_be_bytes))
                .transpose()
                .map_err(|_| Error::Corrupt("agg_seq".into()))?
                .unwrap_or(0);
            if watermark > handed {
                return Ok(None);
            }
            written.push(watermark);
        }
        for (at, seq, peeked) in inflight {
            if seq > written[at] {
                in_memory.append(peeked);
            }
        }
        Ok(Some((snapshot, in_memory)))
    }

    /// Per UTC day with usage of a meter (the day's start, µs): the events counted in it, including every event
    /// acknowledged before the call.
    pub fn day_counts(&self, tenant: &str, slug: &str) -> Result<Vec<(i64, u64)>> {
        let (store, meter) = self.flushed(tenant, slug)?;
        query::minutes::day_counts(&*store, tenant, &meter)
    }

    /// A meter's rows per customer, minute and dimension combination in `[from_us, to_us)`, streamed
    /// `batch_rows` at a time (`query::minutes`); they include every event acknowledged before the call.
    pub fn minutes(
        &self,
        tenant: &str,
        slug: &str,
        from_us: i64,
        to_us: i64,
        batch_rows: usize,
    ) -> Result<query::minutes::MinuteStream> {
        let (store, meter) = self.flushed(tenant, slug)?;
        let rollup = self.shared.rollup.clone();
        query::minutes::MinuteStream::spawn(store, rollup, tenant.to_owned(), meter, from_us, to_us, batch_rows.max(1))
    }

    /// The store once the fold threads have written every acknowledged event, and the meter: bulk reads
    /// then need RocksDB alone, and their iterator's snapshot is consistent however long they take.
    fn flushed(&self, tenant: &str, slug: &str) -> Result<(Arc<dyn Store>, Arc<Meter>)> {
        let registry = self.shared.registry.read().unwrap().clone();
        let meter =
            registry.get(tenant, slug).ok_or_else(|| Error::NotFound { what: "meter", name: slug.to_owned() })?.clone();
        folder::flushed(self.ask(true, |reply| Command::Flush { reply })?)?;
        let store = self.store()?;
        Ok((store, meter))
    }

    /// The tenant's retained events of the commits after `after_seq` (whole commits, about `max_events`), as
    /// Arrow, and the last commit they come from. Every acknowledged event is there (commits are atomic).
    pub fn retained_events(
        &self,
        tenant: &str,
        after_seq: u64,
        max_events: usize,
    ) -> Result<(arrow_array::RecordBatch, u64)> {
        check_tenant(tenant)?;
        let store = self.store()?;
        query::events::retained_after(&*store, tenant, after_seq, max_events)
    }

    /// Cancels or amends accepted events and restates every aggregate they touched, in one synced commit, or refuses
    /// the request whole (`correct`). `now_us` overrides the clock (tests).
    pub fn correct(&self, tenant: &str, request: CorrectionRequest, now_us: Option<i64>) -> Result<CorrectionReport> {
        check_tenant(tenant)?;
        let now_us = now_us.unwrap_or_else(now_micros);
        self.ask(true, |reply| Command::Correct { tenant: tenant.to_owned(), request, now_us, reply })
    }

    /// The corrections of the event `(source, id)`, oldest first (`correct`).
    pub fn event_history(&self, tenant: &str, source: &str, id: &str) -> Result<Vec<Correction>> {
        check_tenant(tenant)?;
        let store = self.store()?;
        correct::history(&*store, tenant, source, id)
    }

    /// The tenant's corrections made by commits `(after_seq, through_seq]`, in commit order: the export writes them
    /// beside the retained events of the same commits.
    pub fn corrections(&self, tenant: &str, after_seq: u64, through_seq: u64) -> Result<Vec<Correction>> {
        check_tenant(tenant)?;
        let store = self.store()?;
        correct::corrections_between(&*store, tenant, after_seq, through_seq)
    }

    /// The retained event of identity `(source, id)` that counts now (zero or one row) and when it was received
    /// (`query::events::find`): through its history or its dedup mark without scanning, else by a scan.
    pub fn find_event(&self, tenant: &str, source: &str, id: &str) -> Result<(arrow_array::RecordBatch, Option<i64>)> {
        check_tenant(tenant)?;
        let store = self.store()?;
        query::events::find(&*store, tenant, source, id)
    }

    /// The retained events of `[from_us, to_us)` (event time) that meter `slug` could not read, with why: the same
    /// decision ingest made (`extract`), made again from the retained events. Reads the tenant's retained events in
    /// commit order after the cursor `after` (an event ordinal; `None`: from the first), and stops at `limit` skipped
    /// events or after `max_scan` events read, whichever comes first; `next` then says where to go on.
    #[allow(clippy::too_many_arguments)] // one query's parameters
    pub fn skipped(
        &self,
        tenant: &str,
        slug: &str,
        from_us: i64,
        to_us: i64,
        after: Option<u64>,
        limit: usize,
        max_scan: usize,
    ) -> Result<query::skipped::SkippedPage> {
        check_tenant(tenant)?;
        let registry = self.shared.registry.read().unwrap().clone();
        let meter =
            registry.get(tenant, slug).ok_or_else(|| Error::NotFound { what: "meter", name: slug.to_owned() })?;
        let store = self.store()?;
        query::skipped::skipped(&*store, tenant, meter, from_us, to_us, after, limit, max_scan)
    }

    /// Records that the export has written the tenant's retained events of every commit through `seq` to Parquet
    /// (the long-term record): retention may then drop them once they are older than `retention_s`. Raising only:
    /// an export that is behind another cannot lower the mark.
    pub fn events_exported(&self, tenant: &str, seq: u64) -> Result<()> {
        check_tenant(tenant)?;
        let store = self.store()?;
        let _serial = self.exported.lock().unwrap();
        retention::events_exported(&*store, &self.shared, tenant, seq)
    }

    /// Applies retention and roll-ups now, as the maintenance thread does every `maintenance_interval`, and says
    /// what it did. `now_us` overrides the clock (tests); `max_steps` stops the run after so many bounded steps.
    pub fn maintain(&self, now_us: Option<i64>, max_steps: Option<usize>) -> Result<MaintenanceReport> {
        let (reply, answer) = bounded(1);
        let tx = self.maintenance_tx.read().unwrap().clone().ok_or(Error::Closed)?;
        tx.send(Run { now_us, max_steps, reply }).map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }

    /// Takes every (tenant, meter, customer) with events counted by that meter since the previous call, with the
    /// earliest event-time minute among them and how many; `overflowed` when more than `Config::max_pending_changes`
    /// were pending and some were dropped (then none is returned: refresh everything).
    ///
    /// An acknowledged event is in a drain that has returned or in a later one, and a usage query started after the
    /// drain that names it counts it; a new meter's backfill is not reported, nor a deleted meter's events (see
    /// `changes`).
    pub fn changes(&self) -> Drained {
        self.await_folds();
        let registry = self.shared.registry.read().unwrap().clone();
        self.shared.changes.drain(&registry)
    }

    /// Waits until every fold thread has folded (and so recorded the changes of) every commit acknowledged before the
    /// call: those are in `unfolded` until every shard folded them, so its newest is the mark. A drain after it names
    /// every event acknowledged before `changes` was called, which lets a live view say exactly what it reflects. The
    /// folds follow the writer within a commit or two; the wait is bounded (a stalled or failed engine answers what is
    /// recorded so far, a later drain the rest).
    fn await_folds(&self) {
        let Some(mark) = self.shared.unfolded.lock().unwrap().back().map(|(seq, _)| *seq) else { return };
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.shared.folded_seqs.iter().any(|s| s.load(Ordering::Acquire) < mark)
            && self.shared.failure().is_none()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// `None` when healthy; otherwise why the engine stopped acknowledging.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().unwrap().clone()
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.shared.stats;
        StatsSnapshot {
            accepted: s.accepted.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            commit_seconds_total: s.commit_us.load(Ordering::Relaxed) as f64 / 1e6,
            commit_seconds_buckets: COMMIT_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(&s.commit_buckets)
                .scan(0, |total, (bound, n)| {
                    *total += n.load(Ordering::Relaxed);
                    Some((bound, *total))
                })
                .collect(),
            queue_depth: self.tx.read().unwrap().as_ref().map_or(0, |t| t.len()),
            skipped: {
                let counts = self.shared.skipped.lock().unwrap();
                let mut all: Vec<SkippedCount> = counts
                    .iter()
                    .map(|((tenant, meter), &events)| SkippedCount {
                        tenant: tenant.clone(),
                        meter: meter.clone(),
                        events,
                    })
                    .collect();
                all.sort_by(|a, b| (&a.tenant, &a.meter).cmp(&(&b.tenant, &b.meter)));
                all
            },
            maintenance: self.shared.maintenance.lock().unwrap().clone(),
        }
    }

    /// Finishes queued work, stops the writer and closes the store. Idempotent.
    pub fn close(&self) {
        self.peeks.write().unwrap().take();
        // Maintenance first: it stops between two steps.
        self.closing.store(true, Ordering::Release);
        self.maintenance_tx.write().unwrap().take();
        if let Some(handle) = self.maintenance.lock().unwrap().take() {
            let _ = handle.join();
        }
        self.tx.write().unwrap().take();
        if let Some(handle) = self.writer.lock().unwrap().take() {
            let _ = handle.join();
        }
        self.store.write().unwrap().take();
    }

    /// Queues a command for the writer and waits for its answer. Ingest (`wait_for_room` false) is refused
    /// with `Overloaded` when the queue is full; admin commands are rare and wait for room instead.
    fn store(&self) -> Result<Arc<dyn Store>> {
        self.store.read().unwrap().clone().ok_or(Error::Closed)
    }

    fn ask<T>(&self, wait_for_room: bool, command: impl FnOnce(Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, answer) = bounded(1);
        let tx = self.tx.read().unwrap().clone().ok_or(Error::Closed)?;
        let command = command(reply);
        if wait_for_room {
            tx.send(command).map_err(|_| Error::Closed)?;
        } else {
            tx.try_send(command).map_err(|e| match e {
                TrySendError::Full(_) => Error::Overloaded { capacity: self.config.queue_capacity },
                TrySendError::Disconnected(_) => Error::Closed,
            })?;
        }
        answer.recv().map_err(|_| Error::Closed)?
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

/// Attempts of a query from memory before it reads everything from RocksDB after a flush instead (`Engine::query`).
const QUERY_ATTEMPTS: usize = 3;

/// Commits that may wait for the fold thread before the writer waits too.
const FOLD_QUEUE: usize = 16;

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::Storage(format!("cannot start the {name} thread: {e}")))
}

fn check_tenant(tenant: &str) -> Result<()> {
    if tenant.is_empty() || tenant.len() > 255 {
        return Err(Error::invalid("invalid_tenant", "the tenant id must be 1-255 bytes"));
    }
    Ok(())
}

/// The tenant of a meter-definition key (`meters/`, tenant, slug).
fn storage_tenant(key: &[u8]) -> Result<String> {
    let mut r = crate::storage::codec::Reader::new(&key[keys::METER_DEFS.len()..]);
    Ok(r.str()?.to_owned())
}

/// Rebuilds the dedup index from the records received at or after `cutoff_us`, dropping older ones.
/// Moves the identities of a data directory written before they had their own column family (each commit
/// record listed them) to `seen`, and rewrites those records in the current format: once, at the first open.
fn migrate_legacy_dedup(store: &dyn Store) -> Result<()> {
    let mut set = WriteSet::default();
    let mut moved = 0usize;
    scan_prefix(store, Cf::Dedup, &[], |key, value| {
        let record = Record::parse(value)?;
        let mut current = None;
        for (fingerprint, payload_hash) in record.legacy_entries() {
            let mark = dedup::Mark { received_us: record.received_us, payload_hash };
            set.put(Cf::Seen, &dedup::seen_key(fingerprint), &mark.encode());
            let tenants: Vec<String> = record.tenants.iter().map(|t| t.to_string()).collect();
            current.get_or_insert_with(|| dedup::record::build(record.received_us, &tenants));
            moved += 1;
        }
        if let Some(current) = current {
            set.put(Cf::Dedup, key, &current);
        }
        if moved >= 100_000 {
            store.write(&std::mem::take(&mut set), true)?;
            moved = 0;
        }
        Ok(true)
    })?;
    if set.is_empty() {
        return Ok(());
    }
    store.write(&set, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_428_000_000_000;

    fn event(id: &str) -> Vec<u8> {
        format!(r#"[{{"specversion":"1.0","id":"{id}","source":"s","type":"llm","subject":"c","time":"2026-11-23T10:00:00Z","data":{{}}}}]"#)
            .into_bytes()
    }

    #[test]
    fn a_data_directory_of_the_old_format_keeps_its_identities() {
        let dir = tempfile::tempdir().unwrap();
        Engine::open(dir.path(), Config::default()).unwrap().ingest("t", event("a"), false, Some(T0)).unwrap();
        // Rewrite it the way the in-memory index stored identities: inside the commit record, none in `seen`.
        {
            let store = RocksStore::open(dir.path(), &Config::default().store_options()).unwrap();
            let fp = crate::ingest::parse::identity_hash("t", "s", "a");
            let mark = dedup::Mark::decode(&store.get(Cf::Seen, &dedup::seen_key(fp)).unwrap().unwrap()).unwrap();
            let mut set = WriteSet::default();
            set.push(crate::storage::OpKind::Delete, Cf::Seen, &dedup::seen_key(fp), &[]);
            let legacy = dedup::record::build_legacy(mark.received_us, &["t".into()], &[(fp, mark.payload_hash)]);
            set.put(Cf::Dedup, &1u64.to_be_bytes(), &legacy);
            store.write(&set, true).unwrap();
        }
        let engine = Engine::open(dir.path(), Config::default()).unwrap();
        let r = engine.ingest("t", event("a"), false, Some(T0)).unwrap();
        assert_eq!((r.accepted, r.duplicates), (0, 1));
        assert_eq!(engine.ingest("t", event("b"), false, Some(T0)).unwrap().accepted, 1);
    }
}
