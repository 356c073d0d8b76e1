//! The audit log: every call that changed (or tried to change) something,
//! who made it, with which role, about what, how it ended, when and from
//! where. Appended by the role gate (`auth::RoleGate`) for every call that
//! needs more than reading, before the answer leaves: a call nobody can
//! see in the log never happened. Each service keeps its own table
//! (`<schema>.audit_events`, created by its migrations) and serves it with
//! `ListAuditEvents`; entries older than the retention are pruned.
//!
//! Not recorded: reads, and the scheduler's own dispatches (a `service`
//! credential's, or anyone's on an open API: one per task batch, which the
//! task tables record).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::db::{DbError, DbPool};

/// Longest target and peer kept.
const MAX_FIELD: usize = 200;

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub who: String,
    pub role: String,
    pub rpc: String,
    pub target: String,
    pub outcome: String,
    pub peer: String,
}

/// An entry as stored.
#[derive(Debug, Clone)]
pub struct StoredAuditEntry {
    pub id: Uuid,
    pub time: SystemTime,
    pub entry: AuditEntry,
}

/// Which entries to list (newest first).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub who: Option<String>,
    pub target: Option<String>,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    /// Paging: only entries older than this one.
    pub before: Option<Uuid>,
}

/// What an audited call is about, as its handler names it (see
/// `record_target`).
#[derive(Clone, Debug, Default)]
pub struct AuditTarget(Arc<Mutex<String>>);

impl AuditTarget {
    pub(crate) fn get(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

tokio::task_local! {
    /// The audit target of the call being served (set by the gate around
    /// an audited call's handler).
    static CALL_TARGET: AuditTarget;
}

/// Runs `call` with its audit target recorded in `target`.
pub(crate) async fn with_target<F: std::future::Future>(target: AuditTarget, call: F) -> F::Output {
    CALL_TARGET.scope(target, call).await
}

/// Names what the call being served is about, for its audit entry: the
/// first id a handler records (`server::record_id` calls this) wins. A
/// no-op outside an audited call.
pub fn record_target(target: &dyn std::fmt::Display) {
    let _ = CALL_TARGET.try_with(|slot| {
        let mut current = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
        if current.is_empty() {
            *current = target.to_string();
        }
    });
}

/// One service's audit table.
#[derive(Clone)]
pub struct AuditLog {
    pool: DbPool,
    /// `<schema>.audit_events`.
    table: &'static str,
}

impl AuditLog {
    pub fn new(pool: DbPool, table: &'static str) -> Self {
        Self { pool, table }
    }

    pub async fn append(&self, entry: &AuditEntry) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO {} (id, who, role, rpc, target, outcome, peer)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            self.table
        );
        let bounded = |text: &str| crate::text::storable(text.to_owned(), MAX_FIELD);
        client
            .execute(
                &client.prepare_cached(&sql).await?,
                &[
                    &Uuid::now_v7(),
                    &bounded(&entry.who),
                    &entry.role,
                    &entry.rpc,
                    &bounded(&entry.target),
                    &entry.outcome,
                    &bounded(&entry.peer),
                ],
            )
            .await?;
        Ok(())
    }

    /// Newest first, at most `limit`.
    pub async fn list(
        &self,
        filter: &AuditFilter,
        limit: i64,
    ) -> Result<Vec<StoredAuditEntry>, DbError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "SELECT id, time, who, role, rpc, target, outcome, peer FROM {}
             WHERE ($1::text IS NULL OR who = $1)
               AND ($2::text IS NULL OR target = $2)
               AND ($3::timestamptz IS NULL OR time >= $3)
               AND ($4::timestamptz IS NULL OR time < $4)
               AND ($5::uuid IS NULL OR id < $5)
             ORDER BY id DESC LIMIT $6",
            self.table
        );
        let rows = client
            .query(
                &client.prepare_cached(&sql).await?,
                &[
                    &filter.who,
                    &filter.target,
                    &filter.since,
                    &filter.until,
                    &filter.before,
                    &limit,
                ],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| StoredAuditEntry {
                id: row.get(0),
                time: row.get(1),
                entry: AuditEntry {
                    who: row.get(2),
                    role: row.get(3),
                    rpc: row.get(4),
                    target: row.get(5),
                    outcome: row.get(6),
                    peer: row.get(7),
                },
            })
            .collect())
    }

    /// Deletes the entries older than `retention`; how many.
    pub async fn prune(&self, retention: Duration) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        let sql = format!(
            "DELETE FROM {} WHERE time < now() - make_interval(secs => $1)",
            self.table
        );
        Ok(client
            .execute(
                &client.prepare_cached(&sql).await?,
                &[&retention.as_secs_f64()],
            )
            .await?)
    }

    /// Prunes once an hour until `shutdown`.
    pub async fn prune_periodically(
        self,
        retention: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(err) = self.prune(retention).await {
                tracing::warn!(error = %err, "audit retention pass failed");
            }
        }
    }
}

/// Largest `ListAuditEvents` page, and the default one.
const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 100;

/// `ListAuditEvents` as each service's handler answers it: the handler is
/// this one line on both.
pub async fn list_events_rpc(
    log: &AuditLog,
    request: tonic::Request<shepherd_proto::audit::v1::ListAuditEventsRequest>,
) -> Result<tonic::Response<shepherd_proto::audit::v1::ListAuditEventsResponse>, tonic::Status> {
    Ok(tonic::Response::new(
        list_events(log, request.into_inner()).await?,
    ))
}

/// `ListAuditEvents`, the same on both services: the request checked
/// (bounded, NUL-free filters; a page token this call gave), the page read,
/// the answer on the wire.
pub async fn list_events(
    log: &AuditLog,
    request: shepherd_proto::audit::v1::ListAuditEventsRequest,
) -> Result<shepherd_proto::audit::v1::ListAuditEventsResponse, crate::error::Error> {
    use shepherd_proto::audit::v1 as pb;
    let limit = crate::paging::page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE)?;
    let text = |field: &str, value: String| -> Result<Option<String>, crate::error::Error> {
        crate::validate::text(field, &value, MAX_FIELD)?;
        Ok((!value.is_empty()).then_some(value))
    };
    let time = |field: &str, value: Option<prost_types::Timestamp>| {
        value.map(|at| crate::validate::time(field, at)).transpose()
    };
    let filter = AuditFilter {
        who: text("who", request.who)?,
        target: text("target", request.target)?,
        since: time("since", request.since)?,
        until: time("until", request.until)?,
        before: crate::paging::after(&request.page_token, "ListAuditEvents")?,
    };
    let page = log.list(&filter, limit).await?;
    let next_page_token = crate::paging::next_token(&page, limit, |stored| stored.id);
    Ok(pb::ListAuditEventsResponse {
        events: page
            .into_iter()
            .map(|stored| pb::AuditEvent {
                id: stored.id.to_string(),
                time: Some(stored.time.into()),
                who: stored.entry.who,
                role: stored.entry.role,
                rpc: stored.entry.rpc,
                target: stored.entry.target,
                outcome: stored.entry.outcome,
                peer: stored.entry.peer,
            })
            .collect(),
        next_page_token,
    })
}

/// A gRPC code as the audit log writes it: `OK`, `PERMISSION_DENIED`, ...
pub fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    if code == tonic::Code::Ok {
        return "OK".to_owned();
    }
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(super::code_name(tonic::Code::Ok), "OK");
        assert_eq!(
            super::code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(super::code_name(tonic::Code::NotFound), "NOT_FOUND");
    }
}
