//! Telemetry set-up, shared with agents: see `shepherd-telemetry`.

pub use shepherd_telemetry::{Telemetry, init, otlp_endpoint, propagation};
