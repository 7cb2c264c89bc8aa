//! The events a meter skipped: accepted events of its type that it could not read (its value missing or not an exact
//! decimal, a dimension or a filtered property that is an object, an array or too long), with why.
//!
//! Nothing is stored per skip. The answer is the one decision (`aggregate::extract::extract`) made again over the
//! retained events, the same one ingest, replay and backfill make, so it lists exactly the events the meter's
//! usage leaves out, including those from before the meter existed (which its backfill skipped).
//!
//! Cost: retained events are stored per commit, not by event time, so a call reads the tenant's retained events in
//! commit order from its cursor and keeps those in the time range. It stops at `limit` skipped events or after
//! `max_scan` events read (about a second per million on one core), and answers with the cursor to go on from:
//! a client pages until `next` is `None`. Paging through a tenant's whole history reads all its retained events once.

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

use crate::aggregate::extract::extract_retained;
use crate::aggregate::meter::Meter;
use crate::ensure;
use crate::error::{Error, Result, SkipCode};
use crate::storage::{events, keys, Cf, Store};

/// The most skipped events one call lists.
pub const MAX_LIMIT: usize = 1_000;
/// The most retained events one call reads, by default.
pub const DEFAULT_MAX_SCAN: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedEvent {
    pub source: String,
    pub id: String,
    pub subject: String,
    /// The event's time, RFC 3339 UTC.
    pub time: String,
    pub code: SkipCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedPage {
    /// In commit order (the order the events were accepted in).
    pub events: Vec<SkippedEvent>,
    /// Retained events read by this call.
    pub scanned: u64,
    /// Where the next call goes on (`after`), as a decimal string; `None` once every retained event was read.
    pub next: Option<String>,
}

#[allow(clippy::too_many_arguments)] // one query's parameters
pub fn skipped(
    store: &dyn Store,
    tenant: &str,
    meter: &Meter,
    from_us: i64,
    to_us: i64,
    after: Option<u64>,
    limit: usize,
    max_scan: usize,
) -> Result<SkippedPage> {
    ensure!(from_us < to_us, "invalid_query", "'from' must be before 'to'");
    ensure!((1..=MAX_LIMIT).contains(&limit), "invalid_query", "'limit' must be 1-{MAX_LIMIT}; got {limit}");
    let prefix = keys::events_prefix(tenant);
    let mut cursor = store.cursor(Cf::Events);
    // An ordinal's high bits are its commit (`writer::ordinal`), so the cursor's commit is where to seek.
    cursor.seek(&keys::events_key(tenant, after.map_or(0, |o| o >> 24), 0));
    let mut page = SkippedPage { events: Vec::new(), scanned: 0, next: None };
    let max_scan = max_scan.max(1) as u64;
    while let Some((key, value)) = cursor.entry() {
        if !key.starts_with(&prefix) {
            break;
        }
        for e in events::decode(value)? {
            if after.is_some_and(|a| e.ordinal <= a) {
                continue;
            }
            page.scanned += 1;
            if e.event_type == meter.stored.spec.event_type && (from_us..to_us).contains(&e.time_us) {
                if let Err(skip) = extract_retained(meter, &e.data) {
                    let time = DateTime::from_timestamp_micros(e.time_us)
                        .ok_or_else(|| Error::Corrupt(format!("event time {}", e.time_us)))?
                        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
                    page.events.push(SkippedEvent {
                        source: e.source,
                        id: e.id,
                        subject: e.subject,
                        time,
                        code: skip.code,
                        message: skip.message,
                    });
                }
            }
            if page.events.len() >= limit || page.scanned >= max_scan {
                page.next = Some(e.ordinal.to_string());
                return Ok(page);
            }
        }
        cursor.next();
    }
    cursor.status()?;
    Ok(page)
}
