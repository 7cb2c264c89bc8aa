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
    /// A write failed earlier; the engine acknowledges nothing until it is reopened (fail-stop).
    #[error("the store has failed and accepts no writes until it is reopened: {reason}")]
    StoreFailed { reason: String },
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
            Error::Closed => "closed",
            Error::Storage(_) => "storage_error",
            Error::Overflow(_) => "overflow",
            Error::Corrupt(_) => "corrupt",
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
    /// A meter listening to this event type could not read its value or dimensions.
    InvalidValue,
    /// Same `(source, id)` as an earlier event, different payload: the first one stands.
    Conflict,
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
            IssueCode::InvalidValue => "invalid_value",
            IssueCode::Conflict => "conflict",
        }
    }
}

impl fmt::Display for IssueCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
