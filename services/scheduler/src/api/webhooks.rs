//! The webhook endpoint, `POST /hooks/{workflow}`: HTTP in, a task out.
//! Translation only; what a delivery must pass is `webhook`'s.
//!
//! Answers: 202 with the task (also for a redelivery), 200 with the reason
//! when a filter ignores it, 400 for a body that is not JSON, 401 for an
//! unknown workflow (or one without a webhook trigger) and for a missing,
//! bad, old or replayed signature alike (an unauthenticated sender learns
//! nothing of which workflows exist), 413 for a body over the limit, 422
//! when the mapping fails, 409 for a workflow the system disabled, 503
//! when the database is unreachable. Nothing is stored unless the answer
//! is 202.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::error::Error;
use crate::service::{DeliveryError, Scheduler};
use crate::webhook::{Delivery, Refused, Signature};
use shepherd_platform::error::Error as Shared;

/// What an unauthenticated sender is told, whether the workflow is unknown
/// or the signature is wrong: the same words, the same status.
const UNAUTHORIZED: &str = "unknown webhook, or a missing, wrong or expired signature";

/// The webhook router; bodies over `max_body` bytes get 413.
pub(crate) fn router(scheduler: Arc<Scheduler>, max_body: usize) -> axum::Router {
    axum::Router::new()
        .route("/hooks/{workflow}", post(deliver))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(scheduler)
}

async fn deliver(
    State(scheduler): State<Arc<Scheduler>>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| headers.get(*name)?.to_str().ok())
    };
    let signature = match (
        header(&["x-shepherd-signature"]),
        header(&["x-hub-signature-256"]),
    ) {
        (Some(signature), _) => Signature::Shepherd {
            signature,
            timestamp: header(&["x-shepherd-timestamp"]),
        },
        (None, Some(signature)) => Signature::GitHub(signature),
        (None, None) => Signature::Missing,
    };
    let delivery = Delivery {
        body: &body,
        signature,
        event: header(&["x-github-event", "x-shepherd-event"]),
        delivery_id: header(&["x-github-delivery", "x-shepherd-delivery"]),
    };
    match scheduler.deliver(&workflow, &delivery).await {
        Ok(task) => answer(
            StatusCode::ACCEPTED,
            json!({ "task_id": task.id, "state": task.state.as_str() }),
        ),
        Err(DeliveryError::Refused(refused)) => {
            let status = match &refused {
                Refused::UnknownHook | Refused::BadSignature(_) => StatusCode::UNAUTHORIZED,
                Refused::NotJson(_) => StatusCode::BAD_REQUEST,
                Refused::Filtered(_) => StatusCode::OK,
                Refused::Unmappable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            tracing::info!(workflow = %shepherd_platform::validate::quote(&workflow), status = status.as_u16(), reason = %refused, "webhook delivery refused");
            let message = match status {
                StatusCode::UNAUTHORIZED => UNAUTHORIZED.to_owned(),
                _ => refused.to_string(),
            };
            let key = if status == StatusCode::OK {
                "ignored"
            } else {
                "error"
            };
            answer(status, json!({ key: message }))
        }
        Err(DeliveryError::Failed(err)) => {
            let status = match &err {
                Error::Common(Shared::FailedPrecondition(_)) => StatusCode::CONFLICT,
                Error::Common(Shared::Unavailable(_) | Shared::Db(_)) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Error::Common(Shared::NotFound(_)) | Error::WorkflowNotFound(_) => {
                    StatusCode::UNAUTHORIZED
                }
                Error::Common(Shared::InvalidArgument { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(workflow = %shepherd_platform::validate::quote(&workflow), status = status.as_u16(), error = %err, "webhook delivery failed");
            let message = match status {
                StatusCode::UNAUTHORIZED => UNAUTHORIZED.to_owned(),
                _ => err.to_string(),
            };
            answer(status, json!({ "error": message }))
        }
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}
