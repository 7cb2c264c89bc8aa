//! `meter._core`: the PyO3 binding. Every call that does real work releases the GIL through
//! [`detached`]; errors cross to Python once, in `error.rs`.

mod engine;
mod error;

use pyo3::prelude::*;

use crate::error::Result;

/// Runs `f` without the GIL and converts its error to the matching `meter.exceptions` class.
pub(crate) fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T> + Send) -> PyResult<T> {
    py.detach(f).map_err(|e| error::to_py(py, e))
}

/// Parses a batch and counts its valid events, storing nothing: the parser's ceiling for benchmarks.
#[pyfunction]
fn parse_only(py: Python<'_>, body: &[u8]) -> PyResult<usize> {
    let body = body.to_vec();
    detached(py, move || crate::ingest::parse::parse_only(body, &crate::ingest::Limits::default()))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::PyEngine>()?;
    m.add_function(wrap_pyfunction!(parse_only, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
