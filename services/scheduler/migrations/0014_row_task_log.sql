-- The update log as a row trigger with a WHEN clause: the condition is
-- checked in C before any function runs, and no transition tables (two
-- tuplestores and a join per statement) are built for the many updates
-- that change no state.
DROP TRIGGER tasks_log_update ON scheduler.tasks;
DROP FUNCTION scheduler.log_updated_tasks();

CREATE FUNCTION scheduler.log_updated_task() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scheduler.task_events (task_id, workflow_id, state, attempt)
    VALUES (NEW.id, NEW.workflow_id, NEW.state, NEW.attempts);
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_log_update AFTER UPDATE ON scheduler.tasks
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.attempts IS DISTINCT FROM NEW.attempts)
    EXECUTE FUNCTION scheduler.log_updated_task();
