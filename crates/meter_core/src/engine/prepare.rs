//! The part of an ingest that does not need the writer, done on the caller's thread so that the single
//! writer thread is left with dedup and the commit: every event's verdict should it turn out to be new
//! (its time window), the meters that cannot read it (warnings, never a rejection: the event is still
//! accepted and counted by the meters that can), what each candidate contributes to each meter that counts it, what
//! the cardinality limits check for each (`cardinality::Scope`), and the compressed retained-events frame of the
//! candidates. Many callers prepare in parallel.
//!
//! Each event is extracted here only (`extract`): the contributions ride with the commit to the fold threads
//! (`folder::fold_part`), which fold them without reading the event's JSON again.

use std::ops::Range;
use std::sync::Arc;

use crate::aggregate::extract::{extract, Contribution, Contributions, Counted, Skip};
use crate::aggregate::meter::Meter;
use crate::aggregate::registry::Registry;
use crate::engine::cardinality::{signature, Refusal, Scope};
use crate::engine::config::Config;
use crate::error::{EventIssue, EventWarning, IssueCode, Result};
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
    /// Per candidate that some meter cannot read: its position in `batch.events` and the warning, in position
    /// order. Reported only if the event is accepted (not for a duplicate or a conflict).
    pub warnings: Vec<(u32, EventWarning)>,
    /// The events without an issue (the candidates), in order, compressed.
    pub frame: Frame,
    /// Per candidate, per meter that counts it, in step: what it contributes (folded once the commit is durable) and
    /// what the cardinality limits check. Event `i`'s are at `ends[i - 1]..ends[i]` in both (from 0 for the first);
    /// an event with an issue has none.
    pub counted: Contributions,
    pub scopes: Vec<Scope>,
    pub ends: Vec<u32>,
    /// Per event: the signature of its scopes (`cardinality::signature`).
    pub signatures: Vec<u64>,
}

impl Prepared {
    /// The cardinality scopes of the event at `position` in `batch.events`, and their signature.
    pub fn scopes_of(&self, position: usize) -> (&[Scope], u64) {
        (&self.scopes[self.range_of(position)], self.signatures[position])
    }

    /// What the event at `position` in `batch.events` contributes to each meter that counts it.
    pub fn counted_of(&self, position: usize) -> impl Iterator<Item = Counted<'_>> + '_ {
        self.counted.get(self.range_of(position))
    }

    fn range_of(&self, position: usize) -> Range<usize> {
        let start = if position == 0 { 0 } else { self.ends[position - 1] as usize };
        start..self.ends[position] as usize
    }
}

