//! PostgreSQL: the connection pool and versioned migrations applied at
//! start-up. Each service owns one schema and passes its own migrations.

use std::future::Future;
use std::sync::Arc;

use std::time::Duration;

use deadpool_postgres::{
    Config, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime, Timeouts,
};
use tokio_postgres::NoTls;

use crate::batch::{BatchLimits, Batcher};

pub use deadpool_postgres::{
    GenericClient, Object as Client, Pool as DbPool, PoolError, Transaction,
};
pub use tokio_postgres::Error as PostgresError;

/// Takes a connection out of its pool and closes it: for one left in a
/// state no one else may be handed (a transaction opened by hand and cut
/// short). The server rolls back whatever it had open.
pub fn discard(client: Client) {
    drop(deadpool_postgres::Object::take(client));
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    #[error("could not get a database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database error: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// One failure shared by every item of a batch (see `batch`).
    #[error("{0}")]
    Shared(Arc<DbError>),
}

impl DbError {
    /// Whether trying the same statement again could succeed: the
    /// connection broke, the server is shutting down or short of
    /// resources, or the transaction lost a serialization race. A data
    /// error (a NUL in text, a value out of range, a broken constraint)
    /// fails the same way every time: retrying it only holds back whatever
    /// waits behind it.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Pool(_) | Self::Timeout(_) => true,
            Self::Config(_) | Self::Migration { .. } => false,
            Self::Shared(inner) => inner.is_transient(),
            Self::Postgres(err) => match err.as_db_error() {
                // No server error: the connection or the protocol failed.
                None => true,
                Some(db) => {
                    let code = db.code().code();
                    // 08 connection, 40 rollback (serialization, deadlock),
                    // 53 insufficient resources, 57 operator intervention
                    // (shutdown, cancel), 58 system error (I/O).
                    ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|class| code.starts_with(class))
                }
            },
        }
    }
}

/// The server's own message when there is one: tokio-postgres displays a
/// server error only as "db error".
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

/// A group-commit batcher of database work (see `batch`): its items'
/// results, or the one error of their batch.
pub type DbBatcher<I, O> = Batcher<I, O, Arc<DbError>>;

/// Starts a `DbBatcher`: `run` gets a pooled connection and one batch, and
/// returns one output per item, in order.
pub fn batcher<I, O, F, Fut>(pool: &Pool, run: F) -> DbBatcher<I, O>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Client, Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<O>, DbError>> + Send + 'static,
{
    let pool = pool.clone();
    let run = Arc::new(run);
    Batcher::spawn(BatchLimits::default(), move |items| {
        let (pool, run) = (pool.clone(), run.clone());
        async move {
            let client = pool.get().await.map_err(|err| Arc::new(err.into()))?;
            run(client, items).await.map_err(Arc::new)
        }
    })
}

/// One versioned migration. Versions are applied in ascending order, each
/// exactly once, inside one transaction per start-up.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Longest wait for a pooled connection, and for opening a new one. A
/// caller never waits forever: during an outage, or when every connection
/// is busy, it gets an error it can map to UNAVAILABLE instead of hanging
/// (and holding whatever it already holds).
pub const POOL_WAIT: Duration = Duration::from_secs(5);

/// Creates a pool. Connections are opened lazily, so this does not fail when
/// the database is down; `migrate` is the first call that needs it.
pub fn connect(url: &str, max_size: usize) -> Result<Pool, DbError> {
    pool(url, max_size, None)
}

/// Connections of a service's batch pool: one for each of its batchers
/// (one batch in flight each) and the agent-manager's event writer.
pub const BATCH_POOL_SIZE: usize = 4;

/// Creates the pool for group-commit batchers (`batcher`). Their statements
/// run thousands of times a second with arrays whose length varies from
/// call to call, so PostgreSQL keeps re-planning them (a custom plan per
/// length looks cheaper to it than the generic one): on a busy service
/// that planning took about a third of the database's time. Their plans do
/// not depend on the values, so these connections always use the generic
/// plan. The other statements keep the default: some (`$1 IS NULL OR ...`
/// filters) need a plan made for their values.
pub fn connect_for_batches(url: &str, max_size: usize) -> Result<Pool, DbError> {
    pool(url, max_size, Some("-c plan_cache_mode=force_generic_plan"))
}

fn pool(url: &str, max_size: usize, options: Option<&str>) -> Result<Pool, DbError> {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.options = options.map(str::to_owned);
    config.connect_timeout = Some(POOL_WAIT);
    // Fast recycling runs no query on checkout; a broken connection is
    // detected by its failed query and dropped by the pool.
    config.manager = Some(ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    });
    let mut pool = PoolConfig::new(max_size.max(1));
    pool.timeouts = Timeouts {
        wait: Some(POOL_WAIT),
        create: Some(POOL_WAIT),
        recycle: Some(POOL_WAIT),
    };
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .map_err(|err| DbError::Config(err.to_string()))
}

/// A pool for `url` with `schema` migrated: what each service needs at
/// start-up before it touches its tables.
pub async fn open(
    url: &str,
    max_size: usize,
    schema: &str,
    migrations: &[Migration],
) -> Result<Pool, DbError> {
    let pool = connect(url, max_size)?;
    migrate(&pool, schema, migrations).await?;
    Ok(pool)
}

/// Applies the migrations of `schema` that have not been applied yet.
///
/// A transaction-scoped advisory lock serializes concurrent starters (two
/// replicas starting together), and is released by commit or rollback, so a
/// pooled connection can never keep it.
pub async fn migrate(pool: &Pool, schema: &str, migrations: &[Migration]) -> Result<(), DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema])
        .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let applied: Vec<i32> = tx
        .query(
            &format!("SELECT version FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();

    let mut pending: Vec<&Migration> = migrations
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect();
    pending.sort_by_key(|m| m.version);
    for migration in pending {
        tx.batch_execute(migration.sql)
            .await
            .map_err(|source| DbError::Migration {
                version: migration.version,
                name: migration.name,
                source,
            })?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await?;
        tracing::info!(
            schema,
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the database answers a trivial query within `POOL_WAIT`.
pub async fn ping(pool: &Pool) -> Result<(), DbError> {
    let check = async {
        let client = pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok::<(), DbError>(())
    };
    match tokio::time::timeout(POOL_WAIT, check).await {
        Ok(result) => result,
        Err(_) => Err(DbError::Timeout(POOL_WAIT)),
    }
}

/// How often `watch_health` checks the database.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Pings the database every second until `stop`, publishing whether it
/// answers. The gRPC health service follows it (see `server::serve`), so a
/// service whose database is unreachable says NOT_SERVING instead of
/// pretending all is well.
pub fn watch_health(
    pool: Pool,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::sync::watch::Receiver<bool> {
    let (healthy, receiver) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        loop {
            let result = ping(&pool).await;
            let up = result.is_ok();
            if up != *healthy.borrow() {
                match &result {
                    Ok(()) => tracing::info!("database reachable again"),
                    Err(err) => tracing::warn!(error = %err, "database unreachable"),
                }
                healthy.send_replace(up);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HEALTH_EVERY) => {}
            }
        }
    });
    receiver
}
