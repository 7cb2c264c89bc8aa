//! Parsing and validating a batch of CloudEvents from raw request bytes.
//!
//! The parser runs on the caller's thread (the GIL released) and hands the writer an owned
//! [`ParsedBatch`]: the body itself plus `Span`s into it, so no event field is copied unless it had JSON
//! escapes (those are decoded once into the tail of the same buffer). Identity hashes are computed here
//! too, keeping the single writer thread free for dedup, aggregation and the commit.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::value::RawValue;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use super::json::{self, clip, Kind};
use super::time::parse_rfc3339_micros;
use crate::error::{Error, EventIssue, IssueCode, Result};

/// Bounds on what one batch may hold; a request outside them is refused as a whole.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_events: usize,
    pub max_field_bytes: usize,
    pub max_data_properties: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_events: 10_000, max_field_bytes: 255, max_data_properties: 100 }
    }
}

/// Where a piece of text lives in `ParsedBatch::buf`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

#[derive(Debug, Clone)]
pub struct ParsedEvent {
    /// Position in the request's array, for reporting.
    pub index: u32,
    /// The event's own JSON text, as sent.
    pub raw: Span,
    pub id: Span,
    pub source: Span,
    pub event_type: Span,
    pub subject: Span,
    pub time_us: i64,
    /// False when the event had no `time` and got the receive time.
    pub time_given: bool,
    /// Raw JSON of `data` (an object), empty when absent.
    pub data: Span,
    /// This event's slice of `ParsedBatch::props`: the top-level `data` properties.
    props: Range<u32>,
    /// xxh3-128 of `(tenant, source, id)`: the dedup identity.
    pub fingerprint: u128,
    /// xxh3-64 of what the event says (type, subject, time, data): tells a retry from a conflict.
    pub payload_hash: u64,
}

/// A parsed request: owned, so it can cross to the writer thread.
pub struct ParsedBatch {
    pub tenant: String,
    /// The request body, followed by any strings that had to be unescaped.
    buf: Vec<u8>,
    pub events: Vec<ParsedEvent>,
    props: Vec<(Span, Span)>,
    /// Events the parser already refused, by index.
    pub issues: Vec<EventIssue>,
    /// How many events the request held, valid or not.
    pub total: usize,
    pub received_us: i64,
}

impl ParsedBatch {
    pub fn text(&self, span: Span) -> &str {
        let bytes = &self.buf[span.range()];
        debug_assert!(std::str::from_utf8(bytes).is_ok());
        // SAFETY: `buf` is the body, validated as UTF-8 in `parse_batch`, followed by UTF-8 strings, and
        // every span is made from a `str` slice of one of them, so it covers whole UTF-8 characters.
        // This is on the hot path (several lookups per event and meter), hence no re-validation.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    /// The top-level `data` properties of an event, as (key, raw JSON value).
    pub fn props<'s>(&'s self, event: &ParsedEvent) -> impl Iterator<Item = (&'s str, &'s str)> + 's {
        let range = event.props.start as usize..event.props.end as usize;
        self.props[range].iter().map(move |&(k, v)| (self.text(k), self.text(v)))
    }
}

