-- Timeouts: each workflow bounds how long an attempt may run; a task keeps
-- the timeout it was created with (a trigger may shorten it).
ALTER TABLE scheduler.workflows ADD COLUMN task_timeout_ms bigint NOT NULL DEFAULT 3600000;
ALTER TABLE scheduler.tasks ADD COLUMN timeout_ms bigint NOT NULL DEFAULT 3600000;
-- Two more final states: timed out, cancelled.
ALTER TABLE scheduler.tasks DROP CONSTRAINT IF EXISTS tasks_state_check;
ALTER TABLE scheduler.tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('pending', 'dispatched', 'succeeded', 'failed', 'timed_out', 'cancelled'));
