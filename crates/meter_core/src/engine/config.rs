//! Engine settings, with the defaults the product promises.

use crate::aggregate::meter::{MeterLimits, MeterSpec};
use crate::ingest::Limits;
use crate::storage::rocks::StoreOptions;

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
    /// Default per meter: distinct dimension combinations one customer may have in one minute (default 1,000).
    /// A meter's `limits` override it; see `engine::cardinality`.
    pub max_combinations_per_minute: u32,
    /// Default per meter: distinct customers one minute may have (default 100,000).
    pub max_customers_per_minute: u32,
    /// How long retained events are kept after they were received, at least: then dropped, once the export has
    /// written them (default: the back-dating window plus 31 days, the longest billing cycle still open).
    pub retention_us: i64,
    /// How long aggregates are kept per minute (by event time) before they are rolled up to hours (default: the
    /// back-dating window plus 5 days, so that no event can still land in a rolled-up range).
    pub minute_aggregates_us: i64,
    /// How long aggregates are kept per hour before they are rolled up to days (default 400 days).
    pub hour_aggregates_us: i64,
    /// How often the maintenance thread applies retention and roll-ups; `None`: only when asked
    /// (`Engine::maintain`).
    pub maintenance_interval: Option<std::time::Duration>,
    /// The work of one maintenance step (keys read or written); a step holds back fold flushes while it rolls up.
    pub maintenance_step_keys: usize,
    /// At most this many (tenant, meter, customer) keys wait for `Engine::changes` (default 1 M, about 200 MB at most);
    /// past it they are dropped and the next drain says `overflowed`.
    pub max_pending_changes: usize,
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
            max_combinations_per_minute: 1_000,
            max_customers_per_minute: 100_000,
            retention_us: (35 + 31) * DAY_US,
            minute_aggregates_us: (35 + 5) * DAY_US,
            hour_aggregates_us: 400 * DAY_US,
            maintenance_interval: Some(std::time::Duration::from_secs(60)),
            maintenance_step_keys: 1024,
            max_pending_changes: 1_000_000,
        }
    }
}

impl Config {
    /// How the engine opens RocksDB: with this cache, and the aggregates' merge operator (`aggregate::state`), which
    /// storage applies without knowing their format. Whatever opens a `RocksStore` for the engine uses it.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions { cache_bytes: self.cache_bytes, merge: Some(crate::aggregate::state::MERGE_OPERATOR) }
    }

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

    /// The retention and roll-up settings derived from the back-dating window, for callers that only set that:
    /// retained events 31 days longer (a monthly cycle), minute aggregates 5 days longer, hours at least 400 days.
    pub fn with_backdate_defaults(mut self) -> Self {
        self.retention_us = self.backdate_window_us + 31 * DAY_US;
        self.minute_aggregates_us = self.backdate_window_us + 5 * DAY_US;
        self.hour_aggregates_us = self.hour_aggregates_us.max(self.minute_aggregates_us);
        self
    }

    /// Refuses settings under which a roll-up could meet an event still being accepted.
    pub fn check_maintenance(&self) -> crate::error::Result<()> {
        crate::ensure!(self.retention_us >= 0, "invalid_config", "retention must not be negative");
        crate::ensure!(
            self.minute_aggregates_us >= self.backdate_window_us,
            "invalid_config",
            "minute aggregates must be kept at least as long as the back-dating window ({} days), or an accepted \
             event could land in a range already rolled up to hours; got {} days",
            self.backdate_window_us / DAY_US,
            self.minute_aggregates_us as f64 / DAY_US as f64
        );
        crate::ensure!(
            self.hour_aggregates_us >= self.minute_aggregates_us,
            "invalid_config",
            "hour aggregates must be kept at least as long as minute aggregates ({} days); got {} days",
            self.minute_aggregates_us as f64 / DAY_US as f64,
            self.hour_aggregates_us as f64 / DAY_US as f64
        );
        crate::ensure!(self.maintenance_step_keys > 0, "invalid_config", "a maintenance step must do some work");
        Ok(())
    }
}
