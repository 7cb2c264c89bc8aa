//! Applying a replicated log (cluster mode: `meter worker` applies one partition of the log per engine).
//!
//! The commit unit is "entries plus a position" (design.md §6): entries are applied in log order, and the position
//! of the last one, with every entry's outcome, goes into the same synced write batch as the state the entries
//! produced. A replay from any earlier position is then exact: the caller skips what the stored position covers,
//! and the engine's dedup would count nothing twice anyway. Exactly once is the engine's dedup plus this position,
//! never the broker's acknowledgement.
//!
//! An entry carries the time its edge received it, and the engine decides by that clock (the back-dating window,
//! the dedup window), so a replay on another worker decides every event as the first application did.
//!
//! The outcome of each entry (an ingest report, a created meter, or the error) is kept so that a client whose
//! edge stopped waiting can still learn it (a duplicate, a conflict, a rejected event): `Engine::log_outcome`.
//! The caller bounds how many are kept (`forget_before`).

use serde::Serialize;

use super::prepare::Prepared;
use super::report::IngestReport;
use crate::aggregate::meter::MeterSpec;
use crate::error::{Error, EventIssue, Result};
use crate::storage::{Cf, WriteSet};

/// What an entry asks of the engine.
pub enum LogOp {
    /// A batch of events (the ingest body: a JSON array of CloudEvents). `indexes`: each event's index in the
    /// request it came from (the edge split the request by partition), so that the outcome names events as the
    /// client sent them; empty when the entry is the whole request.
    Ingest {
        body: Vec<u8>,
        atomic: bool,
        indexes: Vec<u32>,
    },
    CreateMeter(MeterSpec),
    DeleteMeter(String),
}

pub struct LogEntry {
    /// The entry's position in the log; increasing, not necessarily consecutive (a log's partition is a subset).
    pub seq: u64,
    pub tenant: String,
    /// When the edge received it: the clock the engine decides it by.
    pub received_us: i64,
    pub op: LogOp,
}

/// An entry as the writer takes it: an ingest already parsed and prepared on the caller's thread (or refused there).
pub(crate) enum Prepped {
    Ingest { prepared: Box<Result<Prepared>>, atomic: bool, indexes: Vec<u32> },
    CreateMeter(MeterSpec),
    DeleteMeter(String),
}

pub(crate) struct PreppedEntry {
    pub seq: u64,
    pub tenant: String,
    pub received_us: i64,
    pub op: Prepped,
}

/// `{"tenant", "ok": value}` or `{"tenant", "error": {"code", "message", "issues"}}`: an entry's outcome as stored
/// and returned. The tenant is kept so that an outcome is only ever shown to its own tenant.
pub fn outcome<T: Serialize>(tenant: &str, result: &Result<T>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Failed<'a> {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        issues: Option<&'a [EventIssue]>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Answer<'a, T> {
        Ok(&'a T),
        Error(Failed<'a>),
    }
    #[derive(Serialize)]
    struct Outcome<'a, T> {
        tenant: &'a str,
        #[serde(flatten)]
        answer: Answer<'a, T>,
    }
    let answer = match result {
        Ok(value) => Answer::Ok(value),
        Err(e) => Answer::Error(Failed {
            code: e.code(),
            message: e.to_string(),
            issues: match e {
                Error::BatchRejected { issues } => Some(issues),
                _ => None,
            },
        }),
    };
    serde_json::to_vec(&Outcome { tenant, answer }).expect("outcomes serialize")
}

/// Names an ingest entry's events by their index in the request the edge split (`LogOp::Ingest::indexes`).
pub fn renumber(result: &mut Result<IngestReport>, indexes: &[u32]) {
    let original = |i: usize| indexes.get(i).map_or(i, |&o| o as usize);
    match result {
        Ok(report) => {
            report.issues.iter_mut().for_each(|issue| issue.index = original(issue.index));
            report.warnings.iter_mut().for_each(|warning| warning.index = original(warning.index));
        }
        Err(Error::BatchRejected { issues }) => issues.iter_mut().for_each(|issue| issue.index = original(issue.index)),
        Err(_) => {}
    }
}

/// Prefix of a log's keys in `meta`: its position, then its outcomes by position.
fn prefix(log: &str) -> Vec<u8> {
    let mut k = b"log/".to_vec();
    k.extend_from_slice(log.as_bytes());
    k.push(0);
    k
}

pub fn position_key(log: &str) -> Vec<u8> {
    [prefix(log), b"position".to_vec()].concat()
}

pub fn outcome_key(log: &str, seq: u64) -> Vec<u8> {
    [prefix(log), b"outcome/".to_vec(), seq.to_be_bytes().to_vec()].concat()
}

/// Stages, into the write that applies the entry at `seq`, the position and the entry's outcome.
pub fn stage_entry(set: &mut WriteSet, log: &str, seq: u64, outcome: &[u8]) {
    set.put(Cf::Meta, &position_key(log), &seq.to_be_bytes());
    set.put(Cf::Meta, &outcome_key(log, seq), outcome);
}

/// Stages the deletion of the outcomes of entries before `seq`.
pub fn stage_forget(set: &mut WriteSet, log: &str, seq: u64) {
    if seq > 0 {
        set.delete_range(Cf::Meta, &outcome_key(log, 0), &outcome_key(log, seq));
    }
}

pub fn decode_position(value: Option<Vec<u8>>) -> Result<u64> {
    match value {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| Error::Corrupt("a log position".into()))?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}