/// Parses `body` (a JSON array of CloudEvents, or one event object) for `tenant`.
pub fn parse_batch(tenant: &str, body: Vec<u8>, received_us: i64, limits: &Limits) -> Result<ParsedBatch> {
    let text = std::str::from_utf8(&body).map_err(|e| {
        Error::invalid("invalid_json", format!("the body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    let first = text.trim_start().as_bytes().first().copied();
    let raw_events: Vec<&RawValue> = match first {
        Some(b'[') => serde_json::from_str(text).map_err(|e| bad_json(&e))?,
        Some(b'{') => vec![serde_json::from_str(text).map_err(|e| bad_json(&e))?],
        _ => return Err(Error::invalid("invalid_json", "the body must be a JSON array of events or one event object")),
    };
    if raw_events.is_empty() {
        return Err(Error::invalid("empty_batch", "the batch holds no events; send at least one"));
    }
    if raw_events.len() > limits.max_events {
        return Err(Error::invalid(
            "too_many_events",
            format!("the batch holds {} events; the limit is {} per request", raw_events.len(), limits.max_events),
        ));
    }

    let mut parser = Parser {
        tenant,
        base: text.as_ptr() as usize,
        body_len: body.len(),
        extra: Vec::new(),
        props: Vec::new(),
        limits,
    };
    let mut events = Vec::with_capacity(raw_events.len());
    let mut issues = Vec::new();
    for (index, raw) in raw_events.iter().enumerate() {
        match parser.event(index, raw.get(), received_us) {
            Ok(event) => events.push(event),
            Err(issue) => issues.push(issue),
        }
    }
    let (extra, props, total) = (parser.extra, parser.props, raw_events.len());
    let mut buf = body;
    buf.extend_from_slice(&extra);
    Ok(ParsedBatch { tenant: tenant.to_owned(), buf, events, props, issues, total, received_us })
}

fn bad_json(e: &serde_json::Error) -> Error {
    Error::invalid("invalid_json", format!("the body is not valid JSON: {e}"))
}

struct Parser<'a> {
    tenant: &'a str,
    /// Address of the body text, so borrowed slices can be turned into spans.
    base: usize,
    body_len: usize,
    /// Unescaped strings, appended to the body afterwards.
    extra: Vec<u8>,
    props: Vec<(Span, Span)>,
    limits: &'a Limits,
}

/// The CloudEvents attributes the engine reads; the others (extensions) are ignored.
#[derive(Default)]
struct Fields<'a> {
    id: Option<&'a str>,
    source: Option<&'a str>,
    specversion: Option<&'a str>,
    event_type: Option<&'a str>,
    subject: Option<&'a str>,
    time: Option<&'a str>,
    data: Option<&'a str>,
}

impl<'a> Parser<'a> {
    // The `Cow` itself is the point: borrowed text is a span of the body, owned text was unescaped.
    #[allow(clippy::ptr_arg)]
    fn span(&mut self, s: &Cow<'_, str>) -> Span {
        match s {
            Cow::Borrowed(b) => {
                let start = b.as_ptr() as usize - self.base;
                debug_assert!(start + b.len() <= self.body_len);
                Span { start: start as u32, len: b.len() as u32 }
            }
            Cow::Owned(o) => {
                let start = self.body_len + self.extra.len();
                self.extra.extend_from_slice(o.as_bytes());
                Span { start: start as u32, len: o.len() as u32 }
            }
        }
    }

    fn event(&mut self, index: usize, raw: &str, received_us: i64) -> Result<ParsedEvent, EventIssue> {
        let issue =
            |id: Option<&str>, code, message: String| EventIssue { index, id: id.map(str::to_owned), code, message };
        let pairs = json::object(raw)
            .ok_or_else(|| issue(None, IssueCode::InvalidEvent, "the event must be a JSON object".into()))?;

        let mut f = Fields::default();
        for (key, value) in &pairs {
            let slot = match key.as_ref() {
                "id" => &mut f.id,
                "source" => &mut f.source,
                "specversion" => &mut f.specversion,
                "type" => &mut f.event_type,
                "subject" => &mut f.subject,
                "time" => &mut f.time,
                "data" => &mut f.data,
                _ => continue,
            };
            if slot.replace(value.get()).is_some() {
                return Err(issue(
                    None,
                    IssueCode::InvalidEvent,
                    format!("the event repeats the key \"{key}\"; send it once"),
                ));
            }
        }

        let id = self.text_field("id", f.id).map_err(|(c, m)| issue(None, c, m))?;
        let id_text = id.clone();
        let fail = |code, message: String| issue(Some(&id_text), code, message);
        let source = self.text_field("source", f.source).map_err(|(c, m)| fail(c, m))?;
        let event_type = self.text_field("type", f.event_type).map_err(|(c, m)| fail(c, m))?;
        let subject = self.text_field("subject", f.subject).map_err(|(c, m)| fail(c, m))?;
        match f.specversion.map(json::string) {
            Some(Some(v)) if v == "1.0" => {}
            None => return Err(fail(IssueCode::MissingField, "\"specversion\" is required; set it to \"1.0\"".into())),
            Some(_) => return Err(fail(IssueCode::InvalidField, "\"specversion\" must be \"1.0\"".into())),
        }

        let (time_us, time_given) = match f.time.filter(|t| json::kind(t) != Kind::Null) {
            None => (received_us, false),
            Some(raw_time) => {
                let parsed = json::string(raw_time).and_then(|t| parse_rfc3339_micros(&t));
                let t = parsed.ok_or_else(|| {
                    fail(
                        IssueCode::InvalidTime,
                        format!(
                            "\"time\" must be an RFC 3339 timestamp such as \"2026-11-23T10:00:00Z\"; got {}",
                            clip(raw_time)
                        ),
                    )
                })?;
                (t, true)
            }
        };

        let props_start = self.props.len() as u32;
        let data = match f.data.filter(|d| json::kind(d) != Kind::Null) {
            None => Span::default(),
            Some(raw_data) => {
                let pairs = json::object(raw_data).ok_or_else(|| {
                    fail(IssueCode::InvalidData, format!("\"data\" must be a JSON object; got {}", clip(raw_data)))
                })?;
                if pairs.len() > self.limits.max_data_properties {
                    return Err(fail(
                        IssueCode::InvalidData,
                        format!(
                            "\"data\" has {} properties; the limit is {}",
                            pairs.len(),
                            self.limits.max_data_properties
                        ),
                    ));
                }
                for (i, (key, _)) in pairs.iter().enumerate() {
                    if pairs[..i].iter().any(|(k, _)| k == key) {
                        return Err(fail(
                            IssueCode::InvalidData,
                            format!("\"data\" repeats the key \"{key}\"; send it once"),
                        ));
                    }
                }
                for (key, value) in &pairs {
                    let k = self.span(key);
                    let v = self.span(&Cow::Borrowed(value.get()));
                    self.props.push((k, v));
                }
                self.span(&Cow::Borrowed(raw_data))
            }
        };

        let fingerprint = identity_hash(self.tenant, &source, &id);
        let payload_hash = payload_hash(&event_type, &subject, time_given.then_some(time_us), f.data.unwrap_or(""));
        Ok(ParsedEvent {
            index: index as u32,
            raw: self.span(&Cow::Borrowed(raw)),
            id: self.span(&id),
            source: self.span(&source),
            event_type: self.span(&event_type),
            subject: self.span(&subject),
            time_us,
            time_given,
            data,
            props: props_start..self.props.len() as u32,
            fingerprint,
            payload_hash,
        })
    }

    /// A required, non-empty string attribute within the length limit.
    fn text_field<'t>(&self, name: &str, raw: Option<&'t str>) -> Result<Cow<'t, str>, (IssueCode, String)> {
        let raw = raw.ok_or_else(|| (IssueCode::MissingField, format!("\"{name}\" is required")))?;
        let value = json::string(raw)
            .ok_or_else(|| (IssueCode::InvalidField, format!("\"{name}\" must be a string; got {}", clip(raw))))?;
        if value.is_empty() {
            return Err((IssueCode::InvalidField, format!("\"{name}\" must not be empty")));
        }
        if value.len() > self.limits.max_field_bytes {
            return Err((
                IssueCode::InvalidField,
                format!("\"{name}\" is {} bytes long; the limit is {}", value.len(), self.limits.max_field_bytes),
            ));
        }
        Ok(value)
    }
}

