//! What an ingest call answers: counts of accepted and duplicate events, every event not counted, and every meter
//! that could not read an accepted event.

use serde::Serialize;

use crate::error::{EventIssue, EventWarning};

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IngestReport {
    /// Events counted for the first time by this call.
    pub accepted: usize,
    /// Events already counted before (a retry): a success, never counted twice.
    pub duplicates: usize,
    /// Events rejected or in conflict, by index, sorted.
    pub issues: Vec<EventIssue>,
    /// Per accepted event and meter of its type that could not read it: that meter skipped the event, the others
    /// counted it. In event order.
    pub warnings: Vec<EventWarning>,
}

impl IngestReport {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("reports serialize")
    }
}
