//! The maintenance thread: applies retention to retained events (`retention`) and rolls aggregates up
//! (`rollup`), every `Config::maintenance_interval` and when asked (`Engine::maintain`, for tests and `meter
//! maintain`).
//!
//! Work goes in bounded steps (`Config::maintenance_step_keys` keys each): a step that rolls up holds the fold
//! flushes back only for its own duration, and a drop is one range delete. The writer is never involved, so ingest
//! does not wait for maintenance. A run ends when nothing is left to do (or when the engine closes); a failed
//! write stops the engine as any failed write does.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use super::retention::{Dropped, HeldBack, Retention};
use super::rollup::{self, Step, Targets};
use super::{Config, Shared};
use crate::aggregate::resolution::Resolution;
use crate::error::Result;
use crate::ingest::time::now_micros;
use crate::storage::Store;

pub(crate) struct Run {
    /// Overrides the clock (tests).
    pub now_us: Option<i64>,
    /// At most this many steps (tests: stop half-way), else until everything is done.
    pub max_steps: Option<usize>,
    pub reply: Sender<Result<MaintenanceReport>>,
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceReport {
    /// The clock the run used (µs).
    pub now_us: i64,
    /// Tenants whose retained events were dropped, through which commit.
    pub dropped: Vec<Dropped>,
    /// Tenants whose events past retention are kept because the export has not written them.
    pub held_back: Vec<HeldBack>,
    /// Meters that had a roll-up step.
    pub meters_rolled_up: u64,
    /// Aggregate keys merged into the first minute of their hour or day (and deleted).
    pub keys_merged: u64,
    pub steps: u64,
    /// False when the run stopped before everything was done (`max_steps`, or the engine closing).
    pub done: bool,
}

/// Maintenance figures for `Engine::stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MaintenanceStats {
    /// Runs since the engine opened.
    pub runs: u64,
    /// Per tenant: retained events past retention kept because the export has not written them.
    pub held_back: Vec<HeldBack>,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
}

/// Counts the steps of a run against its allowance and the engine's closing.
pub(crate) struct Steps<'a> {
    left: Option<usize>,
    pub taken: u64,
    closing: &'a AtomicBool,
}

impl Steps<'_> {
    /// Whether one more step may be taken (and counts it).
    pub fn take(&mut self) -> bool {
        if self.closing.load(Ordering::Acquire) || self.left == Some(0) {
            return false;
        }
        if let Some(left) = &mut self.left {
            *left -= 1;
        }
        self.taken += 1;
        true
    }

    /// Returns a step that found nothing to do: looking is not work.
    pub fn give_back(&mut self) {
        self.taken -= 1;
        if let Some(left) = &mut self.left {
            *left += 1;
        }
    }
}

pub(crate) struct Maintenance {
    pub store: Arc<dyn Store>,
    pub shared: Arc<Shared>,
    pub config: Config,
    pub closing: Arc<AtomicBool>,
    pub retention: Retention,
    /// Per (tenant, meter id): the resolution record as this thread last wrote it.
    pub records: HashMap<(String, u32), Resolution>,
}

impl Maintenance {
    pub fn run(mut self, rx: Receiver<Run>) {
        loop {
            let run = match self.config.maintenance_interval {
                Some(every) => match rx.recv_timeout(every) {
                    Ok(run) => Some(run),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(run) => Some(run),
                    Err(_) => return,
                },
            };
            match run {
                Some(Run { now_us, max_steps, reply }) => {
                    let _ = reply.send(self.once(now_us.unwrap_or_else(now_micros), max_steps));
                }
                None => {
                    let _ = self.once(now_micros(), None);
                }
            }
        }
    }

    fn once(&mut self, now_us: i64, max_steps: Option<usize>) -> Result<MaintenanceReport> {
        let result = self.apply(now_us, max_steps);
        let mut stats = self.shared.maintenance.lock().unwrap();
        stats.runs += 1;
        stats.held_back = self.retention.held_back();
        stats.last_error = result.as_ref().err().map(|e| e.to_string());
        result
    }

    fn apply(&mut self, now_us: i64, max_steps: Option<usize>) -> Result<MaintenanceReport> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        let store = &*self.store;
        let mut steps = Steps { left: max_steps, taken: 0, closing: &self.closing };
        let mut report = MaintenanceReport { now_us, ..MaintenanceReport::default() };
        let step_keys = self.config.maintenance_step_keys;
        let cutoff = now_us.saturating_sub(self.config.retention_us);
        let mut done = self.retention.run(store, &self.shared, cutoff, step_keys, &mut steps, &mut report)?;
        report.held_back = self.retention.held_back();

        let targets = Targets::at(now_us, self.config.minute_aggregates_us, self.config.hour_aggregates_us);
        let registry = self.shared.registry.read().unwrap().clone();
        let mut meters: Vec<_> = registry.all().collect();
        meters.sort_by(|a, b| (a.0, a.1.id()).cmp(&(b.0, b.1.id())));
        let live: HashSet<(&str, u32)> = meters.iter().map(|(t, m)| (*t, m.id())).collect();
        self.records.retain(|(tenant, id), _| live.contains(&(tenant.as_str(), *id)));
        for (tenant, meter) in meters {
            let mut worked = false;
            // Taken out while the meter is worked on; lost with an error, then read again from the store next time.
            let mut known = self.records.remove(&(tenant.to_owned(), meter.id()));
            loop {
                if !done || !steps.take() {
                    done = false;
                    break;
                }
                match rollup::step(store, &self.shared, tenant, meter, &targets, step_keys, &mut known)? {
                    Step::Idle => {
                        steps.give_back();
                        break;
                    }
                    Step::Worked { merged } => {
                        worked = true;
                        report.keys_merged += merged;
                    }
                }
            }
            if let Some(record) = known {
                self.records.insert((tenant.to_owned(), meter.id()), record);
            }
            report.meters_rolled_up += worked as u64;
            if !done {
                break;
            }
        }
        report.steps = steps.taken;
        report.done = done;
        Ok(report)
    }
}
