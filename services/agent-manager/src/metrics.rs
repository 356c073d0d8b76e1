//! The agent-manager's OpenTelemetry instruments. They report to the global
//! meter provider, which is a no-op unless OTLP export is configured.

use std::sync::{Arc, LazyLock};

use opentelemetry::metrics::{Counter, Meter, ObservableGauge};
use shepherd_platform::telemetry::{KeyValue, global};

use crate::containment::{Containment, Usage};

fn meter() -> Meter {
    global::meter("shepherd.agent_manager")
}

static RESTARTS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("shepherd.agent.restarts")
        .with_description("Agent process restarts (every launch after the first), by agent")
        .build()
});

pub(crate) fn agent_restarted(agent: uuid::Uuid, name: &str) {
    RESTARTS.add(1, &agent_attributes(agent, name));
}

/// Registers the active-sessions gauge; keep the instrument alive.
pub(crate) fn sessions_gauge(
    count: impl Fn() -> u64 + Send + Sync + 'static,
) -> ObservableGauge<u64> {
    meter()
        .u64_observable_gauge("shepherd.sessions.active")
        .with_description("Agent sessions open now")
        .with_callback(move |observer| observer.observe(count(), &[]))
        .build()
}

static OOM_KILLS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("shepherd.agent.oom_kills")
        .with_description("Agent process trees killed for exceeding their memory limit, by agent")
        .build()
});

pub(crate) fn agent_oom_killed(agent: uuid::Uuid, name: &str) {
    OOM_KILLS.add(1, &agent_attributes(agent, name));
}

fn agent_attributes(agent: uuid::Uuid, name: &str) -> [KeyValue; 2] {
    [
        KeyValue::new("agent_id", agent.to_string()),
        KeyValue::new("agent_name", name.to_owned()),
    ]
}

/// The containment instruments; keep them alive. Usage is read when the
/// exporter collects, per contained agent: memory, CPU time, processes;
/// and the active mode (a gauge of 1 with the mode as attribute).
pub(crate) fn containment_gauges(containment: Arc<Containment>) -> Vec<ObservableGauge<u64>> {
    let mode = containment.mode().as_str();
    let usage = |name: &'static str, description: &'static str, read: fn(&Usage) -> u64| {
        let containment = containment.clone();
        meter()
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                for (agent, agent_name) in containment.running() {
                    if let Some(usage) = containment.usage(agent) {
                        observer.observe(read(&usage), &agent_attributes(agent, &agent_name));
                    }
                }
            })
            .build()
    };
    vec![
        meter()
            .u64_observable_gauge("shepherd.containment.mode")
            .with_description("1, with the active containment mode as the `mode` attribute")
            .with_callback(move |observer| observer.observe(1, &[KeyValue::new("mode", mode)]))
            .build(),
        usage(
            "shepherd.agent.memory",
            "Resident memory of the agent's whole process tree, bytes",
            |usage| usage.memory_bytes,
        ),
        usage(
            "shepherd.agent.cpu_time",
            "CPU time of the agent's whole process tree since launch, milliseconds",
            |usage| usage.cpu_time.map_or(0, |time| time.as_millis() as u64),
        ),
        usage(
            "shepherd.agent.processes",
            "Processes in the agent's tree",
            |usage| u64::from(usage.processes),
        ),
    ]
}
