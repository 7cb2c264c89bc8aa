//! The fold threads: aggregates of committed events, folded in memory across commits and flushed as one
//! merge operand per customer-minute. They run beside the writer, so that a commit never waits for
//! aggregation: the writer hands every durable commit's accepted events, in commit order, to each fold
//! thread, and each folds the customers of its own shard (`shard_of`), so aggregation uses every core. What each event
//! contributes to each meter was extracted once, by `prepare` on the caller's thread, and comes with the commit.
//!
//! A shard flushes with its own watermark (`counter/agg_seq/<shard>`) in the same write batch: its
//! customers' aggregates of every commit up to that one are in `agg`, none after. It flushes every
//! `Config::flush_interval`, when its fold grows past `FLUSH_STATES`, and when asked (before meters
//! change). To flush, a fold thread hands its whole fold to the flush thread and starts an empty one, so
//! that folding never stops for a write (which would stall the writer behind it). The flush thread writes
//! in the order it was handed folds, so each shard's watermark only moves forward.
//!
//! A query waits neither for a write nor for the commits queued for folding: each fold thread that owns a queried
//! customer takes queries on a channel of their own (`PeekRequest`), between two commits, and copies out what its live
//! fold holds of the query's customers, meter and minutes, with the last commit it folded and the last it handed over.
//! The query folds the commits after that one itself, for its customers alone, from the commits not yet folded by
//! every shard (`Shared::unfolded`, which the writer fills before it answers). Folds handed over and not yet written
//! stay readable meanwhile (`Shared::inflight`, until the flush thread has written them). The query then reads
//! RocksDB at a snapshot: the shard's watermark there says which handed-over folds it holds, so the query adds the
//! others from its copy of `inflight` (a fold and its watermark are one write); and if a fold handed over after the
//! peek is already in the snapshot, the live copy would count twice, so the query starts again (see `Engine::query`).
//! Nothing waits for a query, and no query holds anything while it waits.
//! Each fold thread also records, per commit, which customers of its shard received events (`changes`).
//! A flush is not synced on its own: if a crash loses it, it loses the watermark too, and recovery
//! re-aggregates those commits from their retained events (see `engine::recover`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TryRecvError};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::changes::Recorder;
use super::prepare::Prepared;
use super::Shared;
use crate::aggregate::fold::{Fold, PeekFilter, Peeked};
use crate::error::{Error, Result};
use crate::storage::{keys, Cf, Store, WriteSet};

/// Fold threads: one per core of the machines we are measured on.
pub(crate) const SHARDS: u32 = 2;
/// Folds handed over and not yet written; a fold thread waits when the flush thread is this far behind.
const FLUSH_QUEUE: usize = 2;
/// Distinct states a shard holds before it flushes: bounds its memory, and keeps its working set in cache.
const FLUSH_STATES: usize = 250_000;

pub(crate) enum FoldWork {
    /// The accepted events of one durable commit; every shard gets the same.
    Commit { seq: u64, parts: Arc<Vec<Accepted>> },
    /// Flush now, then answer.
    Flush { reply: Sender<Result<()>> },
}

/// A query's request to a fold thread: copy out what the live fold holds of what `filter` asks for.
pub(crate) struct PeekRequest {
    pub filter: Arc<PeekFilter>,
    pub reply: Sender<Result<Peek>>,
}

/// A fold thread's answer to a query.
pub(crate) struct Peek {
    /// What the live fold holds of the query: the commits after `handed`, up to `folded`.
    pub peeked: Peeked,
    /// The last commit folded.
    pub folded: u64,
    /// The last commit handed over to the flush thread: the seq of the last fold in `Shared::inflight` or written.
    pub handed: u64,
}

/// A fold handed over to the flush thread and not yet written: queries read it meanwhile.
pub(crate) struct InFlight {
    pub shard: u32,
    /// The last commit it holds: its shard's watermark once it is written.
    pub seq: u64,
    pub fold: Arc<Fold>,
}

/// The events a commit accepted from one request.
pub(crate) struct Accepted {
    pub prepared: Prepared,
    /// Positions in `prepared.batch.events`; the `k`-th has ordinal `first_ordinal + k`.
    pub events: Vec<u32>,
    pub first_ordinal: u64,
}

