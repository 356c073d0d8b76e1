//! Optional deadlines in `select!` loops.

use tokio::time::Instant;

/// Sleeps until `at`, or forever when there is no deadline: a `select!`
/// branch that only fires when a deadline is set. The timer is boxed, so a
/// future that waits without a deadline (an idle runner, of which there
/// are thousands) does not carry one inline.
pub async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}
