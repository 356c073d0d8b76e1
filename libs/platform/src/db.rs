//! PostgreSQL: the connection pool and versioned migrations applied at
//! start-up. Each service owns one schema and passes its own migrations.

use deadpool_postgres::{Config, ManagerConfig, Pool, PoolConfig, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use deadpool_postgres::{Object as Client, Pool as DbPool, PoolError, Transaction};

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
    /// One failure shared by every item of a batch (see `batch`).
    #[error("{0}")]
    Shared(std::sync::Arc<DbError>),
}

/// The server's own message when there is one: tokio-postgres displays a
/// server error only as "db error".
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

impl DbError {
    /// For batch functions: an error every item of the batch can share.
    pub fn shared(err: impl Into<DbError>) -> std::sync::Arc<DbError> {
        std::sync::Arc::new(err.into())
    }
}

/// One versioned migration. Versions are applied in ascending order, each
/// exactly once, inside one transaction per start-up.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Creates a pool. Connections are opened lazily, so this does not fail when
/// the database is down; `migrate` is the first call that needs it.
pub fn connect(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    // Fast recycling runs no query on checkout; a broken connection is
    // detected by its failed query and dropped by the pool.
    config.manager = Some(ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    });
    config.pool = Some(PoolConfig::new(max_size.max(1)));
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .map_err(|err| DbError::Config(err.to_string()))
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
