//! The agent-manager's OpenTelemetry instruments. They report to the global
//! meter provider, which is a no-op unless OTLP export is configured.

use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Meter, ObservableGauge};
use shepherd_platform::telemetry::{KeyValue, global};

fn meter() -> Meter {
    global::meter("shepherd.agent_manager")
}

static RESTARTS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("shepherd.agent.restarts")
        .with_description("Agent process restarts (every launch after the first), by agent")
        .build()
});

pub fn agent_restarted(agent: uuid::Uuid, name: &str) {
    RESTARTS.add(
        1,
        &[
            KeyValue::new("agent_id", agent.to_string()),
            KeyValue::new("agent_name", name.to_owned()),
        ],
    );
}

/// Registers the active-sessions gauge; keep the instrument alive.
pub fn sessions_gauge(count: impl Fn() -> u64 + Send + Sync + 'static) -> ObservableGauge<u64> {
    meter()
        .u64_observable_gauge("shepherd.sessions.active")
        .with_description("Agent sessions open now")
        .with_callback(move |observer| observer.observe(count(), &[]))
        .build()
}
