//! Ingest: from request bytes to validated events (`parse`), with the JSON and time helpers they need.

pub mod json;
pub mod parse;
pub mod time;

pub use parse::{parse_batch, Limits, ParsedBatch, ParsedEvent};
