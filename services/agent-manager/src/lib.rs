//! Shepherd's agent-manager: creates, supervises and restarts agent
//! processes, accepts the session each agent opens back to it, delivers
//! tasks over it, and keeps the durable event log that clients watch.

pub(crate) mod ack_coalescing;
pub(crate) mod api;
pub(crate) mod approvals;
pub mod config;
pub mod containment;
pub(crate) mod courier;
pub mod error;
pub mod events;
pub(crate) mod kubernetes;
pub mod limits;
pub(crate) mod logs;
pub(crate) mod manager;
pub(crate) mod metrics;
pub(crate) mod model;
pub(crate) mod node;
pub(crate) mod process;
pub(crate) mod procfs;
pub(crate) mod protocol;
pub(crate) mod rate;
pub(crate) mod sessions;
pub(crate) mod store;
pub(crate) mod supervisor;
pub(crate) mod workload;

use std::sync::Arc;
use std::time::Duration;

use shepherd_platform::auth::Admission;
use shepherd_platform::{db, server};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::api::{AgentManagerServer, AgentSessionServer, Api, Peers};
use crate::approvals::Approvals;
use crate::config::Config;
use crate::containment::Containment;
use crate::events::EventLog;
use crate::logs::LogDir;
use crate::manager::Manager;
use crate::node::NodeLease;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::supervisor::{Context, Supervisors};

/// Runs the service until `shutdown` is cancelled. Prints one line,
/// `agent-manager listening on ADDR`, to stdout once it accepts connections.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (listener, bound) = server::bind(&config.listen).await?;
    // Before anything else: an open API off loopback is remote code
    // execution (CreateAgent runs any command).
    let Admission {
        warning: security_warning,
        credentials,
    } = config
        .auth
        .admit("the agent-manager API", bound)
        .map_err(anyhow::Error::msg)?;
    let agent_user = match &config.agent_user {
        Some(name) => Some(
            process::AgentUser::resolve(name)
                .map_err(|why| anyhow::anyhow!("SHEPHERD_AGENT_USER: {why}"))?,
        ),
        None => {
            if nix::unistd::geteuid().is_root() {
                tracing::info!(
                    "agents run as root, without capabilities; set SHEPHERD_AGENT_USER to run them as an unprivileged user"
                );
            }
            None
        }
    };
    let pool = db::open(
        &config.database.database_url,
        config.database.database_pool_size,
        store::SCHEMA,
        store::MIGRATIONS,
    )
    .await?;
    let healthy = db::watch_health(pool.clone(), shutdown.clone());
    let advertised = config.advertise_url(bound);
    // Peers forward calls about this node's agents to the same URL its
    // agents connect to.
    let fence = store::join(&pool, &config.node_name, &advertised, config.node_lease_ttl).await?;
    tracing::info!(node = %fence.name, term = fence.term, "joined as a manager node");
    let batches = db::connect_for_batches(&config.database.database_url, db::BATCH_POOL_SIZE)?;
    let audit = shepherd_platform::audit::AuditLog::new(pool.clone(), "agent_manager.audit_events");
    tokio::spawn(
        audit
            .clone()
            .prune_periodically(config.auth.audit_retention, shutdown.clone()),
    );
    let store = Store::new(pool, &batches, fence);
    let events = EventLog::start(
        store.clone(),
        config.event_heartbeat,
        &config.database.database_url,
        shutdown.clone(),
    )
    .await?;

    let containment = Arc::new(Containment::start(
        config.containment,
        &config.cgroup_parent,
        config.default_limits()?,
    )?);
    let _usage_gauges = metrics::containment_gauges(containment.clone());

    let kubernetes = match &config.kubernetes_api_url {
        Some(url) => Some(Arc::new(
            kubernetes::Kubernetes::connect(
                url,
                &config.kubernetes_namespace,
                config.kubernetes_poll_interval,
            )
            .await?,
        )),
        None => None,
    };
    let ctx = Arc::new(Context {
        store: store.clone(),
        containment,
        kubernetes,
        events: events.clone(),
        sessions: Sessions::default(),
        logs: LogDir::new(config.log_dir(), config.log_max_bytes),
        manager_url: advertised,
        manager_ca_file: config.agent_ca_file.clone(),
        agent_user,
        stop_grace: config.stop_grace,
        live_restore: config.live_restore,
        reconnect_grace: config.reconnect_grace,
    });
    tokio::spawn(ctx.logs.clone().rotate_periodically(shutdown.clone()));
    let approvals = Approvals::new(store.clone(), events.clone(), config.approval_timeout);
    tokio::spawn(courier::run(
        events.clone(),
        ctx.sessions.clone(),
        shutdown.clone(),
    ));
    let sessions = ctx.sessions.clone();
    let _sessions_gauge = metrics::sessions_gauge(move || sessions.len() as u64);
    let supervisors = Arc::new(Supervisors::new(ctx));
    let lease = NodeLease {
        store: store.clone(),
        events: events.clone(),
        supervisors: supervisors.clone(),
        ttl: config.node_lease_ttl,
    };
    let manager = Arc::new(Manager::new(
        supervisors,
        approvals.clone(),
        config.session_heartbeat,
        config.cancel_grace,
        shutdown.clone(),
    ));

    let api = Api::new(
        manager.clone(),
        Peers::new(
            config.auth.service_token(),
            config.agent_ca_file.clone(),
            &config.node_name,
        )?,
        security_warning,
        audit.clone(),
    );
    let mut routes = RoutesBuilder::default();
    // The API is behind the role gate (credentials and roles); agent
    // sessions authenticate with their own per-agent tokens.
    routes
        .add_service(
            shepherd_platform::auth::RoleGate::new(
                AgentManagerServer::new(api.clone())
                    .max_decoding_message_size(config.grpc.max_message_bytes),
                credentials,
                api::permission,
            )
            .with_audit(audit),
        )
        .add_service(
            AgentSessionServer::new(api).max_decoding_message_size(config.grpc.max_message_bytes),
        );
    let names = vec![
        <AgentManagerServer<Api> as NamedService>::NAME,
        <AgentSessionServer<Api> as NamedService>::NAME,
    ];
    // Recover before serving: API calls must not race the start-up
    // reconciliation. Relaunched agents that connect meanwhile wait in the
    // (already bound) listener's backlog.
    manager.recover().await?;
    tokio::spawn(lease.keep(shutdown.clone()));
    tokio::spawn(approvals.run(shutdown.clone()));
    let tls = config.tls.server_config()?;
    let serving = tokio::spawn(server::serve(
        listener,
        routes,
        names,
        tls,
        healthy,
        shutdown.clone(),
    ));
    println!("agent-manager listening on {bound}");
    tracing::info!(%bound, "agent-manager listening");
    tokio::spawn(prune_periodically(
        events,
        store,
        config.event_retention,
        shutdown.clone(),
    ));

    let served = serving.await;
    // The server has drained; stop the processes (desired states stay as
    // they are, so the next start-up brings them back).
    manager.shutdown().await;
    served??;
    Ok(())
}

/// Applies the event retention once a minute.
async fn prune_periodically(
    events: EventLog,
    store: Store,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let result = match store.last_seq_older_than(retention).await {
            Ok(Some(through)) => events.prune(through).await.map(drop),
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "event retention pass failed");
        }
    }
}
