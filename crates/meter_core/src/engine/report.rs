//! What an ingest call answers: counts of accepted and duplicate events and every event not counted.

use serde::Serialize;

use crate::error::EventIssue;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct IngestReport {
    /// Events counted for the first time by this call.
    pub accepted: usize,
    /// Events already counted before (a retry): a success, never counted twice.
    pub duplicates: usize,
    /// Events rejected or in conflict, by index, sorted.
    pub issues: Vec<EventIssue>,
}

impl IngestReport {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("reports serialize")
    }
}
