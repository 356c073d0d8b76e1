-- The workflow's template rendered for /bin/sh when the task was created:
-- placeholders are references to the SHEPHERD_TASK_* variables that carry
-- the task's fields, so no field is ever parsed as shell.
ALTER TABLE scheduler.tasks ADD COLUMN script text NOT NULL DEFAULT '';
