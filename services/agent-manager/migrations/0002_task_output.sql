-- The agent's output is kept with the task, so a caller reconciling its
-- in-flight tasks (BatchGetTaskStates) learns the whole outcome even when
-- the TaskCompleted event never reached it.
ALTER TABLE agent_manager.tasks ADD COLUMN output text NOT NULL DEFAULT '';
