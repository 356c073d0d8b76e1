//! Telemetry for every Shepherd process: the services and agents alike.
//!
//! * Logs: readable by default, JSON with `LOG_FORMAT=json`, level from
//!   `RUST_LOG` (default `info`), on stderr. Inside a span that belongs to a
//!   trace, log lines carry a `trace_id` field.
//! * Traces and metrics: exported over OTLP/gRPC when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (service name from
//!   `OTEL_SERVICE_NAME`, else the default given). Without it nothing is
//!   exported and no exporter exists.
//! * Propagation: W3C trace context in gRPC metadata and in task messages.

pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

pub use opentelemetry::{KeyValue, global, metrics};

/// Keeps the exporters alive; `shutdown` flushes what is buffered.
#[must_use = "dropping Telemetry does not flush; call shutdown() before exiting"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

/// The OTLP endpoint, if export is configured.
pub fn otlp_endpoint() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty())
}

/// Installs the global subscriber, propagator and (when configured) the
/// OTLP exporters. Call once, early, inside the Tokio runtime.
pub fn init(default_service_name: &'static str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| default_service_name.to_owned());

    let (tracer_provider, meter_provider, export_error) = match otlp_endpoint() {
        None => (None, None, None),
        Some(endpoint) => match exporters(&endpoint, &service_name) {
            Ok((traces, metrics)) => (Some(traces), Some(metrics), None),
            Err(err) => (
                None,
                None,
                Some(format!("OTLP export to {endpoint} disabled: {err}")),
            ),
        },
    };
    // Spans are exported at `info` and above whatever RUST_LOG says: log
    // verbosity and trace completeness are separate choices
    // (OTEL_TRACES_LEVEL overrides, e.g. `debug`).
    let otel_layer = tracer_provider.as_ref().map(|provider| {
        let level = std::env::var("OTEL_TRACES_LEVEL").unwrap_or_else(|_| "info".into());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service_name.clone()))
            .with_filter(EnvFilter::new(level))
    });
    if let Some(provider) = &meter_provider {
        opentelemetry::global::set_meter_provider(provider.clone());
    }

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("json"));
    // Logs go to stderr: stdout is reserved for the one "listening on" line
    // that scripts and tests read.
    let logs = if json {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(logs.with_filter(filter))
        .init();
    if let Some(err) = export_error {
        tracing::warn!("{err}");
    }
    Telemetry {
        tracer_provider,
        meter_provider,
    }
}

type Exporters = (SdkTracerProvider, SdkMeterProvider);

fn exporters(endpoint: &str, service_name: &str) -> Result<Exporters, Box<dyn std::error::Error>> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let traces = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    // OTEL_METRIC_EXPORT_INTERVAL (ms) sets the period; default 60 s.
    let reader = PeriodicReader::builder(metrics).build();
    let meters = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    Ok((traces, meters))
}

impl Telemetry {
    /// Flushes and stops the exporters (a no-op without them).
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider {
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider {
            let _ = provider.shutdown();
        }
    }
}