/// The fold shard that owns a customer, out of `shards`.
pub(crate) fn shard_of(tenant: &str, subject: &str, shards: u32) -> u32 {
    (xxh3_64_with_seed(subject.as_bytes(), xxh3_64(tenant.as_bytes())) % shards as u64) as u32
}

/// Folds the events of `part` whose customer `shard` owns; for a query (`only`), only those of its tenant, customers
/// and meter. Folds what `prepare` extracted (`Prepared::counted_of`): nothing here reads an event's JSON. The fold
/// thread also notes which customers changed (`changes`), in the same pass over the events.
pub(crate) fn fold_part(
    fold: &mut Fold,
    part: &Accepted,
    shard: u32,
    only: Option<&PeekFilter>,
    mut changes: Option<&mut Recorder<'_>>,
) {
    let prepared = &part.prepared;
    let batch = &prepared.batch;
    if only.is_some_and(|f| f.tenant != batch.tenant) {
        return;
    }
    let wanted = |subject: &str| only.and_then(|f| f.subjects.as_ref()).is_none_or(|s| s.iter().any(|x| x == subject));
    for (k, &position) in part.events.iter().enumerate() {
        let ev = &batch.events[position as usize];
        let subject = batch.text(ev.subject);
        if !wanted(subject) || shard_of(&batch.tenant, subject, SHARDS) != shard {
            continue;
        }
        let ordinal = part.first_ordinal + k as u64;
        if let Some(changes) = changes.as_deref_mut() {
            changes.record(
                &batch.tenant,
                subject,
                ev.time_us,
                prepared.counted_of(position as usize).map(|c| c.meter_id),
            );
        }
        let mut customer = None;
        // A meter that cannot read the event kept nothing of it (its warning went out with the answer); the other
        // meters count it.
        for c in prepared.counted_of(position as usize) {
            if only.is_some_and(|f| f.meter_id != c.meter_id) {
                continue;
            }
            let customer = *customer.get_or_insert_with(|| fold.customer(&batch.tenant, subject));
            fold.add_counted(customer, c, ev.time_us, ordinal);
        }
    }
}

/// What a query needs of the commits a shard has not folded yet (`Shared::unfolded`): those after `folded`, for its
/// customers, meter and minutes.
pub(crate) fn peek_unfolded(
    shard: u32,
    unfolded: &[(u64, Arc<Vec<Accepted>>)],
    folded: u64,
    filter: &PeekFilter,
    into: &mut Peeked,
) {
    let mut fold = Fold::default();
    for (_, parts) in unfolded.iter().filter(|(seq, _)| *seq > folded) {
        parts.iter().for_each(|part| fold_part(&mut fold, part, shard, Some(filter), None));
    }
    fold.peek(filter, into);
}

/// Waits for the answers of a flush sent to every shard.
pub(crate) fn flushed(answers: Vec<Receiver<Result<()>>>) -> Result<()> {
    answers.into_iter().try_for_each(|a| a.recv().map_err(|_| Error::Closed)?)
}

/// What the fold threads hand to the flush thread, in order: a shard's fold of the commits up to `seq`, to be written.
pub(crate) struct Flush {
    shard: u32,
    fold: Arc<Fold>,
    seq: u64,
    reply: Option<Sender<Result<()>>>,
}

pub(crate) struct Folder {
    pub shard: u32,
    pub shared: Arc<Shared>,
    pub fold: Fold,
    /// The last commit folded, and the last one handed to the flush thread.
    pub folded_seq: u64,
    pub handed_seq: u64,
    pub last_flush: Instant,
    pub flush_interval: Duration,
    pub flushes: Sender<Flush>,
}

