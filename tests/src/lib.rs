//! The whole stack for end-to-end tests and the benchmark: PostgreSQL, the
//! agent-manager and the scheduler as real processes, reference agents as
//! real processes, and gRPC clients on loopback.

pub mod external;
pub mod http;
pub mod raw;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use shepherd_platform::auth::ClientMetadata;
use shepherd_proto::agentmanager::v1::{
    self as am, agent_event, agent_manager_client::AgentManagerClient, watch_agent_events_response,
};
use shepherd_proto::scheduler::v1::{self as sched, scheduler_client::SchedulerClient};
use shepherd_testkit::proxy::{TcpProxy, postgres_addr};
use shepherd_testkit::{ServiceProcess, TestDb, bin_path, eventually};
use tonic::service::interceptor::InterceptedService;

/// A channel that presents the stack's API token (if any).
/// The client library's authenticated channel (`shepherd_client::Authed`);
/// the harness connects it eagerly, so a test fails at once on a stack
/// that does not answer.
pub use shepherd_client::Authed as AuthChannel;

pub use shepherd_testkit::process_alive;

pub const WAIT: Duration = Duration::from_secs(30);

/// Knobs of a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub startup_window: Duration,
    /// How often sessions heartbeat each way (tests: short, so a dead
    /// agent is noticed fast; the service's default is 5 s).
    pub session_heartbeat: Duration,
    pub reconcile_interval: Duration,
    /// False starts the scheduler with level passes disabled, so that only
    /// the event edge and stream resume can heal runners.
    pub level: bool,
    pub log: String,
    /// API token both services require (and the scheduler presents to the
    /// manager); None: open APIs.
    pub token: Option<String>,
    /// Serve TLS everywhere with these files; None: plaintext.
    pub tls: Option<TlsFiles>,
    /// More environment for both services (e.g. OTLP export).
    pub env: Vec<(&'static str, String)>,
    /// Connect both services to PostgreSQL through a `TcpProxy` the test
    /// can cut (`Stack::db_proxy`).
    pub db_proxy: bool,
    /// Put a cuttable TCP proxy between the schedulers and the
    /// agent-manager (their event stream and dispatches): `Stack::manager_proxy`.
    pub manager_proxy: bool,
    /// The PostgreSQL server to create the test database on (an admin URL);
    /// None: `DATABASE_URL` or the local one.
    pub admin_url: Option<String>,
    /// Write the services' logs to `<scratch>/<service>.log` (see
    /// `Stack::service_logs`) instead of the test's stderr.
    pub capture_logs: bool,
    /// Agents reach the manager through a `TcpProxy` the test can cut
    /// (`Stack::agent_proxy`), to drop sessions of live agents.
    pub agent_proxy: bool,
}

