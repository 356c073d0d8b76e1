-- Concurrency keys: a scarce thing several workflows share (a provider
-- account, a repository, a staging database), with how many tasks holding
-- it may run at once. A workflow names its keys; a task claimed for
-- dispatch holds every key its workflow names until it leaves the
-- dispatched state. Claims of keyed workflows lock their keys' rows, so
-- the count is exact across replicas (see `store::keyed_claims`).
CREATE TABLE scheduler.concurrency_keys (
    name text PRIMARY KEY,
    max_running integer NOT NULL CHECK (max_running BETWEEN 1 AND 100000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE scheduler.workflows ADD COLUMN concurrency_keys text[] NOT NULL DEFAULT '{}';

-- One row per (workflow, key) it names, kept by a trigger from the
-- workflow's column: the foreign key refuses an unknown key (and the
-- deletion of a key in use), and the row holds the key's fair-share
-- bookkeeping: when the workflow was last given a slot of the key, and
-- since when it waits for one (NULL: it does not).
CREATE TABLE scheduler.workflow_keys (
    workflow_id uuid NOT NULL REFERENCES scheduler.workflows (id) ON DELETE CASCADE,
    key text NOT NULL REFERENCES scheduler.concurrency_keys (name),
    served_at timestamptz,
    waiting_since timestamptz,
    PRIMARY KEY (workflow_id, key)
);
CREATE INDEX workflow_keys_key_idx ON scheduler.workflow_keys (key);

CREATE FUNCTION scheduler.sync_workflow_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM scheduler.workflow_keys
    WHERE workflow_id = NEW.id AND NOT (key = ANY (NEW.concurrency_keys));
    INSERT INTO scheduler.workflow_keys (workflow_id, key)
    SELECT NEW.id, k FROM unnest(NEW.concurrency_keys) AS k
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflows_sync_keys_insert AFTER INSERT ON scheduler.workflows
    FOR EACH ROW WHEN (cardinality(NEW.concurrency_keys) > 0)
    EXECUTE FUNCTION scheduler.sync_workflow_keys();
CREATE TRIGGER workflows_sync_keys_update AFTER UPDATE OF concurrency_keys ON scheduler.workflows
    FOR EACH ROW WHEN (NEW.concurrency_keys IS DISTINCT FROM OLD.concurrency_keys)
    EXECUTE FUNCTION scheduler.sync_workflow_keys();

-- A task's priority: higher first, FIFO (seq) among equals, within its
-- workflow and within a key. The keys a dispatched task holds.
ALTER TABLE scheduler.tasks
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN held_keys text[];
-- The claim's order. Beside, not instead of, tasks_pending_idx: with that
-- one gone, the planner answered "has the workflow a claimable task?"
-- (claims, lease takeovers) through tasks_workflow_seq_idx, walking every
-- task the workflow ever had (the claim took 18 ms instead of 0.8 at
-- 22,000 tasks).
CREATE INDEX tasks_pending_priority_idx ON scheduler.tasks (workflow_id, priority DESC, seq)
    WHERE state = 'pending';
-- Counting what holds a key: only dispatched tasks of keyed workflows.
CREATE INDEX tasks_held_keys_idx ON scheduler.tasks USING gin (held_keys)
    WHERE state = 'dispatched' AND held_keys IS NOT NULL;

-- A slot of a key freed up (a task that held it left the dispatched
-- state): wake the workflows waiting for one, too. Otherwise as 0017.
CREATE OR REPLACE FUNCTION scheduler.on_task_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO scheduler.task_events (task_id, workflow_id, state, attempt)
        SELECT id, workflow_id, state, attempts FROM changed ORDER BY id;
    ELSE
        INSERT INTO scheduler.task_events (task_id, workflow_id, state, attempt)
        SELECT n.id, n.workflow_id, n.state, n.attempts
        FROM changed n JOIN previous o ON o.id = n.id
        WHERE n.state <> o.state OR n.attempts <> o.attempts
        ORDER BY n.id;
        -- (Checked first: most statements change no keyed task.)
        IF EXISTS (SELECT FROM changed WHERE held_keys IS NOT NULL AND state <> 'dispatched') THEN
            PERFORM pg_notify('shepherd_work', k.workflow_id::text)
            FROM (SELECT DISTINCT wk.workflow_id
                  FROM changed n JOIN previous o ON o.id = n.id
                       JOIN scheduler.workflow_keys wk ON wk.key = ANY (n.held_keys)
                  WHERE n.held_keys IS NOT NULL AND o.state = 'dispatched'
                    AND n.state <> 'dispatched' AND wk.waiting_since IS NOT NULL) k;
        END IF;
    END IF;
    PERFORM pg_notify('shepherd_work', w.workflow_id::text)
    FROM (SELECT DISTINCT workflow_id FROM changed
          WHERE state <> 'dispatched'
            AND (state <> 'pending' OR not_before IS NULL OR not_before <= now())) w;
    PERFORM pg_notify('shepherd_due', (extract(epoch FROM min(not_before)) * 1000)::bigint::text)
    FROM changed
    WHERE state = 'pending' AND not_before > now()
    HAVING min(not_before) IS NOT NULL;
    RETURN NULL;
END
$$;
