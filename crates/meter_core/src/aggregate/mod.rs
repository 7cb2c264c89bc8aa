//! Aggregation: meter definitions, exact quantities, per-bucket states and their merge, and the
//! in-memory fold that turns a commit's events into one delta per bucket.

pub mod extract;
pub mod fold;
pub mod meter;
pub mod quantity;
pub mod registry;
pub mod resolution;
pub mod state;

pub use meter::{Aggregation, Meter, MeterSpec, StoredMeter};
pub use quantity::Quantity;
