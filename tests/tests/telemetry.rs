//! Telemetry end to end: a real OTLP/gRPC receiver on loopback collects what
//! both services and the agent export. One task is one trace across all
//! three; the restart scenario shows up in the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use shepherd_e2e::{Stack, StackOptions, kill9};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1::{RunnerState, TaskState};
use shepherd_testkit::eventually;

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// The latest value of a metric point: (service, metric, attributes).
type Points = HashMap<(String, String, Vec<(String, String)>), f64>;

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    points: Arc<Mutex<Points>>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn service_name(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .map(|kv| text(&kv.value))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut points = self.points.lock().expect("lock");
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(
                &resource_metrics
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            for scope in resource_metrics.scope_metrics {
                for metric in scope.metrics {
                    let data_points = match metric.data {
                        Some(metric::Data::Sum(sum)) => sum.data_points,
                        Some(metric::Data::Gauge(gauge)) => gauge.data_points,
                        _ => continue,
                    };
                    for point in data_points {
                        let mut attributes: Vec<(String, String)> = point
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(&kv.value)))
                            .collect();
                        attributes.sort();
                        let value = match point.value {
                            Some(number_data_point::Value::AsInt(v)) => v as f64,
                            Some(number_data_point::Value::AsDouble(v)) => v,
                            None => continue,
                        };
                        points.insert((service.clone(), metric.name.clone(), attributes), value);
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves OTLP/gRPC on a free loopback port; returns its endpoint.
    async fn start(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        Ok(format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }

    fn point(&self, service: &str, metric: &str, attribute: Option<(&str, &str)>) -> Option<f64> {
        let points = self.points.lock().expect("lock");
        points
            .iter()
            .filter(|((s, m, attrs), _)| {
                s == service
                    && m == metric
                    && attribute
                        .is_none_or(|(k, v)| attrs.iter().any(|(ak, av)| ak == k && av == v))
            })
            .map(|(_, value)| *value)
            .reduce(f64::max)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn exporting(endpoint: &str) -> StackOptions {
    StackOptions {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200".to_owned()),
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn one_task_is_one_trace_across_scheduler_manager_and_agent() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await?;
    let mut stack = Stack::start(exporting(&endpoint)).await?;
    let agent = stack.create_agent("traced", am::RestartMode::Never).await?;
    let workflow = stack
        .create_workflow("traced-flow", &agent.id, true, "echo {{title}}")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "one", "followed").await?;
    stack.wait_tasks(&[task.id], TaskState::Succeeded).await?;

    let agent_service = "shepherd-agent/traced";
    let chain = eventually(
        shepherd_e2e::WAIT,
        "the task's spans from all three processes",
        || {
            let spans = receiver.spans();
            async move {
                let find = |service: &str, name: &str, parent: Option<&Received>| {
                    spans
                        .iter()
                        .find(|s| {
                            s.service == service
                                && s.name == name
                                && parent.is_none_or(|p| {
                                    s.trace_id == p.trace_id && s.parent_span_id == p.span_id
                                })
                        })
                        .cloned()
                };
                let Some(trigger) = find(
                    "scheduler",
                    "/shepherd.scheduler.v1.Scheduler/TriggerWorkflow",
                    None,
                ) else {
                    return Ok(None);
                };
                let Some(dispatch) = find("scheduler", "dispatch", Some(&trigger)) else {
                    return Ok(None);
                };
                // The runner's dispatch goes in a DispatchTasks call; the
                // manager's span of the task continues the runner's.
                let Some(delivered) = find("agent-manager", "dispatch_task", Some(&dispatch))
                else {
                    return Ok(None);
                };
                let Some(ran) = find(agent_service, "task", Some(&delivered)) else {
                    return Ok(None);
                };
                Ok(Some([trigger, dispatch, delivered, ran]))
            }
        },
    )
    .await
    .map_err(|err| {
        let seen: Vec<String> = receiver
            .spans()
            .iter()
            .map(|s| {
                format!(
                    "{} {} trace={} span={} parent={}",
                    s.service,
                    s.name,
                    hex(&s.trace_id),
                    hex(&s.span_id),
                    hex(&s.parent_span_id)
                )
            })
            .collect();
        err.context(format!("spans received:\n{}", seen.join("\n")))
    })?;
    // One trace id from the API call to the agent.
    assert!(chain.iter().all(|s| s.trace_id == chain[0].trace_id));
    assert_eq!(chain[0].trace_id.len(), 16);
    Ok(())
}

#[tokio::test]
async fn restart_scenario_shows_in_the_metrics() -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await?;
    let mut stack = Stack::start(exporting(&endpoint)).await?;
    let agent = stack
        .create_agent("measured", am::RestartMode::Never)
        .await?;
    let workflow = stack
        .create_workflow("measured-flow", &agent.id, true, "true")
        .await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;

    // Crash, runner gives up, restart, runner back: one agent restart and a
    // second runner start.
    kill9(stack.agent(&agent.id).await?.pid)?;
    stack
        .wait_runner(&workflow.id, RunnerState::Stopped, "agent not ready")
        .await?;
    stack.restart_agent(&agent.id).await?;
    stack
        .wait_runner(&workflow.id, RunnerState::Running, "")
        .await?;
    let task = stack.trigger(&workflow.id, "after", "after").await?;
    stack.wait_tasks(&[task.id], TaskState::Succeeded).await?;

    eventually(shepherd_e2e::WAIT, "restart and runner metrics", || {
        let receiver = receiver.clone();
        let agent_id = agent.id.clone();
        let workflow_id = workflow.id.clone();
        async move {
            let restarts = receiver.point(
                "agent-manager",
                "shepherd.agent.restarts",
                Some(("agent_id", &agent_id)),
            );
            let starts = receiver.point(
                "scheduler",
                "shepherd.runner.starts",
                Some(("workflow_id", &workflow_id)),
            );
            let running =
                receiver.point("scheduler", "shepherd.runners", Some(("state", "running")));
            let succeeded = receiver.point(
                "scheduler",
                "shepherd.tasks.finished",
                Some(("outcome", "succeeded")),
            );
            let sessions = receiver.point("agent-manager", "shepherd.sessions.active", None);
            Ok((restarts == Some(1.0)
                && starts == Some(2.0)
                && running == Some(1.0)
                && succeeded == Some(1.0)
                && sessions == Some(1.0))
            .then_some(()))
        }
    })
    .await
}
