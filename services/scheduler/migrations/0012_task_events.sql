-- The task change log WatchTasks streams: every new task, every change of a
-- task's state or attempt (written by triggers, so no code path can forget
-- one), and agents' progress reports (written by the lease holder).
--
-- Commit order without a global counter: each row carries the id of the
-- transaction that wrote it. A reader returns only rows of transactions
-- older than the oldest one still running (pg_snapshot_xmin), in (xid, n)
-- order: no transaction can commit a row behind that point any more, so a
-- cursor (xid, n) resumes with no gap and no duplicate, on any replica.
CREATE TABLE scheduler.task_events (
    xid               xid8 NOT NULL DEFAULT pg_current_xact_id(),
    n                 bigint GENERATED ALWAYS AS IDENTITY,
    task_id           text NOT NULL,
    workflow_id       uuid NOT NULL,
    state             text NOT NULL,
    attempt           integer NOT NULL,
    progress_message  text,
    progress_fraction real,
    progress_output   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, n)
);
CREATE INDEX task_events_workflow_idx ON scheduler.task_events (workflow_id, xid, n);
CREATE INDEX task_events_task_idx ON scheduler.task_events (task_id, xid, n);
CREATE INDEX task_events_created_at_idx ON scheduler.task_events (created_at);

-- The latest progress of the current attempt, shown by GetTask.
ALTER TABLE scheduler.tasks
    ADD COLUMN progress_message text NOT NULL DEFAULT '',
    ADD COLUMN progress_fraction real NOT NULL DEFAULT -1;

CREATE FUNCTION scheduler.log_inserted_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scheduler.task_events (task_id, workflow_id, state, attempt)
    SELECT id, workflow_id, state, attempts FROM changed ORDER BY id;
    RETURN NULL;
END
$$;

CREATE FUNCTION scheduler.log_updated_tasks() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scheduler.task_events (task_id, workflow_id, state, attempt)
    SELECT n.id, n.workflow_id, n.state, n.attempts
    FROM changed n JOIN previous o ON o.id = n.id
    WHERE n.state <> o.state OR n.attempts <> o.attempts
    ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_log_insert AFTER INSERT ON scheduler.tasks
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.log_inserted_tasks();
CREATE TRIGGER tasks_log_update AFTER UPDATE ON scheduler.tasks
    REFERENCING OLD TABLE AS previous NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.log_updated_tasks();

-- Watchers wait for this instead of polling.
CREATE FUNCTION scheduler.notify_task_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shepherd_task_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER task_events_notify AFTER INSERT ON scheduler.task_events
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.notify_task_events();
