//! Shepherd's scheduler: owns workflows and their tasks, keeps exactly one
//! runner per enabled workflow whose agent is ready, dispatches tasks to the
//! agent-manager, and heals runners when agents restart: on the event edge,
//! by resuming the event stream, and by periodic level passes.

pub(crate) mod agents;
pub(crate) mod api;
pub(crate) mod budgets;
pub mod config;
pub(crate) mod consumer;
pub mod error;
pub(crate) mod explain;
pub(crate) mod key_shares;
pub mod limits;
pub(crate) mod manager_client;
pub(crate) mod membership;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod recovery;
pub(crate) mod runner;
pub(crate) mod schedule;
pub(crate) mod service;
pub(crate) mod settle;
pub mod store;
pub(crate) mod task_watch;
pub(crate) mod template;
pub(crate) mod tick_plan;
pub(crate) mod wakeups;
pub(crate) mod webhook;

use std::sync::Arc;

use shepherd_platform::auth::Admission;
use shepherd_platform::{db, server};
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::agents::AgentView;
use crate::api::{Api, SchedulerServer};
use crate::config::Config;
use crate::consumer::Consumer;
use crate::manager_client::ManagerClient;
use crate::recovery::Recovery;
use crate::runner::{RunnerContext, Runners};
use crate::service::Scheduler;
use crate::store::Store;
use crate::task_watch::TaskWatch;
use crate::wakeups::Wakeups;

