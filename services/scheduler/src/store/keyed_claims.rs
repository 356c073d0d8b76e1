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
use std::time::Duration;

use shepherd_platform::db::{Client, DbError};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::Claimed;
use super::claim_rows::{ClaimRequest, claimed_from_row};
use crate::key_shares::{Candidate, Contender, share};

/// What a keyed claim took for one workflow, and whether the workflow now
/// waits for a key's slot (and when a key's rate lets it try again).
#[derive(Debug, Default)]
pub(super) struct KeyedClaim {
    pub tasks: Vec<Claimed>,
    pub waiting: bool,
    pub retry_in: Option<Duration>,
    /// The workflow names no key (any more): a plain claim will do.
    pub keyless: bool,
}

/// A key's token bucket, as a claim found it.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    ms_per_token: f64,
}

impl Bucket {
    /// How long until it holds a whole token, if it holds none now.
    fn refilled_in(self) -> Option<Duration> {
        (self.tokens < 1.0)
            .then(|| Duration::from_secs_f64((1.0 - self.tokens) * self.ms_per_token / 1000.0))
    }
}

/// Claims for `requests` (of workflows that name keys, or did when last
/// seen) in one transaction of two round trips: BEGIN sent with the reads,
/// the writes with COMMIT. The transaction is this module's own (not a
/// `Transaction`, which would wait for its BEGIN); the caller closes a
/// connection this leaves half-way (`claims::claim_batch`).
pub(super) async fn claim_keyed(
    client: &Client,
    requests: &[&ClaimRequest],
) -> Result<HashMap<Uuid, KeyedClaim>, DbError> {
    if requests.is_empty() {
        return Ok(HashMap::new());
    }
    let tx = client;
    let workflows: Vec<Uuid> = requests.iter().map(|r| r.workflow).collect();
    let owners: Vec<&str> = requests.iter().map(|r| r.owner.as_str()).collect();
    let terms: Vec<i64> = requests.iter().map(|r| r.term).collect();

    // BEGIN and four statements, sent together (pipelined on the
    // connection: `try_join!` polls, and so sends, them in this order) and
    // run by the server one after the other: the lock first, so the count,
    // a statement of its own that starts once the lock is held, sees the
    // tasks a claim it waited for had just dispatched. (A count in the
    // locking statement would not: a statement sees the rows committed
    // when it started.)
    let (lock, count, here, elsewhere) = futures_util::try_join!(
        tx.prepare_cached(LOCK_KEYS),
        tx.prepare_cached(FREE_SLOTS),
        tx.prepare_cached(CLAIMING_NOW),
        tx.prepare_cached(WAITING_ELSEWHERE),
    )?;
    let by_workflows: [&(dyn ToSql + Sync); 1] = [&workflows];
    let requested: [&(dyn ToSql + Sync); 3] = [&workflows, &owners, &terms];
    let (_, _, keys, here, elsewhere) = futures_util::try_join!(
        tx.batch_execute("BEGIN"),
        tx.query(&lock, &by_workflows),
        tx.query(&count, &by_workflows),
        tx.query(&here, &requested),
        tx.query(&elsewhere, &by_workflows),
    )?;
    let names: Vec<String> = keys.iter().map(|row| row.get(0)).collect();
    let buckets: Vec<Option<Bucket>> = keys
        .iter()
        .map(|row| {
            let tokens: Option<f64> = row.get(2);
            tokens.map(|tokens| Bucket {
                tokens,
                ms_per_token: row.get::<_, Option<f64>>(3).unwrap_or(0.0),
            })
        })
        .collect();
    // A key's free slots: its limit less what holds it, and no more than
    // the whole tokens of its bucket.
    let free: Vec<u32> = keys
        .iter()
        .zip(&buckets)
        .map(|(row, bucket)| {
            let slots = row.get::<_, i64>(1).max(0);
            let slots = match bucket {
                Some(bucket) => slots.min(bucket.tokens.floor() as i64),
                None => slots,
            };
            u32::try_from(slots.max(0)).unwrap_or(0)
        })
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

    // Contenders: each workflow claiming now (in request order), then each
    // waiting elsewhere.
    let mut contenders: Vec<Contender<String>> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut position: HashMap<Uuid, usize> = HashMap::new();
    let mut keyless: Vec<Uuid> = Vec::new();
    for row in &here {
        let workflow: Uuid = row.get(0);
        if !position.contains_key(&workflow) && row.get::<_, Vec<String>>(1).is_empty() {
            keyless.push(workflow);
        }
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
    // The tasks granted, marked dispatched holding the keys; the
    // fair-share bookkeeping, and a wake-up for each workflow that won a
    // slot elsewhere (its runner claims it). Sent together.
    // What each rated key's bucket holds once the granted tasks have
    // started.
    let mut used = vec![0u32; names.len()];
    for (i, _) in &shares.granted {
        for key in &contenders[*i].keys {
            used[*key] += 1;
        }
    }
    let left: Vec<Option<Bucket>> = buckets
        .iter()
        .zip(&used)
        .map(|(bucket, used)| {
            bucket.map(|bucket| Bucket {
                tokens: bucket.tokens - f64::from(*used),
                ..bucket
            })
        })
        .collect();
    let (rated, tokens): (Vec<&str>, Vec<f64>) = names
        .iter()
        .zip(&left)
        .filter_map(|(name, bucket)| bucket.map(|bucket| (name.as_str(), bucket.tokens)))
        .unzip();
    let (dispatch, book, draw) = futures_util::try_join!(
        tx.prepare_cached(DISPATCH),
        tx.prepare_cached(BOOKKEEPING),
        tx.prepare_cached(DRAW_TOKENS),
    )?;
    let dispatched: [&(dyn ToSql + Sync); 1] = [&granted];
    let booked: [&(dyn ToSql + Sync); 4] = [&served, &waiting, &reserved, &workflows];
    let drawn: [&(dyn ToSql + Sync); 2] = [&rated, &tokens];
    // COMMIT sent with them: the keys' locks are held one round trip less
    // (a COMMIT of a transaction a failed statement aborted rolls it back).
    let (rows, _, _, _) = futures_util::try_join!(
        tx.query(&dispatch, &dispatched),
        tx.execute(&book, &booked),
        tx.execute(&draw, &drawn),
        tx.batch_execute("COMMIT"),
    )?;

    let mut claims: HashMap<Uuid, KeyedClaim> = HashMap::new();
    for i in &shares.waiting {
        let claim = claims.entry(ids[*i]).or_default();
        claim.waiting = true;
        // A bucket that is empty wakes nobody when it refills: the runner
        // tries again when its keys have a token each.
        claim.retry_in = contenders[*i]
            .keys
            .iter()
            .filter_map(|key| left[*key].and_then(Bucket::refilled_in))
            .max();
    }
    for workflow in keyless {
        claims.entry(workflow).or_default().keyless = true;
    }
    let mut rows: Vec<(Uuid, i64, Claimed)> = rows.iter().map(claimed_from_row).collect();
    rows.sort_by_key(|(_, seq, _)| *seq);
    for (workflow, _, task) in rows {
        claims.entry(workflow).or_default().tasks.push(task);
    }
    Ok(claims)
}

/// Locks the keys the requested workflows name, in name order.
const LOCK_KEYS: &str = "SELECT k.name FROM scheduler.concurrency_keys k
     WHERE k.name IN (SELECT unnest(w.concurrency_keys) FROM scheduler.workflows w
                      WHERE w.id = ANY($1))
     ORDER BY k.name FOR NO KEY UPDATE OF k";

/// The same keys in the same order, with their free slots (the limit less
/// the dispatched tasks holding each) and, for a key with a rate, the
/// tokens its bucket holds now and the milliseconds each takes to refill.
const FREE_SLOTS: &str = "SELECT k.name, k.max_running - (
         SELECT count(*) FROM scheduler.key_holds h WHERE h.key = k.name),
         CASE WHEN k.rate_limit IS NOT NULL THEN
             least(k.rate_limit::float8,
                   k.tokens + extract(epoch FROM now() - k.refilled_at) * 1000
                              * k.rate_limit / k.rate_period_ms) END,
         k.rate_period_ms::float8 / k.rate_limit
     FROM scheduler.concurrency_keys k
     WHERE k.name IN (SELECT unnest(w.concurrency_keys) FROM scheduler.workflows w
                      WHERE w.id = ANY($1))
     ORDER BY k.name";

