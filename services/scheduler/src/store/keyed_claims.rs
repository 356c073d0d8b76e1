//! Claims of workflows that name concurrency keys.
//!
//! One transaction per batch of such claims: it locks the rows of the keys
//! involved (`FOR NO KEY UPDATE`, in name order, so claimers never
//! deadlock), counts the dispatched tasks holding each, reads the
//! contenders (the workflows claiming now, with their claimable tasks
//! locked `SKIP LOCKED`, and the workflows waiting elsewhere), lets
//! `key_shares::share` decide, and marks what it granted dispatched,
//! holding the keys. Because every claimer of a key holds its row lock
//! until commit, and the count reads committed rows only, no two claims
//! can both see a slot free: the limit holds across replicas. A crash
//! rolls the whole claim back.

use std::collections::HashMap;

use shepherd_platform::db::{Client, DbError};
use uuid::Uuid;

use super::Claimed;
use super::claims::{ClaimRequest, claimed_from_row};
use crate::key_shares::{Candidate, Contender, share};

/// What a keyed claim took for one workflow, and whether the workflow now
/// waits for a key's slot.
#[derive(Debug, Default)]
pub(super) struct KeyedClaim {
    pub tasks: Vec<Claimed>,
    pub waiting: bool,
}

/// Claims for `requests` (all of keyed workflows) in one transaction.
pub(super) async fn claim_keyed(
    client: &mut Client,
    requests: &[&ClaimRequest],
) -> Result<HashMap<Uuid, KeyedClaim>, DbError> {
    let tx = client.transaction().await?;
    let workflows: Vec<Uuid> = requests.iter().map(|r| r.workflow).collect();
    let owners: Vec<&str> = requests.iter().map(|r| r.owner.as_str()).collect();
    let terms: Vec<i64> = requests.iter().map(|r| r.term).collect();

    // The keys, locked in name order. Counted after the lock is held, in
    // a statement of its own: a statement sees the rows committed when it
    // started, so a count in the locking statement could miss the tasks
    // a claim it waited for had just dispatched.
    let locked = tx
        .query(
            &tx.prepare_cached(
                "SELECT k.name FROM scheduler.concurrency_keys k
                 WHERE k.name IN (SELECT unnest(w.concurrency_keys) FROM scheduler.workflows w
                                  WHERE w.id = ANY($1))
                 ORDER BY k.name FOR NO KEY UPDATE OF k",
            )
            .await?,
            &[&workflows],
        )
        .await?;
    let names: Vec<String> = locked.iter().map(|row| row.get(0)).collect();
    let keys = tx
        .query(
            &tx.prepare_cached(
                "SELECT k.max_running - (
                     SELECT count(*) FROM scheduler.tasks t
                     WHERE t.state = 'dispatched' AND t.held_keys IS NOT NULL
                       AND t.held_keys @> ARRAY[k.name])
                 FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
                 JOIN scheduler.concurrency_keys k ON k.name = n.name
                 ORDER BY n.i",
            )
            .await?,
            &[&names],
        )
        .await?;
    let free: Vec<u32> = keys
        .iter()
        .map(|row| u32::try_from(row.get::<_, i64>(0).max(0)).unwrap_or(0))
        .collect();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let key_indices = |keys: &[String]| -> Vec<usize> {
        keys.iter()
            .filter_map(|key| index.get(key.as_str()).copied())
            .collect()
    };

    // The workflows claiming now: lease and room checked as for any claim,
    // their claimable tasks (best first) locked.
    let here = tx
        .query(
            &tx.prepare_cached(
                "WITH request AS (
                     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS r(workflow_id, owner, term)
                 ), room AS (
                     SELECT w.id, w.concurrency_keys, w.max_concurrency - busy.n AS n
                     FROM request r
                     JOIN scheduler.runner_leases l ON l.workflow_id = r.workflow_id
                          AND l.owner = r.owner AND l.term = r.term AND l.expires_at > now()
                     JOIN scheduler.replicas p ON p.id = r.owner AND p.expires_at > now()
                     JOIN scheduler.workflows w ON w.id = r.workflow_id AND w.enabled
                     CROSS JOIN LATERAL (
                         SELECT count(*) AS n FROM (
                             SELECT FROM scheduler.tasks d
                             WHERE d.workflow_id = w.id AND d.state = 'dispatched'
                             LIMIT w.max_concurrency) dispatched) busy
                     WHERE busy.n < w.max_concurrency
                     FOR SHARE OF l
                 )
                 SELECT room.id, room.concurrency_keys, room.n,
                        (SELECT extract(epoch FROM max(s.served_at)) * 1000
                         FROM scheduler.workflow_keys s WHERE s.workflow_id = room.id)::bigint,
                        c.id, c.priority, c.seq
                 FROM room, LATERAL (
                     SELECT t.id, t.priority, t.seq FROM scheduler.tasks t
                     WHERE t.workflow_id = room.id AND t.state = 'pending'
                       AND (t.not_before IS NULL OR t.not_before <= now())
                     ORDER BY t.priority DESC, t.seq LIMIT room.n FOR UPDATE SKIP LOCKED
                 ) c",
            )
            .await?,
            &[&workflows, &owners, &terms],
        )
        .await?;

    // The workflows waiting elsewhere for a slot of these keys: enabled,
    // their lease held by a live replica, with room and a claimable task.
    let elsewhere = tx
        .query(
            &tx.prepare_cached(
                "SELECT w.id, w.concurrency_keys,
                        (SELECT extract(epoch FROM max(s.served_at)) * 1000
                         FROM scheduler.workflow_keys s WHERE s.workflow_id = w.id)::bigint,
                        head.priority, head.seq
                 FROM scheduler.workflows w
                 CROSS JOIN LATERAL (
                     SELECT t.priority, t.seq FROM scheduler.tasks t
                     WHERE t.workflow_id = w.id AND t.state = 'pending'
                       AND (t.not_before IS NULL OR t.not_before <= now())
                     ORDER BY t.priority DESC, t.seq LIMIT 1) head
                 WHERE w.id IN (SELECT wk.workflow_id FROM scheduler.workflow_keys wk
                                WHERE wk.key = ANY($1) AND wk.waiting_since IS NOT NULL)
                   AND w.id <> ALL($2) AND w.enabled
                   AND EXISTS (
                     SELECT FROM scheduler.runner_leases l
                     JOIN scheduler.replicas p ON p.id = l.owner AND p.expires_at > now()
                     WHERE l.workflow_id = w.id AND l.expires_at > now())
                   AND (SELECT count(*) FROM (
                          SELECT FROM scheduler.tasks d
                          WHERE d.workflow_id = w.id AND d.state = 'dispatched'
                          LIMIT w.max_concurrency) busy) < w.max_concurrency",
            )
            .await?,
            &[&names, &workflows],
        )
        .await?;

    // Contenders: each workflow claiming now (in request order), then each
    // waiting elsewhere.
    let mut contenders: Vec<Contender<String>> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut position: HashMap<Uuid, usize> = HashMap::new();
    for row in &here {
        let workflow: Uuid = row.get(0);
        let i = *position.entry(workflow).or_insert_with(|| {
            ids.push(workflow);
            contenders.push(Contender {
                keys: key_indices(&row.get::<_, Vec<String>>(1)),
                served: row.get(3),
                room: u32::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                tasks: Vec::new(),
                here: true,
            });
            contenders.len() - 1
        });
        contenders[i].tasks.push(Candidate {
            task: row.get(4),
            priority: row.get(5),
            seq: row.get(6),
        });
    }
    for row in &elsewhere {
        ids.push(row.get(0));
        contenders.push(Contender {
            keys: key_indices(&row.get::<_, Vec<String>>(1)),
            served: row.get(2),
            room: 1,
            tasks: vec![Candidate {
                task: String::new(),
                priority: row.get(3),
                seq: row.get(4),
            }],
            here: false,
        });
    }
    let shares = share(&free, &contenders);

    let granted: Vec<&str> = shares
        .granted
        .iter()
        .map(|(_, task)| task.as_str())
        .collect();
    let served: Vec<Uuid> = shares.granted.iter().map(|(i, _)| ids[*i]).collect();
    let waiting: Vec<Uuid> = shares.waiting.iter().map(|i| ids[*i]).collect();
    let reserved: Vec<Uuid> = shares.reserved.iter().map(|i| ids[*i]).collect();
    let rows = if granted.is_empty() {
        Vec::new()
    } else {
        tx.query(
            &tx.prepare_cached(
                "UPDATE scheduler.tasks t SET state = 'dispatched', attempts = t.attempts + 1,
                     updated_at = now(), dispatched_at = now(), progress_message = '',
                     progress_fraction = -1, held_keys = w.concurrency_keys
                 FROM scheduler.workflows w
                 WHERE t.id = ANY($1) AND w.id = t.workflow_id
                 RETURNING t.workflow_id, t.seq, t.id, t.prompt, t.attempts, t.trace_context,
                           t.script, t.fields, w.name, t.timeout_ms, t.tool_policy",
            )
            .await?,
            &[&granted],
        )
        .await?
    };
    // The fair-share bookkeeping, and a wake-up for each workflow that won
    // a slot elsewhere (its runner claims it).
    tx.execute(
        &tx.prepare_cached(
            "WITH kept AS (
                 UPDATE scheduler.workflow_keys
                 SET served_at = CASE WHEN workflow_id = ANY($1) THEN now() ELSE served_at END,
                     waiting_since = CASE WHEN workflow_id = ANY($2)
                                          THEN coalesce(waiting_since, now()) END
                 WHERE workflow_id = ANY($1) OR workflow_id = ANY($2)
                    OR (workflow_id = ANY($4) AND waiting_since IS NOT NULL)
             )
             SELECT pg_notify('shepherd_work', r::text) FROM unnest($3::uuid[]) r",
        )
        .await?,
        &[&served, &waiting, &reserved, &workflows],
    )
    .await?;
    tx.commit().await?;

    let mut claims: HashMap<Uuid, KeyedClaim> = HashMap::new();
    for workflow in &waiting {
        claims.entry(*workflow).or_default().waiting = true;
    }
    let mut rows: Vec<(Uuid, i64, Claimed)> = rows.iter().map(claimed_from_row).collect();
    rows.sort_by_key(|(_, seq, _)| *seq);
    for (workflow, _, task) in rows {
        claims.entry(workflow).or_default().tasks.push(task);
    }
    Ok(claims)
}
