//! The fold threads: aggregates of committed events, folded in memory across commits and flushed as one
//! merge operand per customer-minute. They run beside the writer, so that a commit never waits for
//! aggregation: the writer hands every durable commit's accepted events, in commit order, to each fold
//! thread, and each folds the customers of its own shard (`shard_of`), so aggregation uses every core.
//!
//! A shard flushes with its own watermark (`counter/agg_seq/<shard>`) in the same write batch: its
//! customers' aggregates of every commit up to that one are in `agg`, none after. It flushes every
//! `Config::flush_interval`, when its fold grows past `FLUSH_STATES`, and when asked (before meters
//! change). To flush, a fold thread hands its whole fold to the flush thread and starts an empty one, so
//! that folding never stops for a write (which would stall the writer behind it). The flush thread writes
//! in the order it was handed folds, so each shard's watermark only moves forward.
//!
//! A query never waits for a write: each fold thread that owns a queried customer copies out what it holds of the
//! query's customers, meter and minutes (`Peek`), and answers at once. Folds handed over and not yet written stay
//! readable meanwhile (`Shared::inflight`, until the flush thread has written them); the query copies from those too,
//! then reads RocksDB at a snapshot and keeps each in-flight copy only if the shard's watermark at that snapshot says
//! the fold is not in it (a fold and its watermark are one write). Until the query has read, the shard hands nothing
//! more over (`Shared::readers`), so no state it copied from the live fold can reach RocksDB before the read: every
//! state is counted exactly once. See `Engine::query`.
//! A flush is not synced on its own: if a crash loses it, it loses the watermark too, and recovery
//! re-aggregates those commits from their retained events (see `engine::replay`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::prepare::{read_event, Prepared};
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
    /// Copy out what the live fold holds of what a query asks for, and close the shard's hand-overs until the
    /// query has read (`Shared::readers`).
    Peek { filter: Arc<PeekFilter>, reply: Sender<Result<Peeked>> },
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
    pub fn run(mut self, rx: Receiver<FoldWork>) {
        loop {
            match rx.recv_timeout(self.flush_interval) {
                Ok(FoldWork::Commit { seq, parts }) => {
                    parts.iter().for_each(|part| self.add(part));
                    self.folded_seq = seq;
                    if self.fold.states() >= FLUSH_STATES || self.last_flush.elapsed() >= self.flush_interval {
                        self.hand_over(None);
                    }
                }
                Ok(FoldWork::Flush { reply }) => self.hand_over(Some(reply)),
                Ok(FoldWork::Peek { filter, reply }) => {
                    let mut peeked = Peeked::default();
                    self.fold.peek(&filter, &mut peeked);
                    // Closed until the query has read RocksDB; the query opens it (`engine::ReadGate`).
                    self.readers().fetch_add(1, Ordering::AcqRel);
                    if reply.send(self.shared.failure().map_or(Ok(peeked), Err)).is_err() {
                        self.readers().fetch_sub(1, Ordering::AcqRel);
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.hand_over(None),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Closing: whatever is still in memory goes to `agg`, so the next open has nothing to replay.
        self.wait_for_readers();
        self.hand_over(None);
    }

    fn add(&mut self, part: &Accepted) {
        let Prepared { batch, registry, .. } = &part.prepared;
        for (k, &position) in part.events.iter().enumerate() {
            let ev = &batch.events[position as usize];
            let subject = batch.text(ev.subject);
            if shard_of(&batch.tenant, subject, SHARDS) != self.shard {
                continue;
            }
            let ordinal = part.first_ordinal + k as u64;
            let fold = &mut self.fold;
            let mut customer = None;
            read_event(batch, ev, registry, |meter, read| {
                // A meter that cannot read the event skips it whole (its warning went out with the answer); the
                // other meters count it.
                if let Ok(Some(c)) = read {
                    let customer = *customer.get_or_insert_with(|| fold.customer(&batch.tenant, subject));
                    fold.add(customer, meter, ev.time_us, ordinal, &c);
                }
            });
        }
    }

    fn readers(&self) -> &AtomicUsize {
        &self.shared.readers[self.shard as usize]
    }

    fn wait_for_readers(&self) {
        while self.readers().load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Gives the fold to the flush thread; one with a `reply` is answered once it is written.
    ///
    /// While a query reads, or while the flush thread is `FLUSH_QUEUE` folds behind, a routine hand-over waits for a
    /// later turn, so that neither ingest nor the queries behind it in this thread's queue stall (a query waits for
    /// the commits ahead of it to be folded). One that is asked for, or overdue (twice the size or age that triggers
    /// it), waits for the readers and for room instead: this thread then takes no new `Peek` meanwhile, so a stream
    /// of queries can neither starve a meter change nor grow the fold without bound.
    fn hand_over(&mut self, reply: Option<Sender<Result<()>>>) {
        let overdue = self.fold.states() >= 2 * FLUSH_STATES || self.last_flush.elapsed() >= 2 * self.flush_interval;
        if reply.is_none() && !overdue && (self.readers().load(Ordering::Acquire) > 0 || self.flushes.is_full()) {
            return;
        }
        self.wait_for_readers();
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
            // refused, not of unknown outcome.
            shared.write(&*store, &set, false).map_err(|e| Error::StoreFailed { reason: e.failure_reason() })?;
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
