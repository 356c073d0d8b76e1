//! Telemetry set-up, shared with agents: see `shepherd-telemetry`.

pub use shepherd_telemetry::{KeyValue, Telemetry, global, init, otlp_endpoint, propagation};
