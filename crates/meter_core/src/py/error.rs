//! The one place Rust errors become Python exceptions: each `Error` maps onto a class of
//! `meter.exceptions`, constructed as `Class(message, code, details_json)`. The binding converts with `?` (through
//! `From<Error> for PyErr`) and never by hand.

use pyo3::prelude::*;

use crate::error::Error;

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        // Every caller holds the interpreter already (errors are converted after `detached` gives it back), so
        // attaching costs a counter increment.
        Python::attach(|py| to_py(py, e))
    }
}

fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let class = match &e {
        Error::InvalidRequest { .. } => "InvalidInput",
        Error::BatchRejected { .. } => "BatchRejected",
        Error::NotFound { .. } => "NotFound",
        Error::AlreadyExists { .. } => "AlreadyExists",
        Error::Overloaded { .. } => "Overloaded",
        Error::StoreFailed { .. } => "StoreFailed",
        Error::OutcomeUnknown { .. } => "OutcomeUnknown",
        Error::Closed => "EngineClosed",
        Error::Overflow(_) => "ValueOverflow",
        Error::Storage(_) | Error::Corrupt(_) => "StorageError",
    };
    let details = match &e {
        Error::BatchRejected { issues } => Some(serde_json::to_string(issues).expect("issues serialize")),
        _ => None,
    };
    let made = py
        .import("meter.exceptions")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((e.to_string(), e.code(), details)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(import_failed) => import_failed,
    }
}