/// The workflows claiming now: lease and room checked as for any claim;
/// their claimable tasks, best first, locked.
const CLAIMING_NOW: &str = "WITH request AS (
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[]) AS r(workflow_id, owner, term)
     ), room AS (
         SELECT w.id, w.concurrency_keys, w.max_concurrency - busy.n AS n
         FROM request r
         JOIN scheduler.runner_leases l ON l.workflow_id = r.workflow_id
              AND l.owner = r.owner AND l.term = r.term AND l.expires_at > now()
         JOIN scheduler.replicas p ON p.id = r.owner AND p.expires_at > now()
         JOIN scheduler.workflows w ON w.id = r.workflow_id AND w.enabled
              AND w.paused_at IS NULL AND cardinality(w.holds) = 0
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
     ) c";

/// The workflows waiting elsewhere for a slot of these keys: enabled, their
/// lease held by a live replica, with room and a claimable task (its head).
const WAITING_ELSEWHERE: &str = "SELECT w.id, w.concurrency_keys,
            (SELECT extract(epoch FROM max(s.served_at)) * 1000
             FROM scheduler.workflow_keys s WHERE s.workflow_id = w.id)::bigint,
            head.priority, head.seq
     FROM scheduler.workflows w
     CROSS JOIN LATERAL (
         SELECT t.priority, t.seq FROM scheduler.tasks t
         WHERE t.workflow_id = w.id AND t.state = 'pending'
           AND (t.not_before IS NULL OR t.not_before <= now())
         ORDER BY t.priority DESC, t.seq LIMIT 1) head
     WHERE w.id IN (
             SELECT wk.workflow_id FROM scheduler.workflow_keys wk
             WHERE wk.waiting_since IS NOT NULL
               AND wk.key IN (SELECT unnest(r.concurrency_keys) FROM scheduler.workflows r
                              WHERE r.id = ANY($1)))
       AND w.id <> ALL($1) AND w.enabled AND w.paused_at IS NULL AND cardinality(w.holds) = 0
       AND EXISTS (
         SELECT FROM scheduler.runner_leases l
         JOIN scheduler.replicas p ON p.id = l.owner AND p.expires_at > now()
         WHERE l.workflow_id = w.id AND l.expires_at > now())
       AND (SELECT count(*) FROM (
              SELECT FROM scheduler.tasks d
              WHERE d.workflow_id = w.id AND d.state = 'dispatched'
              LIMIT w.max_concurrency) busy) < w.max_concurrency";

