-- Runners sleep until something can change what they may claim; these
-- triggers tell them, through NOTIFY, across every replica that shares the
-- database (each listens on one connection). Notifications are per
-- workflow, sent at commit, and PostgreSQL folds identical ones of one
-- transaction into one.
--
-- shepherd_work (payload: workflow id): a task became claimable now (a
-- trigger, a schedule tick, a requeue) or a slot freed up (an outcome
-- recorded). A claim (pending -> dispatched) notifies nobody: the claimer
-- knows.
-- shepherd_due (payload: epoch milliseconds): the earliest time at which a
-- task written by the statement becomes claimable (a delayed trigger or
-- retry), for the replicas' due timers.
CREATE FUNCTION scheduler.notify_task_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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

CREATE TRIGGER tasks_notify_insert AFTER INSERT ON scheduler.tasks
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.notify_task_changes();
CREATE TRIGGER tasks_notify_update AFTER UPDATE ON scheduler.tasks
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scheduler.notify_task_changes();

-- More room (max_concurrency raised) or a workflow enabled.
CREATE FUNCTION scheduler.notify_workflow_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shepherd_work', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER workflows_notify_update AFTER UPDATE ON scheduler.workflows
    FOR EACH ROW
    WHEN (NEW.max_concurrency > OLD.max_concurrency OR (NEW.enabled AND NOT OLD.enabled))
    EXECUTE FUNCTION scheduler.notify_workflow_changes();

-- The due timers' lookup: the earliest future not_before of pending tasks.
CREATE INDEX tasks_pending_not_before_idx ON scheduler.tasks (not_before)
    WHERE state = 'pending' AND not_before IS NOT NULL;
