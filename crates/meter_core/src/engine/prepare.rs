//! The part of an ingest that does not need the writer, done on the caller's thread so that the single
//! writer thread is left with dedup and the commit: every event's verdict should it turn out to be new
//! (its time window, whether each of its meters can read it), and the compressed retained-events frame
//! of the candidates. Many callers prepare in parallel.

use std::sync::Arc;

use crate::aggregate::extract::{extract, Contribution};
use crate::aggregate::meter::Meter;
use crate::aggregate::registry::Registry;
use crate::engine::config::Config;
use crate::error::{EventIssue, IssueCode, Result};
use crate::ingest::{ParsedBatch, ParsedEvent};
use crate::storage::events::{Frame, FrameBuilder, RetainedEvent};

pub(crate) struct Prepared {
    pub batch: ParsedBatch,
    /// The meters the verdicts were made against. The writer prepares again if they changed since.
    pub registry: Arc<Registry>,
    pub now_us: i64,
    /// Per event of `batch.events`: why it cannot be accepted if it is new. Dedup is decided first, by
    /// the writer, so that a late retry is a duplicate rather than `too_old`.
    pub verdicts: Vec<Option<EventIssue>>,
    /// The events without an issue (the candidates), in order, compressed.
    pub frame: Frame,
}

pub(crate) fn prepare(batch: ParsedBatch, registry: Arc<Registry>, now_us: i64, config: &Config) -> Result<Prepared> {
    let mut verdicts = Vec::with_capacity(batch.events.len());
    let mut frame = FrameBuilder::default();
    let mut scratch = Vec::new();
    for ev in &batch.events {
        scratch.clear();
        let verdict = check_time(&batch, ev, now_us, config)
            .and_then(|_| contributions_of(&batch, ev, &registry, &mut scratch))
            .err();
        if verdict.is_none() {
            frame.push(&RetainedEvent {
                source: batch.text(ev.source),
                id: batch.text(ev.id),
                event_type: batch.text(ev.event_type),
                subject: batch.text(ev.subject),
                time_us: ev.time_us,
                ordinal: 0,
                data: batch.text(ev.data),
            });
        }
        verdicts.push(verdict);
    }
    let frame = frame.finish()?;
    Ok(Prepared { batch, registry, now_us, verdicts, frame })
}

fn check_time(batch: &ParsedBatch, ev: &ParsedEvent, now_us: i64, config: &Config) -> Result<(), EventIssue> {
    if ev.time_us < now_us - config.backdate_window_us {
        return Err(issue(
            batch,
            ev,
            IssueCode::TooOld,
            format!(
                "\"time\" is more than {} days in the past; events that old are not accepted",
                config.backdate_window_us / 86_400_000_000
            ),
        ));
    }
    if ev.time_us > now_us + config.max_future_us {
        return Err(issue(
            batch,
            ev,
            IssueCode::TooFarInFuture,
            format!(
                "\"time\" is more than {} seconds in the future; check the sender's clock",
                config.max_future_us / 1_000_000
            ),
        ));
    }
    Ok(())
}

/// What the event adds to each meter that listens to its type; an issue if any of them cannot read it.
pub(crate) fn contributions_of<'b>(
    batch: &'b ParsedBatch,
    ev: &ParsedEvent,
    registry: &'b Registry,
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
            Err(message) => return Err(issue(batch, ev, IssueCode::InvalidValue, message)),
        }
    }
    Ok(())
}

pub(crate) fn conflict(batch: &ParsedBatch, ev: &ParsedEvent) -> EventIssue {
    issue(
        batch,
        ev,
        IssueCode::Conflict,
        "an event with this source and id was already accepted with a different payload; the first one stands. \
         Send corrections as a new event with a new id"
            .into(),
    )
}

fn issue(batch: &ParsedBatch, ev: &ParsedEvent, code: IssueCode, message: String) -> EventIssue {
    EventIssue { index: ev.index as usize, id: Some(batch.text(ev.id).to_owned()), code, message }
}
