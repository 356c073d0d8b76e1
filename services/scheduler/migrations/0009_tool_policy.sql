-- The tools an agent may and may not use: set per workflow, and kept with
-- each task as it was when the task was created, so every delivery of the
-- task (retries, redeliveries after a reconnect or restart) carries the
-- same policy.
ALTER TABLE scheduler.workflows ADD COLUMN tool_policy jsonb NOT NULL DEFAULT '{}';
ALTER TABLE scheduler.tasks ADD COLUMN tool_policy jsonb NOT NULL DEFAULT '{}';