/// Marks the granted tasks dispatched, holding their workflow's keys (if
/// it names any: a task of a workflow whose keys were just taken away
/// holds none), and records the holds.
const DISPATCH: &str = "WITH claimed AS (
         UPDATE scheduler.tasks t SET state = 'dispatched', attempts = t.attempts + 1,
             updated_at = now(), dispatched_at = now(), progress_message = '',
             progress_fraction = -1, held_keys = nullif(w.concurrency_keys, '{}'::text[])
         FROM scheduler.workflows w
         WHERE t.id = ANY($1) AND w.id = t.workflow_id
         RETURNING t.workflow_id, t.seq, t.id, t.prompt, t.attempts, t.trace_context,
                   t.script, t.fields, w.name, t.timeout_ms, t.tool_policy, t.held_keys
     ), held AS (
         INSERT INTO scheduler.key_holds (key, task_id)
         SELECT DISTINCT unnest(c.held_keys), c.id FROM claimed c
         ON CONFLICT DO NOTHING
     )
     SELECT * FROM claimed";

/// Who was served ($1), who waits ($2; every other requester, $4, waits no
/// more), and a wake-up for each workflow that won a slot elsewhere ($3).
const BOOKKEEPING: &str = "WITH kept AS (
         UPDATE scheduler.workflow_keys
         SET served_at = CASE WHEN workflow_id = ANY($1) THEN now() ELSE served_at END,
             waiting_since = CASE WHEN workflow_id = ANY($2)
                                  THEN coalesce(waiting_since, now()) END
         WHERE workflow_id = ANY($1) OR workflow_id = ANY($2)
            OR (workflow_id = ANY($4) AND waiting_since IS NOT NULL)
     )
     SELECT pg_notify('shepherd_work', r::text) FROM unnest($3::uuid[]) r";

/// Stores what is left in each rated key's bucket ($2, by name $1), as of
/// now (the transaction's time, the one the tokens were counted at).
const DRAW_TOKENS: &str =
    "UPDATE scheduler.concurrency_keys k SET tokens = v.tokens, refilled_at = now()
     FROM unnest($1::text[], $2::float8[]) AS v(name, tokens)
     WHERE k.name = v.name";
