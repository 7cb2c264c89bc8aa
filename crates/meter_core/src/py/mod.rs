//! `meter._core`: the PyO3 binding. Every call that does real work releases the GIL through
//! [`detached`]; errors cross to Python once, in `error.rs` (`From<Error> for PyErr`, so a `?` converts them).

mod engine;
mod error;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_arrow::{PyArray, PyTable};

use crate::aggregate::meter::MeterSpec;
use crate::error::{Error, Result};

/// Runs `f` without the GIL and converts its error to the matching `meter.exceptions` class.
pub(crate) fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
    py.detach(f).map_err(PyErr::from)
}

/// Parses a batch and counts its valid events, storing nothing: the parser's ceiling for benchmarks.
#[pyfunction]
fn parse_only(py: Python<'_>, body: &[u8]) -> PyResult<usize> {
    let body = body.to_vec();
    detached(py, move || crate::ingest::parse::parse_only(body, &crate::ingest::Limits::default()))
}

/// What a meter (its JSON spec) reads from each event's `data` (a UTF-8 Arrow array): decimal128(38, 9) values,
/// null where the meter does not count the event.
#[pyfunction]
fn event_values(py: Python<'_>, spec_json: &[u8], data: PyArray) -> PyResult<PyArray> {
    let spec: MeterSpec = serde_json::from_slice(spec_json)
        .map_err(|e| Error::invalid("invalid_meter", format!("the meter definition is invalid: {e}")))?;
    let (array, _) = data.into_inner();
    let strings = array.as_string_opt::<i32>().ok_or_else(|| {
        Error::invalid("invalid_request", format!("data must be UTF-8 text; got {}", array.data_type()))
    })?;
    let values = detached(py, || crate::query::event_values::event_values(spec, strings))?;
    Ok(PyArray::from_array_ref(Arc::new(values)))
}

/// The rows of an Arrow table (a usage result) as JSON bytes: an array of objects, keys in column order, decimals
/// as plain decimal strings, timestamps as ISO 8601 (`query::json`).
#[pyfunction]
fn usage_json<'py>(py: Python<'py>, table: PyTable) -> PyResult<Bound<'py, PyBytes>> {
    let (batches, _) = table.into_inner();
    let json = detached(py, || crate::query::json::rows_json(&batches))?;
    Ok(PyBytes::new(py, &json))
}

/// A usage result as an Arrow table.
pub(crate) fn usage_table(py: Python<'_>, result: crate::query::UsageResult) -> PyResult<PyTable> {
    let batch = detached(py, || {
        crate::query::arrow::to_record_batch(&result)
            .map_err(|e| Error::Storage(format!("building the Arrow result: {e}")))
    })?;
    let schema = batch.schema();
    PyTable::try_new(vec![batch], schema)
}

/// Merges the partitions' answers to one usage query (`Engine.query_partial`) and takes the values: the usage table.
#[pyfunction]
fn finish_usage(py: Python<'_>, partials: Vec<Vec<u8>>) -> PyResult<PyTable> {
    let result = detached(py, || {
        let mut merged: Option<crate::query::Partial> = None;
        for bytes in &partials {
            let partial = crate::query::Partial::decode(bytes)?;
            match merged.as_mut() {
                None => merged = Some(partial),
                Some(m) => m.merge(partial)?,
            }
        }
        merged.ok_or_else(|| Error::invalid("invalid_query", "no partition answered"))?.finish()
    })?;
    usage_table(py, result)
}

/// The partition of a tenant's customer (`ingest::split`).
#[pyfunction]
fn partition_of(tenant: &str, customer: &str, partitions: u32) -> u32 {
    crate::ingest::split::partition_of(tenant, customer, partitions)
}

/// A batch parsed and validated as the engine parses it, split by partition (`ingest::split`): the parser's issues
/// as JSON bytes, how many events the request held, and per partition receiving events `(partition, body, indexes)`.
#[pyfunction]
#[pyo3(signature = (tenant, body, received_us, partitions, *, max_events = 10_000))]
#[allow(clippy::type_complexity)] // a plain tuple is what Python unpacks
fn split_batch<'py>(
    py: Python<'py>,
    tenant: &str,
    body: &[u8],
    received_us: i64,
    partitions: u32,
    max_events: usize,
) -> PyResult<(Bound<'py, PyBytes>, usize, Vec<(u32, Bound<'py, PyBytes>, Vec<u32>)>)> {
    let body = body.to_vec();
    let limits = crate::ingest::Limits { max_events, ..Default::default() };
    let split = detached(py, || crate::ingest::split::split_batch(tenant, body, received_us, partitions, &limits))?;
    let issues = serde_json::to_vec(&split.issues).expect("issues serialize");
    let parts = split.parts.into_iter().map(|p| (p.partition, PyBytes::new(py, &p.body), p.indexes)).collect();
    Ok((PyBytes::new(py, &issues), split.total, parts))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_function(wrap_pyfunction!(parse_only, m)?)?;
    m.add_function(wrap_pyfunction!(event_values, m)?)?;
    m.add_function(wrap_pyfunction!(usage_json, m)?)?;
    m.add_function(wrap_pyfunction!(finish_usage, m)?)?;
    m.add_function(wrap_pyfunction!(partition_of, m)?)?;
    m.add_function(wrap_pyfunction!(split_batch, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
