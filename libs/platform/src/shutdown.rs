//! Graceful shutdown on SIGTERM or SIGINT.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGTERM or SIGINT. Every
/// long-running task of a service watches a child of this token, so one
/// signal winds the whole service down in order.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // If a handler cannot be installed we still honour the other signal;
    // failing to install both would leave only SIGKILL, which is acceptable
    // (durable state makes a hard stop safe), so we log and wait forever.
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        (Ok(mut only), Err(err)) | (Err(err), Ok(mut only)) => {
            tracing::warn!(%err, "could not install one signal handler");
            only.recv().await;
        }
        (Err(err), Err(_)) => {
            tracing::error!(%err, "could not install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}