/// Runs the service until `shutdown` is cancelled. Prints one line,
/// `scheduler listening on ADDR`, to stdout once it accepts connections.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // First, before anything is touched: an open API off loopback lets
    // anyone trigger any workflow. (Callers wait in the backlog until the
    // server starts.)
    let (listener, bound) = server::bind(&config.listen).await?;
    // (The scheduler has no GetManagerInfo to repeat the warning in: the
    // log says it.)
    let Admission { credentials, .. } = config
        .auth
        .admit("the scheduler API", bound)
        .map_err(anyhow::Error::msg)?;
    let pool = db::open(
        &config.database.database_url,
        config.database.database_pool_size,
        store::SCHEMA,
        store::MIGRATIONS,
    )
    .await?;
    let healthy = db::watch_health(pool.clone(), shutdown.clone());
    let batches = db::connect_for_batches(&config.database.database_url, db::BATCH_POOL_SIZE)?;
    let audit = shepherd_platform::audit::AuditLog::new(pool.clone(), "scheduler.audit_events");
    tokio::spawn(
        audit
            .clone()
            .prune_periodically(config.auth.audit_retention, shutdown.clone()),
    );
    let store = Store::new(pool, &batches);
    let manager = ManagerClient::new(
        &config.agent_manager_url,
        config
            .agent_manager_token
            .as_ref()
            .map(shepherd_platform::auth::Secret::expose),
        config.agent_manager_ca_file.as_deref(),
    )?;
    let agents = Arc::new(AgentView::default());
    let membership = membership::Membership::new(config.replica_id.clone(), config.standby);
    let membership_task = tokio::spawn(membership.clone().run(
        store.clone(),
        config.database.database_url.clone(),
        config.lease_ttl,
        shutdown.clone(),
    ));
    let runners = Runners::new(
        Arc::new(RunnerContext {
            store: store.clone(),
            agents: agents.clone(),
            manager: manager.clone(),
            startup_window: config.startup_window,
            replica: config.replica_id.clone(),
            lease_ttl: config.lease_ttl,
            membership,
        }),
        shutdown.child_token(),
    );
    let budgets = budgets::Budgets::new(store.clone(), manager.clone());
    let recovery = Arc::new(Recovery {
        budgets: budgets.clone(),
        store: store.clone(),
        runners: runners.clone(),
        agents,
        manager: manager.clone(),
        replica: config.replica_id.clone(),
        stall_after: config.stall_after,
    });
    let (task_changes, changes) = tokio::sync::watch::channel(0u64);
    let scheduler = Arc::new(Scheduler {
        store: store.clone(),
        runners: runners.clone(),
        manager: manager.clone(),
        task_watch: TaskWatch {
            store: store.clone(),
            changes,
            shutdown: shutdown.clone(),
        },
    });

    let webhooks = match &config.webhook_listen {
        Some(addr) => Some(
            serve_webhooks(
                addr,
                config.webhook_public_url.clone(),
                scheduler.clone(),
                config.webhook_max_body_bytes,
                config.tls.http_server_config()?,
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let mut routes = RoutesBuilder::default();
    routes.add_service(
        shepherd_platform::auth::RoleGate::new(
            SchedulerServer::new(Api::new(scheduler, webhooks.clone(), audit.clone()))
                .max_decoding_message_size(config.grpc.max_message_bytes),
            credentials,
            api::permission,
        )
        .with_audit(audit),
    );
    let names = vec![<SchedulerServer<Api> as NamedService>::NAME];
    let tls = config.tls.server_config()?;
    let serving = tokio::spawn(server::serve(
        listener,
        routes,
        names,
        tls,
        healthy,
        shutdown.clone(),
    ));
    println!("scheduler listening on {bound}");
    if let Some(url) = &webhooks {
        // After the line above, which tools wait for.
        println!("scheduler webhooks at {url}/hooks/{{workflow}}");
    }
    tracing::info!(%bound, manager = %config.agent_manager_url, replica = %config.replica_id, "scheduler listening");

    let gauge_runners = std::sync::Arc::downgrade(&runners);
    let _runners_gauge = metrics::runners_gauge(move || {
        gauge_runners
            .upgrade()
            .map(|runners| runners.count_by_state())
            .unwrap_or_default()
    });
    let consumer = Consumer {
        store: store.clone(),
        manager: manager.clone(),
        recovery,
        reconcile_interval: config.reconcile_interval,
        stream_timeout: config.event_stream_timeout,
        level_enabled: !config.disable_level_reconcile,
    };
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));
    let scheduling = tokio::spawn(schedule::run(
        store.clone(),
        runners.clone(),
        shutdown.clone(),
    ));
    let wakeups = Wakeups {
        store,
        runners: runners.clone(),
        database_url: config.database.database_url.clone(),
        safety_interval: config.runner_poll_interval,
        task_changes,
    };
    let waking = tokio::spawn(wakeups.run(shutdown.clone()));
    let budgeting = tokio::spawn(budgets.run(shutdown.clone()));

    let served = serving.await;
    runners.shutdown().await;
    let _ = consuming.await;
    let _ = scheduling.await;
    let _ = waking.await;
    let _ = budgeting.await;
    let _ = membership_task.await;
    served??;
    Ok(())
}

/// Serves the webhook endpoint until shutdown; returns the base URL it is
/// reached at.
async fn serve_webhooks(
    addr: &str,
    public_url: Option<String>,
    scheduler: Arc<Scheduler>,
    max_body: usize,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("binding the webhook address {addr}: {err}"))?;
    let bound = listener.local_addr()?;
    let router = api::webhooks::router(scheduler, max_body);
    let scheme = if tls.is_some() { "https" } else { "http" };
    match tls {
        // The services' own certificate: a delivery's body and signature
        // never cross the network in clear when TLS is configured.
        Some(tls) => {
            tokio::spawn(serve_https(listener, router, tls, shutdown));
        }
        None => {
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await;
                if let Err(err) = served {
                    tracing::error!(error = %err, "the webhook server failed");
                }
            });
        }
    }
    tracing::info!(%bound, scheme, "scheduler webhooks listening");
    Ok(public_url.unwrap_or_else(|| {
        let host = if bound.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            bound.ip().to_string()
        };
        format!("{scheme}://{host}:{}", bound.port())
    }))
}

/// Serves `router` over TLS until `shutdown`: one task per connection
/// (a handshake that fails or stalls holds up no one else).
async fn serve_https(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a webhook connection failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
