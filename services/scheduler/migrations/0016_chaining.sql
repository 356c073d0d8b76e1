-- Result chaining: a chained task names the task whose outcome made it and
-- how deep in its chain it is; chain-triggered workflows are found by their
-- parent when an outcome is recorded.
ALTER TABLE scheduler.tasks
    ADD COLUMN parent_task_id text,
    ADD COLUMN chain_depth integer NOT NULL DEFAULT 0;
CREATE INDEX workflows_chain_parent ON scheduler.workflows ((trigger->>'parent'))
    WHERE trigger->>'kind' = 'chain';
