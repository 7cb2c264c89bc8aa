//! `meter._core.Engine`: the engine behind `meter.Engine`. Inputs and outputs are bytes of JSON (parsed
//! by msgspec on the Python side) or Arrow; no per-event Python object is ever built.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_arrow::{PyRecordBatchReader, PyTable};

use super::detached;
use crate::aggregate::meter::MeterSpec;
use crate::engine::{Config, CorrectionRequest, Durability, Engine, LogEntry, LogOp};
use crate::error::Error;
use crate::query::{UsageQuery, WindowSize};

/// A log entry as Python passes it: `(seq, tenant, received_us, op, body, atomic, indexes)`.
type PyLogEntry = (u64, String, i64, String, Vec<u8>, bool, Vec<u32>);

#[pyclass(frozen, name = "Engine", module = "meter._core")]
pub struct PyEngine {
    inner: Engine,
}

fn json_bytes<'py, T: serde::Serialize>(py: Python<'py>, value: &T) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &serde_json::to_vec(value).expect("engine types serialize"))
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (path, *, durability = "fsync", dedup_window_s = 35 * 86_400, backdate_window_s = 35 * 86_400,
                        max_future_s = 300, queue_capacity = 64, max_batch_events = 10_000, cache_mb = 512,
                        recent_dedup_s = 60, retention_s = None, minute_aggregates_s = None, hour_aggregates_s = None,
                        maintenance_interval_s = Some(60.0), max_combinations_per_minute = 1_000,
                        max_customers_per_minute = 100_000, max_pending_changes = 1_000_000))]
    #[allow(clippy::too_many_arguments)] // keyword-only options of a Python constructor
    fn new(
        py: Python<'_>,
        path: PathBuf,
        durability: &str,
        dedup_window_s: i64,
        backdate_window_s: i64,
        max_future_s: i64,
        queue_capacity: usize,
        max_batch_events: usize,
        cache_mb: usize,
        recent_dedup_s: i64,
        retention_s: Option<i64>,
        minute_aggregates_s: Option<i64>,
        hour_aggregates_s: Option<i64>,
        maintenance_interval_s: Option<f64>,
        max_combinations_per_minute: u32,
        max_customers_per_minute: u32,
        max_pending_changes: usize,
    ) -> PyResult<Self> {
        let durability = Durability::parse(durability).ok_or_else(|| {
            Error::invalid(
                "invalid_config",
                format!("durability must be \"fsync\" or \"buffered\"; got \"{durability}\""),
            )
        })?;
        let mut config = Config {
            durability,
            dedup_window_us: dedup_window_s * 1_000_000,
            backdate_window_us: backdate_window_s * 1_000_000,
            max_future_us: max_future_s * 1_000_000,
            queue_capacity: queue_capacity.max(1),
            cache_bytes: cache_mb.max(8) << 20,
            recent_dedup_us: recent_dedup_s.max(0) * 1_000_000,
            max_combinations_per_minute,
            max_customers_per_minute,
            max_pending_changes,
            ..Config::default()
        };
        config.limits.max_events = max_batch_events;
        // Unset, retention and roll-ups follow the back-dating window (`Config::with_backdate_defaults`).
        config = config.with_backdate_defaults();
        if let Some(s) = retention_s {
            config.retention_us = s.saturating_mul(1_000_000);
        }
        if let Some(s) = minute_aggregates_s {
            config.minute_aggregates_us = s.saturating_mul(1_000_000);
            config.hour_aggregates_us = config.hour_aggregates_us.max(config.minute_aggregates_us);
        }
        if let Some(s) = hour_aggregates_s {
            config.hour_aggregates_us = s.saturating_mul(1_000_000);
        }
        config.maintenance_interval = match maintenance_interval_s {
            Some(s) if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
            Some(s) => {
                let message = format!("maintenance_interval_s must be above 0 seconds (or None); got {s}");
                return Err(Error::invalid("invalid_config", message).into());
            }
            None => None,
        };
        let inner = detached(py, move || Engine::open(&path, config))?;
        Ok(PyEngine { inner })
    }

    /// Returns the ingest report as JSON bytes.
    #[pyo3(signature = (tenant, body, *, atomic = false, now_us = None))]
    fn ingest<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        body: &[u8],
        atomic: bool,
        now_us: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let body = body.to_vec();
        let report = detached(py, || self.inner.ingest(tenant, body, atomic, now_us))?;
        Ok(PyBytes::new(py, &report.to_json()))
    }

    /// Creates a meter from its JSON spec; returns the stored meter and its backfill as JSON bytes.
    #[pyo3(signature = (tenant, spec_json, *, now_us = None))]
    fn create_meter<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        spec_json: &[u8],
        now_us: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let spec: MeterSpec = serde_json::from_slice(spec_json)
            .map_err(|e| Error::invalid("invalid_meter", format!("the meter definition is invalid: {e}")))?;
        let created = detached(py, || self.inner.create_meter(tenant, spec, now_us))?;
        Ok(json_bytes(py, &created))
    }

    fn get_meter<'py>(&self, py: Python<'py>, tenant: &str, slug: &str) -> PyResult<Bound<'py, PyBytes>> {
        let meter = detached(py, || self.inner.get_meter(tenant, slug))?;
        Ok(json_bytes(py, &meter))
    }

    fn list_meters<'py>(&self, py: Python<'py>, tenant: &str) -> Bound<'py, PyBytes> {
        json_bytes(py, &self.inner.list_meters(tenant))
    }

    fn delete_meter(&self, py: Python<'_>, tenant: &str, slug: &str) -> PyResult<()> {
        detached(py, || self.inner.delete_meter(tenant, slug))
    }

    /// Usage as an Arrow table (exposed through `__arrow_c_stream__`).
    #[pyo3(signature = (tenant, meter, from_us, to_us, *, window_size = None, tz = None, subjects = vec![],
                        group_by = vec![], filters = vec![]))]
    #[allow(clippy::too_many_arguments)] // keyword-only options of a Python method
    fn query(
        &self,
        py: Python<'_>,
        tenant: &str,
        meter: String,
        from_us: i64,
        to_us: i64,
        window_size: Option<&str>,
        tz: Option<String>,
        subjects: Vec<String>,
        group_by: Vec<String>,
        filters: Vec<(String, Vec<String>)>,
    ) -> PyResult<PyTable> {
        let q = usage_query(meter, from_us, to_us, window_size, tz, subjects, group_by, filters)?;
        let result = detached(py, || self.inner.query(tenant, &q))?;
        super::usage_table(py, result)
    }

    /// `query`'s answer before its values are taken, as bytes: what a partition answers in cluster mode, merged by
    /// `meter._core.finish_usage`.
    #[pyo3(signature = (tenant, meter, from_us, to_us, *, window_size = None, tz = None, subjects = vec![],
                        group_by = vec![], filters = vec![]))]
    #[allow(clippy::too_many_arguments)] // keyword-only options of a Python method
    fn query_partial<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        meter: String,
        from_us: i64,
        to_us: i64,
        window_size: Option<&str>,
        tz: Option<String>,
        subjects: Vec<String>,
        group_by: Vec<String>,
        filters: Vec<(String, Vec<String>)>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let q = usage_query(meter, from_us, to_us, window_size, tz, subjects, group_by, filters)?;
        let partial = detached(py, || Ok(self.inner.query_partial(tenant, &q)?.encode()))?;
        Ok(PyBytes::new(py, &partial))
    }

    /// Applies log entries `(seq, tenant, received_us, op, body, atomic, indexes)` in order, `op` one of `ingest`
    /// (body: the events; indexes: theirs in the request), `create_meter` (body: the spec's JSON) and `delete_meter`
    /// (body: the slug); returns each entry's outcome as JSON bytes (`engine::log`).
    fn apply<'py>(
        &self,
        py: Python<'py>,
        log: &str,
        entries: Vec<PyLogEntry>,
        forget_before: u64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let mut parsed = Vec::with_capacity(entries.len());
        for (seq, tenant, received_us, op, body, atomic, indexes) in entries {
            let op =
                match op.as_str() {
                    "ingest" => LogOp::Ingest { body, atomic, indexes },
                    "create_meter" => LogOp::CreateMeter(serde_json::from_slice(&body).map_err(|e| {
                        Error::invalid("invalid_meter", format!("the meter definition is invalid: {e}"))
                    })?),
                    "delete_meter" => LogOp::DeleteMeter(String::from_utf8_lossy(&body).into_owned()),
                    other => {
                        return Err(Error::invalid(
                            "invalid_entry",
                            format!("op must be ingest, create_meter or delete_meter; got \"{other}\""),
                        )
                        .into())
                    }
                };
            parsed.push(LogEntry { seq, tenant, received_us, op });
        }
        let outcomes = detached(py, || self.inner.apply(log, parsed, forget_before))?;
        Ok(outcomes.iter().map(|o| PyBytes::new(py, o)).collect())
    }

    /// The position of the last entry of `log` applied, 0 when none.
    fn log_position(&self, py: Python<'_>, log: &str) -> PyResult<u64> {
        detached(py, || self.inner.log_position(log))
    }

    /// The stored outcome of the entry of `log` at `seq`, None when not applied or no longer kept.
    fn log_outcome<'py>(&self, py: Python<'py>, log: &str, seq: u64) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let outcome = detached(py, || self.inner.log_outcome(log, seq))?;
        Ok(outcome.map(|o| PyBytes::new(py, &o)))
    }

    /// Writes a consistent copy of the store to `path` (which must not exist).
    fn checkpoint(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        detached(py, || self.inner.checkpoint(&path))
    }

    /// The tenant's retained events after commit `after_seq` as an Arrow table, and the last commit read.
    fn retained_events(
        &self,
        py: Python<'_>,
        tenant: &str,
        after_seq: u64,
        max_events: usize,
    ) -> PyResult<(PyTable, u64)> {
        let (batch, last_seq) = detached(py, || self.inner.retained_events(tenant, after_seq, max_events))?;
        let schema = batch.schema();
        Ok((PyTable::try_new(vec![batch], schema)?, last_seq))
    }

    /// Cancels or amends events (`request`: JSON bytes of a `CorrectionRequest`); returns the report as JSON bytes.
    #[pyo3(signature = (tenant, request, *, now_us = None))]
    fn correct<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        request: &[u8],
        now_us: Option<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let request: CorrectionRequest = serde_json::from_slice(request)
            .map_err(|e| Error::invalid("invalid_correction", format!("the correction request is invalid: {e}")))?;
        let report = detached(py, || self.inner.correct(tenant, request, now_us))?;
        Ok(json_bytes(py, &report))
    }

    /// The corrections of the event `(source, id)`, oldest first, as JSON bytes.
    fn event_history<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        source: &str,
        id: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let history = detached(py, || self.inner.event_history(tenant, source, id))?;
        Ok(json_bytes(py, &history))
    }

    /// The tenant's corrections made by commits `(after_seq, through_seq]`, as JSON bytes.
    fn corrections<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        after_seq: u64,
        through_seq: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let made = detached(py, || self.inner.corrections(tenant, after_seq, through_seq))?;
        Ok(json_bytes(py, &made))
    }

    /// The retained event of identity `(source, id)` that counts now (zero or one row) and its receive time (µs).
    fn find_event(&self, py: Python<'_>, tenant: &str, source: &str, id: &str) -> PyResult<(PyTable, Option<i64>)> {
        let (batch, received_us) = detached(py, || self.inner.find_event(tenant, source, id))?;
        let schema = batch.schema();
        Ok((PyTable::try_new(vec![batch], schema)?, received_us))
    }

    /// Drains which (tenant, meter, customer) received events since the previous call, as an Arrow table, and whether
    /// some were dropped (`Engine::changes`).
    fn changes(&self, py: Python<'_>) -> PyResult<(PyTable, bool)> {
        let (batch, overflowed) = detached(py, || {
            let drained = self.inner.changes();
            let batch =
                drained.to_record_batch().map_err(|e| Error::Storage(format!("building the Arrow changes: {e}")))?;
            Ok::<_, Error>((batch, drained.overflowed))
        })?;
        let schema = batch.schema();
        Ok((PyTable::try_new(vec![batch], schema)?, overflowed))
    }

    /// Per UTC day with usage of a meter: (the day's start in µs, events counted in it).
    fn day_counts(&self, py: Python<'_>, tenant: &str, meter: &str) -> PyResult<Vec<(i64, u64)>> {
        detached(py, || self.inner.day_counts(tenant, meter))
    }

    /// A meter's rows per customer, minute and dimension combination in `[from_us, to_us)`, as an Arrow
    /// stream (`__arrow_c_stream__`) produced on a thread of its own.
    #[pyo3(signature = (tenant, meter, from_us, to_us, *, batch_rows = 1 << 20))]
    fn minutes(
        &self,
        py: Python<'_>,
        tenant: &str,
        meter: &str,
        from_us: i64,
        to_us: i64,
        batch_rows: usize,
    ) -> PyResult<PyRecordBatchReader> {
        let stream = detached(py, || self.inner.minutes(tenant, meter, from_us, to_us, batch_rows))?;
        Ok(PyRecordBatchReader::new(Box::new(stream)))
    }

    /// The retained events of `[from_us, to_us)` that the meter could not read, as JSON bytes (`SkippedPage`).
    #[pyo3(signature = (tenant, meter, from_us, to_us, *, after = None, limit = 100,
                        max_scan = crate::query::skipped::DEFAULT_MAX_SCAN))]
    #[allow(clippy::too_many_arguments)] // keyword-only options of a Python method
    fn skipped<'py>(
        &self,
        py: Python<'py>,
        tenant: &str,
        meter: &str,
        from_us: i64,
        to_us: i64,
        after: Option<u64>,
        limit: usize,
        max_scan: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let page = detached(py, || self.inner.skipped(tenant, meter, from_us, to_us, after, limit, max_scan))?;
        Ok(json_bytes(py, &page))
    }

    /// Records that the export has written the tenant's retained events through commit `seq` (see
    /// `Engine::events_exported`).
    fn events_exported(&self, py: Python<'_>, tenant: &str, seq: u64) -> PyResult<()> {
        detached(py, || self.inner.events_exported(tenant, seq))
    }

    /// Applies retention and roll-ups now; returns what it did as JSON bytes (`MaintenanceReport`).
    #[pyo3(signature = (*, now_us = None, max_steps = None))]
    fn maintain<'py>(
        &self,
        py: Python<'py>,
        now_us: Option<i64>,
        max_steps: Option<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let report = detached(py, || self.inner.maintain(now_us, max_steps))?;
        Ok(json_bytes(py, &report))
    }

    /// `None` when healthy, else why the engine stopped acknowledging writes.
    fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    fn stats<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        json_bytes(py, &self.inner.stats())
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }
}

#[allow(clippy::too_many_arguments)] // one query's parameters
fn usage_query(
    meter: String,
    from_us: i64,
    to_us: i64,
    window_size: Option<&str>,
    tz: Option<String>,
    subjects: Vec<String>,
    group_by: Vec<String>,
    filters: Vec<(String, Vec<String>)>,
) -> PyResult<UsageQuery> {
    let window = match window_size {
        None => None,
        Some(w) => Some(WindowSize::parse(w).ok_or_else(|| {
            Error::invalid("invalid_query", format!("window_size must be one of minute, hour, day, month; got \"{w}\""))
        })?),
    };
    Ok(UsageQuery { meter, from_us, to_us, window, tz, subjects, group_by, filters })
}
