//! A lock that lives exactly as long as one database session.
//!
//! A session-level advisory lock, taken on a connection of its own (outside
//! the pool, which would hand the connection to other work). PostgreSQL
//! releases it the moment that connection ends: when its process dies, the
//! kernel closes the socket and the server ends the session at once. A
//! process that is alive but stopped (SIGSTOP, a long pause, a full disk)
//! keeps it: its kernel keeps the connection open. So a free lock means
//! "its holder is certainly gone", while a held one only means "maybe
//! slow": whoever acts on a free lock still needs its own fencing against a
//! holder whose connection broke while it lives on (see the scheduler's
//! `membership`).
//!
//! Others test a lock without taking it, through `pg_locks`
//! (`HELD_BY_SOME_SESSION`): taking it to test it could make its owner's
//! reconnect fail.

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::db::{DbError, POOL_WAIT};

/// The `application_name` of session-lock connections.
pub const APPLICATION_NAME: &str = "shepherd-session-lock";

/// A SQL condition, true while the advisory lock whose `bigint` key is
/// `$KEY` (replace it with an expression) is held by a session of this
/// database. A bigint key shows in `pg_locks` as its high and low 32 bits.
pub const HELD_BY_SOME_SESSION: &str = "EXISTS (
    SELECT FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = (($KEY) >> 32) & 4294967295
      AND l.objid::bigint = ($KEY) & 4294967295)";

/// The condition of `HELD_BY_SOME_SESSION` for the key in `key`.
pub fn held_by_some_session(key: &str) -> String {
    HELD_BY_SOME_SESSION.replace("$KEY", key)
}

/// A key no other process picks: random.
pub fn random_key() -> Result<i64, DbError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|err| DbError::Config(format!("no randomness for a lock key: {err}")))?;
    Ok(i64::from_ne_bytes(bytes))
}

/// A held session lock; dropping it ends the session (and so the lock).
pub struct SessionLock {
    key: i64,
    // The session lasts as long as its client.
    _client: tokio_postgres::Client,
    ended: CancellationToken,
}

impl SessionLock {
    /// Opens a connection to `url` and takes the lock `key` on it. Fails if
    /// the database cannot be reached or another session holds the key.
    pub async fn acquire(url: &str, key: i64) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        // Named, so an operator (or a test) can find it in pg_stat_activity.
        config
            .application_name(APPLICATION_NAME)
            .connect_timeout(POOL_WAIT);
        let (client, connection) = config.connect(NoTls).await?;
        let ended = CancellationToken::new();
        let on_end = ended.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::warn!(error = %err, "a session-lock connection failed");
            }
            on_end.cancel();
        });
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if !taken {
            return Err(DbError::Config(
                "the session lock is held by another session".into(),
            ));
        }
        Ok(Self {
            key,
            _client: client,
            ended,
        })
    }

    pub fn key(&self) -> i64 {
        self.key
    }

    /// Resolves once the connection, and with it the lock, is gone.
    pub async fn lost(&self) {
        self.ended.cancelled().await;
    }
}
