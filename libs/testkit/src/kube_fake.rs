//! A Kubernetes API server for tests, small but real: an HTTP server that
//! speaks the `core/v1` Pod endpoints the manager's kube client uses
//! (create, get, list by label, delete), with a fake kubelet behind it that
//! runs each Pod's one container as a local process (its command, args
//! and env; the image is ignored). So a Pod the manager creates really
//! starts an agent that connects back, and its exit shows in the Pod's
//! status as it would on a cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The server; dropping it stops it and kills every container it runs.
pub struct FakeKubernetes {
    pub addr: SocketAddr,
    state: Arc<Pods>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Pods {
    pods: Mutex<HashMap<(String, String), FakePod>>,
    /// Every Pod ever created, by name (what a test inspects).
    created: Mutex<Vec<Value>>,
}

struct FakePod {
    object: Value,
    child: Option<Child>,
    /// Exit code once the container ended.
    exit: Option<i32>,
}

impl FakeKubernetes {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(Pods::default());
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{namespace}/pods",
                get(list).post(create),
            )
            .route(
                "/api/v1/namespaces/{namespace}/pods/{name}",
                get(read).delete(delete),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every Pod created so far, as the client sent it.
    pub fn created(&self) -> Vec<Value> {
        self.state
            .created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The names of the Pods that exist now.
    pub fn pod_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .state
            .lock()
            .keys()
            .map(|(_, name)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The pid of a Pod's container, while it runs.
    pub fn container_pid(&self, name: &str) -> Option<i32> {
        self.state
            .lock()
            .iter()
            .find(|((_, pod), _)| pod == name)
            .and_then(|(_, pod)| pod.child.as_ref()?.id())
            .and_then(|pid| i32::try_from(pid).ok())
    }
}

impl Drop for FakeKubernetes {
    fn drop(&mut self) {
        self.server.abort();
        for (_, mut pod) in self.state.lock().drain() {
            if let Some(child) = pod.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}

impl Pods {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), FakePod>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The Pod as the API shows it now: its phase follows its container.
    fn observed(&self, key: &(String, String)) -> Option<Value> {
        let mut pods = self.lock();
        let pod = pods.get_mut(key)?;
        if pod.exit.is_none()
            && let Some(child) = pod.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            use std::os::unix::process::ExitStatusExt;
            pod.exit = Some(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            );
        }
        let mut object = pod.object.clone();
        object["status"] = match pod.exit {
            None => json!({"phase": "Running"}),
            Some(code) => json!({
                "phase": if code == 0 { "Succeeded" } else { "Failed" },
                "containerStatuses": [{
                    "name": object["spec"]["containers"][0]["name"],
                    "ready": false,
                    "restartCount": 0,
                    "image": object["spec"]["containers"][0]["image"],
                    "imageID": "",
                    "state": {"terminated": {"exitCode": code}},
                }],
            }),
        };
        Some(object)
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

async fn create(
    State(pods): State<Arc<Pods>>,
    Path(namespace): Path<String>,
    Json(mut object): Json<Value>,
) -> Response {
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name is required".into(),
        );
    };
    let key = (namespace.clone(), name.clone());
    if pods.lock().contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("pods \"{name}\" already exists"),
        );
    }
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
    pods.created
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(object.clone());
    let child = run_container(&object["spec"]["containers"][0]);
    let exit = child.is_err().then_some(127);
    pods.lock().insert(
        key.clone(),
        FakePod {
            object,
            child: child.ok(),
            exit,
        },
    );
    let shown = pods.observed(&key).unwrap_or_default();
    (StatusCode::CREATED, Json(shown)).into_response()
}

/// The fake kubelet: the container's command and args as a process.
fn run_container(container: &Value) -> std::io::Result<Child> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut argv = strings(&container["command"]);
    argv.extend(strings(&container["args"]));
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::other("the container has no command"));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
            command.env(name, value);
        }
    }
    command.spawn()
}

async fn read(
    State(pods): State<Arc<Pods>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match pods.observed(&(namespace, name.clone())) {
        Some(object) => Json(object).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
        ),
    }
}

async fn list(
    State(pods): State<Arc<Pods>>,
    Path(namespace): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // `labelSelector=a=b,c=d` (equality only: all the manager uses).
    let wanted: Vec<(String, String)> = query
        .get("labelSelector")
        .map(|selector| {
            selector
                .split(',')
                .filter_map(|term| term.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let keys: Vec<(String, String)> = pods
        .lock()
        .keys()
        .filter(|(ns, _)| *ns == namespace)
        .cloned()
        .collect();
    let items: Vec<Value> = keys
        .iter()
        .filter_map(|key| pods.observed(key))
        .filter(|pod| {
            wanted
                .iter()
                .all(|(k, v)| pod["metadata"]["labels"][k].as_str() == Some(v.as_str()))
        })
        .collect();
    Json(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": items,
    }))
    .into_response()
}

async fn delete(
    State(pods): State<Arc<Pods>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let key = (namespace, name.clone());
    let Some(object) = pods.observed(&key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
        );
    };
    // The kubelet's part, done at once here: the container gets SIGTERM and
    // the Pod is gone once it exited (SIGKILL after a short grace).
    let pod = pods.lock().remove(&key);
    if let Some(FakePod {
        child: Some(mut child),
        ..
    }) = pod
    {
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    Json(object).into_response()
}
