//! meter_core: the metering engine behind `meter`.
//!
//! A batch of CloudEvents goes `ingest` (parse, validate) -> `dedup` (exactly once) -> `aggregate`
//! (fold into per-minute buckets) -> `storage` (one atomic, synced RocksDB write per group commit).
//! `query` rolls buckets up into windows. `engine` ties them together around a single writer thread.
//! The PyO3 binding lives in `py/`, behind the `python` feature; nothing else names a PyO3 type.

pub mod aggregate;
pub mod dedup;
pub mod engine;
pub mod error;
pub mod ingest;
pub mod query;
pub mod storage;

#[cfg(feature = "python")]
mod py;

pub use engine::{Change, Config, Drained, Durability, Engine, IngestReport};
pub use error::{Error, Result};
