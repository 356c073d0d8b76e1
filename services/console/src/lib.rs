//! shepherd-console: a live web console for the fleet. It talks to the
//! agent-manager and the scheduler over their public gRPC APIs only (no
//! database of its own) and serves one embedded web app.

pub mod backend;
pub mod config;
pub mod http;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::Config;
use crate::http::{Console, session::Sessions};

/// Serves until `shutdown`. Prints `shepherd-console listening on ADDR`
/// once it accepts connections.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let backend = Backend::connect(
        &config.agent_manager_url,
        &config.scheduler_url,
        config.token.as_deref(),
        config.ca_file.as_deref(),
    )?;
    let origins =
        http::origins::Origins::new(&config.public_origins).map_err(anyhow::Error::msg)?;
    let console = Arc::new(Console {
        backend,
        sessions: Sessions::new(config.token.clone())?.secure(origins.secure()),
        origins,
    });
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    let bound = listener.local_addr()?;
    let exposure = shepherd_platform::auth::exposure(
        "the console",
        bound,
        config.token.as_deref().is_some_and(|t| !t.is_empty()),
        config.allow_open,
        "SHEPHERD_TOKEN",
        Some("SHEPHERD_ALLOW_OPEN_API"),
    )
    .map_err(anyhow::Error::msg)?;
    let warning = exposure.warning(bound);
    if !warning.is_empty() {
        tracing::warn!("{warning}");
    }
    println!("shepherd-console listening on {bound}");
    tracing::info!(%bound, "shepherd-console listening");
    axum::serve(
        listener,
        http::router(console).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await?;
    Ok(())
}
