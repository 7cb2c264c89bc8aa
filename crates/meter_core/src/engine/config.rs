//! Engine settings, with the defaults the product promises.

use crate::aggregate::meter::{MeterLimits, MeterSpec};
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
    pub limits: Limits,
    /// Default per meter: distinct dimension combinations one customer may have in one minute (default 1,000).
    /// A meter's `limits` override it; see `engine::cardinality`.
    pub max_combinations_per_minute: u32,
    /// Default per meter: distinct customers one minute may have (default 100,000).
    pub max_customers_per_minute: u32,
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
            limits: Limits::default(),
            max_combinations_per_minute: 1_000,
            max_customers_per_minute: 100_000,
        }
    }
}

impl Config {
    /// How long a dedup marker is kept: the window, plus the future allowance, so that no marker is
    /// dropped while its event's time could still be accepted.
    pub fn dedup_retention_us(&self) -> i64 {
        self.dedup_window_us + self.max_future_us
    }

    /// The engine-wide cardinality limits, which a meter's own `limits` override field by field.
    pub fn default_limits(&self) -> MeterLimits {
        MeterLimits {
            max_combinations_per_minute: Some(self.max_combinations_per_minute),
            max_customers_per_minute: Some(self.max_customers_per_minute),
        }
    }

    /// The limits that apply to `meter`: its own, each absent one taken from the engine's.
    pub fn limits_of(&self, meter: &MeterSpec) -> MeterLimits {
        meter.limits.unwrap_or_default().or(self.default_limits())
    }
}
