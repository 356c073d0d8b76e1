//! `shepherd mcp`: the fleet as Model Context Protocol tools over stdio, so
//! an AI assistant can look at agents, workflows and tasks and (with
//! `--allow-writes`) act on them. Built on the official Rust SDK (rmcp).
//! Every tool has a JSON schema and says whether it only reads or changes
//! something (and whether the change is destructive); tools that change
//! anything are neither listed nor callable unless writes are allowed.
//! Uses the CLI's connection and auth settings.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use shepherd_proto::agentmanager::v1 as am;
use shepherd_proto::scheduler::v1 as sched;

use crate::clients::Clients;
use crate::render::Render;

/// Whether a tool reads or changes, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    Reads,
    Changes,
    Destroys,
}

struct Spec {
    name: &'static str,
    description: &'static str,
    effect: Effect,
    /// Properties of the input: (name, JSON type, description, required).
    inputs: &'static [(&'static str, &'static str, &'static str, bool)],
}

const AGENT: (&str, &str, &str, bool) = ("agent", "string", "agent id or name", true);
const WORKFLOW: (&str, &str, &str, bool) = ("workflow", "string", "workflow id or name", true);
const TASK: (&str, &str, &str, bool) = ("task", "string", "task id (<workflow id>:<key>)", true);

const TOOLS: &[Spec] = &[
    Spec {
        name: "list_agents",
        description: "List agents with status, generation, restarts and usage.",
        effect: Effect::Reads,
        inputs: &[(
            "label",
            "string",
            "only agents with this label, key=value",
            false,
        )],
    },
    Spec {
        name: "get_agent",
        description: "One agent: status, generation, pid, limits, usage, last exit.",
        effect: Effect::Reads,
        inputs: &[AGENT],
    },
    Spec {
        name: "tail_agent_logs",
        description: "The last lines of an agent's stdout (or stderr).",
        effect: Effect::Reads,
        inputs: &[
            AGENT,
            ("lines", "integer", "how many lines (default 50)", false),
            ("stderr", "boolean", "stderr instead of stdout", false),
        ],
    },
    Spec {
        name: "start_agent",
        description: "Start a stopped agent.",
        effect: Effect::Changes,
        inputs: &[AGENT],
    },
    Spec {
        name: "stop_agent",
        description: "Stop an agent (its tasks in flight are lost and retried later).",
        effect: Effect::Destroys,
        inputs: &[AGENT],
    },
    Spec {
        name: "restart_agent",
        description: "Restart an agent: a new generation; its workflows' runners heal.",
        effect: Effect::Destroys,
        inputs: &[AGENT],
    },
    Spec {
        name: "list_workflows",
        description: "List workflows with their runners.",
        effect: Effect::Reads,
        inputs: &[("agent", "string", "only this agent's (id or name)", false)],
    },
    Spec {
        name: "get_workflow",
        description: "One workflow: trigger, template, limits, tool policy.",
        effect: Effect::Reads,
        inputs: &[WORKFLOW],
    },
    Spec {
        name: "explain_workflow",
        description: "Why isn't it running? A verdict and the facts behind it.",
        effect: Effect::Reads,
        inputs: &[WORKFLOW],
    },
    Spec {
        name: "list_concurrency_keys",
        description: "Concurrency keys: each one's limit and rate, tasks running, workflows waiting.",
        effect: Effect::Reads,
        inputs: &[],
    },
    Spec {
        name: "list_budgets",
        description: "Budgets of workflows and agents: caps, usage this period (tasks, task-seconds, cost, tokens), reset time, whether spent.",
        effect: Effect::Reads,
        inputs: &[],
    },
    Spec {
        name: "trigger_workflow",
        description: "Create a task now (idempotent per key).",
        effect: Effect::Changes,
        inputs: &[
            WORKFLOW,
            ("title", "string", "the task's title", false),
            (
                "key",
                "string",
                "idempotency key (default: a new one)",
                false,
            ),
        ],
    },
    Spec {
        name: "list_tasks",
        description: "A workflow's newest tasks.",
        effect: Effect::Reads,
        inputs: &[
            WORKFLOW,
            (
                "state",
                "string",
                "pending, dispatched, succeeded, failed or cancelled",
                false,
            ),
        ],
    },
    Spec {
        name: "get_task",
        description: "One task: state, attempts, progress, output.",
        effect: Effect::Reads,
        inputs: &[TASK],
    },
    Spec {
        name: "list_approvals",
        description: "Approvals agents asked for before using a tool, newest first: the tool, its input, why, and the decision.",
        effect: Effect::Reads,
        inputs: &[
            (
                "state",
                "string",
                "pending (default), approved, denied, expired, withdrawn or all",
                false,
            ),
            (
                "workflow",
                "string",
                "only this workflow's (id or name)",
                false,
            ),
        ],
    },
    Spec {
        name: "decide_approval",
        description: "Approve or deny a pending approval; the agent goes on or is refused. Deciding twice keeps the first decision.",
        effect: Effect::Changes,
        inputs: &[
            ("approval", "string", "approval id", true),
            ("decision", "string", "approve or deny", true),
            ("comment", "string", "passed to the agent", false),
        ],
    },
    Spec {
        name: "cancel_task",
        description: "Cancel a task (a running one is stopped by its agent).",
        effect: Effect::Destroys,
        inputs: &[TASK],
    },
];

