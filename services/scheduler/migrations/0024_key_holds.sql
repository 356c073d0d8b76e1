-- What holds each concurrency key, one row per (key, dispatched task).
--
-- Counted until now from `tasks.held_keys` through a GIN index: a GIN
-- index is searched by bitmap scans, which never mark the entries of tasks
-- that left the dispatched state as dead, so every claim of a keyed
-- workflow visited every task that ever held the key (until a vacuum),
-- plus the index's pending list. A b-tree scan of this table visits the
-- holders only (a plain index scan marks dead entries as it passes them).
--
-- Rows are added by the keyed claim that dispatches a task and removed by
-- the task statement trigger when the task leaves the dispatched state, or
-- with the task. `tasks.held_keys` still says which keys a task holds.
CREATE TABLE scheduler.key_holds (
    key     text NOT NULL,
    task_id text NOT NULL REFERENCES scheduler.tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (key, task_id)
);
CREATE INDEX key_holds_task_idx ON scheduler.key_holds (task_id);

INSERT INTO scheduler.key_holds (key, task_id)
SELECT DISTINCT unnest(held_keys), id FROM scheduler.tasks
WHERE state = 'dispatched' AND held_keys IS NOT NULL;

DROP INDEX scheduler.tasks_held_keys_idx;

-- As 0019, and a task leaving the dispatched state gives its keys back.
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
            DELETE FROM scheduler.key_holds h
            USING changed n JOIN previous o ON o.id = n.id
            WHERE h.task_id = n.id AND n.held_keys IS NOT NULL
              AND o.state = 'dispatched' AND n.state <> 'dispatched';
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