impl Folder {
    /// Folds the commits of `rx` and answers the queries of `peeks`, which go first: a query waits at most for the
    /// commit being folded.
    pub fn run(mut self, rx: Receiver<FoldWork>, peeks: Receiver<PeekRequest>) {
        let mut peeks_open = true;
        loop {
            while peeks_open {
                match peeks.try_recv() {
                    Ok(request) => self.peek(request),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => peeks_open = false,
                }
            }
            let work = if peeks_open {
                select! {
                    recv(peeks) -> request => {
                        match request {
                            Ok(request) => self.peek(request),
                            Err(_) => peeks_open = false,
                        }
                        continue;
                    }
                    recv(rx) -> work => work.map_err(|_| RecvTimeoutError::Disconnected),
                    default(self.flush_interval) => Err(RecvTimeoutError::Timeout),
                }
            } else {
                rx.recv_timeout(self.flush_interval)
            };
            match work {
                Ok(FoldWork::Commit { seq, parts }) => {
                    let fold = &mut self.fold;
                    // One lock per commit: a drain sees this commit's changes whole or not at all.
                    let mut changes = self.shared.changes.recorder(self.shard);
                    parts.iter().for_each(|part| fold_part(fold, part, self.shard, None, Some(&mut changes)));
                    drop(changes);
                    self.folded_seq = seq;
                    self.shared.folded_seqs[self.shard as usize].store(seq, Ordering::Release);
                    if self.fold.states() >= FLUSH_STATES || self.last_flush.elapsed() >= self.flush_interval {
                        self.hand_over(None);
                    }
                }
                Ok(FoldWork::Flush { reply }) => self.hand_over(Some(reply)),
                Err(RecvTimeoutError::Timeout) => self.hand_over(None),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Closing: whatever is still in memory goes to `agg`, so the next open has nothing to replay.
        self.hand_over(None);
    }

    fn peek(&mut self, PeekRequest { filter, reply }: PeekRequest) {
        let mut peeked = Peeked::default();
        self.fold.peek(&filter, &mut peeked);
        let peek = Peek { peeked, folded: self.folded_seq, handed: self.handed_seq };
        let _ = reply.send(self.shared.failure().map_or(Ok(peek), Err));
    }

    /// Gives the fold to the flush thread; one with a `reply` is answered once it is written.
    ///
    /// While the flush thread is `FLUSH_QUEUE` folds behind, a routine hand-over waits for a later turn rather than
    /// block this thread (and the queries it answers). One that is asked for, or overdue (twice the size or age that
    /// triggers it), waits for room instead, so that the fold does not grow without bound.
    fn hand_over(&mut self, reply: Option<Sender<Result<()>>>) {
        let overdue = self.fold.states() >= 2 * FLUSH_STATES || self.last_flush.elapsed() >= 2 * self.flush_interval;
        if reply.is_none() && !overdue && self.flushes.is_full() {
            return;
        }
        self.last_flush = Instant::now();
        // Even with nothing folded, the watermark must move: replay would otherwise revisit commits whose
        // events a meter created since has already backfilled.
        if reply.is_none() && self.fold.is_empty() && self.handed_seq == self.folded_seq {
            return;
        }
        let (shard, seq) = (self.shard, self.folded_seq);
        let fold = Arc::new(std::mem::take(&mut self.fold));
        if !fold.is_empty() {
            self.shared.inflight.lock().unwrap().push(InFlight { shard, seq, fold: fold.clone() });
        }
        let _ = self.flushes.send(Flush { shard, fold, seq, reply });
        self.handed_seq = self.folded_seq;
    }
}

/// The flush thread: writes handed-over folds in order, each with its shard's watermark.
pub(crate) fn write_flushes(store: Arc<dyn Store>, shared: Arc<Shared>, rx: Receiver<Flush>) {
    for Flush { shard, fold, seq, reply } in rx {
        let result = (|| {
            if let Some(e) = shared.failure() {
                return Err(e);
            }
            let watermark = &shared.agg_seqs[shard as usize];
            if fold.is_empty() && watermark.load(Ordering::Acquire) == seq {
                return Ok(());
            }
            let mut set = WriteSet::default();
            fold.encode_into(&mut set);
            set.put(Cf::Meta, &keys::agg_seq(shard), &seq.to_be_bytes());
            // Whoever waits for a flush (a meter change, a bulk read) made no write of its own: their request was
            // refused, not of unknown outcome. Merges never land in the middle of a roll-up step (`rollup`).
            let no_rollup = shared.rollup.read().unwrap();
            shared.write(&*store, &set, false).map_err(|e| Error::StoreFailed { reason: e.failure_reason() })?;
            drop(no_rollup);
            watermark.store(seq, Ordering::Release);
            Ok(())
        })();
        // In RocksDB now (or the engine failed, and answers no query): queries find it there.
        shared.inflight.lock().unwrap().retain(|f| !Arc::ptr_eq(&f.fold, &fold));
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// The channel from the fold threads to the flush thread.
pub(crate) fn flush_queue() -> (Sender<Flush>, Receiver<Flush>) {
    crossbeam_channel::bounded(FLUSH_QUEUE)
}
