//! Engine settings, with the defaults the product promises.

use crate::ingest::Limits;

const DAY_US: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the WAL before acknowledging: survives power loss.
    Fsync,
    /// Write the WAL to the OS before acknowledging: survives a process crash, not power loss.
    Buffered,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Durability> {
        match s {
            "fsync" => Some(Durability::Fsync),
            "buffered" => Some(Durability::Buffered),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub durability: Durability,
    /// How long an identity is remembered after it was received (default 35 days).
    pub dedup_window_us: i64,
    /// How far back an event's time may lie (default 35 days).
    pub backdate_window_us: i64,
    /// How far ahead of the clock an event's time may lie (default 5 minutes).
    pub max_future_us: i64,
    /// Requests waiting for the writer before callers get `overloaded`.
    pub queue_capacity: usize,
    /// Events folded into one commit at most (group commit across callers).
    pub max_commit_events: usize,
    /// How long aggregates may wait in memory before a fold thread flushes them (default 1 s); also
    /// bounds the replay after a crash.
    pub flush_interval: std::time::Duration,
    /// RocksDB's block cache: data blocks and every table's index and filter blocks, the dedup filters among
    /// them (about 1 byte per identity in the window keeps them all in memory). Bounds the engine's memory
    /// with the memtable budget (`storage::rocks::MEMTABLE_BUDGET`) and `recent_dedup_capacity`.
    pub cache_bytes: usize,
    /// How long recently received identities stay in memory for quick retries (default 60 s).
    pub recent_dedup_us: i64,
    /// At most this many recent identities in memory (default 1 M, about 60 MB).
    pub recent_dedup_capacity: usize,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            durability: Durability::Fsync,
            dedup_window_us: 35 * DAY_US,
            backdate_window_us: 35 * DAY_US,
            max_future_us: 5 * 60_000_000,
            queue_capacity: 64,
            max_commit_events: 20_000,
            flush_interval: std::time::Duration::from_secs(1),
            cache_bytes: 512 << 20,
            recent_dedup_us: 60_000_000,
            recent_dedup_capacity: 1 << 20,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// How long a dedup marker is kept: the window, plus the future allowance, so that no marker is
    /// dropped while its event's time could still be accepted.
    pub fn dedup_retention_us(&self) -> i64 {
        self.dedup_window_us + self.max_future_us
    }
}
