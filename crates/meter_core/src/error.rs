//! The engine's one error type, mapped to Python exactly once (in `py/error.rs`).
//!
//! Errors about a whole request (bad JSON, too many events, a bad query) are `Error`s. Problems with a
//! single event in a batch are *not* errors: they are `EventIssue`s in the ingest report, so that one
//! bad event never sinks its neighbours (unless the caller asked for an atomic batch).

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed as a whole; nothing was applied.
    #[error("{message}")]
    InvalidRequest { code: &'static str, message: String },
    /// An atomic batch had at least one event that could not be applied; nothing was applied.
    #[error("the atomic batch was rejected: {} event(s) could not be applied", issues.len())]
    BatchRejected { issues: Vec<EventIssue> },
    #[error("{what} '{name}' was not found")]
    NotFound { what: &'static str, name: String },
    #[error("{what} '{name}' already exists")]
    AlreadyExists { what: &'static str, name: String },
    /// The ingest queue is full: the caller should retry later.
    #[error("the ingest queue is full ({capacity} batches waiting); retry after a short pause")]
    Overloaded { capacity: usize },
    /// A write failed earlier; the engine acknowledges nothing until it is reopened (fail-stop). The request was
    /// refused before anything of it was written: it was definitely not applied.
    #[error("the store has failed and accepts no writes until it is reopened: {reason}")]
    StoreFailed { reason: String },
    /// The write that carried this request failed (a WAL write or its fsync): its records may have reached the log,
    /// so it may be applied after a restart, or not. The engine then fails stop like `StoreFailed`. Retrying with
    /// the same event ids is safe: the retry is a duplicate (it was applied) or accepted (it was not).
    #[error(
        "the write of this request failed and it may or may not have been applied; the store accepts no writes \
         until it is reopened, then retry with the same event ids (the retry is a duplicate or accepted): {reason}"
    )]
    OutcomeUnknown { reason: String },
    #[error("the engine is closed")]
    Closed,
    #[error("storage error: {0}")]
    Storage(String),
    #[error("arithmetic overflow: {0}")]
    Overflow(String),
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest { code, message: message.into() }
    }

    /// The machine-readable code that travels to Python and HTTP clients.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidRequest { code, .. } => code,
            Error::BatchRejected { .. } => "batch_rejected",
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Overloaded { .. } => "overloaded",
            Error::StoreFailed { .. } => "store_failed",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::Closed => "closed",
            Error::Storage(_) => "storage_error",
            Error::Overflow(_) => "overflow",
            Error::Corrupt(_) => "corrupt",
        }
    }

    /// Why the store failed, as the root cause alone: the reason a fail-stop keeps and puts after its own prefix.
    /// A failure error passed in gives back its reason unchanged, so wrapping one failure into another never
    /// repeats a prefix ("the store has failed ...: the store has failed ...").
    pub fn failure_reason(&self) -> String {
        match self {
            Error::StoreFailed { reason } | Error::OutcomeUnknown { reason } => reason.clone(),
            other => other.to_string(),
        }
    }
}

/// `bail!(code, "message {}", x)` returns an `Error::InvalidRequest`.
#[macro_export]
macro_rules! bail {
    ($code:literal, $($arg:tt)+) => {
        return Err($crate::error::Error::invalid($code, format!($($arg)+)))
    };
}

/// `ensure!(cond, code, "message")` bails unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $code:literal, $($arg:tt)+) => {
        if !$cond {
            $crate::bail!($code, $($arg)+);
        }
    };
}

/// Why one event of a batch was not counted (or, for `conflict`, was not counted again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventIssue {
    pub index: usize,
    /// The event's id when it could be read, so that clients can match the issue to their event.
    pub id: Option<String>,
    pub code: IssueCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueCode {
    /// The event is not a JSON object, or repeats a key.
    InvalidEvent,
    MissingField,
    InvalidField,
    InvalidTime,
    InvalidData,
    TooOld,
    TooFarInFuture,
    /// Same `(source, id)` as an earlier event, different payload: the first one stands.
    Conflict,
    /// Counting the event would take one of its meters past a cardinality limit (distinct dimension combinations
    /// of a customer, or distinct customers, in one minute); see `engine::cardinality`.
    CardinalityLimit,
    /// A correction names an event that is not retained (never accepted, or dropped by retention).
    NotFound,
    /// A correction amends an event that was cancelled.
    Cancelled,
    /// A correction would restate usage whose events are partly past retention.
    PastRetention,
    /// A correction names the same event twice.
    DuplicateItem,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::InvalidEvent => "invalid_event",
            IssueCode::MissingField => "missing_field",
            IssueCode::InvalidField => "invalid_field",
            IssueCode::InvalidTime => "invalid_time",
            IssueCode::InvalidData => "invalid_data",
            IssueCode::TooOld => "too_old",
            IssueCode::TooFarInFuture => "too_far_in_future",
            IssueCode::Conflict => "conflict",
            IssueCode::CardinalityLimit => "cardinality_limit",
            IssueCode::NotFound => "not_found",
            IssueCode::Cancelled => "cancelled",
            IssueCode::PastRetention => "past_retention",
            IssueCode::DuplicateItem => "duplicate_item",
        }
    }
}

impl fmt::Display for IssueCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A meter that could not read an accepted event: the event was accepted and counted by every other meter of its
/// type, and skipped whole by this one (never half-counted). Reported per event in the ingest report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventWarning {
    pub index: usize,
    pub id: String,
    /// The slug of the meter that skipped the event.
    pub meter: String,
    pub code: SkipCode,
    pub message: String,
}

/// Why a meter skipped an event. Decided by one function (`aggregate::extract::extract`) wherever an event meets a
/// meter: at ingest, at replay after a crash, when a new meter is backfilled, and in the skipped-events query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipCode {
    /// The value property is absent or null.
    ValueMissing,
    /// The value is not an exact decimal the meter can count (not a number or decimal string, more than 9
    /// decimal places, out of range), or, for `unique_count`, an object, an array or longer than 255 bytes.
    ValueInvalid,
    /// A `group_by` property is an object or an array, or longer than 255 bytes.
    DimensionInvalid,
    /// A property a filter tests is an object or an array, or longer than 255 bytes.
    FilterInvalid,
}

impl SkipCode {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipCode::ValueMissing => "value_missing",
            SkipCode::ValueInvalid => "value_invalid",
            SkipCode::DimensionInvalid => "dimension_invalid",
            SkipCode::FilterInvalid => "filter_invalid",
        }
    }
}

impl fmt::Display for SkipCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_wrapped_again_says_its_prefix_once() {
        let root = Error::Storage("IO error: No space left on device".into());
        let failed = Error::StoreFailed { reason: root.failure_reason() };
        let unknown = Error::OutcomeUnknown { reason: failed.failure_reason() };
        let again = Error::StoreFailed { reason: unknown.failure_reason() };
        for e in [&failed, &unknown, &again] {
            let text = e.to_string();
            assert_eq!(
                text.matches("the store has failed").count() + text.matches("the write of this").count(),
                1,
                "{text}"
            );
            assert_eq!(text.matches("storage error").count(), 1, "{text}");
            assert!(text.ends_with("storage error: IO error: No space left on device"), "{text}");
        }
    }
}