/// A CA and a server certificate it signed (for localhost / 127.0.0.1).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Generates them in `dir` with the openssl command.
    pub fn generate(dir: &std::path::Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = |name: &str| dir.join(name).display().to_string();
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: Vec<Vec<String>> = vec![
            [
                &["req", "-x509"][..],
                &ec[..],
                &[
                    "-keyout",
                    &path("ca.key"),
                    "-out",
                    &path("ca.pem"),
                    "-days",
                    "2",
                    "-subj",
                    "/CN=shepherd-test-ca",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ][..],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            [
                &["req"][..],
                &ec[..],
                &[
                    "-keyout",
                    &path("server.key"),
                    "-out",
                    &path("server.csr"),
                    "-subj",
                    "/CN=localhost",
                ][..],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            [
                "x509",
                "-req",
                "-in",
                &path("server.csr"),
                "-CA",
                &path("ca.pem"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-out",
                &path("server.pem"),
                "-days",
                "2",
                "-extfile",
                &path("server.ext"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ];
        for args in steps {
            let output = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .context("running openssl (needed to make test certificates)")?;
            anyhow::ensure!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        })
    }
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            startup_window: Duration::from_secs(1),
            session_heartbeat: Duration::from_millis(300),
            reconcile_interval: Duration::from_secs(3600),
            level: true,
            log: std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            token: None,
            tls: None,
            env: Vec::new(),
            db_proxy: false,
            agent_proxy: false,
            capture_logs: false,
            manager_proxy: false,
            admin_url: None,
        }
    }
}

/// Fields drop in order: the processes go before their database.
impl StackOptions {
    fn auth(&self) -> anyhow::Result<ClientMetadata> {
        Ok(ClientMetadata::new(self.token.as_deref())?)
    }

    /// The URL of a service process (https when TLS is on).
    pub fn url(&self, process: &ServiceProcess) -> String {
        match self.tls {
            Some(_) => format!("https://{}", process.addr),
            None => process.url(),
        }
    }

    /// An authenticated channel to a service process.
    pub async fn channel(&self, process: &ServiceProcess) -> anyhow::Result<AuthChannel> {
        let ca = self.tls.as_ref().map(|tls| tls.ca.as_path());
        let channel = shepherd_platform::tls::endpoint(&self.url(process), ca)?
            .connect()
            .await?;
        Ok(InterceptedService::new(channel, self.auth()?))
    }

    /// `--tls-cert/--tls-key` plus the CA under `ca_flag`, when TLS is on.
    fn tls_args(&self, ca_flag: &str) -> Vec<String> {
        let Some(tls) = &self.tls else {
            return Vec::new();
        };
        [
            ("--tls-cert", &tls.cert),
            ("--tls-key", &tls.key),
            (ca_flag, &tls.ca),
        ]
        .iter()
        .flat_map(|(flag, path)| [(*flag).to_owned(), path.display().to_string()])
        .collect()
    }

    fn token_env(&self, name: &'static str) -> Vec<(&'static str, String)> {
        self.token.iter().map(|t| (name, t.clone())).collect()
    }
}

pub struct Stack {
    pub scheduler: Option<ServiceProcess>,
    pub manager: ServiceProcess,
    /// Between the services and PostgreSQL, when `options.db_proxy`.
    pub db_proxy: Option<TcpProxy>,
    /// The database URL the services use (through the proxy, if any).
    pub db_url: String,
    /// Between the agents and the manager, when `options.agent_proxy`.
    pub agent_proxy: Option<TcpProxy>,
    /// Between the schedulers and the manager (with `manager_proxy`).
    pub manager_proxy: Option<TcpProxy>,
    pub db: TestDb,
    pub options: StackOptions,
    pub agents: AgentManagerClient<AuthChannel>,
    pub workflows: SchedulerClient<AuthChannel>,
    pub scratch: PathBuf,
    manager_port: u16,
}

impl Stack {
    pub async fn start(mut options: StackOptions) -> anyhow::Result<Self> {
        let db = match &options.admin_url {
            Some(admin) => TestDb::create_on(admin).await?,
            None => TestDb::create().await?,
        };
        // The test's own cgroup parent, cleared when the stack drops.
        if !options.env.iter().any(|(name, _)| *name == "CGROUP_PARENT") {
            options.env.push(("CGROUP_PARENT", db.cgroup_parent()));
        }
        let scratch = std::env::temp_dir().join(format!("shepherd-e2e-{}", db.name));
        std::fs::create_dir_all(&scratch)?;
        let db_proxy = match options.db_proxy {
            true => Some(TcpProxy::start(postgres_addr(&db.url)?).await?),
            false => None,
        };
        let db_url = match &db_proxy {
            Some(proxy) => proxy.url_for(&db.url)?,
            None => db.url.clone(),
        };
        let (listen, agent_proxy) = match options.agent_proxy {
            true => {
                // The manager's port must be known before it starts (its
                // advertised URL names the proxy in front of it).
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let proxy = TcpProxy::start(format!("127.0.0.1:{port}").parse()?).await?;
                (format!("127.0.0.1:{port}"), Some(proxy))
            }
            false => ("127.0.0.1:0".to_owned(), None),
        };
        let advertise = agent_proxy
            .as_ref()
            .map(|proxy| format!("http://{}", proxy.addr));
        let manager =
            start_manager(&db_url, &scratch, &listen, advertise.as_deref(), &options).await?;
        let manager_port = manager.addr.port();
        let agents = AgentManagerClient::new(options.channel(&manager).await?);
        let manager_proxy = match options.manager_proxy {
            true => Some(TcpProxy::start(manager.addr).await?),
            false => None,
        };
        let manager_url = match &manager_proxy {
            Some(proxy) => format!("http://{}", proxy.addr),
            None => options.url(&manager),
        };
        let scheduler = start_scheduler(&db_url, &scratch, &manager_url, &options).await?;
        let workflows = SchedulerClient::new(options.channel(&scheduler).await?);
        Ok(Self {
            agent_proxy,
            manager_proxy,
            db_proxy,
            db_url,
            db,
            options,
            manager,
            scheduler: Some(scheduler),
            agents,
            workflows,
            scratch,
            manager_port,
        })
    }

    /// Starts the agent-manager again on the same port (after it was killed
    /// or terminated), so the scheduler finds it where it was.
    pub async fn restart_manager(&mut self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.manager_port);
        let advertise = self
            .agent_proxy
            .as_ref()
            .map(|proxy| format!("http://{}", proxy.addr));
        self.manager = start_manager(
            &self.db_url,
            &self.scratch,
            &addr,
            advertise.as_deref(),
            &self.options,
        )
        .await?;
        self.agents = AgentManagerClient::new(self.options.channel(&self.manager).await?);
        Ok(())
    }

    pub async fn kill_scheduler(&mut self) -> anyhow::Result<()> {
        if let Some(mut scheduler) = self.scheduler.take() {
            scheduler.kill().await?;
        }
        Ok(())
    }

    /// The (first) scheduler's URL, as clients reach it.
    pub fn scheduler_url(&self) -> String {
        self.scheduler
            .as_ref()
            .map(|scheduler| self.options.url(scheduler))
            .unwrap_or_default()
    }

    /// The manager's URL as schedulers reach it (through the proxy, if any).
    pub fn manager_url_for_schedulers(&self) -> String {
        match &self.manager_proxy {
            Some(proxy) => format!("http://{}", proxy.addr),
            None => self.options.url(&self.manager),
        }
    }

    pub async fn start_scheduler(&mut self) -> anyhow::Result<()> {
        let scheduler = start_scheduler(
            &self.db_url,
            &self.scratch,
            &self.manager_url_for_schedulers(),
            &self.options,
        )
        .await?;
        self.workflows = SchedulerClient::new(self.options.channel(&scheduler).await?);
        self.scheduler = Some(scheduler);
        Ok(())
    }

    /// Starts another scheduler replica on this stack's database and
    /// agent-manager, with `env` on top of the stack's (e.g. its
    /// REPLICA_ID); returns the process and a client for it.
    pub async fn start_replica(
        &self,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<(ServiceProcess, SchedulerClient<AuthChannel>)> {
        let mut options = self.options.clone();
        options.env.extend(env.iter().cloned());
        let process = start_scheduler(
            &self.db_url,
            &self.scratch,
            &self.manager_url_for_schedulers(),
            &options,
        )
        .await?;
        let client = SchedulerClient::new(self.options.channel(&process).await?);
        Ok((process, client))
    }

    /// Starts another agent-manager node on this stack's database (`env`
    /// on top of the stack's: at least its NODE_NAME).
    pub async fn start_manager_node(
        &self,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<ServiceProcess> {
        let mut options = self.options.clone();
        options.env.extend(env.iter().cloned());
        start_manager(&self.db_url, &self.scratch, "127.0.0.1:0", None, &options).await
    }

    /// Starts a scheduler replica that talks to the manager at
    /// `manager_url`; returns the process and a client for it.
    pub async fn start_scheduler_on(
        &self,
        manager_url: &str,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<(ServiceProcess, SchedulerClient<AuthChannel>)> {
        let mut options = self.options.clone();
        options.env.extend(env.iter().cloned());
        let process = start_scheduler(&self.db_url, &self.scratch, manager_url, &options).await?;
        let client = SchedulerClient::new(self.options.channel(&process).await?);
        Ok((process, client))
    }

    /// Creates an agent running the reference agent with a fast test
    /// restart policy and waits until it is ready.
    pub async fn create_agent(
        &mut self,
        name: &str,
        mode: am::RestartMode,
    ) -> anyhow::Result<am::Agent> {
        self.create_agent_with(am::Agent {
            name: name.to_owned(),
            restart_policy: Some(test_restart_policy(mode)),
            ..Default::default()
        })
        .await
    }

    /// Creates `agent` (running the reference agent unless it names a
    /// command) and waits until it is ready.
    pub async fn create_agent_with(&mut self, mut agent: am::Agent) -> anyhow::Result<am::Agent> {
        if agent.command.is_empty() {
            agent.command = bin_path("shepherd-agent")?.display().to_string();
        }
        let agent = self
            .agents
            .create_agent(am::CreateAgentRequest { agent: Some(agent) })
            .await?
            .into_inner();
        self.wait_agent_ready(&agent.id, agent.generation).await?;
        Ok(agent)
    }

    pub async fn agent(&self, id: &str) -> anyhow::Result<am::Agent> {
        Ok(self
            .agents
            .clone()
            .get_agent(am::GetAgentRequest {
                agent_id: id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Waits for the agent to be ready at `generation` or later.
    pub async fn wait_agent_ready(&self, id: &str, generation: u64) -> anyhow::Result<()> {
        let mut client = self.agents.clone();
        let mut events = client
            .watch_agent_events(am::WatchAgentEventsRequest {
                after_sequence: 0,
                agent_id: id.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let wait = async {
            while let Some(message) = events.message().await? {
                if let Some(watch_agent_events_response::Kind::Event(event)) = message.kind
                    && matches!(event.kind, Some(agent_event::Kind::Ready(_)))
                    && event.generation >= generation
                {
                    return anyhow::Ok(());
                }
            }
            bail!("event stream ended")
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .with_context(|| format!("agent {id} not ready at generation {generation}"))?
    }

    /// Every event of the agent's still in the log, in order: read until
    /// the stream, caught up, sends its first heartbeat.
    pub async fn agent_events(&self, id: &str) -> anyhow::Result<Vec<am::AgentEvent>> {
        let mut client = self.agents.clone();
        let mut stream = client
            .watch_agent_events(am::WatchAgentEventsRequest {
                after_sequence: 0,
                agent_id: id.to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let read = async {
            let mut events = Vec::new();
            while let Some(message) = stream.message().await? {
                match message.kind {
                    Some(watch_agent_events_response::Kind::Event(event)) => events.push(event),
                    Some(watch_agent_events_response::Kind::Heartbeat(_)) => return Ok(events),
                    _ => {}
                }
            }
            bail!("event stream ended")
        };
        tokio::time::timeout(WAIT, read)
            .await
            .with_context(|| format!("reading agent {id}'s events"))?
    }

    pub async fn restart_agent(&mut self, id: &str) -> anyhow::Result<am::Agent> {
        Ok(self
            .agents
            .restart_agent(am::RestartAgentRequest {
                agent_id: id.to_owned(),
            })
            .await?
            .into_inner())
    }

    pub async fn create_workflow(
        &mut self,
        name: &str,
        agent: &str,
        enabled: bool,
        template: &str,
    ) -> anyhow::Result<sched::Workflow> {
        Ok(self
            .workflows
            .create_workflow(sched::CreateWorkflowRequest {
                workflow: Some(sched::Workflow {
                    name: name.to_owned(),
                    agent_id: agent.to_owned(),
                    enabled,
                    prompt_template: template.to_owned(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner())
    }

    pub async fn trigger(
        &mut self,
        workflow: &str,
        key: &str,
        title: &str,
    ) -> anyhow::Result<sched::Task> {
        Ok(self
            .workflows
            .trigger_workflow(sched::TriggerWorkflowRequest {
                workflow_id: workflow.to_owned(),
                idempotency_key: key.to_owned(),
                fields: Some(sched::TaskFields {
                    title: title.to_owned(),
                    ..Default::default()
                }),
                timeout: None,
                priority: 0,
            })
            .await?
            .into_inner())
    }

    pub async fn runners(&mut self, agent: &str) -> anyhow::Result<Vec<sched::Runner>> {
        Ok(self
            .workflows
            .list_runners(sched::ListRunnersRequest {
                agent_id: agent.to_owned(),
            })
            .await?
            .into_inner()
            .runners)
    }

    /// Waits until the workflow's runner is in `state` (with a reason
    /// containing `reason`).
    pub async fn wait_runner(
        &self,
        workflow: &str,
        state: sched::RunnerState,
        reason: &str,
    ) -> anyhow::Result<sched::Runner> {
        let client = self.workflows.clone();
        eventually(
            WAIT,
            &format!("runner of {workflow} to be {state:?} ({reason})"),
            || {
                let mut client = client.clone();
                async move {
                    let runners = client
                        .list_runners(sched::ListRunnersRequest::default())
                        .await?
                        .into_inner()
                        .runners;
                    Ok(runners.into_iter().find(|r| {
                        r.workflow_id == workflow && r.state() == state && r.reason.contains(reason)
                    }))
                }
            },
        )
        .await
    }

    /// Waits until every listed task has reached `state`.
    pub async fn wait_tasks(
        &self,
        tasks: &[String],
        state: sched::TaskState,
    ) -> anyhow::Result<Vec<sched::Task>> {
        let client = self.workflows.clone();
        eventually(
            WAIT,
            &format!("{} tasks to be {state:?}", tasks.len()),
            || {
                let mut client = client.clone();
                async move {
                    let mut done = Vec::new();
                    for id in tasks {
                        let task = client
                            .get_task(sched::GetTaskRequest {
                                task_id: id.clone(),
                            })
                            .await?
                            .into_inner();
                        if task.state() != state {
                            return Ok(None);
                        }
                        done.push(task);
                    }
                    Ok(Some(done))
                }
            },
        )
        .await
    }

    /// A workflow's tasks (its first 100), as ListTasks returns them.
    pub async fn tasks(&self, workflow: &str) -> anyhow::Result<Vec<sched::Task>> {
        Ok(self
            .workflows
            .clone()
            .list_tasks(sched::ListTasksRequest {
                workflow_id: workflow.to_owned(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner()
            .tasks)
    }

    /// A file in this stack's scratch directory.
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// Unfinished tasks (pending or dispatched), read from the database.
    pub async fn open_tasks(&self) -> anyhow::Result<i64> {
        let db = self.db.client().await?;
        Ok(db
            .query_one(
                "SELECT count(*) FROM scheduler.tasks WHERE state IN ('pending', 'dispatched')",
                &[],
            )
            .await?
            .get(0))
    }

    /// Waits (up to `limit`) for the backlog to drain, however the services
    /// are doing meanwhile (a failed count is retried).
    pub async fn wait_drained(&self, limit: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        loop {
            match self.open_tasks().await {
                Ok(0) => return Ok(()),
                _ if start.elapsed() > limit => bail!("backlog not drained after {limit:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The services' logs so far (with `StackOptions::capture_logs`).
    pub fn service_logs(&self) -> String {
        ["agent-manager.log", "scheduler.log"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(self.scratch.join(name)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Stack {
    /// Kills the services, then every agent process group the manager
    /// recorded (an agent outlives a killed manager), so a test leaves no
    /// process behind.
    fn drop(&mut self) {
        self.scheduler.take();
        // First the manager, so that it launches nothing more.
        self.manager.kill_now();
        self.db.kill_recorded_agents();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

async fn start_manager(
    db_url: &str,
    scratch: &std::path::Path,
    listen: &str,
    advertise: Option<&str>,
    options: &StackOptions,
) -> anyhow::Result<ServiceProcess> {
    let session_heartbeat = format!("{}ms", options.session_heartbeat.as_millis());
    let mut args = strings(&[
        "--listen",
        listen,
        "--stop-grace",
        "2s",
        "--session-heartbeat",
        &session_heartbeat,
        "--event-heartbeat",
        "300ms",
    ]);
    args.extend(options.tls_args("--agent-ca-file"));
    if let Some(url) = advertise {
        args.extend(strings(&["--advertise-url", url]));
    }
    let mut env = vec![
        ("DATABASE_URL", db_url.to_owned()),
        (
            "AGENT_LOG_DIR",
            scratch.join("agent-logs").display().to_string(),
        ),
        ("RUST_LOG", options.log.clone()),
    ];
    env.extend(options.token_env("SHEPHERD_API_TOKEN"));
    env.extend(options.env.iter().cloned());
    let log = options
        .capture_logs
        .then(|| scratch.join("agent-manager.log"));
    ServiceProcess::start_logged("agent-manager", &args, &env, log.as_deref()).await
}

async fn start_scheduler(
    db_url: &str,
    scratch: &std::path::Path,
    manager_url: &str,
    options: &StackOptions,
) -> anyhow::Result<ServiceProcess> {
    let mut args = strings(&[
        "--listen",
        "127.0.0.1:0",
        "--agent-manager-url",
        manager_url,
        "--event-stream-timeout",
        "2s",
        // The wake-up safety net far beyond any test's deadline: every test
        // proves that its work is woken by notifications, not found by it.
        "--runner-poll-interval",
        "10m",
    ]);
    args.extend(strings(&[
        "--startup-window",
        &format!("{}ms", options.startup_window.as_millis()),
        "--reconcile-interval",
        &format!("{}ms", options.reconcile_interval.as_millis()),
    ]));
    if !options.level {
        args.push("--disable-level-reconcile".into());
    }
    let mut env = vec![
        ("DATABASE_URL", db_url.to_owned()),
        ("RUST_LOG", options.log.clone()),
    ];
    env.extend(options.token_env("SHEPHERD_API_TOKEN"));
    env.extend(options.token_env("AGENT_MANAGER_TOKEN"));
    env.extend(options.env.iter().cloned());
    args.extend(options.tls_args("--agent-manager-ca-file"));
    let log = options.capture_logs.then(|| scratch.join("scheduler.log"));
    ServiceProcess::start_logged("scheduler", &args, &env, log.as_deref()).await
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The restart policy of test agents: a generous budget, fast backoffs.
pub fn test_restart_policy(mode: am::RestartMode) -> am::RestartPolicy {
    shepherd_testkit::agents::restart_policy(mode, 100)
}

pub use shepherd_testkit::agents::kill9;

/// A workflow whose tasks append their title to `started`, sleep
/// `seconds`, then append it to `finished`: a test sees a task in flight and
/// counts how often each ran. Its runner is RUNNING on return.
pub async fn slow_workflow(
    stack: &mut Stack,
    seconds: f64,
) -> anyhow::Result<(sched::Workflow, std::path::PathBuf, std::path::PathBuf)> {
    let agent = stack
        .create_agent("worker", am::RestartMode::OnFailure)
        .await?;
    let started = stack.scratch_file("started.log");
    let finished = stack.scratch_file("finished.log");
    let template = format!(
        "echo {{{{title}}}} >> {}; sleep {seconds}; echo {{{{title}}}} >> {}",
        started.display(),
        finished.display()
    );
    let workflow = stack
        .create_workflow("slow", &agent.id, true, &template)
        .await?;
    stack
        .wait_runner(&workflow.id, sched::RunnerState::Running, "")
        .await?;
    Ok((workflow, started, finished))
}

/// Waits until `file` has at least `count` lines.
pub async fn wait_lines(file: &std::path::Path, count: usize) -> anyhow::Result<()> {
    eventually(
        WAIT,
        &format!("{count} lines in {}", file.display()),
        || async { Ok((lines(file).len() >= count).then_some(())) },
    )
    .await
}

/// Waits until the scheduler reports `task` in `state`.
pub async fn wait_task_state(
    stack: &Stack,
    task: &str,
    state: sched::TaskState,
) -> anyhow::Result<()> {
    let client = stack.workflows.clone();
    eventually(WAIT, &format!("task {task} {state:?}"), || {
        let mut client = client.clone();
        async move {
            let task = client
                .get_task(sched::GetTaskRequest {
                    task_id: task.to_owned(),
                })
                .await?
                .into_inner();
            Ok((task.state() == state).then_some(()))
        }
    })
    .await
}

/// Lines of a file (empty if it does not exist).
pub fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A small deterministic generator (xorshift), so a seed replays a fault
/// program's choices and moments.
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point.
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// An index in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A duration in [low, high) milliseconds.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next_u64() % (high - low))
    }
}