fn tool(spec: &Spec) -> Tool {
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for (name, kind, description, is_required) in spec.inputs {
        properties.insert(
            (*name).into(),
            json!({"type": kind, "description": description}),
        );
        if *is_required {
            required.push(*name);
        }
    }
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    let schema: JsonObject = match schema {
        Value::Object(object) => object,
        _ => JsonObject::new(),
    };
    let mut tool = Tool::new(spec.name, spec.description, Arc::new(schema));
    tool.annotations = Some(
        ToolAnnotations::new()
            .read_only(spec.effect == Effect::Reads)
            .destructive(spec.effect == Effect::Destroys)
            .idempotent(spec.effect != Effect::Changes),
    );
    tool
}

#[derive(Clone)]
pub(crate) struct Server {
    /// The CLI's clients, and its id-or-name lookups.
    clients: Clients,
    allow_writes: bool,
}

/// Serves MCP on stdin/stdout until the client goes away.
pub(crate) async fn run(clients: Clients, allow_writes: bool) -> anyhow::Result<()> {
    let server = Server {
        clients,
        allow_writes,
    };
    let running = server.serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

/// Serves MCP over streamable HTTP at `http://ADDR/mcp` until interrupted
/// (Ctrl-C). Prints `shepherd mcp listening on URL` to stderr once bound.
pub(crate) async fn serve_http(
    clients: Clients,
    allow_writes: bool,
    addr: &str,
    token: Option<String>,
) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let server = Server {
        clients,
        allow_writes,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    // Hosts: loopback only (rmcp's default, against DNS rebinding).
    // Origins: a browser page may call only from loopback (the MCP
    // transport's rule); clients that are not browsers send none.
    let mut config = StreamableHttpServerConfig::default().with_allowed_origins([
        "http://localhost:*",
        "http://127.0.0.1:*",
        "http://[::1]:*",
    ]);
    config.cancellation_token = shutdown.clone();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let token = token.filter(|t| !t.is_empty()).map(Arc::<str>::from);
    let authenticated = token.is_some();
    let router =
        axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(move |request, next| {
                require_token(token.clone(), request, next)
            }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| crate::clients::UsageError(format!("--http {addr}: {err}")))?;
    // Off loopback only with a token: the tools act with this CLI's
    // credentials for whoever reaches the port.
    shepherd_platform::auth::exposure(
        "shepherd mcp",
        listener.local_addr()?,
        authenticated,
        false,
        "--token (SHEPHERD_TOKEN)",
        None,
    )
    .map_err(crate::clients::UsageError)?;
    eprintln!(
        "shepherd mcp listening on http://{}/mcp",
        listener.local_addr()?
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        })
        .await?;
    Ok(())
}

/// With a token set, every request must carry it as a bearer token.
async fn require_token(
    token: Option<Arc<str>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(token) = token {
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|presented| {
            shepherd_platform::auth::constant_time_eq(presented.as_bytes(), token.as_bytes())
        });
        if !ok {
            return (
                http::StatusCode::UNAUTHORIZED,
                "send the Shepherd token as `Authorization: Bearer <token>`",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// A tool's failure as the caller should read it (not a protocol error).
struct Failure(String);

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self(format!("{:?}: {}", status.code(), status.message()))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        match err.downcast::<tonic::Status>() {
            Ok(status) => status.into(),
            Err(err) => Self(format!("{err:#}")),
        }
    }
}

type Outcome = Result<Value, Failure>;

fn arg<'a>(args: &'a JsonObject, name: &str) -> Result<&'a str, Failure> {
    args.get(name)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| Failure(format!("`{name}` is required")))
}

