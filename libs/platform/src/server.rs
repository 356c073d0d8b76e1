//! The gRPC server every Shepherd service runs: the service's own routes plus
//! server reflection (v1 and v1alpha, so old grpcurl builds work too), the
//! standard health service, a tracing span per RPC, and graceful shutdown.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("reflection set-up failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the listen address. Binding is separate from serving so that a
/// service can learn its real port (for `127.0.0.1:0`) and announce it.
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_err = |source| ServerError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

/// Serves `routes` on `listener` until `shutdown` is cancelled; in-flight
/// RPCs are allowed to finish. `service_names` (and the server as a whole,
/// "") are reported on the health service: SERVING while `healthy` says so
/// (the service's database answers), NOT_SERVING otherwise and once
/// shutdown begins.
pub async fn serve(
    listener: TcpListener,
    mut routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    tls: Option<ServerTlsConfig>,
    healthy: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Registered before the first request can arrive; kept in step after.
    let initial = if *healthy.borrow() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in service_names.iter().copied().chain([""]) {
        health_reporter.set_service_status(name, initial).await;
    }
    tokio::spawn(follow_health(
        health_reporter.clone(),
        service_names.clone(),
        healthy,
        shutdown.clone(),
    ));
    routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    let names = service_names;
    let on_shutdown = async move {
        shutdown.cancelled().await;
        for name in names {
            health_reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        health_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    };

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(tower::util::MapResponseLayer::new(caller_fault_codes))
        .trace_fn(|request| {
            // One span per RPC, joined to the caller's trace when it sent one.
            let span = tracing::info_span!(
                "rpc",
                otel.name = %request.uri().path(),
                rpc.method = %request.uri().path(),
                trace_id = tracing::field::Empty,
                agent_id = tracing::field::Empty,
                workflow_id = tracing::field::Empty,
                task_id = tracing::field::Empty,
            );
            shepherd_telemetry::propagation::adopt_from_headers(&span, request.headers());
            span
        })
        .add_routes(routes.routes())
        .serve_with_incoming_shutdown(incoming(listener), on_shutdown)
        .await?;
    Ok(())
}

/// The framework answers an undecodable request with INTERNAL and an
/// oversized one with OUT_OF_RANGE; both are the caller's fault, which gRPC
/// spells INVALID_ARGUMENT and RESOURCE_EXHAUSTED. Rewrites those two
/// answers (in the headers of a trailers-only response, or in the
/// trailers), recognised by the framework's own messages.
fn caller_fault_codes(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    fix_status(response.headers_mut());
    response.map(|body| tonic::body::Body::new(FixTrailers(body)))
}

fn fix_status(headers: &mut http::HeaderMap) {
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The message is percent-encoded (spaces as %20).
    let fixed = match code {
        Some("13") if message.starts_with("failed%20to%20decode") => Some("3"),
        Some("11") if message.contains("message%20length%20too%20large") => Some("8"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        headers.insert("grpc-status", http::HeaderValue::from_static(fixed));
    }
}

/// A response body whose trailers go through `fix_status`.
struct FixTrailers(tonic::body::Body);

impl http_body::Body for FixTrailers {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_frame(cx);
        polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_trailers() {
                    Ok(mut trailers) => {
                        fix_status(&mut trailers);
                        http_body::Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

/// Keeps the health service in step with `healthy` until shutdown.
async fn follow_health(
    reporter: HealthReporter,
    names: Vec<&'static str>,
    mut healthy: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        let status = if *healthy.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in names.iter().copied().chain([""]) {
            reporter.set_service_status(name, status).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = healthy.changed() => {
                if changed.is_err() {
                    // The probe stopped (shutdown): stay as we are.
                    return;
                }
            }
        }
    }
}

/// Accepted connections with Nagle's algorithm off: streams carry small
/// messages (events, heartbeats, tasks) that must not wait for a delayed
/// ACK (~40 ms each way otherwise).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// Records an id the RPC is about (`agent_id`, `workflow_id`, `task_id`)
/// on the current RPC span, for logs and traces, and (the first one) as
/// the target of the call's audit entry.
pub fn record_id(field: &'static str, value: &dyn std::fmt::Display) {
    tracing::Span::current().record(field, tracing::field::display(value));
    crate::audit::record_target(value);
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(shepherd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