pub(crate) fn prepare(batch: ParsedBatch, registry: Arc<Registry>, now_us: i64, config: &Config) -> Result<Prepared> {
    let mut verdicts = Vec::with_capacity(batch.events.len());
    let mut warnings = Vec::new();
    let mut frame = FrameBuilder::default();
    let mut counted = Contributions::default();
    let mut scopes = Vec::with_capacity(batch.events.len());
    let mut ends = Vec::with_capacity(batch.events.len());
    let mut signatures = Vec::with_capacity(batch.events.len());
    for (position, ev) in batch.events.iter().enumerate() {
        let verdict = check_time(&batch, ev, now_us, config).err();
        if verdict.is_none() {
            read_event(&batch, ev, &registry, |meter, read| match read {
                Err(skip) => warnings.push((position as u32, warning(&batch, ev, meter, skip))),
                Ok(Some(c)) => {
                    let dims = counted.push(meter, &c);
                    let limits = config.limits_of(&meter.stored.spec);
                    scopes.push(Scope::new(meter.id(), batch.text(ev.subject), ev.time_us, dims, limits));
                }
                Ok(None) => {}
            });
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
        let start = ends.last().map_or(0, |&end| end as usize);
        signatures.push(signature(&scopes[start..]));
        debug_assert_eq!(counted.len(), scopes.len());
        ends.push(scopes.len() as u32);
    }
    let frame = frame.finish()?;
    Ok(Prepared { batch, registry, now_us, verdicts, warnings, frame, counted, scopes, ends, signatures })
}

fn check_time(batch: &ParsedBatch, ev: &ParsedEvent, now_us: i64, config: &Config) -> Result<(), EventIssue> {
    match time_issue(ev.time_us, now_us, config) {
        Some((code, message)) => Err(issue(batch, ev, code, message)),
        None => Ok(()),
    }
}

/// Why an event of time `time_us` received at `now_us` cannot be accepted, if it cannot: the back-dating window and
/// the future allowance (an amendment's new time is held to them too: `correct`).
pub(crate) fn time_issue(time_us: i64, now_us: i64, config: &Config) -> Option<(IssueCode, String)> {
    if time_us < now_us - config.backdate_window_us {
        let days = config.backdate_window_us / 86_400_000_000;
        let message = format!("\"time\" is more than {days} days in the past; events that old are not accepted");
        return Some((IssueCode::TooOld, message));
    }
    if time_us > now_us + config.max_future_us {
        let seconds = config.max_future_us / 1_000_000;
        let message = format!("\"time\" is more than {seconds} seconds in the future; check the sender's clock");
        return Some((IssueCode::TooFarInFuture, message));
    }
    None
}

/// Each meter that listens to the event's type, with what `extract` (the one decision, shared with replay and
/// backfill: `engine::recover`) says of the event: counted, filtered out (`Ok(None)`), or skipped by that meter alone
/// (`Err`).
pub(crate) fn read_event<'b>(
    batch: &'b ParsedBatch,
    ev: &ParsedEvent,
    registry: &'b Registry,
    mut each: impl FnMut(&'b Meter, Result<Option<Contribution<'b>>, Skip>),
) {
    let meters = registry.for_event(&batch.tenant, batch.text(ev.event_type));
    if meters.is_empty() {
        return;
    }
    let top = |k: &str| batch.props(ev).find(|(key, _)| *key == k).map(|(_, v)| v);
    for meter in meters {
        each(meter, extract(meter, &top));
    }
}

