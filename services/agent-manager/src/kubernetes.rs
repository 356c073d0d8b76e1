//! The Kubernetes runtime (experimental): one Pod per generation of an
//! agent, created through the Kubernetes API with the kube client.
//!
//! The Pod is what a process is for a `process` agent: the supervisor
//! launches it (the one launch path, so a new Pod is a new generation and
//! `AgentRestarted`), waits for it to end, and deletes it to stop the
//! agent. `restartPolicy: Never`: the kubelet never restarts it in place,
//! so the agent's own restart policy applies and every restart is a new
//! Pod, seen by the scheduler like any other restart. The agent inside
//! connects back with its per-Pod session token, exactly like a process.
//!
//! Not (yet) done: adopting a running Pod after a manager restart (the
//! manager deletes the agent's Pods and creates a new generation), usage
//! figures, and watch instead of polling the Pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use uuid::Uuid;

use crate::process::{ExitInfo, Launch};

/// Label carrying the agent id on each of its Pods.
const AGENT_LABEL: &str = "shepherd.dev/agent-id";

#[derive(Debug, thiserror::Error)]
pub(crate) enum KubernetesError {
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("the Pod spec could not be built: {0}")]
    Spec(#[from] serde_json::Error),
}

/// The Pods API of one namespace.
pub(crate) struct Kubernetes {
    pods: Api<Pod>,
    namespace: String,
    /// How often a running Pod's phase is read.
    poll: Duration,
}

impl Kubernetes {
    /// A client of the API server at `url` (plain HTTP or HTTPS without
    /// credentials: a proxy such as `kubectl proxy`, or a test server), or
    /// with `url` "in-cluster" the configuration Kubernetes gives a Pod
    /// (or the local kubeconfig).
    pub(crate) async fn connect(
        url: &str,
        namespace: &str,
        poll: Duration,
    ) -> Result<Self, KubernetesError> {
        let config = if url == "in-cluster" {
            kube::Config::infer()
                .await
                .map_err(|err| KubernetesError::Config(err.to_string()))?
        } else {
            let uri: http::Uri = url.parse().map_err(|err| {
                KubernetesError::Config(format!("KUBERNETES_API_URL {url:?}: {err}"))
            })?;
            kube::Config::new(uri)
        };
        let client = kube::Client::try_from(config)?;
        Ok(Self {
            pods: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            poll,
        })
    }

    /// Creates the Pod of `launch`'s generation.
    pub(crate) async fn launch(&self, launch: &Launch<'_>) -> Result<AgentPod, KubernetesError> {
        let pod: Pod = serde_json::from_value(pod_spec(launch))?;
        let created = self.pods.create(&PostParams::default(), &pod).await?;
        let name = created.metadata.name.unwrap_or_default();
        tracing::info!(agent = %launch.agent_id, pod = %name, namespace = %self.namespace, "created the agent's Pod");
        Ok(AgentPod {
            pods: self.pods.clone(),
            name,
            poll: self.poll,
        })
    }

