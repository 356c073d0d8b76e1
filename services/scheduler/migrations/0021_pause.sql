-- Pausing a workflow: no task of it is dispatched until it is resumed (its
-- agent keeps running). What its triggers make meanwhile (schedule ticks,
-- webhook deliveries, chained tasks, manual triggers) is recorded as
-- SKIPPED or queued, as the pause says; a queue holds at most 1000
-- pending tasks, the rest are recorded as skipped.
ALTER TABLE scheduler.workflows
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN paused_by text NOT NULL DEFAULT '',
    ADD COLUMN pause_reason text NOT NULL DEFAULT '',
    ADD COLUMN while_paused text NOT NULL DEFAULT 'skip'
        CHECK (while_paused IN ('skip', 'queue'));

ALTER TABLE scheduler.tasks DROP CONSTRAINT IF EXISTS tasks_state_check;
ALTER TABLE scheduler.tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('pending', 'dispatched', 'succeeded', 'failed', 'timed_out', 'cancelled',
                     'skipped'));

-- One place decides for every path that makes a task: a new pending task
-- of a paused workflow is recorded as skipped (SKIP, or a full queue).
CREATE FUNCTION scheduler.skip_while_paused() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    mode text;
BEGIN
    SELECT while_paused INTO mode FROM scheduler.workflows
    WHERE id = NEW.workflow_id AND paused_at IS NOT NULL;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    IF mode = 'skip' THEN
        NEW.state := 'skipped';
        NEW.last_error := 'skipped: the workflow was paused';
    ELSIF (SELECT count(*) FROM (
              SELECT FROM scheduler.tasks
              WHERE workflow_id = NEW.workflow_id AND state = 'pending' LIMIT 1000) q) >= 1000 THEN
        NEW.state := 'skipped';
        NEW.last_error := 'skipped: the paused workflow''s queue was full (1000 tasks)';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_skip_while_paused BEFORE INSERT ON scheduler.tasks
    FOR EACH ROW WHEN (NEW.state = 'pending')
    EXECUTE FUNCTION scheduler.skip_while_paused();

-- Resumed: its runner claims again.
CREATE TRIGGER workflows_notify_resumed AFTER UPDATE OF paused_at ON scheduler.workflows
    FOR EACH ROW WHEN (OLD.paused_at IS NOT NULL AND NEW.paused_at IS NULL)
    EXECUTE FUNCTION scheduler.notify_workflow_changes();