fn warning(batch: &ParsedBatch, ev: &ParsedEvent, meter: &Meter, skip: Skip) -> EventWarning {
    EventWarning {
        index: ev.index as usize,
        id: batch.text(ev.id).to_owned(),
        meter: meter.slug().to_owned(),
        code: skip.code,
        message: skip.message,
    }
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

/// The issue of an event a cardinality limit refused: names the meter, the limit and how to raise it.
pub(crate) fn cardinality_limit(
    batch: &ParsedBatch,
    registry: &Registry,
    ev: &ParsedEvent,
    refusal: Refusal,
) -> EventIssue {
    let meters = registry.for_event(&batch.tenant, batch.text(ev.event_type));
    let slug = meters.iter().find(|m| m.id() == refusal.meter_id()).map_or("?", |m| m.slug());
    issue(batch, ev, IssueCode::CardinalityLimit, refusal.message(slug, batch.text(ev.subject)))
}

fn issue(batch: &ParsedBatch, ev: &ParsedEvent, code: IssueCode, message: String) -> EventIssue {
    EventIssue { index: ev.index as usize, id: Some(batch.text(ev.id).to_owned()), code, message }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::aggregate::extract::extract_retained;
    use crate::aggregate::meter::{MeterSpec, StoredMeter};
    use crate::ingest::{parse_batch, Limits};

    fn registry() -> Registry {
        let specs = [
            r#"{"slug":"sum","event_type":"x","aggregation":"sum","value_property":"$.v","group_by":{"d":"$.d"}}"#,
            r#"{"slug":"deep","event_type":"x","aggregation":"max","value_property":"$.o.v"}"#,
            r#"{"slug":"uniq","event_type":"x","aggregation":"unique_count","value_property":"$.d"}"#,
            r#"{"slug":"calls","event_type":"x","aggregation":"count","filters":[{"property":"$.f","op":"ne","value":"no"}]}"#,
        ];
        specs.iter().enumerate().fold(Registry::default(), |r, (i, json)| {
            let spec: MeterSpec = serde_json::from_str(json).unwrap();
            r.with("t", Arc::new(Meter::compile(StoredMeter { id: i as u32 + 1, created_us: 0, spec }).unwrap()))
        })
    }

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just(r#""no""#.to_string()),
            Just(r#""a\"b\u00e9""#.to_string()),
            Just(format!(r#""{}""#, "x".repeat(300))),
            (-1_000_000i64..1_000_000).prop_map(|n| n.to_string()),
            (-1_000_000i64..1_000_000, 0u32..12).prop_map(|(n, s)| format!("\"{n}e-{s}\"")),
            Just("1e400".to_string()),
            Just("0.0000000001".to_string()),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((prop_oneof![Just("v"), Just("x")], inner), 0..3).prop_map(|kv| {
                    // Nested objects may repeat a key; both paths read the first.
                    let pairs: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", pairs.join(","))
                }),
            ]
        })
    }

    /// A batch of one event of type `x` whose `data` has `props` (of a repeated key, the first).
    fn batch_of(props: &[(&str, String)]) -> ParsedBatch {
        let mut seen = std::collections::HashSet::new();
        let pairs: Vec<String> =
            props.iter().filter(|(k, _)| seen.insert(*k)).map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let body = format!(
            r#"[{{"specversion":"1.0","id":"1","source":"s","type":"x","subject":"c","data":{{{}}}}}]"#,
            pairs.join(",")
        );
        parse_batch("t", body.into_bytes(), 0, &Limits::default()).unwrap()
    }

    fn props() -> impl Strategy<Value = Vec<(&'static str, String)>> {
        proptest::collection::vec(
            (prop_oneof![Just("v"), Just("d"), Just("o"), Just("f"), Just("v\\u0000")], value()),
            0..5,
        )
    }

    proptest! {
        /// Ingest reads an event from the parser's properties, replay and backfill from the retained `data` text: the
        /// one decision (`extract`) must come out the same both ways for every meter, or replay would count what
        /// ingest skipped (or the reverse).
        #[test]
        fn ingest_and_replay_decide_the_same(props in props()) {
            let batch = batch_of(&props);
            prop_assert_eq!(batch.events.len(), 1, "{:?}", batch.issues);
            let ev = &batch.events[0];
            let registry = registry();
            let mut decisions = 0;
            read_event(&batch, ev, &registry, |meter, at_ingest| {
                let at_replay = extract_retained(meter, batch.text(ev.data));
                assert_eq!(at_ingest, at_replay, "meter {}", meter.slug());
                decisions += 1;
            });
            prop_assert_eq!(decisions, 4);
        }

        /// The fold threads fold what `prepare` kept (`counted_of`) instead of extracting again: it must be, meter by
        /// meter, what extraction counts, so that ingest counts what replay and backfill would.
        #[test]
        fn prepare_keeps_what_extraction_counts(props in props()) {
            let batch = batch_of(&props);
            prop_assert_eq!(batch.events.len(), 1, "{:?}", batch.issues);
            let registry = Arc::new(registry());
            let mut expected = Vec::new();
            for meter in registry.for_event("t", "x") {
                if let Ok(Some(c)) = extract_retained(meter, batch.text(batch.events[0].data)) {
                    let mut dims = Vec::new();
                    crate::storage::keys::put_dims(&mut dims, c.dims.iter().map(|d| d.as_deref()));
                    expected.push((meter.id(), meter.aggregation(), c.value, dims, c.unique.map(|u| u.into_owned())));
                }
            }
            let prepared = prepare(batch, registry, 0, &Config::default()).unwrap();
            prop_assert!(prepared.verdicts[0].is_none());
            let kept: Vec<_> = prepared
                .counted_of(0)
                .map(|c| (c.meter_id, c.aggregation, c.value, c.dims.to_vec(), c.unique.map(str::to_owned)))
                .collect();
            prop_assert_eq!(kept, expected);
            prop_assert_eq!(prepared.scopes_of(0).0.len(), prepared.counted_of(0).count());
        }
    }
}
