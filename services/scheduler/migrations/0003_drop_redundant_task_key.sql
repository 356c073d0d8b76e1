-- A task's id is "<workflow_id>:<idempotency_key>", so the primary key
-- already makes the key unique per workflow. The second unique index only
-- cost an index write on every task insert and state change.
ALTER TABLE scheduler.tasks DROP CONSTRAINT IF EXISTS tasks_workflow_id_idempotency_key_key;