/// Length-prefixed so that ("ab", "c") and ("a", "bc") can never share an identity.
pub fn identity_hash(tenant: &str, source: &str, id: &str) -> u128 {
    let mut key = Vec::with_capacity(tenant.len() + source.len() + id.len() + 12);
    for part in [tenant, source, id] {
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    xxh3_128(&key)
}

/// What a retry must repeat exactly: type, subject, the `time` if one was sent, and `data` byte for byte.
pub fn payload_hash(event_type: &str, subject: &str, time_us: Option<i64>, data: &str) -> u64 {
    let mut key = Vec::with_capacity(event_type.len() + subject.len() + data.len() + 24);
    for part in [event_type, subject] {
        key.extend_from_slice(&(part.len() as u32).to_le_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    match time_us {
        Some(t) => {
            key.push(1);
            key.extend_from_slice(&t.to_le_bytes());
        }
        None => key.push(0),
    }
    key.extend_from_slice(data.as_bytes());
    xxh3_64(&key)
}

/// Counts the events of a batch that pass validation: the parser alone, for the benchmark's ceiling.
pub fn parse_only(body: Vec<u8>, limits: &Limits) -> Result<usize> {
    parse_batch("bench", body, 0, limits).map(|b| b.events.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_795_428_000_000_000;

    fn parse(body: &str) -> Result<ParsedBatch> {
        parse_batch("t", body.as_bytes().to_vec(), NOW, &Limits::default())
    }

    fn event_json(id: &str, subject: &str, data: &str) -> String {
        format!(
            r#"{{"specversion":"1.0","id":{},"source":"s","type":"llm","subject":{},"time":"2026-11-23T10:00:00Z","data":{data}}}"#,
            serde_json::to_string(id).unwrap(),
            serde_json::to_string(subject).unwrap()
        )
    }

    #[test]
    fn reads_fields_and_data_properties() {
        let b = parse(&format!("[{}]", event_json("a\"1", "c\u{e9}", r#"{"tokens": 12, "m": "x\ny"}"#))).unwrap();
        let e = &b.events[0];
        assert_eq!((b.text(e.id), b.text(e.subject), b.text(e.event_type)), ("a\"1", "c\u{e9}", "llm"));
        assert_eq!(e.time_us, NOW);
        assert!(e.time_given);
        assert_eq!(b.props(e).collect::<Vec<_>>(), vec![("tokens", "12"), ("m", r#""x\ny""#)]);
    }

    #[test]
    fn a_single_object_is_a_batch_of_one_and_time_defaults_to_receipt() {
        let b = parse(r#"{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"c"}"#).unwrap();
        assert_eq!((b.total, b.events.len()), (1, 1));
        assert_eq!(b.events[0].time_us, NOW);
        assert!(!b.events[0].time_given);
    }

    #[test]
    fn explains_each_invalid_event_by_index() {
        let cases = [
            (
                r#"{"specversion":"1.0","source":"s","type":"t","subject":"c"}"#,
                IssueCode::MissingField,
                "\"id\" is required",
            ),
            (
                r#"{"specversion":"1.0","id":7,"source":"s","type":"t","subject":"c"}"#,
                IssueCode::InvalidField,
                "must be a string",
            ),
            (
                r#"{"specversion":"0.3","id":"a","source":"s","type":"t","subject":"c"}"#,
                IssueCode::InvalidField,
                "\"1.0\"",
            ),
            (
                r#"{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"c","time":"soon"}"#,
                IssueCode::InvalidTime,
                "RFC 3339",
            ),
            (
                r#"{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"c","data":[1]}"#,
                IssueCode::InvalidData,
                "JSON object",
            ),
            (
                r#"{"specversion":"1.0","id":"a","id":"b","source":"s","type":"t","subject":"c"}"#,
                IssueCode::InvalidEvent,
                "repeats",
            ),
            (
                r#"{"specversion":"1.0","id":"","source":"s","type":"t","subject":"c"}"#,
                IssueCode::InvalidField,
                "empty",
            ),
            ("42", IssueCode::InvalidEvent, "JSON object"),
        ];
        for (event, code, needle) in cases {
            let b = parse(&format!("[{}, {event}]", event_json("ok", "c", "{}"))).unwrap();
            assert_eq!(b.events.len(), 1, "{event}");
            let issue = &b.issues[0];
            assert_eq!((issue.index, issue.code), (1, code), "{event}");
            assert!(issue.message.contains(needle), "{event}: {}", issue.message);
        }
        let long = "x".repeat(256);
        let b = parse(&format!("[{}]", event_json(&long, "c", "{}"))).unwrap();
        assert!(b.issues[0].message.contains("256 bytes"));
    }

    #[test]
    fn identity_ignores_payload_and_payload_hash_ignores_identity() {
        let b = parse(&format!(
            "[{},{},{}]",
            event_json("a", "c", r#"{"v":1}"#),
            event_json("a", "c", r#"{"v":2}"#),
            event_json("b", "c", r#"{"v":1}"#)
        ))
        .unwrap();
        let e = &b.events;
        assert_eq!(e[0].fingerprint, e[1].fingerprint);
        assert_ne!(e[0].payload_hash, e[1].payload_hash);
        assert_ne!(e[0].fingerprint, e[2].fingerprint);
        assert_eq!(e[0].payload_hash, e[2].payload_hash);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_batch("t", bytes, NOW, &Limits::default());
        }

        #[test]
        fn arbitrary_json_values_are_reported_never_lost(values in proptest::collection::vec(
            prop_oneof![Just("1".to_string()), Just("null".to_string()), Just("{}".to_string()),
                        Just(r#"{"id":1}"#.to_string()), ".{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap())], 1..20)) {
            let b = parse(&format!("[{}]", values.join(","))).unwrap();
            // Every event is either valid or reported by its index: none is silently dropped.
            prop_assert_eq!(b.events.len() + b.issues.len(), b.total);
            prop_assert_eq!(b.total, values.len());
        }

        #[test]
        fn valid_events_round_trip_their_fields(id in "\\PC{1,20}", subject in "\\PC{1,20}", n in any::<i64>()) {
            let b = parse(&format!("[{}]", event_json(&id, &subject, &format!(r#"{{"n":{n}}}"#)))).unwrap();
            prop_assert!(b.issues.is_empty());
            let e = &b.events[0];
            prop_assert_eq!(b.text(e.id), id.as_str());
            prop_assert_eq!(b.text(e.subject), subject.as_str());
            let props: Vec<_> = b.props(e).collect();
            let expect = n.to_string();
            prop_assert_eq!(props, vec![("n", expect.as_str())]);
        }
    }
}