fn optional<'a>(args: &'a JsonObject, name: &str) -> Option<&'a str> {
    args.get(name)
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

impl Server {
    fn visible(&self) -> impl Iterator<Item = &'static Spec> + '_ {
        TOOLS
            .iter()
            .filter(|spec| self.allow_writes || spec.effect == Effect::Reads)
    }

    async fn agent_id(&self, agent: &str) -> Result<String, Failure> {
        Ok(self.clients.agent_id(agent).await?)
    }

    async fn workflow_id(&self, workflow: &str) -> Result<String, Failure> {
        Ok(self.clients.workflow_id(workflow).await?)
    }

    async fn call(&self, name: &str, args: &JsonObject) -> Outcome {
        let mut agents = self.clients.agents.clone();
        let mut workflows = self.clients.workflows.clone();
        Ok(match name {
            "list_agents" => {
                let labels = optional(args, "label")
                    .and_then(|label| label.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .into_iter()
                    .collect();
                let agents = self
                    .clients
                    .all_agents(am::AgentStatus::Unspecified, labels)
                    .await?;
                Value::Array(agents.iter().map(Render::json).collect())
            }
            "get_agent" => {
                let agent_id = self.agent_id(arg(args, "agent")?).await?;
                agents
                    .get_agent(am::GetAgentRequest { agent_id })
                    .await?
                    .into_inner()
                    .json()
            }
            "tail_agent_logs" => {
                let agent_id = self.agent_id(arg(args, "agent")?).await?;
                let stderr = args.get("stderr").and_then(Value::as_bool) == Some(true);
                let lines = args.get("lines").and_then(Value::as_i64).unwrap_or(50);
                let logs = agents
                    .get_agent_logs(am::GetAgentLogsRequest {
                        agent_id,
                        stream: if stderr {
                            am::LogStream::Stderr
                        } else {
                            am::LogStream::Stdout
                        } as i32,
                        tail_lines: i32::try_from(lines).unwrap_or(50),
                    })
                    .await?
                    .into_inner();
                json!(logs.lines)
            }
            "start_agent" | "stop_agent" | "restart_agent" => {
                let agent_id = self.agent_id(arg(args, "agent")?).await?;
                let agent = match name {
                    "start_agent" => agents.start_agent(am::StartAgentRequest { agent_id }).await,
                    "stop_agent" => agents.stop_agent(am::StopAgentRequest { agent_id }).await,
                    _ => {
                        agents
                            .restart_agent(am::RestartAgentRequest { agent_id })
                            .await
                    }
                }?;
                agent.into_inner().json()
            }
            "list_workflows" => {
                let agent_id = match optional(args, "agent") {
                    Some(agent) => self.agent_id(agent).await?,
                    None => String::new(),
                };
                let list = self.clients.all_workflows(agent_id.clone(), None).await?;
                let runners = workflows
                    .list_runners(sched::ListRunnersRequest { agent_id })
                    .await?
                    .into_inner()
                    .runners;
                Value::Array(
                    list.iter()
                        .map(|workflow| {
                            let mut view = workflow.json();
                            if let Some(runner) =
                                runners.iter().find(|r| r.workflow_id == workflow.id)
                            {
                                view["runner"] = runner.json();
                            }
                            view
                        })
                        .collect(),
                )
            }
            "list_concurrency_keys" => {
                let keys = workflows
                    .list_concurrency_keys(sched::ListConcurrencyKeysRequest {})
                    .await?
                    .into_inner()
                    .keys;
                Value::Array(keys.iter().map(Render::json).collect())
            }
            "list_budgets" => {
                let budgets = workflows
                    .list_budgets(sched::ListBudgetsRequest {})
                    .await?
                    .into_inner()
                    .budgets;
                Value::Array(budgets.iter().map(Render::json).collect())
            }
            "get_workflow" | "explain_workflow" => {
                let workflow_id = self.workflow_id(arg(args, "workflow")?).await?;
                if name == "get_workflow" {
                    workflows
                        .get_workflow(sched::GetWorkflowRequest { workflow_id })
                        .await?
                        .into_inner()
                        .json()
                } else {
                    workflows
                        .explain_workflow(sched::ExplainWorkflowRequest { workflow_id })
                        .await?
                        .into_inner()
                        .json()
                }
            }
            "trigger_workflow" => {
                let workflow_id = self.workflow_id(arg(args, "workflow")?).await?;
                workflows
                    .trigger_workflow(sched::TriggerWorkflowRequest {
                        workflow_id,
                        idempotency_key: optional(args, "key").unwrap_or_default().to_owned(),
                        fields: Some(sched::TaskFields {
                            title: optional(args, "title").unwrap_or_default().to_owned(),
                            ..Default::default()
                        }),
                        timeout: None,
                        priority: 0,
                    })
                    .await?
                    .into_inner()
                    .json()
            }
            "list_tasks" => {
                let workflow_id = self.workflow_id(arg(args, "workflow")?).await?;
                let state = match optional(args, "state") {
                    None => sched::TaskState::Unspecified,
                    Some(state) => sched::TaskState::from_str_name(&format!(
                        "TASK_STATE_{}",
                        state.to_ascii_uppercase()
                    ))
                    .ok_or_else(|| Failure(format!("unknown state {state:?}")))?,
                };
                let list = workflows
                    .list_tasks(sched::ListTasksRequest {
                        workflow_id,
                        state: state as i32,
                        page_size: 50,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Value::Array(list.tasks.iter().map(Render::json).collect())
            }
            "get_task" | "cancel_task" => {
                let task_id = arg(args, "task")?.to_owned();
                let task = if name == "get_task" {
                    workflows.get_task(sched::GetTaskRequest { task_id }).await
                } else {
                    workflows
                        .cancel_task(sched::CancelTaskRequest { task_id })
                        .await
                }?;
                task.into_inner().json()
            }
            "list_approvals" => {
                let state = match optional(args, "state").unwrap_or("pending") {
                    "all" => am::ApprovalState::Unspecified,
                    state => am::ApprovalState::from_str_name(&format!(
                        "APPROVAL_STATE_{}",
                        state.to_ascii_uppercase()
                    ))
                    .ok_or_else(|| Failure(format!("unknown state {state:?}")))?,
                };
                let workflow_id = match optional(args, "workflow") {
                    Some(workflow) => self.workflow_id(workflow).await?,
                    None => String::new(),
                };
                let list = self
                    .clients
                    .list_approvals(state, String::new(), workflow_id)
                    .await?;
                Value::Array(
                    list.iter()
                        .map(|approval| crate::render::approval_shown(approval).json())
                        .collect(),
                )
            }
            "decide_approval" => {
                let decision = match arg(args, "decision")? {
                    "approve" => am::Decision::Approve,
                    "deny" => am::Decision::Deny,
                    other => {
                        return Err(Failure(format!("decision {other:?}: use approve or deny")));
                    }
                };
                agents
                    .decide_approval(am::DecideApprovalRequest {
                        approval_id: arg(args, "approval")?.to_owned(),
                        decision: decision as i32,
                        comment: optional(args, "comment").unwrap_or_default().to_owned(),
                    })
                    .await?
                    .into_inner()
                    .json()
            }
            other => return Err(Failure(format!("no tool {other:?}"))),
        })
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.instructions = Some(
            "Shepherd keeps fleets of long-running agents alive and their workflows running. \
             Tools read agents, workflows and tasks; explain_workflow says why a workflow is not \
             running. Tools that change anything exist only when the server runs with --allow-writes."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            self.visible().map(tool).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.visible().find(|spec| spec.name == name).map(tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.as_ref();
        let Some(spec) = TOOLS.iter().find(|spec| spec.name == name) else {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "no tool {name:?}"
            ))])
            .into());
        };
        if spec.effect != Effect::Reads && !self.allow_writes {
            return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "{name} changes the fleet: start `shepherd mcp --allow-writes` to allow it"
            ))])
            .into());
        }
        let args = request.arguments.unwrap_or_default();
        Ok(match self.call(name, &args).await {
            Ok(value) => CallToolResult::success(vec![ContentBlock::text(value.to_string())]),
            Err(Failure(message)) => CallToolResult::error(vec![ContentBlock::text(message)]),
        }
        .into())
    }
}
