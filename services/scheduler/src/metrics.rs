//! The scheduler's OpenTelemetry instruments. They report to the global
//! meter provider, which is a no-op unless OTLP export is configured.

use std::sync::LazyLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use shepherd_platform::telemetry::{KeyValue, global};

fn meter() -> Meter {
    global::meter("shepherd.scheduler")
}

static RUNNER_STARTS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("shepherd.runner.starts")
        .with_description("Runners started, by workflow")
        .build()
});

static TASKS_FINISHED: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("shepherd.tasks.finished")
        .with_description("Task attempts that ended, by outcome (succeeded, failed, lost)")
        .build()
});

static DISPATCH_DURATION: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    meter()
        .f64_histogram("shepherd.dispatch.duration")
        .with_unit("s")
        .with_description("Dispatch round trips, per task (DispatchTasks calls)")
        .build()
});

static TASK_DURATION: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    meter()
        .f64_histogram("shepherd.task.duration")
        .with_unit("s")
        .with_description("From dispatch to the task's outcome")
        .build()
});

static LEASE_CHANGES: LazyLock<Counter<u64>> = LazyLock::new(|| {
    meter()
        .u64_counter("shepherd.runner.lease_changes")
        .with_description(
            "Runner leases this replica acquired, lost to another replica, or released",
        )
        .build()
});

static STREAM_LAG: LazyLock<Gauge<u64>> = LazyLock::new(|| {
    meter()
        .u64_gauge("shepherd.event_stream.lag")
        .with_description("Latest agent event sequence minus the last one handled")
        .build()
});

static OLDEST_IN_FLIGHT: LazyLock<Gauge<f64>> = LazyLock::new(|| {
    meter()
        .f64_gauge("shepherd.task.oldest_in_flight_age")
        .with_unit("s")
        .with_description("Age of each workflow's oldest task in flight (0 when none)")
        .build()
});

/// Records the age of a workflow's oldest task in flight (0: none).
pub(crate) fn oldest_in_flight(workflow: uuid::Uuid, age: std::time::Duration) {
    OLDEST_IN_FLIGHT.record(
        age.as_secs_f64(),
        &[KeyValue::new("workflow_id", workflow.to_string())],
    );
}

pub(crate) fn runner_started(workflow: uuid::Uuid, agent: uuid::Uuid) {
    RUNNER_STARTS.add(
        1,
        &[
            KeyValue::new("workflow_id", workflow.to_string()),
            KeyValue::new("agent_id", agent.to_string()),
        ],
    );
}

pub(crate) fn task_finished(outcome: &'static str, duration_secs: Option<f64>) {
    TASKS_FINISHED.add(1, &[KeyValue::new("outcome", outcome)]);
    if let Some(duration) = duration_secs {
        TASK_DURATION.record(duration, &[KeyValue::new("outcome", outcome)]);
    }
}

pub(crate) fn dispatched(duration: std::time::Duration, ok: bool) {
    DISPATCH_DURATION.record(duration.as_secs_f64(), &[KeyValue::new("ok", ok)]);
}

/// `change`: "acquired", "lost" or "released".
pub(crate) fn lease_changed(change: &'static str) {
    LEASE_CHANGES.add(1, &[KeyValue::new("change", change)]);
}

pub(crate) fn stream_lag(lag: u64) {
    STREAM_LAG.record(lag, &[]);
}

/// Registers the runners-by-state gauge, read from `count` at each export.
/// Keep the returned instrument alive for as long as it should report.
pub(crate) fn runners_gauge(
    count: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
) -> opentelemetry::metrics::ObservableGauge<u64> {
    meter()
        .u64_observable_gauge("shepherd.runners")
        .with_description("Runners by state")
        .with_callback(move |observer| {
            for (state, n) in count() {
                observer.observe(n, &[KeyValue::new("state", state)]);
            }
        })
        .build()
}
