//! The console over HTTP: one embedded web app, a JSON API under `/api`
//! (translation to and from the backend only), and Server-Sent Events for
//! live updates that resume from the browser's last cursor.

mod live;
pub mod origins;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::backend::Backend;
use session::Sessions;

const INDEX: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

/// No script but the app's own, no framing, nothing fetched elsewhere:
/// text that slipped into markup still could not run.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub struct Console {
    pub backend: Backend,
    pub sessions: Sessions,
    /// The names and origins the console answers to.
    pub origins: origins::Origins,
}

type Shared = State<Arc<Console>>;

pub fn router(console: Arc<Console>) -> Router {
    let api = Router::new()
        .route("/agents", get(fleet))
        .route("/agents/{id}", get(agent))
        .route("/agents/{id}/events", get(timeline))
        .route("/agents/{id}/logs", get(logs))
        .route("/agents/{id}/{action}", post(agent_action))
        .route("/workflows", get(workflows))
        .route("/limits", get(limits))
        .route("/workflows/{id}", get(workflow))
        .route("/workflows/{id}/tasks", get(tasks))
        .route("/workflows/{id}/{action}", post(workflow_action))
        .route("/tasks/{id}", get(task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/audit", get(audit))
        .route("/live/agents", get(live::agents))
        .route("/live/tasks", get(live::tasks))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(console.clone(), guard));
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route("/app.css", get(|| async { asset(APP_CSS, "text/css") }))
        .route("/api/session", get(session_state))
        .route("/api/login", post(login))
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(
            console.clone(),
            own_name_only,
        ))
        .with_state(console)
}

/// Every request must name the console by a host it answers to (no DNS
/// rebinding), and a POST that carries an Origin must come from the
/// console's own (no foreign page acting through the browser).
async fn own_name_only(State(console): Shared, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if !console.origins.host_allowed(host) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this console is not served under that name (CONSOLE_PUBLIC_ORIGINS)",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .map(|value| value.to_str().unwrap_or("invalid"));
        if origin.is_some_and(|origin| !console.origins.origin_allowed(origin)) {
            return error(
                StatusCode::FORBIDDEN,
                "requests from another origin are refused",
            );
        }
    }
    next.run(request).await
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Every API call needs a session; every POST also its CSRF token.
async fn guard(State(console): Shared, request: Request, next: Next) -> Response {
    let Some(session) = console.sessions.current(request.headers()) else {
        return error(StatusCode::UNAUTHORIZED, "sign in first");
    };
    if request.method() == Method::POST && !console.sessions.csrf_ok(&session, request.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token (x-csrf-token)",
        );
    }
    let mut request = request;
    request.extensions_mut().insert(SessionId(session));
    next.run(request).await
}

#[derive(Clone)]
struct SessionId(String);

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// A backend answer as HTTP: gRPC codes become the nearest HTTP status.
fn answer(result: Result<Value, tonic::Status>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(status) => {
            use tonic::Code;
            let code = match status.code() {
                Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
                Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
                Code::Unauthenticated | Code::PermissionDenied => StatusCode::BAD_GATEWAY,
                Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(code, status.message())
        }
    }
}

/// Where the browser stands: signed in (with its CSRF token) or not. An
/// open console (no token configured) signs every browser in.
async fn session_state(State(console): Shared, headers: HeaderMap) -> Response {
    let sessions = &console.sessions;
    if let Some(id) = sessions.current(&headers) {
        return Json(json!({"authenticated": true, "csrf": sessions.csrf(&id)})).into_response();
    }
    if sessions.token_required() {
        return Json(json!({"authenticated": false, "token_required": true})).into_response();
    }
    signed_in(&console, sessions.open(None))
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

async fn login(
    State(console): Shared,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Json(login): Json<Login>,
) -> Response {
    match console.sessions.sign_in(client.ip(), &login.token) {
        Ok(id) => signed_in(&console, id),
        Err(session::SignInRefused::WrongToken) => error(StatusCode::UNAUTHORIZED, "wrong token"),
        Err(session::SignInRefused::Throttled) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong tokens from this address: wait a minute",
        ),
    }
}

fn signed_in(console: &Console, session: Option<String>) -> Response {
    let Some(id) = session else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a session",
        );
    };
    let mut response =
        Json(json!({"authenticated": true, "csrf": console.sessions.csrf(&id)})).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&console.sessions.set_cookie(Some(&id))) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(
    State(console): Shared,
    axum::Extension(SessionId(id)): axum::Extension<SessionId>,
) -> Response {
    console.sessions.close(&id);
    let mut response = Json(json!({"authenticated": false})).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&console.sessions.set_cookie(None)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn fleet(State(console): Shared, Query(query): Query<HashMap<String, String>>) -> Response {
    // `label=key=value`
    let label = query
        .get("label")
        .and_then(|label| label.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    answer(console.backend.fleet(label).await)
}

async fn agent(State(console): Shared, Path(id): Path<String>) -> Response {
    answer(console.backend.agent(&id).await)
}

async fn timeline(State(console): Shared, Path(id): Path<String>) -> Response {
    answer(console.backend.timeline(&id).await)
}

async fn logs(
    State(console): Shared,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let stderr = query.get("stream").is_some_and(|s| s == "stderr");
    let lines = query
        .get("lines")
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    answer(console.backend.logs(&id, stderr, lines).await)
}

async fn agent_action(
    State(console): Shared,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    answer(console.backend.agent_action(&id, &action).await)
}

async fn workflows(
    State(console): Shared,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let agent = query.get("agent").filter(|a| !a.is_empty());
    answer(console.backend.workflows(agent.map(String::as_str)).await)
}

/// Concurrency keys and budgets, with what they hold and have used.
async fn limits(State(console): Shared) -> Response {
    answer(console.backend.limits().await)
}

async fn workflow(State(console): Shared, Path(id): Path<String>) -> Response {
    answer(console.backend.workflow(&id).await)
}

#[derive(serde::Deserialize, Default)]
struct Trigger {
    #[serde(default)]
    title: String,
}

async fn workflow_action(
    State(console): Shared,
    Path((id, action)): Path<(String, String)>,
    body: Option<Json<Trigger>>,
) -> Response {
    let Json(trigger) = body.unwrap_or_default();
    answer(
        console
            .backend
            .workflow_action(&id, &action, &trigger.title)
            .await,
    )
}

async fn tasks(State(console): Shared, Path(id): Path<String>) -> Response {
    answer(console.backend.tasks(&id).await)
}

async fn task(State(console): Shared, Path(id): Path<String>) -> Response {
    answer(console.backend.task(&id).await)
}

async fn audit(State(console): Shared) -> Response {
    answer(console.backend.audit().await)
}

async fn cancel_task(State(console): Shared, Path(id): Path<String>) -> Response {
    answer(console.backend.cancel_task(&id).await)
}
