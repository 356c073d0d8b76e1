-- W3C trace context of the call that created the task, so its dispatch
-- continues the same trace.
ALTER TABLE scheduler.tasks ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}';
