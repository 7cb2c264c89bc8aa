//! Ingest: from request bytes to validated events (`parse`), with the JSON and time helpers they need, and the cluster
//! edge's split of a batch by partition (`split`).

pub mod json;
pub mod parse;
pub mod split;
pub mod time;

pub use parse::{parse_batch, Limits, ParsedBatch, ParsedEvent};