    /// Deletes every Pod of the agent (what a previous manager left).
    pub(crate) async fn delete_agent_pods(&self, agent: Uuid) -> Result<usize, KubernetesError> {
        let selector = format!("{AGENT_LABEL}={agent}");
        let pods = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut deleted = 0;
        for pod in pods {
            if let Some(name) = pod.metadata.name {
                match self.pods.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => deleted += 1,
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(deleted)
    }
}

/// The Pod a generation runs in.
fn pod_spec(launch: &Launch<'_>) -> serde_json::Value {
    let spec = launch.spec;
    let mut env: Vec<serde_json::Value> = spec
        .env
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    for (name, value) in [
        ("SHEPHERD_AGENT_ID", launch.agent_id.to_string()),
        ("SHEPHERD_MANAGER_URL", launch.manager_url.to_owned()),
        ("SHEPHERD_SESSION_TOKEN", launch.session_token.to_owned()),
        ("SHEPHERD_GENERATION", launch.generation.to_string()),
        (
            "OTEL_SERVICE_NAME",
            format!("shepherd-agent/{}", launch.agent_name),
        ),
    ] {
        env.push(json!({"name": name, "value": value}));
    }
    let mut container = json!({
        "name": "agent",
        "image": spec.image.clone().unwrap_or_default(),
        "args": spec.args,
        "env": env,
    });
    if !spec.command.is_empty() {
        container["command"] = json!([spec.command]);
    }
    if let Some(dir) = &spec.working_dir {
        container["workingDir"] = json!(dir);
    }
    let mut limits = serde_json::Map::new();
    if let Some(bytes) = spec.limits.memory_bytes {
        limits.insert("memory".into(), json!(bytes.to_string()));
    }
    if let Some(millis) = spec.limits.cpu_millicores {
        limits.insert("cpu".into(), json!(format!("{millis}m")));
    }
    if !limits.is_empty() {
        container["resources"] = json!({"limits": limits});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("shepherd-{}-{}", launch.agent_name, launch.generation),
            "labels": {
                AGENT_LABEL: launch.agent_id.to_string(),
                "shepherd.dev/generation": launch.generation.to_string(),
                "app.kubernetes.io/managed-by": "shepherd",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
        },
    })
}

/// A running generation's Pod.
pub(crate) struct AgentPod {
    pods: Api<Pod>,
    name: String,
    poll: Duration,
}

impl AgentPod {
    /// Waits for the Pod to end (its container terminated, or the Pod
    /// deleted by someone else). Cancel-safe.
    pub(crate) async fn wait(&mut self) -> ExitInfo {
        loop {
            tokio::time::sleep(self.poll).await;
            match self.pods.get_opt(&self.name).await {
                Ok(None) => return ExitInfo::UNKNOWN,
                Ok(Some(pod)) => {
                    if let Some(exit) = ended(&pod) {
                        return exit;
                    }
                }
                Err(err) => {
                    tracing::warn!(pod = %self.name, error = %err, "could not read the agent's Pod; trying again");
                }
            }
        }
    }

    /// Deletes the Pod (the kubelet sends SIGTERM, then SIGKILL after
    /// `grace`) and waits until it is gone.
    pub(crate) async fn terminate(mut self, grace: Duration) -> ExitInfo {
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..DeleteParams::default()
        };
        if let Err(err) = self.pods.delete(&self.name, &params).await {
            tracing::warn!(pod = %self.name, error = %err, "could not delete the agent's Pod");
        }
        let wait = async {
            loop {
                match self.pods.get_opt(&self.name).await {
                    Ok(None) => return,
                    _ => tokio::time::sleep(self.poll).await,
                }
            }
        };
        let _ = tokio::time::timeout(grace + Duration::from_secs(30), wait).await;
        self.name.clear();
        ExitInfo::TERMINATED
    }

    /// After the Pod ended by itself: delete it (its record is not needed).
    pub(crate) async fn clear(self) {
        if let Err(err) = self.pods.delete(&self.name, &DeleteParams::default()).await
            && !matches!(&err, kube::Error::Api(status) if status.code == 404)
        {
            tracing::warn!(pod = %self.name, error = %err, "could not delete the agent's ended Pod");
        }
    }
}

/// How the Pod ended, if it did.
fn ended(pod: &Pod) -> Option<ExitInfo> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if phase != "Succeeded" && phase != "Failed" {
        return None;
    }
    let terminated = status
        .container_statuses
        .as_ref()
        .and_then(|statuses| statuses.first())
        .and_then(|container| container.state.as_ref())
        .and_then(|state| state.terminated.as_ref());
    Some(match terminated {
        Some(terminated) => ExitInfo {
            code: Some(terminated.exit_code),
            signal: None,
            oom_killed: terminated.reason.as_deref() == Some("OOMKilled"),
        },
        None => ExitInfo {
            code: Some(if phase == "Succeeded" { 0 } else { 1 }),
            signal: None,
            oom_killed: false,
        },
    })
}
