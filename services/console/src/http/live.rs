//! Live updates as Server-Sent Events. Each event carries its cursor as the
//! SSE id, so the browser's EventSource resumes after the last one it saw
//! (`Last-Event-ID`) when the connection drops, and the page never misses
//! a change between reconnects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};

use super::{Shared, answer};
use crate::backend::LiveItem;

/// How often an idle stream sends a comment, so proxies keep it open and
/// the browser notices a dead console.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// Agent events of the whole fleet, from the browser's cursor (or now).
pub(super) async fn agents(State(console): Shared, headers: HeaderMap) -> Response {
    let after = last_event_id(&headers).and_then(|id| id.parse().ok());
    match console.backend.agent_feed(after).await {
        Ok(feed) => sse("agent", feed),
        Err(status) => answer(Err(status)),
    }
}

/// Task changes of one workflow (`?workflow=`) or task (`?task=`).
pub(super) async fn tasks(
    State(console): Shared,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let after = last_event_id(&headers).unwrap_or_default();
    let workflow = query.get("workflow").cloned().unwrap_or_default();
    let task = query.get("task").cloned().unwrap_or_default();
    match console.backend.task_feed(after, workflow, task).await {
        Ok(feed) => sse("task", feed),
        Err(status) => answer(Err(status)),
    }
}

/// The feed as SSE; an error ends the stream (the browser reconnects and
/// resumes from its last id).
fn sse(
    name: &'static str,
    feed: impl Stream<Item = Result<LiveItem, tonic::Status>> + Send + 'static,
) -> Response {
    let events = feed
        .take_while(|item| {
            if let Err(status) = item {
                tracing::info!(error = %status, "live feed ended");
            }
            std::future::ready(item.is_ok())
        })
        .filter_map(move |item| async move {
            let item = item.ok()?;
            Some(Ok::<Event, Infallible>(
                Event::default()
                    .event(name)
                    .id(item.cursor)
                    .data(item.data.to_string()),
            ))
        });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
